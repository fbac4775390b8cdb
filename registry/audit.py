"""The audit log: who changed what, when (append-only; never a token or other secret).

:func:`record` adds one event in the caller's transaction, so an event exists exactly when its change does.
``before`` / ``after`` are JSON objects describing the change; a key that names a credential (``token``,
``hf_token``, ``secret``, ``password``...) or a value that looks like an adreg token is refused, at any depth.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import AuditEvent, as_utc, utcnow

ACTIONS = (
    "version.register", "alias.set", "alias.remove", "tag.set", "tag.remove", "job.submit", "job.cancel",
    "user.add", "token.create", "token.revoke", "grant.add", "grant.remove",
)  # the actions written today; any ``noun.verb`` of the same shape is accepted
MAX_EVENTS = 1000
_ACTION = re.compile(r"[a-z][a-z_]{0,30}\.[a-z][a-z_]{0,30}")
_SECRET_WORDS = frozenset({"token", "tokens", "secret", "secrets", "password", "passwd", "passphrase",
                           "plaintext", "authorization", "credential", "credentials", "apikey"})
_WORD = re.compile(r"[a-z0-9]+")
_TOKEN_VALUE = re.compile(r"adreg_[0-9]+_[A-Za-z0-9_-]{20,}")


def _secret_key(key: str) -> bool:
    words = _WORD.findall(key.lower())
    return any(w in _SECRET_WORDS for w in words) or "api_key" in key.lower()


def looks_like_token(value: str) -> bool:
    """Whether ``value`` holds something shaped like an adreg API token (which :func:`record` refuses to store)."""
    return _TOKEN_VALUE.search(value) is not None


def _check_no_secret(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if _secret_key(str(key)):
                raise ValueError(f"audit {where}.{key}: keys that name a credential are never recorded")
            _check_no_secret(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_no_secret(item, f"{where}[{index}]")
    elif isinstance(value, str) and _TOKEN_VALUE.search(value):
        raise ValueError(f"audit {where}: the value looks like an API token and is never recorded")


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _document(value: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"audit {where} must be a dict, not {type(value).__name__}")
    plain = json.loads(json.dumps(value, default=_json_default))  # what the JSON column will hold
    _check_no_secret(plain, where)
    return plain


def record(session: Session, actor: str, action: str, *, adapter_name: str | None = None, ref: str | None = None,
           before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> AuditEvent:
    """Append one event (flushed, not committed). ``ValueError`` if ``before`` / ``after`` would store a secret,
    ``action`` is not ``noun.verb`` or ``actor`` is empty."""
    if not isinstance(actor, str) or not 0 < len(actor) <= 255:
        raise ValueError(f"audit actor must be 1-255 characters, not {actor!r}")
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not noun.verb")
    if ref is not None:
        _check_no_secret(ref, "ref")
    event = AuditEvent(at=utcnow(), actor=actor, action=action, adapter_name=adapter_name, ref=ref,
                       before=_document(before, "before"), after=_document(after, "after"))
    session.add(event)
    session.flush()
    return event


def _view(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.id, "at": as_utc(event.at).isoformat(), "actor": event.actor, "action": event.action,
            "adapter_name": event.adapter_name, "ref": event.ref, "before": event.before, "after": event.after}


def events(session: Session, *, name: str | None = None, since: datetime | None = None,
           limit: int = 200) -> list[dict[str, Any]]:
    """Events newest first, as JSON-friendly dicts: of adapter ``name`` only, at or after ``since`` (a naive
    datetime is taken as UTC), at most ``limit`` (1 to 1000)."""
    if not 1 <= limit <= MAX_EVENTS:
        raise ValueError(f"limit must be between 1 and {MAX_EVENTS}, not {limit}")
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    if name is not None:
        query = query.where(AuditEvent.adapter_name == name)
    if since is not None:
        query = query.where(AuditEvent.at >= as_utc(since))
    return [_view(e) for e in session.scalars(query)]
