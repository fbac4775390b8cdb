"""Catalog operations on versions: register, look up, search, lineage, aliases and tags.

Every front end (the embedded :class:`~registry.sdk.Registry`, the HTTP API, the CLI through them) calls these
functions with a :class:`~registry.service.Service`, so each behaviour is written once.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from registry import audit, catalog, queries
from registry import models as m
from registry import types as t
from registry.base_identity import resolve_base
from registry.basemodel import describe_base
from registry.errors import InvalidReference, RegistryError
from registry.inspect import inspect_adapter, weights_path
from registry.manifest import check_text
from registry.operations import lifecycle
from registry.refs import Ref, check_slug, check_tag, parse_ref
from registry.service import Service


def register(
    svc: Service,
    source: str | Path,
    *,
    name: str,
    tags: dict[str, str] | None = None,
    base: str | None = None,
    base_path: str | Path | None = None,
    revision: str | None = None,
    description: str | None = None,
    parents: list[catalog.ParentSpec] | None = None,
    source_uri: str | None = None,
) -> t.AdapterVersion:
    """Register the adapter folder ``source`` as the next version of ``name``.

    The base model is ``base`` or the adapter config's ``base_model_name_or_path`` (at ``revision``
    or the config's); its architecture and module shapes are read from ``base_path`` (or from the
    base name itself when it is a local folder). Registering the same weights under the same name
    again returns the existing version (with any new tags applied).
    """
    check_slug(name)
    for key, value in (tags or {}).items():
        check_tag(key, value)
    check_text(description, "description", multiline=True)
    check_text(revision, "revision")
    ref = parse_ref(str(source)) if isinstance(source, str) else Ref(path=Path(source))
    root: Path | None = None  # where the folder's files may resolve to: the folder itself, for a local one
    if ref.hub_repo:
        from registry.hub_client import fetch_adapter, resolve_base_revision

        folder, commit = fetch_adapter(ref.hub_repo, ref.hub_revision)
        source_uri = f"hf://{ref.hub_repo}@{commit}"
        root = folder.parents[1]  # the Hub cache: snapshots/<commit>/ files link to the repository's blobs/
    elif ref.path is None:
        raise InvalidReference(f"{source!r} is not a folder path (write ./{source} for a local folder)")
    else:
        folder = ref.path
    manifest = inspect_adapter(folder, root=root, max_bytes=svc.settings.max_adapter_bytes)
    if ref.hub_repo:
        base_name = base or manifest.base_model_name_or_path
        if base_name and revision is None:
            revision = resolve_base_revision(base_name, manifest.revision)  # pin the base to a commit too
        identity = resolve_base(base_name, adapter_folder=None, base_path=base_path, explicit=True)
    else:
        identity = resolve_base(base or manifest.base_model_name_or_path, adapter_folder=folder,
                                base_path=base_path, explicit=base is not None)
    description_of_base = describe_base(identity.local_path) if identity.local_path is not None else None
    base_revision = revision or manifest.revision
    # Check first, copy last: everything that can refuse runs (in a transaction rolled back) before the
    # weights are copied, so a refused registration writes nothing. The final transaction checks again.
    with svc.sessions() as session:
        catalog.check_fits(manifest, catalog.identify_base(
            session, identity.name, base_revision, description_of_base, identity.local_path))
        session.rollback()
    storage = svc.store.put_adapter(weights_path(folder, root=root), manifest.weights_sha256, manifest.config)
    with svc.transaction() as session:
        base_row = catalog.identify_base(  # a named base, when the identity is one; else name@revision's record
            session, identity.name, base_revision, description_of_base, identity.local_path
        )
        row, created = catalog.register_version(
            session, name, manifest, storage, base_row, tags=tags,
            source_uri=source_uri or str(folder.resolve()), description=description, parents=parents,
            created_by=svc.actor,
        )
        if not created and tags:
            catalog.set_tags(session, row, tags)
        view = queries.describe(session, [row], svc.store.root)[0]
        if created:
            audit.record(session, svc.actor, "version.register", adapter_name=name, ref=view.ref,
                         after={"weights_sha256": view.weights_sha256, "base_model": view.base_model,
                                "source": source_uri or str(folder.resolve())})
        return view


def get(svc: Service, ref: str) -> t.AdapterVersion:
    """The version ``ref`` names: ``name`` (latest), ``name:3`` or ``name@alias``."""
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        return queries.describe(session, [row], svc.store.root)[0]


def search_page(svc: Service, filters: queries.SearchFilters) -> t.SearchPage:
    with svc.transaction() as session:
        rows, total = queries.search(session, filters)
        items = queries.describe(session, rows, svc.store.root)
        return t.SearchPage(items=items, total=total, limit=filters.limit, offset=filters.offset)


def lineage(svc: Service, ref: str) -> t.LineageGraph:
    """All ancestors and descendants of a version, as nodes and edges (deleted versions too, as tombstones: each
    node has its ``status``; a deleted version's own lineage may be asked for by its exact reference)."""
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref), include_deleted=True)
        return queries.lineage(session, row.id)


def base_models(svc: Service) -> list[t.BaseModelInfo]:
    with svc.transaction() as session:
        return queries.base_models(session)


def versions_of(svc: Service, name: str, *, include_deleted: bool = False) -> list[t.AdapterVersion]:
    """Every version of one adapter, oldest first; deleted ones only with ``include_deleted``."""
    with svc.transaction() as session:
        adapter = catalog.find_adapter(session, check_slug(name))
        query = (select(m.AdapterVersion).where(m.AdapterVersion.adapter_id == (adapter.id if adapter else -1))
                 .order_by(m.AdapterVersion.version))
        if not include_deleted:
            query = query.where(m.AdapterVersion.status != "deleted")
        rows = session.scalars(query).all()
        return queries.describe(session, list(rows), svc.store.root)


def _alias_target(session, name: str, alias: str) -> str | None:  # type: ignore[no-untyped-def]
    return next((a.ref for a in queries.aliases(session, name) if a.alias == alias), None)


def set_alias(svc: Service, ref: str, alias: str, *, force: bool = False,
              protect: bool | None = None) -> t.AdapterVersion:
    """Point ``alias`` (e.g. ``production``) at the version ``ref`` names; moves it if it exists.

    A deprecated or deleted version is refused unless ``force``. ``protect=True`` / ``False`` protects or
    unprotects the alias (admins only); a protected alias is moved only by an admin (or a recipe's promote step
    whose gates passed).
    """
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref), include_deleted=force)
        move_alias(session, svc.actor, row, alias, svc.store.root, force=force, protect=protect,
                   admin=lifecycle.is_admin(svc))
        return queries.describe(session, [row], svc.store.root)[0]


def move_alias(session, actor: str, row, alias: str, store_root: Path, *,  # type: ignore[no-untyped-def]
               force: bool = False, protect: bool | None = None, admin: bool = False,
               gate_passed: bool = False) -> None:
    """Point ``alias`` at ``row`` in ``session`` and audit the move (from, to, who): every alias move goes here,
    a recipe's promote step included, so ``alias_history`` is complete.

    Refused (see :func:`lifecycle.check_alias_move`): a deprecated or deleted ``row`` unless ``force``; moving a
    protected alias unless ``admin`` or ``gate_passed`` (a recipe's promote step whose gates passed); changing
    the protection (``protect`` True or False) unless ``admin``.
    """
    view = queries.describe(session, [row], store_root)[0]
    current = lifecycle.check_alias_move(session, row, view.name, alias, force=force, protect=protect, admin=admin,
                                         gate_passed=gate_passed)
    if current is None or current.version_id != row.id or protect is None:
        before = _alias_target(session, view.name, alias)
        catalog.set_alias(session, row, alias)
        session.flush()
        audit.record(session, actor, "alias.set", adapter_name=view.name, ref=f"{view.name}@{alias}",
                     before={"version": before}, after={"version": view.ref})
    if protect is not None:
        lifecycle.set_protected(session, actor, row, view.name, alias, protect)


def alias_history(svc: Service, ref: str) -> list[dict]:
    """Every move of ``name@alias``, oldest first: when, who, from which version to which (None: unset)."""
    from sqlalchemy import select

    parsed = parse_ref(ref)
    if parsed.alias is None or parsed.name is None:
        raise InvalidReference(f"{ref!r} is not name@alias")
    events = m.AuditEvent
    with svc.sessions() as session:
        # under every name the adapter had (``adreg rename``): the events keep the name of their time
        names = lifecycle.names_of(session, parsed.name)
        subjects = [f"{name}@{parsed.alias}" for name in names]
        rows = session.scalars(select(events).where(
            events.adapter_name.in_(names),  # every alias event names its adapter: ix_audit_events_adapter_name_at
            events.ref.in_(subjects),
            events.action.in_(("alias.set", "alias.remove", "alias.protect", "alias.unprotect")),
        ).order_by(events.at, events.id)).all()
        return [{"at": m.as_utc(e.at).isoformat(), "by": e.actor, "action": e.action,
                 "from": (e.before or {}).get("version"), "to": (e.after or {}).get("version")} for e in rows]


def remove_alias(svc: Service, name: str, alias: str | None = None) -> None:
    """Remove an alias: ``remove_alias("tone@production")`` (or ``remove_alias("tone", "production")``)."""
    if alias is None:
        parsed = parse_ref(name)
        if parsed.alias is None:
            raise InvalidReference(f"{name!r} is not name@alias")
        name, alias = parsed.name or "", parsed.alias
    with svc.transaction() as session:
        adapter = catalog.find_adapter(session, check_slug(name))
        name = adapter.name if adapter is not None else name  # a former name means the renamed adapter
        lifecycle.check_alias_removal(session, name, alias, admin=lifecycle.is_admin(svc))
        before = _alias_target(session, name, alias)
        catalog.remove_alias(session, name, alias)
        audit.record(session, svc.actor, "alias.remove", adapter_name=name, ref=f"{name}@{alias}",
                     before={"version": before}, after=None)


def aliases(svc: Service, name: str | None = None) -> list[t.AliasInfo]:
    """Every alias and the version it points at (only ``name``'s when given)."""
    with svc.transaction() as session:
        if name is not None:
            adapter = catalog.find_adapter(session, check_slug(name))
            name = adapter.name if adapter is not None else name  # a former name means the renamed adapter
        return queries.aliases(session, name)


def tag(svc: Service, ref: str, tags: dict[str, str]) -> t.AdapterVersion:
    """Set tags (key -> value) on a version, overwriting existing values of the same keys."""
    return _change_tags(svc, ref, "tag.set", lambda session, row: catalog.set_tags(session, row, tags))


def untag(svc: Service, ref: str, keys: list[str]) -> t.AdapterVersion:
    """Remove the tags ``keys`` from a version."""
    return _change_tags(svc, ref, "tag.remove", lambda session, row: catalog.remove_tags(session, row, keys))


def _change_tags(svc: Service, ref: str, action: str, change) -> t.AdapterVersion:  # type: ignore[no-untyped-def]
    """Apply ``change(session, row)`` to the version ``ref`` and audit the tags before and after."""
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        before = queries.describe(session, [row], svc.store.root)[0]
        change(session, row)
        after = queries.describe(session, [row], svc.store.root)[0]
        audit.record(session, svc.actor, action, adapter_name=after.name, ref=after.ref,
                     before={"tags": before.tags}, after={"tags": after.tags})
        return after


def publications(svc: Service, ref: str) -> list[dict]:
    """Where a version has been published (repo, branch, commit, URL, time)."""
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        return [
            {"repo_id": p.repo_id, "branch": p.branch, "commit": p.commit_oid, "url": p.url, "pr_url": p.pr_url,
             "published_at": p.published_at.isoformat()}
            for p in session.scalars(select(m.Publication).where(m.Publication.version_id == row.id)
                                     .order_by(m.Publication.id))
        ]


def download(svc: Service, ref: str, folder: str | Path) -> Path:
    """Copy version ``ref``'s files into the new folder ``folder`` (through a temporary folder beside it), checking
    the weights' sha256; nothing is left at ``folder`` if anything fails."""
    import shutil
    import tempfile

    from registry.inspect import CONFIG_FILE, WEIGHTS_FILE, sha256_file

    version = get(svc, ref)
    target = download_target(folder)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-adreg-", dir=target.parent))
    try:
        stored = Path(version.path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(stored / name, staging / name)
        actual = sha256_file(staging / WEIGHTS_FILE)
        if actual != version.weights_sha256:
            raise RegistryError(f"the stored weights of {version.ref} hash to {actual[:12]}, not the recorded "
                                f"{version.weights_sha256[:12]}: the store was altered; nothing was written")
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_target(folder: str | Path) -> Path:
    """The absolute folder a download may write: new, or an empty folder (kept until the download completes)."""
    target = Path(folder).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RegistryError(f"{target} exists and is not an empty folder", hint="give a new folder to download into")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
