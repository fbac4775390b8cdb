"""Where a job reads its inputs and commits its outputs: the catalog in this process, or a server over HTTP.

A job function reads everything it needs with :meth:`JobHost.load` (detached catalog rows, manifests, refs),
gets each input's files with :meth:`JobHost.folder` (verified against the sha256 pinned at submission), computes,
and hands its :class:`Outcome` to :meth:`JobHost.commit`. :class:`LocalHost` does both against the database and
the shared store; ``workers.remote_host.RemoteHost`` fetches inputs by sha256 into a local cache and sends the
outcome to the server, which commits it with the same :func:`commit_outcome`, so a job registers its outputs in
one transaction with marking it succeeded, wherever it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, inspect, select

from registry import catalog
from registry import models as m
from registry.errors import RegistryError
from registry.inspect import inspect_adapter, sha256_file, weights_path
from registry.jobs import AnySpec, DataSpec, EvalSpec, MergeSpec, PublishSpec, TrainSpec, ValidateSpec
from registry.manifest import AdapterManifest
from registry.operations import datasets as datasets_ops
from registry.operations.submit import submit
from registry.service import Service
from registry.trainset import CheckedData
from workers.context import JobContext, complete
from workers.job_metrics import record_job_metrics


class InputChanged(RegistryError):
    """An input's file no longer matches the sha256 recorded in the catalog, or the input is gone."""


@dataclass
class JobInputs:
    """What a job reads from the catalog, as detached rows (the same whether the database is near or not)."""

    versions: dict[int, m.AdapterVersion] = field(default_factory=dict)  # every version the job reads
    base: m.BaseModelRecord | None = None
    manifests: list[AdapterManifest] = field(default_factory=list)  # merge: as the static check saw them
    refs: dict[int, str] = field(default_factory=dict)  # exact refs of the versions, by id
    parents: list[tuple[int, float | None]] = field(default_factory=list)  # validate: merge parents, in order
    edge_params: dict[str, Any] = field(default_factory=dict)  # validate: the merge's recorded parameters

    def to_dict(self) -> dict[str, Any]:
        return {"versions": {str(k): row_columns(v) for k, v in self.versions.items()},
                "base": row_columns(self.base) if self.base is not None else None,
                "manifests": [mf.model_dump(mode="json") for mf in self.manifests],
                "refs": {str(k): v for k, v in self.refs.items()},
                "parents": [[pid, w] for pid, w in self.parents], "edge_params": self.edge_params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInputs:
        return cls(versions={int(k): detached(m.AdapterVersion, v) for k, v in data["versions"].items()},
                   base=detached(m.BaseModelRecord, data["base"]) if data.get("base") else None,
                   manifests=[AdapterManifest.model_validate(x) for x in data["manifests"]],
                   refs={int(k): v for k, v in data["refs"].items()},
                   parents=[(int(pid), w) for pid, w in data["parents"]], edge_params=dict(data["edge_params"]))


@dataclass
class Output:
    """A new version a job made: its adapter folder (scratch) and how to register it."""

    name: str
    folder: Path
    base_model_id: int | None
    parents: list[catalog.ParentSpec] = field(default_factory=list)
    description: str | None = None


@dataclass
class DatasetOutput:
    """A data file a job made (a training job's train / held-out split), to record as a catalog dataset and link
    to every version the job registers, with ``role``."""

    name: str
    role: str
    file: Path
    sha256: str
    format: str
    rows: int
    columns: list[str]
    task_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sha256": self.sha256, "suffix": self.file.suffix,
                "format": self.format, "rows": self.rows, "columns": self.columns, "task_type": self.task_type}


@dataclass
class Outcome:
    """What a job hands back: new versions, its report, and (validation) the evidence to record."""

    report: dict[str, Any]
    message: str
    outputs: list[Output] = field(default_factory=list)
    datasets: list[DatasetOutput] = field(default_factory=list)  # recorded and linked to the outputs
    validated: tuple[int, int] | None = None  # (version id, base model id) the report validates
    result_version_id: int | None = None


class JobHost(Protocol):
    def load(self, spec: AnySpec) -> JobInputs: ...

    def folder(self, row: m.AdapterVersion, ref: str) -> Path:
        """The local folder of an input version, its weights checked against the catalog's sha256."""

    def data_file(self, data: DataSpec) -> Path: ...

    def commit(self, ctx: JobContext, spec: AnySpec, outcome: Outcome) -> list[tuple[int, str]]: ...


def row_columns(row: Any) -> dict[str, Any]:
    """A row's column values as JSON-friendly data."""
    values = {}
    for attr in inspect(type(row)).column_attrs:
        value = getattr(row, attr.key)
        values[attr.key] = value.isoformat() if isinstance(value, datetime) else value
    return values


def detached(model: type[Any], columns: dict[str, Any]) -> Any:
    """A transient row of ``model`` with these column values (read-only use: never added to a session)."""
    known = {attr.key for attr in inspect(model).column_attrs}
    return model(**{k: v for k, v in columns.items() if k in known and not k.endswith("_at")})


class LocalHost:
    """Inputs and outputs through the catalog database and the shared artifact store of ``svc``."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def load(self, spec: AnySpec) -> JobInputs:
        return load_inputs(self.svc, spec)

    def folder(self, row: m.AdapterVersion, ref: str) -> Path:
        folder = self.svc.store.path(row.storage_path)
        actual = sha256_file(weights_path(folder))
        if actual != row.weights_sha256:
            raise InputChanged(f"input {ref} changed on disk: its weights hash to {actual[:12]}, the catalog "
                               f"recorded {row.weights_sha256[:12]}; refusing to use it")
        return folder

    def data_file(self, data: DataSpec) -> Path:
        if sha256_file(Path(data.path)) != data.sha256:
            raise InputChanged(f"data file {data.path} changed since the job was submitted")
        return Path(data.path)

    def commit(self, ctx: JobContext, spec: AnySpec, outcome: Outcome) -> list[tuple[int, str]]:
        return commit_outcome(self.svc, ctx, spec, outcome)


def load_inputs(svc: Service, spec: AnySpec) -> JobInputs:
    """Read what ``spec`` needs from the catalog (refusing inputs deleted or changed since submission)."""
    inputs = JobInputs()
    with svc.sessions() as s:
        if isinstance(spec, (MergeSpec, TrainSpec)):
            for src in spec.sources:
                row = s.get(m.AdapterVersion, src.version_id)
                if row is None:
                    raise InputChanged(f"input {src.ref} was deleted from the catalog")
                if row.weights_sha256 != src.weights_sha256:
                    raise InputChanged(f"input {src.ref} no longer holds the weights it had at submission")
                inputs.versions[row.id] = row
                inputs.refs[row.id] = src.ref
            rows = [inputs.versions[src.version_id] for src in spec.sources]
            if isinstance(spec, MergeSpec):
                # the metadata the static check ran on before the job was queued (base identity from the catalog)
                inputs.manifests = [catalog.manifest_of(s, row) for row in rows]
                inputs.base = s.get(m.BaseModelRecord, rows[0].base_model_id) if rows[0].base_model_id else None
            else:
                inputs.base = s.get(m.BaseModelRecord, spec.base_model_id)
                if inputs.base is None:
                    raise InputChanged("the base model of this job was deleted from the catalog")
        elif isinstance(spec, EvalSpec):
            row = s.get(m.AdapterVersion, spec.version_id)
            if row is None or row.purged_at is not None:
                raise InputChanged(f"version {spec.ref} no longer exists")
            inputs.versions[row.id] = row
            inputs.refs[row.id] = spec.ref
            inputs.base = s.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
        elif isinstance(spec, ValidateSpec):
            row = s.get(m.AdapterVersion, spec.version_id)
            if row is None:
                raise RegistryError(f"version {spec.ref} no longer exists")
            inputs.versions[row.id] = row
            inputs.refs[row.id] = spec.ref
            inputs.base = s.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
            if inputs.base is None:
                raise RegistryError(f"{spec.ref} has no base model recorded")
            inputs.parents = catalog.merge_parents(s, row.id)
            for pid, _w in inputs.parents:
                parent = s.get(m.AdapterVersion, pid)
                if parent is not None and parent.purged_at is None:  # a purged parent's files may be gone (gc)
                    inputs.versions[pid] = parent
                    inputs.refs[pid] = catalog.exact_ref(s, parent)
            inputs.edge_params = s.scalars(
                select(m.LineageEdge.params).where(m.LineageEdge.child_id == row.id, m.LineageEdge.relation == "merge")
            ).first() or {}
        for row in [*inputs.versions.values(), inputs.base]:
            if row is not None:
                s.expunge(row)
    return inputs


def commit_outcome(svc: Service, ctx: JobContext, spec: AnySpec, outcome: Outcome) -> list[tuple[int, str]]:
    """Store the outputs' files, then in one transaction register them (with lineage), record validation evidence
    and mark the job succeeded; then submit the spec's follow-up jobs. Returns the new versions' (id, ref)."""
    stored = []
    for output in outcome.outputs:
        manifest = inspect_adapter(output.folder)  # the same checks as any registration: layout, NaN/Inf, shapes
        storage = svc.store.put_adapter(weights_path(output.folder), manifest.weights_sha256, manifest.config)
        stored.append((output, manifest, storage))
    for data in outcome.datasets:  # files first, like the weights: the transaction only records them
        svc.store.put_data(data.file, data.sha256, data.file.suffix)
    results: list[tuple[int, str]] = []
    with svc.transaction() as s:
        for output, manifest, storage in stored:
            base = s.get(m.BaseModelRecord, output.base_model_id) if output.base_model_id else None
            row, _ = catalog.register_version(
                s, output.name, manifest, storage, base, tags=getattr(spec, "tags", None),
                source_uri=f"job:{ctx.job_id}", description=output.description, parents=output.parents,
                created_by=spec.submitted_by)
            results.append((row.id, f"{output.name}:{row.version}"))
        _record_datasets(s, ctx.job_id, spec, outcome.datasets, [vid for vid, _ in results])
        if outcome.validated is not None:
            version_id, base_id = outcome.validated
            s.execute(delete(m.Compatibility).where(
                m.Compatibility.version_id == version_id, m.Compatibility.base_model_id == base_id,
                m.Compatibility.level == "validated"))
            s.add(m.Compatibility(version_id=version_id, base_model_id=base_id, level="validated",
                                  evidence=outcome.report))
        record_job_metrics(s, ctx.job_id, spec, outcome.report, [vid for vid, _ in results])
        if isinstance(spec, ValidateSpec) and "retention" in outcome.report:
            _add_to_merge_report(s, ctx.job_id, outcome.report["retention"])
        if results:
            outcome.report.setdefault("registered", [ref for _, ref in results])
        result_id = results[0][0] if results else outcome.result_version_id
        complete(svc, ctx, s, result_version_id=result_id, report=outcome.report, progress_message=outcome.message)
    _follow_ups(svc, ctx.job_id, spec, results)
    return results


def _add_to_merge_report(s: Any, job_id: int, retention: Any) -> None:
    """Copy a merge validation's retention into the report of the merge job that queued it (one place to read it)."""
    job = s.get(m.Job, job_id)
    parent = s.get(m.Job, job.parent_job_id) if job is not None and job.parent_job_id else None
    if parent is not None and parent.kind == "merge":
        parent.report = {**(parent.report or {}), "retention": retention, "retention_job": job_id}


def _record_datasets(s: Any, job_id: int, spec: AnySpec, outputs: list[DatasetOutput], version_ids: list[int]) -> None:
    """Record each data file as a catalog dataset (same bytes, same version) and link it to the new versions."""
    actor = spec.submitted_by or "unknown"
    for data in outputs:
        checked = CheckedData(path=str(data.file), sha256=data.sha256, format=data.format, fields=None,
                              rows=data.rows, columns=list(data.columns), num_labels=None,
                              size=data.file.stat().st_size)
        row, _ = datasets_ops.record(s, checked, name=data.name, suffix=data.file.suffix, task_type=data.task_type,
                                     source_uri=f"job:{job_id}", actor=actor)
        for version_id in version_ids:
            datasets_ops.link(s, s.get(m.AdapterVersion, version_id), row, data.role, actor)


def _follow_ups(svc: Service, job_id: int, spec: AnySpec, results: list[tuple[int, str]]) -> None:
    if isinstance(spec, MergeSpec) and (spec.validate_after or spec.publish_to is not None):
        version_id, ref = results[0]
        submit(svc, ValidateSpec(version_id=version_id, ref=ref, publish_after=spec.publish_to,
                                 submitted_by=spec.submitted_by, parent_evals=spec.parent_evals),
               parent_job_id=job_id)
    elif isinstance(spec, TrainSpec) and spec.validate_after:
        for version_id, ref in results:
            submit(svc, ValidateSpec(version_id=version_id, ref=ref, submitted_by=spec.submitted_by),
                   parent_job_id=job_id)
    elif isinstance(spec, ValidateSpec) and spec.publish_after is not None:
        submit(svc, PublishSpec(version_id=spec.version_id, ref=spec.ref, target=spec.publish_after,
                                submitted_by=spec.submitted_by), parent_job_id=job_id)
