"""The ``merge`` job: re-check the pinned inputs, merge them on their safetensors, register the result."""

from __future__ import annotations

from registry import catalog
from registry.jobs import MergeSpec
from workers.context import JobContext
from workers.host import JobHost, Outcome, Output


def run_merge(host: JobHost, ctx: JobContext, spec: MergeSpec) -> None:
    from workers.merge import merge_adapters

    ctx.progress(0.0, "checking inputs", force=True)
    inputs = host.load(spec)
    folders = [host.folder(inputs.versions[src.version_id], src.ref) for src in spec.sources]
    ctx.check_cancel()

    out = ctx.scratch / "merged"
    params = spec.params.model_dump(exclude_none=True)
    report = merge_adapters(
        folders, spec.weights, spec.method, out=out,
        progress=lambda f, msg=None: ctx.progress(0.05 + 0.85 * f, msg or "merging"),
        should_cancel=ctx.should_cancel, allow_cross_base=spec.allow_cross_base,
        manifests=inputs.manifests, labels=[src.ref for src in spec.sources], **params,
    )
    ctx.check_cancel()
    ctx.progress(0.92, "validating the merged adapter", force=True)
    # The edges record every parameter as the merge resolved it (e.g. the svd_rank actually used).
    edge_params = {"method": spec.method, **{k: v for k, v in report.params.items() if v is not None}}
    if spec.params.dtype:
        edge_params["dtype"] = spec.params.dtype
    if spec.allow_cross_base:
        edge_params["allow_cross_base"] = True
    first = inputs.versions[spec.sources[0].version_id]
    host.commit(ctx, spec, Outcome(
        report=report.to_dict(), message="merged",
        outputs=[Output(spec.name, out, first.base_model_id, description=spec.description, parents=[
            catalog.ParentSpec(src.version_id, "merge", w, i, edge_params)
            for i, (src, w) in enumerate(zip(spec.sources, spec.weights, strict=True))])],
    ))
