"""The base-model pages (issue 16): ``/bases`` lists every base model, ``/bases/{name}`` shows one (its module
shapes, how many versions were registered against it, and every version with evidence that it fits, by level).

``{name}`` is what ``adreg base show`` takes: a short name, a Hub id (``org/model``, ``@revision`` to pick a
pinned record) or a folder's absolute path, slashes included (links percent-encode it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from registry.errors import RegistryError
from registry.operations import bases, versions
from registry.web.version_view import Pages, base_key, natural_key

MAX_COMPATIBLE = 200  # versions listed on a base's page (the newest); the counts above say how many fit


@dataclasses.dataclass(frozen=True)
class ShapeGroup:
    """Modules of a base sharing a leaf name and shape (``q_proj`` 64 -> 64 in every layer)."""

    leaf: str
    kind: str
    in_features: Any
    out_features: Any
    modules: list[str]


def group_shapes(module_shapes: dict[str, dict[str, Any]]) -> list[ShapeGroup]:
    """A base's module shapes (module path -> kind, in, out) grouped by leaf name and shape, modules in layer
    order."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for path, shape in module_shapes.items():
        key = (path.rsplit(".", 1)[-1], str(shape.get("kind", "?")), shape.get("in"), shape.get("out"))
        groups.setdefault(key, []).append(path)
    out = [ShapeGroup(leaf=k[0], kind=k[1], in_features=k[2], out_features=k[3], modules=sorted(v, key=natural_key))
           for k, v in groups.items()]
    return sorted(out, key=lambda g: natural_key(g.modules[0]))


def add_routes(pages: Pages) -> None:
    router = pages.router

    @router.get("/bases", response_class=HTMLResponse)
    def base_list(request: Request) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            found = versions.base_models(svc)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        rows = [(b, b.short_name or base_key(b.name, b.revision)) for b in found]
        return pages.render(request, "bases.html", user=principal, rows=rows, title="Base models")

    @router.get("/bases/{name:path}", response_class=HTMLResponse)
    def base_page(request: Request, name: str) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            detail = bases.base(svc, name, limit=MAX_COMPATIBLE)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        info = detail.info
        return pages.render(request, "base_model.html", user=principal, detail=detail, info=info,
                            shapes=group_shapes(detail.module_shapes), title=info.short_name or info.name,
                            key=info.short_name or base_key(info.name, info.revision))
