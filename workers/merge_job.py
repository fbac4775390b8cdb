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

    weights, learned, start = list(spec.weights), None, 0.05
    if spec.learn is not None:  # fit the weights on the parents' held-out data first (workers.learn_weights)
        from workers.learn_weights import learn_for_merge

        learned = learn_for_merge(host, ctx, spec, inputs.base, folders, span=(0.02, 0.6))
        weights, start = list(learned["weights"]), 0.6
    out = ctx.scratch / "merged"
    params = spec.params.model_dump(exclude_none=True)
    report = merge_adapters(
        folders, weights, spec.method, out=out,
        progress=lambda f, msg=None: ctx.progress(start + (0.9 - start) * f, msg or "merging"),
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
    if learned is not None:  # the edge's weight is the learned one; the job's report has the search
        edge_params["weights"] = "learned"
    first = inputs.versions[spec.sources[0].version_id]
    data = report.to_dict()
    if learned is not None:
        data["learned_weights"] = learned
    host.commit(ctx, spec, Outcome(
        report=data, message="merged with learned weights" if learned is not None else "merged",
        outputs=[Output(spec.name, out, first.base_model_id, description=spec.description, parents=[
            catalog.ParentSpec(src.version_id, "merge", w, i, edge_params)
            for i, (src, w) in enumerate(zip(spec.sources, weights, strict=True))])],
    ))
