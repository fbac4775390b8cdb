"""Lineage graphs as mermaid or Graphviz dot text, or as indented tree lines for the terminal."""

from __future__ import annotations

import re

from registry.types import LineageEdgeInfo, LineageGraph

_UNSAFE = re.compile(r'["<>\[\]{}|]')


def _label(edge_relation: str, weight: float | None) -> str:
    return edge_relation if weight is None else f"{edge_relation} {weight:g}"


def to_mermaid(graph: LineageGraph) -> str:
    """``graph TD`` with one node per version (ids n<id>) and one labelled arrow per edge, parent -> child."""
    ids = {n.ref: f"n{n.id}" for n in graph.nodes}
    lines = ["graph TD"]
    for node in graph.nodes:
        text = _UNSAFE.sub("", node.ref)
        lines.append(f'    {ids[node.ref]}["{text}"]')
    for e in graph.edges:
        lines.append(f"    {ids[e.parent]} -->|{_UNSAFE.sub('', _label(e.relation, e.weight))}| {ids[e.child]}")
    lines.append(f"    style {ids[graph.root]} stroke-width:3px")
    return "\n".join(lines) + "\n"


def to_dot(graph: LineageGraph) -> str:
    ids = {n.ref: f"n{n.id}" for n in graph.nodes}
    lines = ["digraph lineage {", "  rankdir=TB;"]
    for node in graph.nodes:
        bold = ", penwidth=3" if node.ref == graph.root else ""
        lines.append(f'  {ids[node.ref]} [label="{_UNSAFE.sub("", node.ref)}"{bold}];')
    for e in graph.edges:
        lines.append(f'  {ids[e.parent]} -> {ids[e.child]} [label="{_UNSAFE.sub("", _label(e.relation, e.weight))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def edge_text(e: LineageEdgeInfo) -> str:
    """``merge svd w=0.7 svd_rank=8``: the relation, the method, the weight and every recorded parameter."""
    params = dict(e.params)
    parts = [e.relation]
    if params.get("method"):
        parts.append(str(params.pop("method")))
    if e.weight is not None:
        parts.append(f"w={e.weight:g}")
    parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())]
    return " ".join(parts)


def to_tree_lines(graph: LineageGraph) -> list[tuple[int, str, str]]:
    """``(depth, ref, edge text)`` rows: the root (depth 0), its ancestors (parents at depth 1, theirs at 2, ...)
    under an ``ancestors`` heading, then its descendants likewise. A version reached twice is listed again
    with ``(see above)`` and not expanded, so a DAG prints in size linear in its edges."""
    parents: dict[str, list[LineageEdgeInfo]] = {}
    children: dict[str, list[LineageEdgeInfo]] = {}
    for e in graph.edges:
        parents.setdefault(e.child, []).append(e)
        children.setdefault(e.parent, []).append(e)
    rows: list[tuple[int, str, str]] = [(0, graph.root, "")]

    def walk(ref: str, depth: int, links: dict[str, list[LineageEdgeInfo]], up: bool, seen: set[str]) -> None:
        for e in sorted(links.get(ref, []), key=lambda x: (x.position, x.parent if up else x.child)):
            other = e.parent if up else e.child
            repeated = other in seen
            rows.append((depth, other + (" (see above)" if repeated else ""), edge_text(e)))
            if not repeated:
                seen.add(other)
                walk(other, depth + 1, links, up, seen)

    for heading, links, up in (("ancestors", parents, True), ("descendants", children, False)):
        if links.get(graph.root):
            rows.append((1, heading, ""))
            walk(graph.root, 2, links, up, {graph.root})
    return rows
