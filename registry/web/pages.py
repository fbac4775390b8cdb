"""The page routes of ``adreg serve`` (excluded from /openapi.json): sign-in, the adapters list, and the hooks where
the other pages add their routes (:class:`~registry.web.kit.Pages` is what every page module gets; page modules
import :mod:`registry.web.kit`, not this module, which imports them)."""

from __future__ import annotations

import importlib.resources
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from registry import auth, queries
from registry.errors import RegistryError
from registry.operations import versions
from registry.service import Service
from registry.web import session as web_session
from registry.web.kit import SECURITY_HEADERS, Pages, same_origin, to_login

# Pages, SECURITY_HEADERS, same_origin and to_login live in registry.web.kit; they are still importable from here.
__all__ = ["PAGE_SIZE", "SECURITY_HEADERS", "Pages", "add_pages", "safe_next", "same_origin", "to_login"]

HERE = importlib.resources.files("registry.web")
PAGE_SIZE = 25


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
    from registry.web import job_pages, lineage, run_pages  # the lineage, jobs and runs pages

    lineage.add_routes(pages)
    job_pages.add_routes(pages)
    run_pages.add_routes(pages)

    from registry.web import version_pages  # the version, base and merge pages

    version_pages.add_routes(pages)
    # -- end other pages --
    app.include_router(router)


def _add_sign_in(pages: Pages) -> None:
    router = pages.router

    @router.get("/favicon.ico")
    def favicon() -> Response:
        """Browsers ask for /favicon.ico whatever the page says; a 404 there is a console error."""
        return RedirectResponse("/static/favicon.svg", status_code=301)

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
