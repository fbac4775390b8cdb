# One image for every adreg service. CPU by default; the GPU image swaps the base and the torch index:
#   docker build -t adapter-registry:cpu .
#   docker build -t adapter-registry:gpu --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      && rm -rf /var/lib/apt/lists/*; fi
RUN python3 -m venv /opt/adreg
ENV PATH=/opt/adreg/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch>=2.4"
COPY pyproject.toml setup.py README.md /src/
COPY registry /src/registry
COPY migrations /src/migrations
COPY workers /src/workers
RUN pip install --no-cache-dir /src

FROM ${BASE_IMAGE} AS runtime
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*; fi \
    && useradd --create-home --uid 10001 adreg && mkdir -p /data && chown adreg /data
COPY --from=build /opt/adreg /opt/adreg
ENV PATH=/opt/adreg/bin:$PATH ADREG_HOME=/data/adreg HF_HOME=/data/hf PYTHONUNBUFFERED=1
USER adreg
WORKDIR /data
ENTRYPOINT []
CMD ["adreg", "--help"]
