"""Editable descriptions: of an adapter (``tone``) or of one version (``tone:3``, ``tone@production``).

What text search reads is rewritten in the same transaction (an adapter's description is part of every one of its
versions' indexed text), and the change is audited with the description before and after.
"""

from __future__ import annotations

from sqlalchemy import select

from registry import audit, catalog, queries
from registry import models as m
from registry import types as t
from registry.errors import AdapterNotFound, InvalidReference, RegistryError
from registry.manifest import check_text
from registry.refs import check_slug, parse_ref
from registry.service import Service

WITHHELD = "<withheld: it looked like an API token>"


def describe(svc: Service, ref: str, description: str) -> t.AdapterVersion:
    """Set the description of the adapter ``ref`` names (a bare name: ``tone``) or of one version (``tone:3``,
    ``tone@production``); an empty string clears it. Returns the version (for a bare name, the latest ready one),
    showing both descriptions."""
    check_text(description, "description", multiline=True)
    if audit.looks_like_token(description):
        raise RegistryError("the description contains what looks like an adreg API token; descriptions are shown "
                            "to every reader", hint="remove the token (and revoke it: adreg token revoke ID)")
    parsed = parse_ref(ref)
    if not parsed.is_catalog or parsed.name is None:
        raise InvalidReference(f"{ref!r} is not a catalog reference: describe name, name:N or name@alias")
    new = description if description.strip() else None
    with svc.transaction() as session:
        if parsed.version is None and parsed.alias is None:
            row = _describe_adapter(svc, session, check_slug(parsed.name), new)
        else:
            row = catalog.resolve(session, parsed)
            # The row lock (PostgreSQL) makes "before" the description this change replaces, under concurrent edits.
            session.execute(select(m.AdapterVersion.id).where(m.AdapterVersion.id == row.id).with_for_update())
            session.refresh(row, ["description"])
            before = row.description
            row.description = new
            catalog.refresh_search_text(session, [row.id])
            exact = catalog.exact_ref(session, row)
            audit.record(session, svc.actor, "version.describe", adapter_name=parsed.name, ref=exact,
                         before={"description": _shown(before)}, after={"description": new})
        return queries.describe(session, [row], svc.store.root)[0]


def _describe_adapter(svc: Service, session, name: str, new: str | None) -> m.AdapterVersion:  # type: ignore[no-untyped-def]
    adapter = session.scalars(select(m.Adapter).where(m.Adapter.name == name).with_for_update()).one_or_none()
    if adapter is None:
        raise AdapterNotFound(f"no adapter named {name!r}", hint="see `adreg list`")
    v = m.AdapterVersion
    # The latest ready version, else the latest of any status (what is returned; every version is reindexed).
    row = session.scalars(
        select(v).where(v.adapter_id == adapter.id).order_by((v.status == "ready").desc(), v.version.desc()).limit(1)
    ).first()
    if row is None:
        raise AdapterNotFound(f"{name!r} has no versions")
    before = adapter.description
    adapter.description = new
    catalog.refresh_search_text(session, session.scalars(select(v.id).where(v.adapter_id == adapter.id)).all())
    audit.record(session, svc.actor, "adapter.describe", adapter_name=name, ref=name,
                 before={"description": _shown(before)}, after={"description": new})
    return row


def _shown(description: str | None) -> str | None:
    """A description as the audit log keeps it (one set before tokens were refused here is withheld)."""
    return WITHHELD if description is not None and audit.looks_like_token(description) else description
