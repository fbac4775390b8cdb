"""Writes to the catalog and reference resolution. Every function takes an open Session in a transaction."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import audit
from registry import models as m
from registry.base_identity import hub_snapshot, weights_fingerprint
from registry.basemodel import BaseModelDescription
from registry.compat import EVIDENCE_LEVELS, module_mismatches, shape_mismatches, summarise
from registry.errors import (
    AdapterNotFound,
    BaseModelNotFound,
    ConflictError,
    IncompatibleBaseModel,
)
from registry.manifest import AdapterManifest, ModuleTensors, check_text
from registry.refs import Ref, check_slug, check_tag
from registry.store import config_sha256


@dataclass(frozen=True)
class ParentSpec:
    """One lineage edge to write for a new version."""

    parent_id: int
    relation: str
    weight: float | None = None
    position: int = 0
    params: dict[str, Any] = field(default_factory=dict)


def _insert_ignore(session: Session, model: type[m.Base], values: dict[str, Any], keys: list[str]) -> None:
    """INSERT that does nothing if a row with the same unique ``keys`` exists (race-free get-or-create)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=keys))


def upsert_base(
    session: Session,
    name: str,
    revision: str | None,
    description: BaseModelDescription | None = None,
    local_path: Path | None = None,
) -> m.BaseModelRecord:
    """Get or create the base-model record ``name@revision``, filling in what ``description`` knows.

    A description whose config hash differs from the one on record is a conflict: the same name and
    revision cannot be two different models.
    """
    check_text(name, "base model name")
    check_text(revision, "revision")
    _insert_ignore(
        session, m.BaseModelRecord,
        {"name": name, "revision": revision, "revision_key": revision or "", "module_shapes": {},
         "trust_remote_code": False, "created_at": m.utcnow()},
        ["name", "revision_key"],
    )
    base = session.scalars(
        select(m.BaseModelRecord).where(
            m.BaseModelRecord.name == name, m.BaseModelRecord.revision_key == (revision or "")
        )
    ).one()
    if description is not None:
        if base.config_hash and base.config_hash != description.config_hash:
            raise ConflictError(
                f"base model {name!r} (revision {revision or 'unpinned'}) is already recorded with a "
                f"different config (hash {base.config_hash[:12]} vs {description.config_hash[:12]})",
                hint="register the adapter against a distinct --base name or a pinned revision",
            )
        base.architecture = description.architecture
        base.model_type = description.model_type
        base.config_hash = description.config_hash
        base.vocab_size = description.vocab_size
        base.module_shapes = description.module_shapes
        if local_path is not None:
            base.local_path = str(local_path)
    return base


def find_base(session: Session, name_or_path: str) -> m.BaseModelRecord:
    """A base model by short name (``adreg base add``), by name (``name`` or ``name@revision``) or by the local
    folder it was read from. A short name wins over a folder of the same name in the working directory (write
    ``./name`` for the folder)."""
    b = m.BaseModelRecord
    candidates = [name_or_path]
    try:
        if Path(name_or_path).expanduser().exists():
            candidates.append(str(Path(name_or_path).expanduser().resolve()))
    except (OSError, ValueError, RuntimeError):  # too long for a path, a NUL byte, ~user unknown: not a folder
        pass
    rows = session.scalars(
        select(b).where((b.short_name == name_or_path) | b.name.in_(candidates) | b.local_path.in_(candidates))
        .order_by(case((b.short_name == name_or_path, 0), else_=1), b.id)
    ).all()
    if not rows and "@" in name_or_path:
        name, _, rev = name_or_path.rpartition("@")
        rows = session.scalars(select(b).where(b.name == name, b.revision == rev)).all()
    if not rows:
        raise BaseModelNotFound(f"no base model {name_or_path!r} in the catalog", hint="see `adreg base list`")
    return rows[0]


def named_base_for(
    session: Session, name: str, revision: str | None, description: BaseModelDescription | None = None,
    local_path: Path | None = None,
) -> m.BaseModelRecord | None:
    """The named base (one with a short name) that the base identity ``name@revision`` is, when it is one:

    - ``name`` is a short name;
    - ``name`` is a Hub id given without a revision, and exactly one named base is that Hub id (it pins what the
      id means in this catalog, even where earlier versions were recorded against the unpinned id); with a
      revision, only the record of that revision is that base;
    - ``local_path`` is a Hugging Face cache snapshot of a named Hub base's repository at its revision;
    - ``local_path`` is a folder with the same config hash and architecture as a named base read from a folder,
      and the same weights (:func:`~registry.base_identity.weights_fingerprint`): a copy of it elsewhere. The
      config alone does not tell a model from its fine-tune, and the recorded base's weights are the ones that
      validation and ``Registry.load`` use.

    A folder already in the catalog keeps its own record (None here). No version ever changes base.
    """
    b = m.BaseModelRecord
    by_short = session.scalars(select(b).where(b.short_name == name)).first()
    if by_short is not None:
        return by_short
    named = select(b).where(b.short_name.is_not(None))
    if local_path is None and revision is None:  # an unpinned Hub id means the one its named base pins
        rows = session.scalars(named.where(b.name == name)).all()
        if len(rows) == 1:
            return rows[0]
    known = select(b.id).where(b.name == name, b.revision_key == (revision or ""))
    if local_path is None or session.scalar(known) is not None:
        return None
    snapshot = hub_snapshot(local_path)
    if snapshot is not None:
        row = session.scalars(named.where(b.name == snapshot[0], b.revision == snapshot[1])).first()
        if row is not None:
            return row
    if description is None:
        return None
    same_config = session.scalars(named.where(
        b.config_hash == description.config_hash, b.architecture == description.architecture,
        b.local_path.is_not(None),
    ).order_by(b.id)).all()
    if not same_config:
        return None
    mine = weights_fingerprint(local_path)
    if mine is None:
        return None
    return next((row for row in same_config if weights_fingerprint(Path(str(row.local_path))) == mine), None)


def identify_base(
    session: Session, name: str, revision: str | None, description: BaseModelDescription | None = None,
    local_path: Path | None = None,
) -> m.BaseModelRecord:
    """The record a registration's base identity belongs to: the named base it is (:func:`named_base_for`), else
    the record ``name@revision`` (:func:`upsert_base`). A config or revision that contradicts the named base is a
    conflict."""
    named = named_base_for(session, name, revision, description, local_path)
    if named is None:
        return upsert_base(session, name, revision, description, local_path)
    label = f"base model {named.short_name!r} ({named.name}" + (f"@{named.revision}" if named.revision else "") + ")"
    if revision is not None and named.revision is not None and revision != named.revision:
        raise ConflictError(f"{name!r} at revision {revision} is not {label}",
                            hint="leave the revision out, or name the base by its Hub id and revision")
    if description is not None and named.config_hash and named.config_hash != description.config_hash:
        raise ConflictError(f"the config read from {local_path} differs from {label}'s (hash "
                            f"{description.config_hash[:12]} vs {named.config_hash[:12]})",
                            hint="register against the base's own folder, or name another base")
    return named


def _adapter(session: Session, name: str, *, create: bool) -> m.Adapter | None:
    if create:
        _insert_ignore(
            session, m.Adapter, {"name": name, "latest_version": 0, "created_at": m.utcnow()}, ["name"]
        )
    return session.scalars(select(m.Adapter).where(m.Adapter.name == name)).one_or_none()


def adapter_exists(session: Session, name: str) -> bool:
    return _adapter(session, name, create=False) is not None


def register_version(
    session: Session,
    name: str,
    manifest: AdapterManifest,
    storage_path: str,
    base: m.BaseModelRecord | None,
    *,
    tags: dict[str, str] | None = None,
    source_uri: str | None = None,
    description: str | None = None,
    parents: list[ParentSpec] | None = None,
    created_by: str | None = None,
) -> tuple[m.AdapterVersion, bool]:
    """Create version N+1 of ``name`` (or return the version that already holds these weights and this config).

    A version is identified by its weights' sha256 *and* its config's: the same bytes registered with another
    ``adapter_config.json`` (another alpha, other targets) are a new version, never the old one.
    Returns ``(row, created)``. Version numbers come from one atomic ``UPDATE ... RETURNING`` on the
    adapter row, so concurrent registrations get distinct consecutive numbers.
    """
    check_slug(name)
    for key, value in (tags or {}).items():
        check_tag(key, value)
    check_text(description, "description", multiline=True)
    check_fits(manifest, base)
    # A name that is no adapter's may be another's former name (``adreg rename``): registering under it reuses it,
    # so the old name now means the new adapter (a current name is never a former one: this deletes nothing then).
    session.execute(delete(m.FormerName).where(m.FormerName.name == name))
    adapter = _adapter(session, name, create=True)
    assert adapter is not None
    config_sha = config_sha256(manifest.config)
    existing = _version_by_content(session, adapter.id, manifest.weights_sha256, config_sha)
    if existing is not None:
        return _restored(session, existing, created_by), False

    number = session.execute(
        update(m.Adapter.__table__)
        .where(m.Adapter.__table__.c.id == adapter.id)
        .values(latest_version=m.Adapter.__table__.c.latest_version + 1)
        .returning(m.Adapter.__table__.c.latest_version)
    ).scalar_one()
    row = m.AdapterVersion(
        adapter_id=adapter.id,
        version=number,
        created_by=created_by,
        base_model_id=base.id if base is not None else None,
        status="ready",
        peft_type=manifest.peft_type,
        task_type=manifest.task_type,
        r=manifest.r,
        lora_alpha=manifest.lora_alpha,
        use_rslora=manifest.use_rslora,
        use_dora=manifest.use_dora,
        fan_in_fan_out=manifest.fan_in_fan_out,
        rank_pattern=manifest.rank_pattern,
        alpha_pattern=manifest.alpha_pattern,
        target_modules=manifest.target_modules,
        modules_to_save=manifest.modules_to_save,
        peft_version=manifest.peft_version,
        adapter_config=manifest.config,
        weights_sha256=manifest.weights_sha256,
        config_sha256=config_sha,
        size_bytes=manifest.size_bytes,
        param_count=manifest.param_count,
        dtypes=manifest.dtypes,
        module_tensors={k: v.model_dump() for k, v in manifest.modules.items()},
        module_count=len(manifest.modules),
        extra_tensors=dict(manifest.extra_tensors),
        tag_doc=dict(tags or {}),
        storage_path=storage_path,
        source_uri=source_uri,
        description=description,
        created_at=m.utcnow(),
    )
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Another process registered the same weights under this name between our check and insert.
        existing = _version_by_content(session, adapter.id, manifest.weights_sha256, config_sha)
        if existing is None:
            raise
        return _restored(session, existing, created_by), False
    session.add_all(m.TargetModule(version_id=row.id, module=t) for t in manifest.target_modules)
    session.add_all(m.Tag(version_id=row.id, key=k, value=v) for k, v in (tags or {}).items())
    session.add_all(
        m.LineageEdge(child_id=row.id, parent_id=p.parent_id, relation=p.relation, weight=p.weight,
                      position=p.position, params=p.params)
        for p in parents or []
    )
    if base is not None:
        _record_compatibility(session, row, manifest, base)
    session.flush()
    refresh_search_text(session, [row.id])
    return row, True


def _restored(session: Session, row: m.AdapterVersion, actor: str | None) -> m.AdapterVersion:
    """``row``, brought back to ``ready`` (and audited) when it was deleted: registering the weights and config of a
    deleted version again restores that version (same number, same lineage) rather than hiding the registration."""
    if row.status != "deleted":
        return row
    name = session.get(m.Adapter, row.adapter_id).name  # type: ignore[union-attr]
    before = {"status": row.status, "reason": row.status_reason, "by": row.status_by,
              "purged": row.purged_at is not None}
    row.status, row.status_reason, row.status_by, row.status_at, row.purged_at = "ready", None, actor, m.utcnow(), None
    session.flush()
    audit.record(session, actor or "unknown", "version.restore", adapter_name=name, ref=f"{name}:{row.version}",
                 before=before, after={"status": "ready"})
    return row


def refresh_search_text(session: Session, version_ids: Iterable[int]) -> None:
    """Rewrite what full-text search reads for these versions: the adapter's name and description, the version's
    description and its tags. Call it after any of them changes. On SQLite the FTS5 row (rowid = version id) is
    written too; PostgreSQL derives its ``tsvector`` from ``search_text`` itself (a generated column)."""
    from registry import fulltext

    ids = sorted(set(version_ids))
    if not ids:
        return
    session.flush()
    v, a = m.AdapterVersion, m.Adapter
    tags: dict[int, list[str]] = {}
    for vid, key, value in session.execute(
        select(m.Tag.version_id, m.Tag.key, m.Tag.value).where(m.Tag.version_id.in_(ids)).order_by(m.Tag.key)
    ):
        tags.setdefault(vid, []).append(f"{key} {value}")
    texts = {  # words only (fulltext.body), so that PostgreSQL's parser and FTS5 see the same words
        vid: fulltext.body(" ".join(part for part in (name, adapter_text, version_text, *tags.get(vid, [])) if part))
        for vid, name, adapter_text, version_text in session.execute(
            select(v.id, a.name, a.description, v.description).join(a, a.id == v.adapter_id).where(v.id.in_(ids))
        )
    }
    for vid, text in texts.items():
        session.execute(update(v.__table__).where(v.__table__.c.id == vid).values(search_text=text))
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sql_text("DELETE FROM version_fts WHERE rowid IN (SELECT value FROM json_each(:ids))"),
                        {"ids": json.dumps(ids)})
        session.execute(sql_text("INSERT INTO version_fts(rowid, body) VALUES (:id, :body)"),
                        [{"id": vid, "body": text} for vid, text in texts.items()])


def check_fits(manifest: AdapterManifest, base: m.BaseModelRecord | None) -> None:
    """Refuse an adapter whose modules do not fit the recorded shapes of ``base`` (when it has any)."""
    if base is not None and base.module_shapes:
        problems = shape_mismatches(manifest, base.module_shapes)
        if problems:
            raise IncompatibleBaseModel(
                f"the adapter does not fit base model {base.name!r}: {len(problems)} module(s) differ:\n"
                + summarise(problems)
            )


def _version_by_content(
    session: Session, adapter_id: int, weights_sha: str, config_sha: str
) -> m.AdapterVersion | None:
    v = m.AdapterVersion
    return session.scalars(
        select(v).where(v.adapter_id == adapter_id, v.weights_sha256 == weights_sha, v.config_sha256 == config_sha)
    ).one_or_none()


def _record_compatibility(
    session: Session, row: m.AdapterVersion, manifest: AdapterManifest, declared: m.BaseModelRecord
) -> None:
    """``exact`` for the declared base when its shapes were checked (``declared`` when they could not be: the
    base's config was never read); ``shape`` for every other recorded base of the same model type whose modules
    fit (any recorded base, when the declared one's type is unknown: its config was never read)."""
    session.add(m.Compatibility(
        version_id=row.id, base_model_id=declared.id, level="exact" if declared.module_shapes else "declared",
        evidence={"declared": True, "shapes_checked": bool(declared.module_shapes),
                  "modules": len(manifest.modules)},
    ))
    others_query = select(m.BaseModelRecord).where(m.BaseModelRecord.id != declared.id)
    if declared.model_type:
        others_query = others_query.where(m.BaseModelRecord.model_type == declared.model_type)
    others = session.scalars(others_query).all()
    for other in others:
        if other.module_shapes and not shape_mismatches(manifest, other.module_shapes):
            session.add(m.Compatibility(
                version_id=row.id, base_model_id=other.id, level="shape",
                evidence={"same_config": other.config_hash == declared.config_hash,
                          "modules": len(manifest.modules)},
            ))


def record_base_evidence(session: Session, base: m.BaseModelRecord) -> dict[str, int]:
    """Compatibility evidence with ``base`` for the versions registered before its shapes were known (a base added
    with ``adreg base add`` after the adapters): ``shape`` for each version of another base of the same model type,
    or of a base whose shapes were never read, whose modules fit; and for the versions declared against ``base``
    itself while its config was unread, ``declared`` becomes ``exact`` where they fit. Registration records the
    same evidence for versions that come later (:func:`_record_compatibility`). Returns the counts written, and how
    many versions declared against ``base`` do not fit it (``not_fitting``)."""
    counts = {"shape": 0, "exact": 0, "not_fitting": 0}
    if not base.module_shapes:
        return counts
    v, b, c = m.AdapterVersion, m.BaseModelRecord, m.Compatibility
    evidenced = select(c.version_id).where(c.base_model_id == base.id, c.level.in_(EVIDENCE_LEVELS))
    candidates = session.execute(
        select(v.id, v.base_model_id, b.config_hash).join(b, b.id == v.base_model_id)
        .where(b.model_type.is_(None) | (b.model_type == base.model_type) | (b.id == base.id),
               v.id.not_in(evidenced))
        .order_by(v.id)
    ).all()
    for start in range(0, len(candidates), 500):  # the stored tensor shapes, a batch at a time
        batch = candidates[start:start + 500]
        tensors = dict(session.execute(select(v.id, v.module_tensors).where(v.id.in_([r.id for r in batch]))).all())
        shape_rows = []
        for version_id, declared_id, declared_config in batch:
            # stored at registration, validated then: no need to validate each module again
            modules = {name: ModuleTensors.model_construct(**info)
                       for name, info in (tensors.get(version_id) or {}).items()}
            fits = not module_mismatches(modules, base.module_shapes)
            if declared_id != base.id:
                if fits:
                    shape_rows.append({"version_id": version_id, "base_model_id": base.id, "level": "shape",
                                       "evidence": {"same_config": declared_config == base.config_hash,
                                                    "modules": len(modules)}, "checked_at": m.utcnow()})
                continue
            if not fits:
                counts["not_fitting"] += 1
                continue
            evidence = {"declared": True, "shapes_checked": True, "modules": len(modules)}
            upgraded = session.execute(update(c.__table__).where(
                c.__table__.c.version_id == version_id, c.__table__.c.base_model_id == base.id,
                c.__table__.c.level == "declared",
            ).values(level="exact", evidence=evidence, checked_at=m.utcnow())).rowcount
            if not upgraded:
                session.add(m.Compatibility(version_id=version_id, base_model_id=base.id, level="exact",
                                            evidence=evidence))
            counts["exact"] += 1
        if shape_rows:  # one multi-row INSERT per batch
            session.execute(insert(m.Compatibility), shape_rows)
            counts["shape"] += len(shape_rows)
    session.flush()
    return counts


def resolve(session: Session, ref: Ref, *, include_deleted: bool = False) -> m.AdapterVersion:
    """The version a catalog reference names (``name``: the latest ready version, never a deprecated one).

    A deleted version is refused (:class:`AdapterNotFound` saying when, by whom and why) unless
    ``include_deleted``; a former name of a renamed adapter (``adreg rename``) names that adapter.
    One query when the version exists; the queries that say what is missing run only when it does not.
    """
    if not ref.is_catalog:
        raise AdapterNotFound(f"{ref} is not a catalog reference (name, name:N or name@alias)")
    v = m.AdapterVersion
    query = select(v).join(m.Adapter, m.Adapter.id == v.adapter_id).where(m.Adapter.name == ref.name)
    if ref.version is not None:
        query = query.where(v.version == ref.version)
    elif ref.alias is not None:
        query = query.join(m.Alias, m.Alias.version_id == v.id).where(
            m.Alias.adapter_id == v.adapter_id, m.Alias.name == ref.alias
        )
    else:
        query = query.where(v.status == "ready").order_by(v.version.desc()).limit(1)
    row = session.scalars(query).first()
    if row is not None:
        if row.status == "deleted" and not include_deleted:
            raise _deleted(session, ref, row)
        return row
    adapter = _adapter(session, ref.name or "", create=False)
    if adapter is None:
        renamed = find_adapter(session, ref.name or "")
        if renamed is not None:
            return resolve(session, dataclasses.replace(ref, name=renamed.name), include_deleted=include_deleted)
        raise AdapterNotFound(f"no adapter named {ref.name!r}", hint="see `adreg list`")
    if ref.version is not None:
        raise AdapterNotFound(
            f"{ref.name!r} has no version {ref.version} (latest is {adapter.latest_version or 'none'})"
        )
    if ref.alias is not None:
        known = session.scalars(select(m.Alias.name).where(m.Alias.adapter_id == adapter.id)).all()
        raise AdapterNotFound(
            f"{ref.name!r} has no alias {ref.alias!r}"
            + (f" (aliases: {', '.join(sorted(known))})" if known else " (it has no aliases)")
        )
    newest = session.scalars(select(v).where(v.adapter_id == adapter.id, v.status == "deprecated")
                             .order_by(v.version.desc()).limit(1)).first()
    if newest is not None:
        raise AdapterNotFound(
            f"{ref.name!r} has no ready version: {ref.name}:{newest.version} and its other versions are deprecated "
            "or deleted", hint=f"name a deprecated version exactly to use it anyway ({ref.name}:{newest.version})")
    raise AdapterNotFound(f"{ref.name!r} has no ready version")


def _deleted(session: Session, ref: Ref, row: m.AdapterVersion) -> AdapterNotFound:
    """The error for a reference to a deleted version: when, by whom, why, and what to do instead."""
    exact = f"{ref.name}:{row.version}"
    when = m.as_utc(row.status_at).strftime("%Y-%m-%d %H:%M UTC") if row.status_at else "an unknown date"
    what = exact if ref.alias is None else f"{ref.name}@{ref.alias} points at {exact}, which"
    message = (f"{what} was deleted on {when} by {row.status_by or 'an unknown user'}"
               + (f": {row.status_reason}" if row.status_reason else "")
               + (" (its files were purged)" if row.purged_at is not None else ""))
    if ref.alias is not None:
        hint = (f"point the alias at a live version (`adreg alias set {ref.name}:N {ref.alias}`) or remove it "
                f"(`adreg alias rm {ref.name}@{ref.alias}`)")
    else:
        hint = (f"use another version of {ref.name!r} (`adreg list --name {ref.name}`); deleted versions stay only as "
                "lineage tombstones (`adreg list --status deleted`)")
    return AdapterNotFound(message, hint=hint)


def find_adapter(session: Session, name: str) -> m.Adapter | None:
    """The adapter called ``name`` now, or the one that was called ``name`` before ``adreg rename`` (until the
    name is reused), or None."""
    adapter = _adapter(session, name, create=False)
    if adapter is not None:
        return adapter
    former = session.get(m.FormerName, name)
    return session.get(m.Adapter, former.adapter_id) if former is not None else None


def exact_ref(session: Session, row: m.AdapterVersion) -> str:
    """``name:version`` of a version row: the reference that keeps naming it after aliases move."""
    return f"{session.get(m.Adapter, row.adapter_id).name}:{row.version}"  # type: ignore[union-attr]


def set_alias(session: Session, row: m.AdapterVersion, alias: str) -> None:
    """Point ``alias`` of the version's adapter at ``row`` (creating or moving it).

    A move is recorded as an ``alias_moved`` event in the same transaction, for triggers to react to.
    """
    check_slug(alias, "alias")
    current = session.scalars(
        select(m.Alias.version_id).where(m.Alias.adapter_id == row.adapter_id, m.Alias.name == alias)
    ).one_or_none()
    if current != row.id:
        name = session.get(m.Adapter, row.adapter_id).name  # type: ignore[union-attr]
        session.add(m.Event(kind="alias_moved", subject=f"{name}@{alias}", version_id=row.id, created_at=m.utcnow()))
    _insert_ignore(
        session, m.Alias,
        {"adapter_id": row.adapter_id, "name": alias, "version_id": row.id, "updated_at": m.utcnow()},
        ["adapter_id", "name"],
    )
    session.execute(
        update(m.Alias.__table__)
        .where(m.Alias.__table__.c.adapter_id == row.adapter_id, m.Alias.__table__.c.name == alias)
        .values(version_id=row.id, updated_at=m.utcnow())
    )


def remove_alias(session: Session, adapter_name: str, alias: str) -> None:
    adapter = _adapter(session, check_slug(adapter_name), create=False)
    if adapter is None:
        raise AdapterNotFound(f"no adapter named {adapter_name!r}")
    gone = session.execute(
        delete(m.Alias).where(m.Alias.adapter_id == adapter.id, m.Alias.name == alias)
    ).rowcount
    if not gone:
        raise AdapterNotFound(f"{adapter_name!r} has no alias {alias!r}")


def _lock_version(session: Session, row: m.AdapterVersion) -> None:
    """Take the version's row lock (PostgreSQL; SQLite writers are serialised already) before changing its tags,
    so that concurrent tag writers on one version run one after the other and ``tag_doc`` never misses a write."""
    session.execute(select(m.AdapterVersion.id).where(m.AdapterVersion.id == row.id).with_for_update())


def _sync_tag_doc(session: Session, row: m.AdapterVersion) -> None:
    session.flush()
    row.tag_doc = dict(session.execute(select(m.Tag.key, m.Tag.value).where(m.Tag.version_id == row.id)).all())
    session.flush()
    refresh_search_text(session, [row.id])


def set_tags(session: Session, row: m.AdapterVersion, tags: dict[str, str]) -> None:
    """Set (or overwrite) tags on a version."""
    for key, value in tags.items():
        check_tag(key, value)
    _lock_version(session, row)
    for key, value in tags.items():
        session.execute(delete(m.Tag).where(m.Tag.version_id == row.id, m.Tag.key == key))
        session.add(m.Tag(version_id=row.id, key=key, value=value))
    _sync_tag_doc(session, row)


def remove_tags(session: Session, row: m.AdapterVersion, keys: list[str]) -> None:
    _lock_version(session, row)
    session.execute(delete(m.Tag).where(m.Tag.version_id == row.id, m.Tag.key.in_(keys)))
    _sync_tag_doc(session, row)


def manifest_of(session: Session, row: m.AdapterVersion) -> AdapterManifest:
    """Rebuild a version's manifest from stored metadata (no file is read).

    The base identity is the catalog's base record (name and revision), not the config's free text.
    """
    from registry.manifest import ModuleTensors

    base = session.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
    config = row.adapter_config or {}
    return AdapterManifest(
        peft_type=row.peft_type, task_type=row.task_type,
        base_model_name_or_path=base.name if base else config.get("base_model_name_or_path"),
        revision=base.revision if base else config.get("revision"),
        r=row.r, lora_alpha=row.lora_alpha, use_rslora=row.use_rslora, use_dora=row.use_dora,
        lora_bias=bool(config.get("lora_bias")), fan_in_fan_out=row.fan_in_fan_out,
        rank_pattern=row.rank_pattern or {}, alpha_pattern=row.alpha_pattern or {},
        target_modules=list(row.target_modules or []), target_parameters=config.get("target_parameters"),
        modules_to_save=list(row.modules_to_save or []), peft_version=row.peft_version, config=config,
        modules={k: ModuleTensors(**v) for k, v in (row.module_tensors or {}).items()},
        extra_tensors=dict(row.extra_tensors or {}),
        weights_sha256=row.weights_sha256, size_bytes=row.size_bytes, param_count=row.param_count,
        dtypes=list(row.dtypes or []),
    )


def merge_parents(session: Session, version_id: int) -> list[tuple[int, float | None]]:
    """The merge parents of a version with their weights, in order."""
    e = m.LineageEdge
    rows = session.execute(
        select(e.parent_id, e.weight).where(e.child_id == version_id, e.relation == "merge").order_by(e.position)
    ).all()
    return [(pid, w) for pid, w in rows]
