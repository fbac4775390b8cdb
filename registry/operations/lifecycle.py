"""The lifecycle of versions and adapters: deprecate, undeprecate, delete (soft or hard), gc and rename.

A version is ``ready``, ``deprecated`` (still resolvable by an exact reference or an alias, never as a name's
latest, and marked in listings) or ``deleted`` (a tombstone: hidden from listings and references, kept in lineage).
A hard delete also sets ``purged_at``; ``gc`` then removes the files no other version and no unfinished job uses.
Renaming an adapter keeps its old name resolving to it (a ``former_names`` row) until the name is reused.

Each operation audits its change in the same transaction; the helpers below (on a Session) are also what alias
moves (:func:`registry.operations.versions.move_alias`) and job submissions check.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import audit, catalog, queries
from registry import models as m
from registry import types as t
from registry.errors import AdapterNotFound, ConflictError, InvalidReference, ProtectedAlias, RegistryError
from registry.manifest import check_text
from registry.refs import Ref, check_slug, parse_ref
from registry.service import Service

MAX_REASON_CHARS = 1024


def is_admin(svc: Service) -> bool:
    """Whether the caller is an admin: an embedded caller (no principal: the catalog's owner) or an admin token."""
    return svc.principal is None or svc.principal.can("admin")


def _exact(ref: str, verb: str) -> Ref:
    """``name:N`` or ``name@alias``: a lifecycle verb never acts on whichever version is a name's latest."""
    parsed = parse_ref(ref)
    if not parsed.is_catalog:
        raise InvalidReference(f"{ref!r} is not a catalog reference (name:N or name@alias)")
    if parsed.version is None and parsed.alias is None:
        raise InvalidReference(f"{verb} takes one version: {parsed.name}:N or {parsed.name}@alias, not the bare name",
                               hint=f"see the versions with `adreg list --name {parsed.name} --status any`")
    return parsed


def _reason(reason: str | None, required: bool) -> str | None:
    if reason is None or not reason.strip():
        if required:
            raise RegistryError("a reason is required", hint='say why, e.g. --reason "superseded by tone:4"')
        return None
    return check_text(reason.strip(), "reason", limit=MAX_REASON_CHARS)


def _locked(session: Session, row: m.AdapterVersion) -> m.AdapterVersion:
    """``row`` re-read under its row lock (PostgreSQL; SQLite writers are serialised), so that two status changes
    of one version run one after the other."""
    session.execute(select(m.AdapterVersion.id).where(m.AdapterVersion.id == row.id).with_for_update())
    session.refresh(row)
    return row


def _view(svc: Service, session: Session, row: m.AdapterVersion) -> t.AdapterVersion:
    return queries.describe(session, [row], svc.store.root)[0]


def _when(row: m.AdapterVersion) -> str:
    return m.as_utc(row.status_at).strftime("%Y-%m-%d %H:%M UTC") if row.status_at else "an unknown date"


def deprecate(svc: Service, ref: str, reason: str) -> t.AdapterVersion:
    """Mark a version deprecated, saying why: it stays usable by exact reference or alias, but is no longer a
    name's latest, new aliases need ``force``, and jobs that use it warn. Deprecating again replaces the reason."""
    why = _reason(reason, required=True)
    with svc.transaction() as session:
        row = _locked(session, catalog.resolve(session, _exact(ref, "deprecate")))
        before = {"status": row.status, "reason": row.status_reason}
        row.status, row.status_reason, row.status_at, row.status_by = "deprecated", why, m.utcnow(), svc.actor
        session.flush()
        view = _view(svc, session, row)
        audit.record(session, svc.actor, "version.deprecate", adapter_name=view.name, ref=view.ref, before=before,
                     after={"status": "deprecated", "reason": why})
        return view


def undeprecate(svc: Service, ref: str) -> t.AdapterVersion:
    """Make a deprecated version ready again (a deleted one cannot be: references to it are refused)."""
    with svc.transaction() as session:
        row = _locked(session, catalog.resolve(session, _exact(ref, "undeprecate")))
        view = _view(svc, session, row)
        if row.status != "deprecated":
            raise ConflictError(f"{view.ref} is not deprecated (it is {row.status})")
        before = {"status": row.status, "reason": row.status_reason}
        row.status, row.status_reason, row.status_at, row.status_by = "ready", None, m.utcnow(), svc.actor
        session.flush()
        view = _view(svc, session, row)
        audit.record(session, svc.actor, "version.undeprecate", adapter_name=view.name, ref=view.ref, before=before,
                     after={"status": "ready"})
        return view


def delete(svc: Service, ref: str, *, hard: bool = False, force: bool = False,
           reason: str | None = None) -> t.AdapterVersion:
    """Delete a version: it disappears from listings and references, and lineage keeps it as a tombstone.

    ``hard`` also purges it: ``gc`` then removes its files once no other version (live or soft-deleted) and no
    unfinished job uses them; a soft-deleted version may be hard-deleted later. A version that aliases point at is
    refused unless ``force``, which removes those aliases (each removal audited). Deleting a deleted version again
    (softly), or purging a purged one, is refused with a :class:`ConflictError` saying so. Returns the tombstone.
    """
    why = _reason(reason, required=False)
    with svc.transaction() as session:
        row = _locked(session, catalog.resolve(session, _exact(ref, "delete"), include_deleted=True))
        view = _view(svc, session, row)
        if row.status == "deleted":
            done = f"{view.ref} was already deleted on {_when(row)} by {row.status_by or 'an unknown user'}"
            if row.purged_at is not None:
                raise ConflictError(f"{done} and purged", hint="`adreg gc` reclaims the files of purged versions")
            if not hard:
                raise ConflictError(done, hint="--hard (hard=True) purges it, so that `adreg gc` frees its files")
        pointing = session.scalars(select(m.Alias).where(m.Alias.version_id == row.id).order_by(m.Alias.name)).all()
        if pointing and not force:
            names = ", ".join(f"{view.name}@{a.name}" for a in pointing)
            raise ConflictError(f"{names} point(s) at {view.ref}: deleting it would leave them pointing at nothing",
                                hint="move them first (`adreg alias set NAME:N ALIAS`), or pass --force (force=True) "
                                     "to remove them with the version")
        for alias in pointing:
            if alias.protected and not is_admin(svc):
                raise _protected(view.name, alias.name, "remove")
        for alias in pointing:
            session.execute(sql_delete(m.Alias).where(m.Alias.id == alias.id))
            audit.record(session, svc.actor, "alias.remove", adapter_name=view.name, ref=f"{view.name}@{alias.name}",
                         before={"version": view.ref}, after=None)
        before = {"status": row.status, "reason": row.status_reason, "purged": row.purged_at is not None}
        now = m.utcnow()
        if row.status != "deleted":
            row.status, row.status_at, row.status_by = "deleted", now, svc.actor
            row.status_reason = why
        elif why:
            row.status_reason = why
        if hard:
            row.purged_at = now
        session.flush()
        view = _view(svc, session, row)
        audit.record(session, svc.actor, "version.delete", adapter_name=view.name, ref=view.ref, before=before,
                     after={"status": "deleted", "mode": "hard" if hard else "soft", "reason": row.status_reason,
                            "aliases_removed": [a.name for a in pointing]})
        return view


def gc(svc: Service, *, dry_run: bool = False) -> dict[str, Any]:
    """Remove the files nothing refers to (admin): those of hard-deleted versions that no other version (live or
    soft-deleted) and no unfinished job shares, orphaned adapter folders and blobs, scratch of finished jobs and
    stale temporary files. ``dry_run`` only lists them. Returns ``applied``, ``paths``, ``bytes``, ``blobs`` (how
    many weight files) and ``versions`` (the purged versions whose files are among them)."""
    from registry.gc import collect

    if svc.principal is not None:
        svc.principal.require("admin")
    found = collect(svc, apply=not dry_run)
    paths = set(found["paths"])
    v = m.AdapterVersion
    with svc.sessions() as session:
        purged = session.execute(
            select(m.Adapter.name, v.version, v.storage_path, v.weights_sha256).join(m.Adapter)
            .where(v.purged_at.is_not(None)).order_by(m.Adapter.name, v.version)).all()
    found["versions"] = [f"{name}:{number}" for name, number, path, sha in purged
                         if path in paths or f"blobs/{sha[:2]}/{sha}.safetensors" in paths]
    found["blobs"] = sum(1 for p in paths if p.startswith("blobs/"))
    if not dry_run and paths:
        with svc.transaction() as session:
            audit.record(session, svc.actor, "store.gc", after={
                "paths": len(paths), "bytes": found["bytes"], "blobs": found["blobs"], "versions": found["versions"]})
    return found


def rename(svc: Service, old: str, new: str) -> dict[str, Any]:
    """Rename adapter ``old`` to ``new``. ``old`` (``old:N``, ``old@alias``) keeps resolving to it, answered under
    the new name, until an adapter is registered (or renamed) as ``old``. An existing adapter name is refused."""
    check_slug(old)
    check_slug(new)
    with svc.transaction() as session:
        adapter = catalog.find_adapter(session, old)
        if adapter is None:
            raise AdapterNotFound(f"no adapter named {old!r}", hint="see `adreg list`")
        if adapter.name == new:
            raise ConflictError(f"the adapter is already named {new!r}")
        if catalog.adapter_exists(session, new):
            raise ConflictError(f"an adapter named {new!r} exists", hint="choose another name")
        previous = adapter.name
        # ``new`` may be a former name (of this adapter or another): taking it ends that name's redirection.
        session.execute(sql_delete(m.FormerName).where(m.FormerName.name == new))
        adapter.name = new
        session.add(m.FormerName(name=previous, adapter_id=adapter.id, renamed_at=m.utcnow(), renamed_by=svc.actor))
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:  # registered under ``new`` by someone else meanwhile
            raise ConflictError(f"an adapter named {new!r} exists", hint="choose another name") from None
        ids = list(session.scalars(select(m.AdapterVersion.id).where(m.AdapterVersion.adapter_id == adapter.id)))
        catalog.refresh_search_text(session, ids)
        formers = sorted(session.scalars(select(m.FormerName.name).where(m.FormerName.adapter_id == adapter.id)))
        audit.record(session, svc.actor, "adapter.rename", adapter_name=new, ref=new,
                     before={"name": previous}, after={"name": new})
        return {"old": previous, "new": new, "versions": len(ids), "former_names": formers}


# -- helpers on a Session (alias moves, jobs, permission rules) ------------------------------------------------


def names_of(session: Session, name: str) -> list[str]:
    """The names that mean the adapter ``name`` means: its current name first, then its former names (``name`` alone
    when no adapter has it)."""
    adapter = catalog.find_adapter(session, name)
    if adapter is None:
        return [name]
    formers = session.scalars(select(m.FormerName.name).where(m.FormerName.adapter_id == adapter.id)
                              .order_by(m.FormerName.renamed_at, m.FormerName.name))
    return [adapter.name, *formers]


def current_name(svc: Service, name: str) -> str | None:
    """The current name of the adapter ``name`` means (itself, or the adapter it was renamed to), or None."""
    with svc.sessions() as session:
        adapter = catalog.find_adapter(session, name)
        return adapter.name if adapter is not None else None


def _protected(name: str, alias: str, verb: str) -> ProtectedAlias:
    return ProtectedAlias(f"{name}@{alias} is protected: only an admin, or a recipe's promote step whose gates "
                          f"passed, may {verb} it",
                          hint="ask an admin, or promote through a recipe with a gate (validate or train gates)")


def check_alias_move(session: Session, row: m.AdapterVersion, name: str, alias: str, *, force: bool,
                     protect: bool | None, admin: bool, gate_passed: bool) -> m.Alias | None:
    """Refuse pointing ``name@alias`` at ``row`` when the version is deprecated or deleted (unless ``force``), when
    the alias is protected and would move (unless ``admin`` or ``gate_passed``), or when ``protect`` would change
    its protection (admins only). Returns the alias row as it stands (None if new). Takes the version's row lock,
    so that a concurrent deletion (which looks for the aliases pointing at it) runs before or after, not beside."""
    _locked(session, row)
    current = session.scalars(select(m.Alias).where(m.Alias.adapter_id == row.adapter_id, m.Alias.name == alias)
                              ).one_or_none()
    if row.status in ("deprecated", "deleted") and not force:
        why = f" ({row.status_reason})" if row.status_reason else ""
        raise ConflictError(f"{name}:{row.version} is {row.status}{why}: {name}@{alias} would point at a "
                            f"{row.status} version", hint="pass --force (force=True) to point it there anyway")
    moves = current is None or current.version_id != row.id
    if current is not None and current.protected and moves and not (admin or gate_passed):
        raise _protected(name, alias, "move")
    if protect is not None and protect != bool(current is not None and current.protected) and not admin:
        raise ProtectedAlias(f"only an admin may {'protect' if protect else 'unprotect'} {name}@{alias}",
                             hint="ask an admin (an admin-scope token) to change the alias's protection")
    return current


def set_protected(session: Session, actor: str, row: m.AdapterVersion, name: str, alias: str,
                  protect: bool) -> None:
    """Protect or unprotect ``name@alias`` (which points at ``row``) and audit it (``alias_history`` shows it)."""
    target = session.scalars(select(m.Alias).where(m.Alias.adapter_id == row.adapter_id, m.Alias.name == alias)
                             ).one()
    if target.protected == protect:
        return
    target.protected = protect
    session.flush()
    ref = f"{name}:{row.version}"
    audit.record(session, actor, "alias.protect" if protect else "alias.unprotect", adapter_name=name,
                 ref=f"{name}@{alias}", before={"version": ref, "protected": not protect},
                 after={"version": ref, "protected": protect})


def check_alias_removal(session: Session, name: str, alias: str, *, admin: bool) -> None:
    """Refuse removing a protected alias unless ``admin``."""
    adapter = catalog.find_adapter(session, name)
    if adapter is None or admin:
        return
    protected = session.scalar(select(m.Alias.protected).where(m.Alias.adapter_id == adapter.id,
                                                               m.Alias.name == alias))
    if protected:
        raise _protected(adapter.name, alias, "remove")


def input_warnings(rows: list[m.AdapterVersion], refs: list[str]) -> list[str]:
    """One warning per deprecated input of a job (deleted inputs never get here: references to them are refused)."""
    return [f"input {ref} is deprecated" + (f": {row.status_reason}" if row.status_reason else "")
            + f" (since {_when(row)}, by {row.status_by or 'an unknown user'})"
            for ref, row in zip(refs, rows, strict=True) if row.status == "deprecated"]
