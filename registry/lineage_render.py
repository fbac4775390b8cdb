"""Lineage graphs as mermaid or Graphviz dot text."""

from __future__ import annotations

import re

from registry.types import LineageGraph

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
