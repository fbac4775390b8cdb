"""A browser's session: its API token in an httpOnly, SameSite=strict cookie, and the CSRF token its forms carry.

The cookie holds the token the user signed in with, so a revoked or expired token ends the session on the next
request, exactly as for the API; the server stores nothing. The CSRF token is derived from the session's token
(HMAC), so it needs no server state either, and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from registry import auth
from registry.errors import Unauthenticated
from registry.service import Service

COOKIE = "adreg_session"
CSRF_FIELD = "csrf"
MAX_AGE = 12 * 3600  # the browser forgets the cookie after 12 hours; the token's own expiry still applies


def token_of(request: Request) -> str | None:
    value = request.cookies.get(COOKIE, "").strip()
    return value or None


def principal_of(svc: Service, request: Request) -> auth.Principal:
    """Who the request's session cookie speaks for; :class:`Unauthenticated` without a valid one."""
    token = token_of(request)
    if token is None:
        raise Unauthenticated("sign in with an API token", hint="adreg token create --user NAME")
    with svc.transaction() as session:
        return auth.authenticate(session, token)


def csrf_token(token: str) -> str:
    """The CSRF token of the session holding ``token`` (what its pages put in every form)."""
    return hmac.new(token.encode(), b"adreg-csrf", hashlib.sha256).hexdigest()


def csrf_ok(request: Request, presented: str | None) -> bool:
    token = token_of(request)
    return bool(token and presented) and hmac.compare_digest(csrf_token(token), str(presented))
