"""The page routes of ``adreg serve`` (excluded from /openapi.json): sign-in, the adapters list, and the hooks where
the other pages add their routes (:class:`Pages` is what every page module gets)."""

from __future__ import annotations

import dataclasses
import importlib.resources
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from registry import auth, queries
from registry.errors import RegistryError, Unauthenticated
from registry.operations import versions
from registry.service import Service
from registry.web import session as web_session

HERE = importlib.resources.files("registry.web")
#: Nothing from another origin: scripts, styles, images and fetches come from this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PAGE_SIZE = 25


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


def safe_next(target: str | None) -> str:
    """Only a path on this site (no //host, no scheme): an open redirect would help phishing."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def add_pages(app: FastAPI, svc: Service) -> None:
    """Mount the static files and every page on ``app``."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["page_size"] = PAGE_SIZE
    templates.env.filters["replace_page"] = _replace_page
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    router = APIRouter(include_in_schema=False)
    pages = Pages(svc, templates, router)
    _add_sign_in(pages)
    _add_adapters(pages)
    # -- other pages (issue 16): each module adds its routes to pages.router --
    # -- end other pages --
    app.include_router(router)


def _add_sign_in(pages: Pages) -> None:
    router = pages.router

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
        return pages.render(request, "login.html", next=safe_next(next), title="Sign in", user=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        token, target = str(form.get("token", "")).strip(), safe_next(str(form.get("next", "/")))
        if not same_origin(request):
            return pages.render(request, "login.html", status=403, next=target, user=None, title="Sign in",
                                message="the sign-in form must be sent from this site's page")
        try:
            with pages.svc.transaction() as session:
                auth.authenticate(session, token)
        except RegistryError as exc:  # the form again, with the reason (200: a form answer, not a failed load)
            return pages.render(request, "login.html", next=target, user=None, title="Sign in", message=str(exc))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(web_session.COOKIE, token, max_age=web_session.MAX_AGE, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await request.form()
        if not same_origin(request) or not web_session.csrf_ok(request, form.get(web_session.CSRF_FIELD)):
            return RedirectResponse("/", status_code=303)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(web_session.COOKIE, path="/")
        return response


def _add_adapters(pages: Pages) -> None:
    @pages.router.get("/", response_class=HTMLResponse)
    def adapters(request: Request, q: str = "", base: str = "", tag: str = "", task: str = "", min_rank: str = "",
                 max_rank: str = "", status: str = "live", sort: str = "", desc: str = "1", page: int = 1) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            tags = {}
            for item in filter(None, (t.strip() for t in tag.split(","))):
                key, sep, value = item.partition("=")
                if not sep:
                    raise RegistryError(f"a tag filter is key=value, not {item!r}")
                tags[key.strip()] = value.strip()
            filters = queries.SearchFilters(
                query=q.strip() or None, base_model=base.strip() or None, tags=tags, task_type=task.strip() or None,
                min_rank=_int(min_rank, "min rank"), max_rank=_int(max_rank, "max rank"),
                status=None if status == "any" else status, sort=sort or None, descending=desc != "0",
                limit=PAGE_SIZE, offset=(max(page, 1) - 1) * PAGE_SIZE,
            )
            result = versions.search_page(svc, filters)
            bases = versions.base_models(svc)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        return pages.render(request, "adapters.html", user=principal, result=result, bases=bases, title="Adapters",
                            short_names={(b.name, b.revision): b.short_name for b in bases if b.short_name},
                            form={"q": q, "base": base, "tag": tag, "task": task, "min_rank": min_rank,
                                  "max_rank": max_rank, "status": status, "sort": sort, "desc": desc},
                            page=max(page, 1))


def _replace_page(params: Any, page: int) -> str:
    """The query string of ``params`` with ``page`` set (for the pager's links)."""
    items = [(k, v) for k, v in params.multi_items() if k != "page"]
    return urlencode([*items, ("page", str(page))])


def _int(text: str, what: str) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise RegistryError(f"{what} must be a whole number, not {text!r}") from None
