"""Users, API tokens, grants and the audit log as operations on a :class:`~registry.service.Service`.

Each checks the service's principal (``svc.principal``; ``None`` is a trusted local caller such as the embedded
CLI) with :mod:`registry.auth`'s rules and writes its audit event in the same transaction. A new token's
plaintext is returned once, by :func:`create_token`, and stored nowhere.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from registry import audit, auth
from registry.errors import RegistryError
from registry.service import Service

_DURATION = re.compile(r"\s*(\d{1,6})\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m`` or ``45s`` as a timedelta."""
    match = _DURATION.fullmatch(text or "")
    if match is None:
        raise RegistryError(f"{text[:40]!r} is not a duration", hint="write a number and a unit: 30d, 12h, 2w, 90m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def whoami(svc: Service) -> dict[str, Any]:
    """Who this service acts as: user name, admin flag, groups, token scope and grants."""
    p = svc.principal or auth.embedded_principal()
    return {"name": p.name, "is_admin": p.is_admin, "groups": list(p.groups), "scope": p.scope,
            "grants": [{"pattern": g, "permission": perm} for g, perm in p.grants]}


def add_user(svc: Service, name: str, *, admin: bool = False, groups: list[str] | None = None) -> dict[str, Any]:
    """Create a user (admin only)."""
    with svc.transaction() as session:
        user = auth.create_user(session, name, admin=admin, groups=groups or (), by=svc.principal)
        view = {"name": user.name, "is_admin": user.is_admin, "groups": list(user.groups)}
        audit.record(session, svc.actor, "user.add", after=view)
        return view


def users(svc: Service) -> list[dict[str, Any]]:
    """Every user (admin only)."""
    if svc.principal is not None:
        svc.principal.require("admin")
    with svc.transaction() as session:
        return auth.list_users(session)


def create_token(svc: Service, user: str, *, scope: str = "write", expires: str | None = None,
                 label: str | None = None) -> dict[str, Any]:
    """A new API token for ``user``; the answer's ``token`` is the only copy of the secret."""
    with svc.transaction() as session:
        row, plaintext = auth.create_token(session, user, scope=scope, label=label, by=svc.principal,
                                           expires_in=parse_duration(expires) if expires else None)
        view = {"id": row.id, "user": user, "scope": row.scope, "label": row.label,
                "expires_at": _iso(row.expires_at)}
        audit.record(session, svc.actor, "token.create", after=view)
        return {**view, "token": plaintext}


def tokens(svc: Service, user: str | None = None) -> list[dict[str, Any]]:
    """Tokens (never their secrets): ``user``'s; without ``user``, every user's for an admin, else one's own."""
    if user is None and svc.principal is not None and not svc.principal.can("admin"):
        user = svc.principal.name
    with svc.transaction() as session:
        return auth.list_tokens(session, user, by=svc.principal)


def revoke_token(svc: Service, token_id: int) -> dict[str, Any]:
    """Revoke a token at once (its owner, or an admin)."""
    with svc.transaction() as session:
        view = auth.revoke_token(session, token_id, by=svc.principal)
        audit.record(session, svc.actor, "token.revoke", after={"id": token_id})
        return view


def add_grant(svc: Service, subject: str, pattern: str, permission: str = "write") -> dict[str, Any]:
    """Let ``subject`` (a user, or ``group:NAME``) have ``permission`` on adapter names matching ``pattern``."""
    with svc.transaction() as session:
        view = auth.add_grant(session, subject, pattern, permission, by=svc.principal)
        audit.record(session, svc.actor, "grant.add", after=view)
        return view


def remove_grant(svc: Service, subject: str, pattern: str) -> dict[str, Any]:
    with svc.transaction() as session:
        view = auth.remove_grant(session, subject, pattern, by=svc.principal)
        audit.record(session, svc.actor, "grant.remove", before=view)
        return view


def grants(svc: Service, subject: str | None = None) -> list[dict[str, Any]]:
    with svc.transaction() as session:
        return auth.list_grants(session, subject)


def audit_events(svc: Service, *, name: str | None = None, since: str | None = None,
                 limit: int = 200) -> list[dict[str, Any]]:
    """The audit log, newest first: of adapter ``name`` only, within ``since`` (``7d``) or after an ISO time."""
    start = None
    if since:
        try:
            start = datetime.now(timezone.utc) - parse_duration(since)
        except RegistryError:
            try:
                start = datetime.fromisoformat(since)
            except ValueError:
                raise RegistryError(f"since={since[:40]!r} is neither a duration (7d) nor an ISO time") from None
    if not 1 <= limit <= audit.MAX_EVENTS:
        raise RegistryError(f"limit must be between 1 and {audit.MAX_EVENTS}")
    with svc.transaction() as session:
        return audit.events(session, name=name, since=start, limit=limit)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
