"""The version page ``/v/{ref}`` (issue 16): everything the catalog knows about one version, its two files to
download, and the write actions (move or remove an alias, add or remove a tag, deprecate, undeprecate, describe).

Every action is a form post checked like the API: the page's Origin and CSRF token (:meth:`Pages.check_form`), then
the permission rule of the operation's endpoint (``registry.endpoints.BY_NAME``), then the same operation the API
calls, acting as the signed-in user (so it is audited under that user's name). A refused permission is a 403 page;
a mistake in the form re-renders the page with the message next to the form (200); success redirects (303) back
to the page with a fixed message chosen by ``?done=``. This module also mounts the base-model and merge pages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from registry import auth
from registry import types as t
from registry.api.artifacts import FILES, LargeChunkFileResponse
from registry.endpoints import BY_NAME
from registry.errors import Forbidden, InvalidAdapter, ProtectedAlias, RegistryError, Unauthenticated
from registry.inspect import CONFIG_FILE
from registry.operations import versions
from registry.refs import parse_tag
from registry.service import Service
from registry.web import base_pages, merge_page, version_view
from registry.web import session as web_session
from registry.web.version_view import Pages

#: ``?done=`` codes and what the page then says (fixed texts: a link cannot make the page say anything else).
DONE = {
    "alias": "The alias now points at this version.",
    "alias-remove": "The alias was removed.",
    "tag": "The tag was set.",
    "untag": "The tag was removed.",
    "deprecate": "This version is now deprecated.",
    "undeprecate": "This version is ready again.",
    "describe": "The description was saved.",
}
MAX_FIELD = 8192  # characters of one form field passed on (the operations check their own, smaller, limits)


def add_routes(pages: Pages) -> None:
    """The version page and its actions, the base-model pages and the merge form (and the template helpers they
    use: links to a version or a base, readable values and nested evidence)."""
    _add_version_page(pages)
    _add_actions(pages)
    base_pages.add_routes(pages)
    merge_page.add_routes(pages)
    pages.templates.env.globals.update(
        version_url=version_view.version_url, base_url=version_view.base_url, base_key=version_view.base_key,
        shown=version_view.shown, flatten=version_view.flatten, folded_rows=version_view.FOLDED_ROWS)


def render_version(pages: Pages, request: Request, principal: auth.Principal, svc: Service, ref: str, *,
                   done: str = "", action_error: dict[str, str] | None = None,
                   values: dict[str, str] | None = None) -> Response:
    """The version page of ``ref`` (an error page when it cannot be read)."""
    try:
        page = version_view.load_version_page(svc, principal, ref)
    except RegistryError as exc:
        return pages.error(request, exc, principal)
    return pages.render(request, "version.html", user=principal, page=page, v=page.version, title=page.version.ref,
                        done=DONE.get(done), action_error=action_error or {}, values=values or {},
                        file_names=FILES)


def _add_version_page(pages: Pages) -> None:
    router = pages.router

    @router.get("/v/{ref}", response_class=HTMLResponse)
    def version_page(request: Request, ref: str, done: str = "") -> Response:
        try:
            principal, svc = pages.acting(request)
        except RegistryError as exc:
            return pages.error(request, exc)
        return render_version(pages, request, principal, svc, ref, done=done)

    @router.get("/v/{ref}/files/{filename}")
    def version_file(request: Request, ref: str, filename: str) -> Response:
        """A stored file of the version (what ``GET /v1/versions/{ref}/files/{filename}`` sends), for the session."""
        principal = None
        try:
            principal, svc = pages.acting(request)
            if filename not in FILES:
                raise InvalidAdapter(ref, [f"{filename[:100]!r} is not a stored file ({', '.join(FILES)})"])
            version = versions.get(svc, ref)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        path = svc.store.path(str(Path(version.path).relative_to(svc.store.root))) / filename
        media = "application/json" if filename == CONFIG_FILE else "application/octet-stream"
        # The download is named after the version, so two versions' files do not overwrite each other.
        download = f"{version.name}-v{version.version}-{filename}"
        return LargeChunkFileResponse(path, media_type=media, filename=download, headers={
            "X-Weights-Sha256": version.weights_sha256, "X-Adapter-Ref": version.ref,
            "Content-Security-Policy": "default-src 'none'", "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store"})


def _text(form: Any, field: str) -> str:
    return str(form.get(field) or "")[:MAX_FIELD]


def _checked(form: Any, field: str) -> bool:
    return form.get(field) in ("1", "on", "true", "yes")


def _alias_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    protect = {"1": True, "0": False}.get(_text(form, "protect"))
    return {"ref": view.ref, "alias": _text(form, "alias").strip(), "force": _checked(form, "force"),
            "protect": protect}


def _alias_remove_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    return {"name": view.name, "alias": _text(form, "alias").strip()}


def _tag_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    key, value = parse_tag(_text(form, "tag"))
    return {"ref": view.ref, "tags": {key: value}}


def _untag_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    return {"ref": view.ref, "keys": [_text(form, "key")]}


def _deprecate_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    return {"ref": view.ref, "reason": _text(form, "reason")}


def _undeprecate_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    return {"ref": view.ref}


def _describe_args(view: t.AdapterVersion, form: Any) -> dict[str, Any]:
    # the version's own description, or (target=adapter) the adapter's: the bare name means the adapter
    target = view.name if _text(form, "target") == "adapter" else view.ref
    return {"ref": target, "description": _text(form, "description").replace("\r\n", "\n")}


Arguments = Callable[[t.AdapterVersion, Any], dict[str, Any]]
#: Each action's path under /v/{ref}/: the endpoint (operation and permission rule) it calls, and how its form
#: becomes that endpoint's arguments (a RegistryError there is the user's mistake, shown by the form).
ACTIONS: dict[str, tuple[str, Arguments]] = {
    "alias": ("set_alias", _alias_args),
    "alias-remove": ("remove_alias", _alias_remove_args),
    "tag": ("tag", _tag_args),
    "untag": ("untag", _untag_args),
    "deprecate": ("deprecate", _deprecate_args),
    "undeprecate": ("undeprecate", _undeprecate_args),
    "describe": ("describe", _describe_args),
}


def _add_actions(pages: Pages) -> None:
    @pages.router.post("/v/{ref}/{action}")
    async def version_action(request: Request, ref: str, action: str) -> Response:
        if action not in ACTIONS:
            return pages.error(request, RegistryError(f"no action {action[:40]!r} on a version"))
        try:
            principal, svc = await run_in_threadpool(pages.acting, request)
        except Unauthenticated:  # signed out meanwhile: sign in, then back to the page (the post is not replayed)
            return RedirectResponse("/login?" + urlencode({"next": version_view.version_url(ref)}), status_code=303)
        except RegistryError as exc:
            return pages.error(request, exc)
        form = await request.form()
        try:
            pages.check_form(request, form)
        except Forbidden as exc:
            return pages.error(request, exc, principal)
        return await run_in_threadpool(_act, pages, request, principal, svc, ref, action, form)


def _act(pages: Pages, request: Request, principal: auth.Principal, svc: Service, ref: str, action: str,
         form: Any) -> Response:
    """Run one action: the permission rule (refused: a 403 page), the form's arguments and the operation (a mistake:
    the page again, with the message by the form, 200), then back to the page (303)."""
    endpoint = BY_NAME[ACTIONS[action][0]]
    try:
        view = versions.get(svc, ref)
        # the rule first, on the version itself: a token that may not write here learns nothing about its form
        endpoint.rule(principal, {"ref": view.ref, "name": view.name}, svc)
    except RegistryError as exc:
        return pages.error(request, exc, principal)
    values = {k: _text(form, k) for k in form if k != web_session.CSRF_FIELD}
    try:
        args = ACTIONS[action][1](view, form)
        endpoint.rule(principal, args, svc)
        endpoint.function(svc, **args)
    except ProtectedAlias as exc:  # the operation's own refusal: said by the form
        return render_version(pages, request, principal, svc, view.ref, values=values,
                              action_error={"form": action, "message": _said(exc)})
    except Forbidden as exc:
        return pages.error(request, exc, principal)
    except RegistryError as exc:
        return render_version(pages, request, principal, svc, view.ref, values=values,
                              action_error={"form": action, "message": _said(exc)})
    return RedirectResponse(version_view.version_url(view.ref, f"?done={action}"), status_code=303)


def _said(exc: RegistryError) -> str:
    return str(exc) + (f" ({exc.hint})" if exc.hint else "")
