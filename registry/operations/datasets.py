"""Datasets in the catalog: named, versioned data files pinned by sha256, and their links to versions.

A dataset is read and checked by the one reader training uses (:func:`registry.trainset.read_checked`: JSON Lines,
JSON, text, CSV or parquet through ``datasets``, bounded, with the task type's column checks when one is given),
stored content-addressed in the artifact store where uploads of training data go (``data/<sha256><suffix>``), and
recorded as ``name:N``: the same bytes under the same name are the same version (registering again returns it),
other bytes under a taken name are the next version. A version links to datasets with a role: ``train`` and
``heldout`` (a training job's splits, recorded by the job) or ``eval`` (``link_dataset``, ``--eval-data``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import audit, catalog, jobs, queries
from registry import models as m
from registry import types as t
from registry.errors import ConflictError, DatasetNotFound, InvalidReference, RegistryError
from registry.refs import check_slug, parse_ref
from registry.service import Service
from registry.store import ArtifactStore
from registry.trainset import (
    CheckedData,
    InvalidDataset,
    check_trainable_task,
    fields_of,
    label_column,
    load_rows,
    read_checked,
)

ROLES = ("train", "heldout", "eval")


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """``name`` (the latest version) or ``name:N``."""
    if not isinstance(ref, str):
        raise InvalidReference(f"{ref!r} is not a dataset reference (name or name:N)")
    name, colon, number = ref.partition(":")
    check_slug(name, "dataset name")
    if not colon:
        return name, None
    if not number.isascii() or not number.isdigit() or len(number) > 9 or int(number) < 1:
        raise InvalidReference(f"{ref[:80]!r} is not a dataset reference (name or name:N, N a version number)")
    return name, int(number)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise RegistryError(f"dataset role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _info(row: m.Dataset, store: ArtifactStore, versions: list[str] | None = None,
          linked: list[dict[str, str]] | None = None) -> t.DatasetInfo:
    return t.DatasetInfo(
        name=row.name, version=row.version, ref=f"{row.name}:{row.version}", sha256=row.sha256, format=row.format,
        rows=row.rows, columns=list(row.columns or []), task_type=row.task_type, size_bytes=row.size_bytes,
        path=str(store.data_file(row.sha256, row.suffix)), source_uri=row.source_uri, created_at=row.created_at,
        created_by=row.created_by, versions=versions or [], linked=linked or [])


def find(session: Session, ref: str) -> m.Dataset:
    """The dataset version ``ref`` names (``name``: its latest version), or :class:`DatasetNotFound`."""
    name, number = parse_dataset_ref(ref)
    query = select(m.Dataset).where(m.Dataset.name == name)
    query = query.where(m.Dataset.version == number) if number else query.order_by(m.Dataset.version.desc())
    row = session.scalars(query.limit(1)).first()
    if row is None:
        raise DatasetNotFound(f"no dataset {ref!r}" if number is None or not _exists(session, name)
                              else f"dataset {name!r} has no version {number}",
                              hint="`adreg data list` shows the catalog's datasets; `adreg data register FILE "
                                   "--name NAME` adds one")
    return row


def _exists(session: Session, name: str) -> bool:
    return session.scalar(select(func.count()).select_from(m.Dataset).where(m.Dataset.name == name)) > 0


def record(session: Session, data: CheckedData, *, name: str, suffix: str, task_type: str | None,
           source_uri: str | None, actor: str) -> tuple[m.Dataset, bool]:
    """The dataset version holding ``data`` under ``name`` in ``session``: the existing one for the same bytes, or
    a new ``name:N+1`` (audited ``dataset.register``). Returns it and whether it is new. The file must already be
    in the store (``ArtifactStore.put_data``)."""
    check_slug(name, "dataset name")
    existing = session.scalars(select(m.Dataset).where(m.Dataset.name == name, m.Dataset.sha256 == data.sha256)
                               ).first()
    if existing is not None:
        return existing, False
    number = (session.scalar(select(func.max(m.Dataset.version)).where(m.Dataset.name == name)) or 0) + 1
    row = m.Dataset(name=name, version=number, sha256=data.sha256, format=data.format, suffix=suffix,
                    rows=data.rows, columns=list(data.columns), task_type=task_type, size_bytes=data.size,
                    source_uri=source_uri, created_by=actor)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # another registration of this name won the race
        existing = session.scalars(select(m.Dataset).where(m.Dataset.name == name,
                                                           m.Dataset.sha256 == data.sha256)).first()
        if existing is not None:
            return existing, False
        raise ConflictError(f"dataset {name!r} got a new version meanwhile; register again") from None
    audit.record(session, actor, "dataset.register", ref=f"{name}:{number}",
                 after={"dataset": f"{name}:{number}", "sha256": data.sha256, "rows": data.rows,
                        "format": data.format, "task_type": task_type})
    return row, True


def link(session: Session, version: m.AdapterVersion, dataset: m.Dataset, role: str, actor: str) -> bool:
    """Link ``dataset`` to ``version`` as ``role`` (audited ``dataset.link``); False when already linked."""
    check_role(role)
    if session.get(m.VersionDataset, (version.id, dataset.id, role)) is not None:
        return False
    session.add(m.VersionDataset(version_id=version.id, dataset_id=dataset.id, role=role, linked_by=actor))
    session.flush()
    exact = catalog.exact_ref(session, version)
    audit.record(session, actor, "dataset.link", adapter_name=exact.rpartition(":")[0], ref=exact,
                 after={"dataset": f"{dataset.name}:{dataset.version}", "role": role, "sha256": dataset.sha256})
    return True


def linked(session: Session, version_id: int, role: str) -> list[m.Dataset]:
    """The datasets linked to a version as ``role``, by name then version."""
    return list(session.scalars(
        select(m.Dataset).join(m.VersionDataset, m.VersionDataset.dataset_id == m.Dataset.id)
        .where(m.VersionDataset.version_id == version_id, m.VersionDataset.role == role)
        .order_by(m.Dataset.name, m.Dataset.version)))


def held_out(session: Session, version_id: int) -> list[m.Dataset]:
    """What a version is judged on: its ``eval`` datasets, else its ``heldout`` split (a training job's)."""
    return linked(session, version_id, "eval") or linked(session, version_id, "heldout")


def eval_specs(store: ArtifactStore, rows: list[m.Dataset], task_type: str = "CAUSAL_LM") -> list[jobs.EvalData]:
    """Catalog datasets as job inputs pinned by id and sha256 (their columns checked for ``task_type``)."""
    return [jobs.EvalData(dataset_id=d.id, ref=f"{d.name}:{d.version}", path=str(store.data_file(d.sha256, d.suffix)),
                          sha256=d.sha256, format=d.format, fields=fields_of(list(d.columns or []), task_type),
                          rows=d.rows) for d in rows]


def check_class_labels(data: list[jobs.EvalData], task_type: str, classes: int | None,
                       owner: str) -> list[jobs.EvalData]:
    """Classification eval data (``SEQ_CLS``, ``TOKEN_CLS``) read and checked row by row as training data is (every
    label a class id, one per word), every class id below ``classes`` (the size of the head that will score them,
    ``owner`` in the message; None: unknown here, the job checks). Returns the specs with their ``num_labels``."""
    out = []
    for spec in data:
        try:
            checked = read_checked(spec.path, task_type)
        except InvalidDataset as exc:
            raise InvalidDataset(f"dataset {spec.ref}: {exc}") from None
        if classes is not None and checked.num_labels is not None and checked.num_labels > classes:
            where, label = _first_label_from(load_rows(spec.path, spec.format), classes)
            raise InvalidDataset(f"dataset {spec.ref} {where} has label {label}, but {owner} has {classes} "
                                 f"class(es): 0..{classes - 1}")
        out.append(spec.model_copy(update={"num_labels": checked.num_labels}))
    return out


def _first_label_from(rows: object, classes: int) -> tuple[str, int]:
    """Where the first class id at or above ``classes`` is in already checked classification rows, and that id."""
    column = label_column(list(rows.column_names))  # type: ignore[attr-defined]
    for i, row in enumerate(rows):  # type: ignore[attr-defined]
        labels = row[column] if isinstance(row[column], list) else [row[column]]
        for label in labels:
            if label >= classes:
                return f"row {i + 1}", int(label)
    raise AssertionError("no label out of range")  # the caller saw one


def parent_evals(session: Session, store: ArtifactStore, parents: list[tuple[int, str]]) -> list[jobs.ParentEval]:
    """Each parent ``(version_id, ref)`` with held-out data that fits its task (causal LM, sequence or token
    classification), with that data pinned (retention, learned weights); other parents are left out."""
    from registry.retention import RETAINED_TASKS

    out = []
    for version_id, ref in parents:
        version = session.get(m.AdapterVersion, version_id)
        task = (version.task_type or "CAUSAL_LM").upper() if version is not None else None
        rows = held_out(session, version_id) if task in RETAINED_TASKS else []
        try:
            specs = eval_specs(store, rows[:16], task) if rows else []
        except InvalidDataset:  # its data's columns do not fit its task: nothing to measure it on
            specs = []
        if specs:
            out.append(jobs.ParentEval(version_id=version_id, ref=ref, datasets=specs))
    return out


def register_dataset(svc: Service, path: str, *, name: str, task_type: str | None = None) -> t.DatasetInfo:
    """Register the data file ``path`` (JSON Lines, JSON, text, CSV or parquet) as dataset ``name``: read with
    ``datasets`` after a bounded scan, its columns checked for ``task_type`` when given (CAUSAL_LM, SEQ_CLS,
    TOKEN_CLS, SEQ_2_SEQ_LM), pinned by sha256 and stored content-addressed. The same bytes under the same name
    return the existing version; other bytes under a taken name are its next version (``name:2``)."""
    check_slug(name, "dataset name")
    task = check_trainable_task(task_type, "dataset") if task_type is not None else None
    data = read_checked(path, task)
    file = Path(data.path)
    suffix = file.suffix.lower()
    stored = svc.store.put_data(file, data.sha256, suffix)
    source_uri = f"upload:{data.sha256}{suffix}" if file == stored.resolve() else str(file)
    with svc.transaction() as session:
        row, _new = record(session, data, name=name, suffix=suffix, task_type=task, source_uri=source_uri,
                           actor=svc.actor)
        return _info(row, svc.store)


def datasets(svc: Service, name: str | None = None) -> list[t.DatasetInfo]:
    """Every dataset version (of ``name`` only, when given), by name then version."""
    query = select(m.Dataset).order_by(m.Dataset.name, m.Dataset.version)
    if name is not None:
        query = query.where(m.Dataset.name == check_slug(name, "dataset name"))
    with svc.sessions() as session:
        return [_info(row, svc.store) for row in session.scalars(query.limit(10_000))]


def dataset(svc: Service, ref: str) -> t.DatasetInfo:
    """One dataset version (``name``: the latest; ``name:N``), with every version of its name and the adapter
    versions it is linked to."""
    with svc.sessions() as session:
        row = find(session, ref)
        versions = [f"{row.name}:{v}" for v in session.scalars(
            select(m.Dataset.version).where(m.Dataset.name == row.name).order_by(m.Dataset.version))]
        linked = [{"ref": f"{aname}:{vnum}", "role": role} for aname, vnum, role in session.execute(
            select(m.Adapter.name, m.AdapterVersion.version, m.VersionDataset.role)
            .join(m.AdapterVersion, m.AdapterVersion.id == m.VersionDataset.version_id)
            .join(m.Adapter, m.Adapter.id == m.AdapterVersion.adapter_id)
            .where(m.VersionDataset.dataset_id == row.id)
            .order_by(m.Adapter.name, m.AdapterVersion.version, m.VersionDataset.role))]
        return _info(row, svc.store, versions, linked)


def link_dataset(svc: Service, ref: str, dataset: str, *, role: str = "eval") -> t.AdapterVersion:
    """Link dataset ``dataset`` (``name`` or ``name:N``) to version ``ref`` as ``role`` (``eval`` by default;
    ``train`` or ``heldout``); linking again is a no-op. Returns the version with its datasets."""
    check_role(role)
    with svc.transaction() as session:
        version = catalog.resolve(session, parse_ref(ref))
        link(session, version, find(session, dataset), role, svc.actor)
        return queries.describe(session, [version], svc.store.root)[0]
