"""The ``merge`` job: re-check the pinned inputs, merge them on their safetensors, register the result."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from registry import catalog
from registry import models as m
from registry.errors import RegistryError
from registry.inspect import inspect_adapter, sha256_file, weights_path
from registry.jobs import MergeSpec, SourceRef, ValidateSpec
from registry.operations.submit import submit
from registry.service import Service
from workers.context import JobContext, complete


class InputChanged(RegistryError):
    """An input's file no longer matches the sha256 recorded in the catalog."""


def verified_folders(svc: Service, sources: list[SourceRef]) -> list[Path]:
    """The stored folders of a job's pinned inputs, each checked against the sha256 recorded at submission."""
    folders = []
    for src in sources:
        folder = svc.store.path(src.storage_path)
        actual = sha256_file(weights_path(folder))
        if actual != src.weights_sha256:
            raise InputChanged(
                f"input {src.ref} changed on disk: its weights hash to {actual[:12]}, "
                f"the catalog recorded {src.weights_sha256[:12]}; refusing to use it"
            )
        folders.append(folder)
    return folders


def run_merge(svc: Service, ctx: JobContext, spec: MergeSpec) -> None:
    from workers.merge import merge_adapters

    ctx.progress(0.0, "checking inputs", force=True)
    folders = verified_folders(svc, spec.sources)
    with svc.sessions() as s:
        rows = [s.get(m.AdapterVersion, src.version_id) for src in spec.sources]
        missing = [src.ref for src, row in zip(spec.sources, rows, strict=True) if row is None]
        if missing:
            raise InputChanged(f"input {', '.join(missing)} was deleted from the catalog")
        # The same metadata the static check ran on before the job was queued (base identity from the catalog).
        manifests = [catalog.manifest_of(s, row) for row in rows]
    ctx.check_cancel()

    out = ctx.scratch / "merged"
    params = spec.params.model_dump(exclude_none=True)
    report = merge_adapters(
        folders, spec.weights, spec.method, out=out,
        progress=lambda f, msg=None: ctx.progress(0.05 + 0.85 * f, msg or "merging"),
        should_cancel=ctx.should_cancel, allow_cross_base=spec.allow_cross_base,
        manifests=manifests, labels=[src.ref for src in spec.sources], **params,
    )
    ctx.check_cancel()
    ctx.progress(0.92, "validating the merged adapter", force=True)
    manifest = inspect_adapter(out)  # post-merge checks: consistent tensors, no NaN/Inf, PEFT layout
    storage = svc.store.put_adapter(weights_path(out), manifest.weights_sha256, manifest.config)
    report_data = report.to_dict()
    # The edges record every parameter as the merge resolved it (e.g. the svd_rank actually used).
    edge_params = {"method": spec.method, **{k: v for k, v in report.params.items() if v is not None}}
    if spec.params.dtype:
        edge_params["dtype"] = spec.params.dtype
    if spec.allow_cross_base:
        edge_params["allow_cross_base"] = True

    with svc.transaction() as s:
        first = s.get(m.AdapterVersion, spec.sources[0].version_id)
        if first is None:
            raise InputChanged(f"input {spec.sources[0].ref} was deleted from the catalog")
        base = s.get(m.BaseModelRecord, first.base_model_id) if first.base_model_id else None
        row, _ = catalog.register_version(
            s, spec.name, manifest, storage, base, tags=spec.tags,
            source_uri=f"job:{ctx.job_id}", description=spec.description, created_by=spec.submitted_by,
            parents=[
                catalog.ParentSpec(src.version_id, "merge", w, i, edge_params)
                for i, (src, w) in enumerate(zip(spec.sources, spec.weights, strict=True))
            ],
        )
        complete(svc, ctx, s, result_version_id=row.id, report=report_data, progress_message="merged")
        ref = f"{spec.name}:{row.version}"
        version_id = row.id

    if spec.validate_after or spec.publish_to is not None:
        submit(svc, ValidateSpec(version_id=version_id, ref=ref, publish_after=spec.publish_to),
                        parent_job_id=ctx.job_id)


def parent_versions(session, version_id: int) -> list[tuple[int, float | None]]:  # type: ignore[no-untyped-def]
    """The merge parents of a version with their weights, in order."""
    e = m.LineageEdge
    rows = session.execute(
        select(e.parent_id, e.weight).where(e.child_id == version_id, e.relation == "merge").order_by(e.position)
    ).all()
    return [(pid, w) for pid, w in rows]
