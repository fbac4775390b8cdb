"""The lineage page: ``GET /lineage/{ref}``, every ancestor and descendant of a version as an SVG graph laid out on the
server (:mod:`registry.web.dag_layout`); each node links to its version, static/lineage.js adds pan and zoom."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from registry.errors import RegistryError
from registry.operations import versions
from registry.types import LineageEdgeInfo, LineageGraph
from registry.web import dag_layout
from registry.web.kit import Pages

LABEL_CHARS = 30  # a node shows at most this many characters of its ref (its tooltip has all of it)
CHAR_W = 7.4  # an estimate of one character's width at the node font size (monospace 12px)
LABEL_T = 0.62  # where along the edge's last curve its label sits (towards the child: labels of crossing edges part)


def add_routes(pages: Pages) -> None:
    @pages.router.get("/lineage/{ref}", response_class=HTMLResponse)
    def lineage_page(request: Request, ref: str) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            graph = versions.lineage(svc, ref)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        return pages.render(request, "lineage.html", user=principal, title=f"Lineage of {graph.root}",
                            graph=graph, view=graph_view(graph))


def edge_label(edge: LineageEdgeInfo) -> str:
    """``merge · ties · 0.7``: the relation, the method (merge edges record it in their params) and the weight."""
    parts = [edge.relation]
    method = edge.params.get("method") if isinstance(edge.params, dict) else None
    if method:
        parts.append(str(method))
    if edge.weight is not None:
        parts.append(f"{edge.weight:g}")
    return " · ".join(parts)


def short(ref: str, limit: int = LABEL_CHARS) -> str:
    return ref if len(ref) <= limit else ref[: limit - 1] + "…"


def graph_view(graph: LineageGraph) -> dict[str, Any]:
    """What the template draws: node boxes, edge paths with their labels, the canvas size and the root's centre."""
    refs = [n.ref for n in graph.nodes]
    widths = {ref: len(short(ref)) * CHAR_W + 24 for ref in refs}
    placed = dag_layout.layout(refs, [(e.parent, e.child) for e in graph.edges], widths=widths)
    nodes = []
    for node in graph.nodes:
        box = placed.boxes[node.ref]
        classes = ["node", f"status-{node.status}"] + (["root"] if node.ref == graph.root else [])
        nodes.append({"ref": node.ref, "label": short(node.ref), "status": node.status, "class": " ".join(classes),
                      "x": _n(box.x), "y": _n(box.y), "w": _n(box.w), "h": _n(box.h),
                      "tx": _n(box.x + box.w / 2), "ty": _n(box.mid_y), "created": node.created_at})
    by_pair = {}
    for route in placed.routes:
        by_pair.setdefault((route.parent, route.child), []).append(route)
    edges = []
    for edge in graph.edges:
        route = by_pair[(edge.parent, edge.child)].pop(0)
        label_x, label_y = _label_point(route.points)
        edges.append({"parent": edge.parent, "child": edge.child, "relation": edge.relation, "weight": edge.weight,
                      "method": edge.params.get("method") if isinstance(edge.params, dict) else None,
                      "label": edge_label(edge), "d": _path(route.points), "lx": _n(label_x), "ly": _n(label_y - 5)})
    root = placed.boxes.get(graph.root)
    return {"nodes": nodes, "edges": edges, "width": _n(placed.width), "height": _n(placed.height),
            "root_x": _n(root.x + root.w / 2) if root else 0, "root_y": _n(root.mid_y) if root else 0,
            "layers": len(placed.layers)}


def _path(points: list[tuple[float, float]]) -> str:
    """An SVG path through ``points``: a horizontal S-curve across each gap between columns, a straight line
    through a column (a placeholder's row)."""
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{_n(x0)},{_n(y0)}"]
    for i, (x1, y1) in enumerate(rest):
        if i % 2 == 0:  # across a gap
            mid = (x0 + x1) / 2
            d.append(f"C{_n(mid)},{_n(y0)} {_n(mid)},{_n(y1)} {_n(x1)},{_n(y1)}")
        else:
            d.append(f"L{_n(x1)},{_n(y1)}")
        x0, y0 = x1, y1
    return " ".join(d)


def _label_point(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The point at ``LABEL_T`` along the last curve (the one into the child)."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    t, mid = LABEL_T, (x0 + x1) / 2
    s = 1 - t
    x = s**3 * x0 + 3 * s * s * t * mid + 3 * s * t * t * mid + t**3 * x1
    y = s**3 * y0 + 3 * s * s * t * y0 + 3 * s * t * t * y1 + t**3 * y1
    return x, y


def _n(value: float) -> str:
    """A coordinate for SVG: at most one decimal."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text
