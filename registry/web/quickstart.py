"""The one-person quick start of ``adreg serve``: a sign-in link on a catalog that has no users yet.

``adreg serve`` on a catalog with no users at all, bound to a loopback address, creates an admin user for the
operating-system user (``local`` when that name is no valid user name) and a 12-hour admin token labelled
:data:`LABEL`, and prints ``http://127.0.0.1:PORT/login#token=...``. The token rides in the URL's fragment, which
a browser never sends (so it reaches no server log and no Referer); ``static/login.js`` fills the sign-in form
with it, drops it from the address bar and submits. Whoever can start the server can already write the catalog,
so the link grants nothing new. On any other address the server refuses to start with no users (nobody could
sign in): ``adreg init --admin NAME`` first. With users, nothing special happens.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from registry import auth
from registry.errors import RegistryError
from registry.operations import access
from registry.service import Service

LABEL = "adreg serve sign-in link"
EXPIRES = "12h"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: only this machine can connect."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    name = host.strip().strip("[]")
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def admin_name() -> str:
    """The operating-system user's name (lowercased) when it is a valid user name (a slug), else ``local``."""
    name = auth.os_user().lower()
    try:
        return auth.check_user_name(name)
    except RegistryError:
        return "local"


def first_sign_in(svc: Service, host: str, port: int) -> dict[str, Any] | None:
    """On a catalog with no users: the sign-in link of a new admin (loopback ``host`` only; refused elsewhere).
    ``None`` when the catalog has users already (the server then starts as always)."""
    if access.users(svc):
        return None
    if not is_loopback(host):
        raise RegistryError(
            f"this catalog has no users yet: nobody could sign in to a server on {host}",
            hint="create the first admin with `adreg init --admin NAME` (it prints its token), then serve; or serve "
                 "on 127.0.0.1 (the default) for a sign-in link")
    name = admin_name()
    access.add_user(svc, name, admin=True)
    token = access.create_token(svc, name, scope="admin", expires=EXPIRES, label=LABEL)
    return {"user": name, "token_id": token["id"], "expires_at": token["expires_at"],
            "url": f"{base_url(host, port)}/login#token={token['token']}"}
