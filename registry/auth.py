"""Users, API tokens, grants and the rules that turn them into permissions (service functions on a Session).

A token reads ``adreg_<id>_<secret>``: ``<id>`` is the row's id, ``<secret>`` 43 URL-safe characters from
``secrets.token_urlsafe(32)``. The catalog keeps only ``sha256(secret)`` in hex; the plaintext exists once, in
what :func:`create_token` returns.

Permissions, for a :class:`Principal` (who a token speaks for, capped by the token's scope):

* ``read``: every authenticated principal reads everything;
* ``write`` on an adapter name: an admin, or a ``write`` / ``manage`` grant whose glob matches the name, given to
  the user or to ``group:NAME`` of one of its groups;
* ``manage`` (delete; grants on that prefix): an admin, or a matching ``manage`` grant;
* ``admin`` (users, other users' tokens, any grant): an admin user holding an ``admin``-scope token.

A ``read`` token never writes; a ``write`` token never administers. Only admins get ``admin``-scope tokens.
Functions that change users, tokens or grants take an optional ``by``: the principal asking, checked against
these rules (``None``: a trusted caller such as the embedded catalog's own CLI). None of them commits; they
flush so that ids exist and conflicts surface.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from registry.errors import (
    AuthRecordNotFound,
    ConflictError,
    Forbidden,
    InvalidName,
    Unauthenticated,
)
from registry.models import ApiToken, Grant, User, as_utc, utcnow
from registry.refs import check_slug

SCOPES = ("read", "write", "admin")  # ordered: each includes the ones before it
PERMISSIONS = ("read", "write", "manage")
TOKEN_PREFIX = "adreg_"
GROUP_PREFIX = "group:"
MAX_GROUPS = 64
MAX_PATTERN_CHARS = 64
MAX_LABEL_CHARS = 128
MAX_TOKEN_ID = 2**31 - 1  # the integer column
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per token

_SECRET_CHARS = 43  # len(secrets.token_urlsafe(32))
_TOKEN = re.compile(rf"{TOKEN_PREFIX}([0-9]{{1,10}})_([A-Za-z0-9_-]{{{_SECRET_CHARS}}})")
_PATTERN = re.compile(rf"[a-z0-9._*?-]{{1,{MAX_PATTERN_CHARS}}}")
_NO_TOKEN_HASH = hashlib.sha256(b"no such token").hexdigest()  # compared against when the id is unknown
_INVALID = "invalid API token"
_INVALID_HINT = "present the whole token (adreg_<id>_<secret>) as created; ask an admin for a new one if it is lost"


# ---------------------------------------------------------------- names


def check_user_name(name: str) -> str:
    """Return ``name`` if it is a valid user name (a slug), else raise :class:`InvalidName`."""
    return check_slug(name, "user name")


def check_group_name(name: str) -> str:
    """Return ``name`` if it is a valid group name (a slug), else raise :class:`InvalidName`."""
    return check_slug(name, "group name")


def check_subject(subject: str) -> str:
    """Return ``subject`` if it is a user name or ``group:NAME``, else raise :class:`InvalidName`."""
    if isinstance(subject, str) and subject.startswith(GROUP_PREFIX):
        check_group_name(subject[len(GROUP_PREFIX):])
        return subject
    return check_user_name(subject)


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a glob over adapter names: slug characters plus ``*`` and ``?``, 1-64 long."""
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise InvalidName(
            f"pattern {pattern!r} is not allowed: use 1-{MAX_PATTERN_CHARS} lowercase letters, digits, '.', '_', "
            "'-' and the wildcards '*' and '?'"
        )
    return pattern


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidName(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def covers(grant_pattern: str, pattern: str) -> bool:
    """Whether every name ``pattern`` matches is also matched by ``grant_pattern`` (checked conservatively: the
    same pattern, or ``grant_pattern`` is ``PREFIX*`` and ``pattern`` starts with ``PREFIX``)."""
    if grant_pattern == pattern:
        return True
    prefix = grant_pattern[:-1]
    return grant_pattern.endswith("*") and not any(c in prefix for c in "*?") and pattern.startswith(prefix)


# ---------------------------------------------------------------- principals


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a user, its groups, the scope of the token it presented, and the grants that apply
    to it (``(pattern, permission)`` pairs, read when the principal was built)."""

    name: str
    is_admin: bool
    groups: tuple[str, ...]
    scope: str
    grants: tuple[tuple[str, str], ...] = ()

    def _missing(self, permission: str, adapter_name: str | None) -> str | None:
        """What stops ``permission`` on ``adapter_name``, or None when nothing does."""
        _check_choice(permission, (*PERMISSIONS, "admin"), "permission")
        if permission == "read":
            return None
        if permission == "admin":
            if not self.is_admin:
                return f"{self.name} is not an admin"
            return None if self.scope == "admin" else f"its token has scope {self.scope}, not admin"
        if self.scope == "read":
            return f"its token has scope read, which never allows {permission}"
        if self.is_admin:
            return None
        if adapter_name is None:
            raise ValueError(f"{permission} is checked on an adapter name")
        accepted = ("write", "manage") if permission == "write" else ("manage",)
        if any(perm in accepted and fnmatchcase(adapter_name, glob) for glob, perm in self.grants):
            return None
        return f"{self.name} holds no {' or '.join(accepted)} grant matching {adapter_name!r}"

    def can(self, permission: str, adapter_name: str | None = None) -> bool:
        """Whether this principal may ``permission`` (read, write, manage, admin) the adapter ``adapter_name``."""
        return self._missing(permission, adapter_name) is None

    def require(self, permission: str, adapter_name: str | None = None) -> None:
        """Raise :class:`Forbidden`, naming what is missing, unless :meth:`can` allows it."""
        missing = self._missing(permission, adapter_name)
        if missing is not None:
            target = f" on {adapter_name}" if adapter_name else ""
            raise Forbidden(f"{self.name} may not {permission}{target}: {missing}",
                            hint="an admin can add a grant for the user or one of its groups, or a wider token")

    def can_manage_pattern(self, pattern: str) -> bool:
        """Whether this principal may add or remove grants on ``pattern``: ``admin``, or (with a write token) a
        ``manage`` grant whose glob covers every name ``pattern`` matches (see :func:`covers`)."""
        if self.can("admin"):
            return True
        return self.scope != "read" and any(perm == "manage" and covers(glob, pattern) for glob, perm in self.grants)

    def can_act_for(self, user_name: str) -> bool:
        """Whether this principal may manage ``user_name``'s tokens: its own with a write token, anyone's as admin."""
        return self.can("admin") or (user_name == self.name and self.scope != "read")


def os_user() -> str:
    """Who acts in the embedded default: the operating-system user (``local`` when it has no name)."""
    try:
        return getpass.getuser() or "local"
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry (some containers)
        return "local"


def embedded_principal() -> Principal:
    """The principal of an embedded catalog (no server): the OS user, admin, with admin scope."""
    return Principal(name=os_user(), is_admin=True, groups=(), scope="admin")


def _grants_of(session: Session, user: User) -> tuple[tuple[str, str], ...]:
    subjects = [user.name, *(GROUP_PREFIX + g for g in user.groups)]
    rows = session.execute(select(Grant.pattern, Grant.permission).where(Grant.subject.in_(subjects))).all()
    return tuple(sorted((pattern, permission) for pattern, permission in rows))


def principal_for(session: Session, user_name: str, *, scope: str = "admin") -> Principal:
    """The principal of user ``user_name`` with a token of ``scope`` (capped at write for a non-admin)."""
    user = _user(session, user_name)
    _check_choice(scope, SCOPES, "scope")
    if scope == "admin" and not user.is_admin:
        scope = "write"
    return Principal(user.name, user.is_admin, tuple(user.groups), scope, _grants_of(session, user))


# ---------------------------------------------------------------- users


def _user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AuthRecordNotFound(f"no user named {name!r}")
    return user


def _user_view(user: User) -> dict[str, Any]:
    return {"name": user.name, "is_admin": user.is_admin, "groups": list(user.groups), "disabled": user.disabled,
            "created_at": as_utc(user.created_at).isoformat()}


def create_user(session: Session, name: str, *, admin: bool = False, groups: Iterable[str] = (),
                by: Principal | None = None) -> User:
    """Add user ``name`` (a slug) in ``groups`` (slugs); :class:`ConflictError` if the name is taken."""
    if by is not None:
        by.require("admin")
    check_user_name(name)
    group_list = sorted({check_group_name(g) for g in groups})
    if len(group_list) > MAX_GROUPS:
        raise InvalidName(f"a user is in at most {MAX_GROUPS} groups, not {len(group_list)}")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise ConflictError(f"user {name!r} exists already")
    user = User(name=name, is_admin=bool(admin), groups=group_list, disabled=False, created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def set_user_disabled(session: Session, name: str, disabled: bool = True, *, by: Principal | None = None) -> User:
    """Disable (or enable again) user ``name``: a disabled user's tokens are all refused."""
    if by is not None:
        by.require("admin")
    user = _user(session, name)
    user.disabled = disabled
    session.flush()
    return user


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user, by name: name, is_admin, groups, disabled, created_at (ISO 8601)."""
    return [_user_view(u) for u in session.scalars(select(User).order_by(User.name))]


# ---------------------------------------------------------------- tokens


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token_view(token: ApiToken) -> dict[str, Any]:
    """A token without its hash, JSON-friendly."""

    def when(moment: datetime | None) -> str | None:
        return None if moment is None else as_utc(moment).isoformat()

    return {"id": token.id, "user": token.user.name, "label": token.label, "scope": token.scope,
            "created_at": when(token.created_at), "expires_at": when(token.expires_at),
            "revoked_at": when(token.revoked_at), "last_used_at": when(token.last_used_at)}


def create_token(session: Session, user_name: str, *, scope: str = "write", expires_in: timedelta | None = None,
                 label: str | None = None, by: Principal | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user_name``; return its row and its plaintext, which is stored nowhere.

    ``scope`` is read, write or admin (admin only for admin users, and never wider than ``by``'s own scope).
    ``expires_in`` (positive) sets an expiry; ``None`` never expires.
    """
    _check_choice(scope, SCOPES, "scope")
    user = _user(session, user_name)
    if by is not None:
        if not by.can_act_for(user.name):
            raise Forbidden(f"{by.name} may not create tokens for {user.name}",
                            hint="a user creates its own tokens; an admin token creates anyone's")
        if SCOPES.index(scope) > SCOPES.index(by.scope):
            raise Forbidden(f"a token of scope {by.scope} cannot create a token of scope {scope}")
    if scope == "admin" and not user.is_admin:
        raise Forbidden(f"only admins get admin-scope tokens; {user.name} is not an admin",
                        hint="create a write or read token")
    if user.disabled:
        raise ConflictError(f"user {user.name} is disabled")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidName(f"expires_in must be positive, not {expires_in}")
    if label is not None and (len(label) > MAX_LABEL_CHARS or not label.isprintable()):
        raise InvalidName(f"a token label is at most {MAX_LABEL_CHARS} printable characters")
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    token = ApiToken(user=user, label=label, token_hash=_hash(secret), scope=scope, created_at=now,
                     expires_at=None if expires_in is None else now + expires_in)
    session.add(token)
    session.flush()
    return token, f"{TOKEN_PREFIX}{token.id}_{secret}"


def authenticate(session: Session, presented: str) -> Principal:
    """The principal a presented token speaks for; :class:`Unauthenticated` if it is malformed, unknown, wrong,
    revoked, expired or its user is disabled. Updates ``last_used_at`` at most once a minute (not committed)."""
    match = _TOKEN.fullmatch(presented) if isinstance(presented, str) else None
    if match is None:
        raise Unauthenticated(_INVALID, hint=_INVALID_HINT)
    token_id, secret = int(match.group(1)), match.group(2)
    # Unknown id and wrong secret take the same path: one lookup, one constant-time comparison, one error.
    token = (session.get(ApiToken, token_id, options=[joinedload(ApiToken.user)])  # one round trip for both
             if 0 < token_id <= MAX_TOKEN_ID else None)
    expected = token.token_hash if token is not None else _NO_TOKEN_HASH
    if not hmac.compare_digest(expected, _hash(secret)) or token is None:
        raise Unauthenticated(_INVALID, hint=_INVALID_HINT)
    now = utcnow()
    if token.revoked_at is not None:
        raise Unauthenticated(f"API token {token.id} was revoked", hint="ask for a new token")
    if token.expires_at is not None and as_utc(token.expires_at) <= now:
        raise Unauthenticated(f"API token {token.id} expired at {as_utc(token.expires_at).isoformat()}",
                              hint="ask for a new token")
    user = token.user
    if user.disabled:
        raise Unauthenticated(f"user {user.name} is disabled", hint="an admin can enable the user again")
    if token.last_used_at is None or now - as_utc(token.last_used_at) >= LAST_USED_RESOLUTION:
        token.last_used_at = now
    return Principal(user.name, user.is_admin, tuple(user.groups), token.scope, _grants_of(session, user))


def revoke_token(session: Session, token_id: int, *, by: Principal | None = None) -> dict[str, Any]:
    """Revoke token ``token_id`` (revoking it again keeps the first time); return it without its hash."""
    token = session.get(ApiToken, token_id) if 0 < token_id <= MAX_TOKEN_ID else None
    if token is None:
        raise AuthRecordNotFound(f"no API token {token_id}")
    if by is not None and not by.can_act_for(token.user.name):
        raise Forbidden(f"{by.name} may not revoke tokens of {token.user.name}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return _token_view(token)


def list_tokens(session: Session, user: str | None = None, *, by: Principal | None = None) -> list[dict[str, Any]]:
    """Tokens (of ``user``, or everyone's), oldest first, as dicts without their hashes."""
    if by is not None and not by.can_act_for(user or ""):
        raise Forbidden(f"{by.name} may not list tokens of {user or 'every user'}")
    query = select(ApiToken).join(ApiToken.user).order_by(ApiToken.id)
    if user is not None:
        query = query.where(User.name == user)
    return [_token_view(t) for t in session.scalars(query)]


# ---------------------------------------------------------------- grants


def _grant_view(grant: Grant) -> dict[str, Any]:
    return {"subject": grant.subject, "pattern": grant.pattern, "permission": grant.permission,
            "created_at": as_utc(grant.created_at).isoformat()}


def _require_pattern_manager(by: Principal | None, pattern: str) -> None:
    if by is not None and not by.can_manage_pattern(pattern):
        raise Forbidden(f"{by.name} may not manage grants on {pattern!r}",
                        hint="needs an admin token, or a manage grant covering the pattern")


def add_grant(session: Session, subject: str, pattern: str, permission: str, *,
              by: Principal | None = None) -> dict[str, Any]:
    """Give ``subject`` (user name or ``group:NAME``) ``permission`` on names matching ``pattern``; an existing
    grant of the same subject and pattern takes the new permission."""
    check_subject(subject)
    check_pattern(pattern)
    _check_choice(permission, PERMISSIONS, "permission")
    _require_pattern_manager(by, pattern)
    grant = session.scalar(select(Grant).where(Grant.subject == subject, Grant.pattern == pattern))
    if grant is None:
        grant = Grant(subject=subject, pattern=pattern, permission=permission, created_at=utcnow())
        session.add(grant)
    grant.permission = permission
    session.flush()
    return _grant_view(grant)


def remove_grant(session: Session, subject: str, pattern: str, *, by: Principal | None = None) -> dict[str, Any]:
    """Remove the grant of ``subject`` on ``pattern``; return what it was."""
    _require_pattern_manager(by, pattern)
    grant = session.scalar(select(Grant).where(Grant.subject == subject, Grant.pattern == pattern))
    if grant is None:
        raise AuthRecordNotFound(f"no grant for {subject!r} on {pattern!r}")
    view = _grant_view(grant)
    session.delete(grant)
    session.flush()
    return view


def list_grants(session: Session, subject: str | None = None) -> list[dict[str, Any]]:
    """Grants (of ``subject``, or all), by subject and pattern."""
    query = select(Grant).order_by(Grant.subject, Grant.pattern)
    if subject is not None:
        query = query.where(Grant.subject == subject)
    return [_grant_view(g) for g in session.scalars(query)]
