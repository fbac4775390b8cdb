"""Named base models: ``adreg base add`` gives a base a short name, with its architecture and module shapes read
once (from a local folder's ``config.json``, or from a Hub model's, downloaded alone at a pinned commit);
``adreg base show`` tells its shapes, counts and the versions that fit it.

A short name is global (every adapter registered against the same model links to the named base, and every
search resolves it), so adding one is an admin's act over HTTP (``endpoints.admin``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import distinct, func, select
from sqlalchemy.exc import IntegrityError

from registry import audit, catalog
from registry import models as m
from registry import types as t
from registry.basemodel import BaseModelDescription, describe_base
from registry.compat import EVIDENCE_LEVELS
from registry.errors import BaseModelNotFound, ConflictError, RegistryError
from registry.queries import check_page
from registry.refs import check_hub_repo, check_revision, check_slug
from registry.service import Service

_HINT = "see `adreg base list`; a short name names one base model, and a base model has one short name"


def add_base(
    svc: Service, short_name: str, *, hub: str | None = None, revision: str | None = None,
    path: str | Path | None = None,
) -> t.BaseModelInfo:
    """Name a base model ``short_name``: the Hub model ``hub`` (at ``revision``, pinned to its commit sha; only its
    ``config.json`` is downloaded) or the local model folder ``path``. Its architecture and module shapes are read
    once, from the config, on the meta device (no weights).

    The record is the one an adapter registered against that base uses (the Hub id or the absolute folder is its
    name), so the versions already registered against it are the named base's; versions of other bases whose
    modules fit it get ``shape`` compatibility in the same transaction. Adding the same short name for the same
    base again changes nothing; a short name of another base, a base that already has another short name, or a
    short name that is some base's name is refused (:class:`ConflictError`).
    """
    check_slug(short_name, "short name")
    if (hub is None) == (path is None):
        raise RegistryError("give exactly one of hub= (a Hub model id, org/name) or path= (a local model folder)")
    local: Path | None = None
    if hub is not None:
        check_hub_repo(hub)
        if revision is not None:
            check_revision(revision)
        name, pinned, description = _from_hub(hub, revision)
    else:
        if revision is not None:
            raise RegistryError("revision= pins a Hub model; a local folder has none")
        local = _model_folder(path)
        name, pinned = str(local), None
        description = describe_base(local)
    with svc.transaction() as session:
        b = m.BaseModelRecord
        taken = session.scalars(select(b).where(b.name == short_name)).first()
        if taken is not None:
            raise ConflictError(f"{short_name!r} is already the name of a base model in the catalog; a short name "
                                "must not be another base's name", hint="choose another short name")
        if hub is not None and (named := session.scalars(select(b).where(b.short_name == hub)).first()):
            raise ConflictError(f"{hub!r} is the short name of {_label(named)} here, so it cannot also name the Hub "
                                "model", hint=_HINT)
        same = catalog.named_base_for(session, name, pinned, description, local)
        if same is not None and same.short_name != short_name:
            raise ConflictError(f"{name} is the same model as base {same.short_name!r} ({same.name})",
                                hint=f"use the short name {same.short_name!r}; {_HINT}")
        row = same or catalog.upsert_base(session, name, pinned, description, local)
        holder = session.scalars(select(b).where(b.short_name == short_name)).first()
        if holder is not None and holder.id != row.id:
            raise ConflictError(f"the short name {short_name!r} already names {_label(holder)}", hint=_HINT)
        if row.short_name == short_name:
            return info_of(session, row)  # added before: nothing changes
        if row.short_name is not None:
            raise ConflictError(f"{_label(row)} is already named {row.short_name!r}", hint=_HINT)
        row.short_name = short_name
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:  # another admin took the short name between our check and this write
            raise ConflictError(f"the short name {short_name!r} was just given to another base", hint=_HINT) \
                from None
        evidence = catalog.record_base_evidence(session, row)
        info = info_of(session, row)
        audit.record(session, svc.actor, "base.add", ref=short_name, after={
            "name": row.name, "revision": row.revision, "local_path": row.local_path,
            "architecture": row.architecture, "config_hash": row.config_hash, "modules": info.module_count,
            "compatibility_recorded": evidence})
        return info


def _model_folder(path: str | Path) -> Path:
    """``path`` as an absolute model folder (one with a ``config.json``), or :class:`BaseModelNotFound`."""
    try:
        folder = Path(path).expanduser().resolve()
        found = (folder / "config.json").is_file()
    except (OSError, RuntimeError, ValueError):
        folder, found = Path(str(path)), False
    if not found:
        raise BaseModelNotFound(f"{str(folder)[:300]} is not a model folder (no config.json in it)",
                                hint="give the folder that holds the base model's config.json")
    return folder


def _from_hub(repo: str, revision: str | None) -> tuple[str, str, BaseModelDescription]:
    from registry.hub_client import HubNotFound, fetch_base_config

    try:
        folder, sha = fetch_base_config(repo, revision)
    except HubNotFound as exc:
        raise BaseModelNotFound(str(exc), hint="check the model id and revision (a private model needs HF_TOKEN)") \
            from None
    return repo, sha, describe_base(folder)


def _label(row: m.BaseModelRecord) -> str:
    return row.name + (f"@{row.revision}" if row.revision else "")


def info_of(session, row: m.BaseModelRecord) -> t.BaseModelInfo:  # type: ignore[no-untyped-def]
    """The record as :class:`~registry.types.BaseModelInfo`, counting the versions registered against it (deleted
    ones left out)."""
    v = m.AdapterVersion
    count = session.scalar(select(func.count()).select_from(v).where(v.base_model_id == row.id,
                                                                    v.status != "deleted"))
    return t.BaseModelInfo(
        id=row.id, name=row.name, revision=row.revision, local_path=row.local_path, architecture=row.architecture,
        model_type=row.model_type, config_hash=row.config_hash, vocab_size=row.vocab_size,
        module_count=len(row.module_shapes or {}), adapter_versions=int(count or 0), short_name=row.short_name,
    )


def base(svc: Service, name: str, *, limit: int = 100) -> t.BaseModelDetail:
    """One base model (by short name, name, ``name@revision`` or folder): its module shapes, the versions registered
    against it, how many versions fit it by level of evidence (exact, shape, validated) and the newest ``limit`` of
    them with their levels."""
    check_page(limit)
    if not isinstance(name, str) or not name.strip() or len(name) > 1024 or any(ord(ch) < 32 for ch in name):
        raise BaseModelNotFound(f"no base model {str(name)[:80]!r} in the catalog", hint="see `adreg base list`")
    v, c, a, b = m.AdapterVersion, m.Compatibility, m.Adapter, m.BaseModelRecord
    with svc.transaction() as session:
        row = catalog.find_base(session, name)
        info = info_of(session, row)
        def evidence(*columns):  # type: ignore[no-untyped-def]
            """``columns`` over this base's evidence rows at the levels that count, of versions not deleted."""
            return (select(*columns).select_from(c).join(v, v.id == c.version_id)
                    .where(c.base_model_id == row.id, c.level.in_(EVIDENCE_LEVELS), v.status != "deleted"))

        by_level = dict.fromkeys(EVIDENCE_LEVELS, 0)
        # (version, base, level) is unique: a level's row count is its version count
        for level, count in session.execute(evidence(c.level, func.count()).group_by(c.level)):
            by_level[level] = int(count)
        total = int(session.scalar(evidence(func.count(distinct(c.version_id)))) or 0)
        page = session.execute(
            select(v.id, a.name, v.version, v.status, b.name.label("base_name"))
            .join(a, a.id == v.adapter_id).outerjoin(b, b.id == v.base_model_id)
            .where(v.id.in_(evidence(c.version_id)))
            .order_by(v.id.desc()).limit(limit)
        ).all()
        levels: dict[int, list[str]] = {}
        for version_id, level in session.execute(
            select(c.version_id, c.level).where(c.base_model_id == row.id, c.level.in_(EVIDENCE_LEVELS),
                                                c.version_id.in_([p.id for p in page]))
        ):
            levels.setdefault(version_id, []).append(level)
        return t.BaseModelDetail(
            info=info, module_shapes=dict(row.module_shapes or {}), versions=info.adapter_versions,
            compatible_by_level=by_level, compatible_total=total,
            compatible=[t.CompatibleVersion(ref=f"{p.name}:{p.version}",
                                            levels=sorted(levels.get(p.id, []), key=EVIDENCE_LEVELS.index),
                                            registered_base=p.base_name, status=p.status) for p in page],
        )
