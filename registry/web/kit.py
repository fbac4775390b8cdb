"""What every page module gets (:class:`Pages`: the service, the templates, the router, and helpers to authenticate,
render and check forms), apart from :mod:`registry.web.pages`, which imports the page modules: a page module imports
this, never ``pages``, so there is no import cycle."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from registry import auth
from registry.errors import RegistryError, Unauthenticated
from registry.service import Service
from registry.web import session as web_session

#: Nothing from another origin: scripts, styles, images and fetches come from this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass
class Pages:
    """What a page module needs: the service, the templates, and helpers to authenticate and render."""

    svc: Service
    templates: Jinja2Templates
    router: APIRouter

    def who(self, request: Request) -> auth.Principal:
        return web_session.principal_of(self.svc, request)

    def acting(self, request: Request) -> tuple[auth.Principal, Service]:
        """The signed-in principal and the service acting as it (``Unauthenticated`` when not signed in)."""
        principal = self.who(request)
        return principal, self.svc.acting_as(principal)

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        token = web_session.token_of(request)
        response = self.templates.TemplateResponse(request, template, {
            "csrf": web_session.csrf_token(token) if token else "", "csrf_field": web_session.CSRF_FIELD,
            **context,
        }, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def error(self, request: Request, exc: RegistryError, principal: auth.Principal | None = None) -> Response:
        """A user's mistake as a page (never a traceback); not signed in: to the sign-in page."""
        if isinstance(exc, Unauthenticated):
            return to_login(request)
        status = {"AdapterNotFound": 404, "BaseModelNotFound": 404, "Forbidden": 403,
                  "ProtectedAlias": 403}.get(type(exc).__name__, 400)
        return self.render(request, "error.html", status=status, user=principal, message=str(exc),
                           hint=getattr(exc, "hint", None), title="Error")

    def check_form(self, request: Request, form: Any) -> None:
        """A form post must come from this site's own page (Origin) and carry the session's CSRF token."""
        from registry.errors import Forbidden

        if not same_origin(request) or not web_session.csrf_ok(request, form.get(web_session.CSRF_FIELD)):
            raise Forbidden("this form did not come from this site's page (CSRF check failed)",
                            hint="reload the page and submit it again")


def same_origin(request: Request) -> bool:
    """The request's Origin (or, without one, its Referer) is this server."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
