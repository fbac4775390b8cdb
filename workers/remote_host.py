"""The worker's half of running a job without catalog access: ``adreg worker`` with ``ADREG_URL`` + ``ADREG_TOKEN``.

The worker still takes job ids from the broker, then claims each through the server, fetches the inputs it is
given by sha256 into a local content-addressed cache (:class:`ArtifactCache`: verified, size-bounded, safe under
concurrent workers), runs the same job function as a worker beside the catalog, uploads its outputs' weights and
sends the outcome; the server registers it (see :mod:`workers.remote_protocol`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from registry.errors import InvalidAdapter, RegistryError
from registry.inspect import CONFIG_FILE, WEIGHTS_FILE, sha256_file, weights_path
from registry.jobs import AnySpec, DataSpec, parse_spec
from registry.problems import raise_for_problem
from registry.store import IncomingBlob, config_sha256
from workers.context import JobCancelled, JobContext
from workers.host import InputChanged, JobInputs, Outcome

log = logging.getLogger("adreg.remote")
CHUNK = 1 << 20


class ArtifactCache:
    """Input files by sha256 under ``root``: ``blobs/<sha[:2]>/<sha>`` plus PEFT folders that hard-link them.

    Every file arrives in a temporary file, is checked against its sha256 and renamed into place, so concurrent
    workers sharing the cache never see a partial file (two downloads of one blob both land the same bytes).
    Beyond ``max_bytes``, the least recently used blobs are evicted (a folder in use keeps its hard link).
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "adapters").mkdir(parents=True, exist_ok=True)

    def blob(self, sha256: str, fetch: Any) -> Path:
        """The cached file with this sha256, downloading it with ``fetch()`` (an iterator of bytes) when missing."""
        path = self.root / "blobs" / sha256[:2] / sha256
        if path.is_file():
            os.utime(path)  # recently used
            return path
        with IncomingBlob(path, sha256, 1 << 62) as incoming:  # a temporary file beside it, hashed, renamed
            for block in fetch():
                incoming.write(block)
            try:
                incoming.commit()
            except InvalidAdapter:
                raise InputChanged(f"a download arrived with another sha256 than {sha256[:12]}") from None
        self.evict(keep=path)
        return path

    def adapter(self, sha256: str, config: dict[str, Any], weights: Path) -> Path:
        """A PEFT folder (config + hard-linked weights) for these weights and this config."""
        folder = self.root / "adapters" / f"{sha256}-{config_sha256(config)[:12]}"
        if folder.is_dir():
            return folder
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            (staging / CONFIG_FILE).write_text(json.dumps(config))
            os.link(weights, staging / WEIGHTS_FILE)
            try:
                staging.rename(folder)
            except OSError:
                if not folder.is_dir():  # another worker may have built the same folder first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def evict(self, keep: Path) -> None:
        blobs = [p for p in (self.root / "blobs").glob("*/*") if p.is_file() and not p.name.startswith(".tmp-")]
        total = sum(p.stat().st_size for p in blobs)
        for path in sorted(blobs, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if path != keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                for folder in (self.root / "adapters").glob(f"{path.name}-*"):
                    shutil.rmtree(folder, ignore_errors=True)


class RemoteHost:
    """A :class:`~workers.host.JobHost` whose catalog is a server (inputs from the claim, files by sha256)."""

    def __init__(self, client: Any, cache: ArtifactCache, job_id: int, attempt: int, inputs: JobInputs) -> None:
        self.client, self.cache, self.job_id, self.attempt, self.inputs = client, cache, job_id, attempt, inputs

    def load(self, spec: AnySpec) -> JobInputs:
        return self.inputs

    def folder(self, row: Any, ref: str) -> Path:
        weights = self.cache.blob(row.weights_sha256, lambda: self._stream(f"/v1/blobs/{row.weights_sha256}"))
        config = _checked(self.client.get(f"/v1/versions/{_quote(ref)}/files/{CONFIG_FILE}")).json()
        return self.cache.adapter(row.weights_sha256, config, weights)

    def data_file(self, data: DataSpec) -> Path:
        blob = self.cache.blob(data.sha256, lambda: self._stream(
            f"/v1/worker/jobs/{self.job_id}/data?sha256={data.sha256}"))
        named = blob.with_name(blob.name + Path(data.path).suffix)  # the loader picks the format by suffix
        if not named.exists():
            with contextlib.suppress(FileExistsError):
                os.link(blob, named)
        return named

    def commit(self, ctx: JobContext, spec: AnySpec, outcome: Outcome) -> list[tuple[int, str]]:
        outputs = []
        for output in outcome.outputs:
            weights = weights_path(output.folder)
            sha = sha256_file(weights)
            with weights.open("rb") as source:
                _checked(self.client.put(f"/v1/blobs/{sha}", content=iter(lambda: source.read(CHUNK), b""),
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(weights.stat().st_size)}))
            outputs.append({
                "name": output.name, "weights_sha256": sha, "base_model_id": output.base_model_id,
                "description": output.description, "config": json.loads((output.folder / CONFIG_FILE).read_text()),
                "parents": [{"parent_id": p.parent_id, "relation": p.relation, "weight": p.weight,
                             "position": p.position, "params": p.params} for p in output.parents]})
        for data in outcome.datasets:  # uploaded like training data, by sha256; the server records them
            with data.file.open("rb") as source:
                _checked(self.client.put(f"/v1/data/{data.sha256}", params={"suffix": data.file.suffix},
                                         content=iter(lambda: source.read(CHUNK), b""),
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(data.file.stat().st_size)}))
        answer = _checked(self.client.post(f"/v1/worker/jobs/{self.job_id}/complete", json={
            "attempt": self.attempt, "report": outcome.report, "message": outcome.message, "outputs": outputs,
            "datasets": [data.to_dict() for data in outcome.datasets],
            "validated": list(outcome.validated) if outcome.validated else None,
            "result_version_id": outcome.result_version_id})).json()
        if answer.get("status") != "succeeded":
            raise JobCancelled(f"job {self.job_id} is no longer held by this attempt")
        return []

    def _stream(self, path: str) -> Any:
        with self.client.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                _checked(response)
            yield from response.iter_bytes(CHUNK)


class RemoteJobContext(JobContext):
    """Progress and cancellation through the server's heartbeat route (at most twice a second)."""

    def __init__(self, client: Any, job_id: int, attempt: int, work_root: Path) -> None:
        super().__init__(None, job_id, attempt, work_root=work_root)
        self.client = client
        self.lock = threading.Lock()

    def beat(self, fraction: float | None = None, message: str | None = None) -> None:
        with self.lock:
            answer = _checked(self.client.post(f"/v1/worker/jobs/{self.job_id}/heartbeat", json={
                "attempt": self.attempt, "progress": fraction, "message": message})).json()
        self._cancelled = self._cancelled or bool(answer.get("cancel"))

    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        try:
            self.beat(max(0.0, min(1.0, fraction)), message)
        except Exception:  # progress is best effort; the lease is kept by the heartbeat thread
            log.warning("progress report for job %s failed", self.job_id, exc_info=True)

    def should_cancel(self) -> bool:
        return self._cancelled


def run_remote_job(client: Any, job_id: int, work_root: Path, cache: ArtifactCache) -> str:
    """Claim ``job_id`` through the server and run it here; returns its final status. Never raises for job errors."""
    from workers.runners import job_functions

    claimed = _checked(client.post(f"/v1/worker/jobs/{job_id}/claim",
                                   json={"worker": f"{socket.gethostname()}:{os.getpid()}"})).json()
    if claimed.get("attempt") is None:
        return str(claimed.get("status"))
    attempt = int(claimed["attempt"])
    ctx = RemoteJobContext(client, job_id, attempt, work_root)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(max(0.5, float(claimed.get("lease_seconds", 120)) / 3)):
            try:
                ctx.beat()
            except Exception:
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)

    threading.Thread(target=heartbeat, daemon=True, name=f"adreg-beat-{job_id}").start()
    status = "succeeded"
    try:
        spec = parse_spec(claimed["spec"])
        host = RemoteHost(client, cache, job_id, attempt, JobInputs.from_dict(claimed["inputs"]))
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        job_functions()[spec.kind](host, ctx, spec)  # type: ignore[arg-type]
    except JobCancelled:
        status = "cancelled"
        _send_failure(client, job_id, attempt, "cancelled", None, None, {})
    except Exception as exc:
        status = "failed"
        user_error = isinstance(exc, RegistryError)
        if not user_error:
            log.exception("job %s failed", job_id)
        _send_failure(client, job_id, attempt, "failed", type(exc).__name__,
                      str(exc) if user_error else f"{exc}\n{traceback.format_exc()[-4000:]}",
                      getattr(exc, "report", None) or {})
    finally:
        stop.set()
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    return status


def _send_failure(client: Any, job_id: int, attempt: int, status: str, error_type: str | None,
                  message: str | None, report: dict[str, Any]) -> None:
    try:
        _checked(client.post(f"/v1/worker/jobs/{job_id}/fail", json={
            "attempt": attempt, "status": status, "error_type": error_type, "error_message": message,
            "report": json.loads(json.dumps(report, default=str))}))
    except Exception:  # the lease expires and the recovery sweep re-dispatches the job
        log.warning("could not report the end of job %s", job_id, exc_info=True)


def _checked(response: Any) -> Any:
    return raise_for_problem(response, "the server")


def _quote(ref: str) -> str:
    from urllib.parse import quote

    return quote(ref, safe=":@")
