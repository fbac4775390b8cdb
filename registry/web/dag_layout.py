"""A layered layout of a lineage DAG on a grid, in pure Python (no graph library), for the lineage page's SVG.

Parents sit left of their children:

1. **Layers**: longest path from the roots, walking the nodes in creation order (a topological order: a version is
   created after its parents; Kahn's algorithm makes sure). A root is then pulled right to just before its first
   child, so a base adapter registered late and merged into a deep version gets no needlessly long edge.
2. **Long edges** get one placeholder per layer they cross; the placeholders of one parent are shared by all its
   long edges (a trunk), so a version merged into many later ones costs one row, not one per edge. Edges are
   routed through their placeholders, so an edge never crosses a node's box.
3. **Order within layers**: barycenter sweeps (down, then up) reduce crossings; the best order seen is kept.
4. **Rows**: each layer's items get integer rows, strictly increasing in the layer's order, as close as possible to
   the mean row of their neighbours (isotonic regression, pool-adjacent-violators), so chains run straight.
   Distinct rows in a layer and distinct columns per layer mean that no two boxes overlap.

The result is in pixels: a box per node and a polyline per edge (parent's right side, through its placeholders,
to the child's left side). It takes a few milliseconds for a few hundred nodes.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

Key = Hashable
PLACEHOLDER_WEIGHT = 0.1  # how much a placeholder's wish counts against a node's when rows are assigned


@dataclass(frozen=True)
class Box:
    """A node's rectangle (top-left corner, size) and its grid cell."""

    x: float
    y: float
    w: float
    h: float
    layer: int
    row: int

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def mid_y(self) -> float:
        return self.y + self.h / 2

    def overlaps(self, other: Box) -> bool:
        return self.x < other.right and other.x < self.right and self.y < other.bottom and other.y < self.bottom


@dataclass(frozen=True)
class Route:
    """One edge, parent to child: the points of its polyline. Consecutive points alternate between crossing a gap
    between columns (draw a curve) and running through a column along a placeholder's row (a straight line)."""

    parent: Key
    child: Key
    points: list[tuple[float, float]]
    layered: bool = True  # False: an edge against the layer order (a cycle, which a lineage never has)


@dataclass
class Layout:
    width: float
    height: float
    boxes: dict[Key, Box]
    routes: list[Route]
    layers: list[list[Key]] = field(default_factory=list)  # each layer's real nodes, top to bottom
    placeholders: int = 0
    crossings: int = 0  # crossings between adjacent layers in the final order (placeholders included)


@dataclass(frozen=True)
class Spacing:
    node_h: float = 34
    row_gap: float = 22
    col_gap: float = 150  # room for the edge labels between columns
    margin: float = 20
    min_w: float = 90
    max_w: float = 240


def layout(nodes: Sequence[Key], edges: Sequence[tuple[Key, Key]], *, widths: dict[Key, float] | None = None,
           sweeps: int = 4, spacing: Spacing = Spacing()) -> Layout:
    """Lay out ``nodes`` (in creation order) and ``edges`` (parent, child) on a grid.

    ``widths``: each node's wanted box width (e.g. from its label); a column is as wide as its widest node, within
    ``spacing.min_w``..``spacing.max_w``. Edges naming an unknown node are ignored; a duplicate edge gets its own
    route (drawn over the first).
    """
    index = {key: i for i, key in enumerate(dict.fromkeys(nodes))}
    keys = list(index)
    n = len(keys)
    pairs = [(index[p], index[c]) for p, c in edges if p in index and c in index and p != c]
    parents: list[list[int]] = [[] for _ in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    for p, c in dict.fromkeys(pairs):
        parents[c].append(p)
        children[p].append(c)

    order = _topological(n, parents, children)
    position = {v: i for i, v in enumerate(order)}
    layer = [0] * n
    for v in order:
        layer[v] = max((layer[p] + 1 for p in parents[v] if position[p] < position[v]), default=0)
    for v in order:  # roots move right, up to just before their first child
        if not parents[v] and children[v]:
            layer[v] = max(layer[v], min(layer[c] for c in children[v]) - 1)

    # Items: the real nodes 0..n-1, then placeholders; ``up``/``down``: neighbours in the adjacent layers.
    item_layer = list(layer)
    up: list[list[int]] = [[] for _ in range(n)]
    down: list[list[int]] = [[] for _ in range(n)]
    trunk: dict[tuple[int, int], int] = {}  # (parent, layer) -> its placeholder there
    linked: set[tuple[int, int]] = set()

    def link(a: int, b: int) -> None:
        if (a, b) not in linked:
            linked.add((a, b))
            down[a].append(b)
            up[b].append(a)

    for p, c in dict.fromkeys(pairs):
        if layer[c] <= layer[p]:
            continue  # against the order (a cycle): drawn straight, left out of the layering
        previous = p
        for lay in range(layer[p] + 1, layer[c]):
            item = trunk.get((p, lay))
            if item is None:
                item = trunk[(p, lay)] = len(item_layer)
                item_layer.append(lay)
                up.append([])
                down.append([])
            link(previous, item)
            previous = item
        link(previous, c)

    depth = max(item_layer, default=-1) + 1
    layers: list[list[int]] = [[] for _ in range(depth)]
    # creation order first; a placeholder follows its parent's creation rank
    rank = {v: position[v] for v in range(n)}
    for (p, _lay), item in trunk.items():
        rank[item] = position[p] + 0.5
    for item in sorted(range(len(item_layer)), key=lambda i: rank[i]):
        layers[item_layer[item]].append(item)

    layers, crossings = _reduce_crossings(layers, up, down, sweeps)
    rows = _rows(layers, up, down, n)

    widths = widths or {}
    col_w = [spacing.min_w] * depth
    for v in range(n):
        wanted = widths.get(keys[v], spacing.min_w)
        col_w[layer[v]] = min(spacing.max_w, max(col_w[layer[v]], wanted))
    col_x, x = [], spacing.margin
    for w in col_w:
        col_x.append(x)
        x += w + spacing.col_gap
    pitch = spacing.node_h + spacing.row_gap
    width = (x - spacing.col_gap + spacing.margin) if depth else 2 * spacing.margin
    top_row = max(rows.values(), default=0)
    height = (top_row + 1) * pitch - spacing.row_gap + 2 * spacing.margin if n else 2 * spacing.margin

    def y_of(item: int) -> float:
        return spacing.margin + rows[item] * pitch

    boxes = {keys[v]: Box(col_x[layer[v]], y_of(v), col_w[layer[v]], spacing.node_h, layer[v], rows[v])
             for v in range(n)}
    routes = []
    for p, c in pairs:
        start, end = boxes[keys[p]], boxes[keys[c]]
        if layer[c] <= layer[p]:
            routes.append(Route(keys[p], keys[c], [(start.right, start.mid_y), (end.x, end.mid_y)], layered=False))
            continue
        points = [(start.right, start.mid_y)]
        for lay in range(layer[p] + 1, layer[c]):
            y = y_of(trunk[(p, lay)]) + spacing.node_h / 2
            points += [(col_x[lay], y), (col_x[lay] + col_w[lay], y)]
        points.append((end.x, end.mid_y))
        routes.append(Route(keys[p], keys[c], points))
    real_layers = [[keys[v] for v in items if v < n] for items in layers]
    return Layout(width, height, boxes, routes, real_layers, len(item_layer) - n, crossings)


def _topological(n: int, parents: list[list[int]], children: list[list[int]]) -> list[int]:
    """Kahn's algorithm, the earliest created ready node first; nodes on a cycle follow in creation order."""
    missing = [len(ps) for ps in parents]
    ready = [v for v in range(n) if missing[v] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for c in children[v]:
            missing[c] -= 1
            if missing[c] == 0:
                heapq.heappush(ready, c)
    if len(order) < n:
        seen = set(order)
        order += [v for v in range(n) if v not in seen]
    return order


def _reduce_crossings(layers: list[list[int]], up: list[list[int]], down: list[list[int]],
                      sweeps: int) -> tuple[list[list[int]], int]:
    """Barycenter sweeps (down then up, ``sweeps`` times); the order with the fewest crossings wins."""
    best = [list(items) for items in layers]
    best_count = count_crossings(best, down)
    current = [list(items) for items in layers]
    for _ in range(sweeps):
        if best_count == 0:
            break
        for direction in ("down", "up"):
            span = range(1, len(current)) if direction == "down" else range(len(current) - 2, -1, -1)
            for lay in span:
                fixed = current[lay - 1] if direction == "down" else current[lay + 1]
                where = {item: i for i, item in enumerate(fixed)}
                neighbours = up if direction == "down" else down
                here = current[lay]
                keyed = []
                for i, item in enumerate(here):
                    ns = [where[u] for u in neighbours[item] if u in where]
                    keyed.append((sum(ns) / len(ns) if ns else float(i), i, item))
                keyed.sort()
                current[lay] = [item for _, _, item in keyed]
            count = count_crossings(current, down)
            if count < best_count:
                best, best_count = [list(items) for items in current], count
    return best, best_count


def count_crossings(layers: list[list[int]], down: list[list[int]]) -> int:
    """Edge crossings between each pair of adjacent layers (inversions of the lower ends, counted by bisection)."""
    total = 0
    for upper, lower in zip(layers, layers[1:], strict=False):
        where = {item: i for i, item in enumerate(lower)}
        ends = [where[c] for item in upper for c in sorted(down[item], key=lambda c: where.get(c, -1)) if c in where]
        seen: list[int] = []
        for end in ends:
            # edges already seen whose lower end lies right of this one cross it
            total += len(seen) - bisect_right(seen, end)
            seen.insert(bisect_right(seen, end), end)
    return total


def _rows(layers: list[list[int]], up: list[list[int]], down: list[list[int]], real: int) -> dict[int, int]:
    """Integer rows, strictly increasing within each layer, near the mean row of each item's neighbours (going down,
    a merge leans to its first parent: a history with side merges runs straight): a down pass, an up pass, a last
    down pass (so children follow their parents); the smallest row is 0. Items below ``real`` are nodes, the rest
    placeholders, which weigh less: an edge bends around a node, not the reverse."""
    rows = {item: i for items in layers for i, item in enumerate(items)}
    passes = [range(len(layers)), range(len(layers) - 1, -1, -1), range(len(layers))]
    for direction, span in zip(("down", "up", "down"), passes, strict=True):
        neighbours = up if direction == "down" else down
        for lay in span:
            items = layers[lay]
            wanted = []
            for item in items:
                ns = [rows[u] for u in neighbours[item]]
                mean = sum(ns) / len(ns) if ns else rows[item]
                wanted.append((mean + 3 * ns[0]) / 4 if direction == "down" and len(ns) > 1 else mean)
            weights = [1.0 if item < real else PLACEHOLDER_WEIGHT for item in items]
            for item, row in zip(items, _increasing(wanted, weights), strict=True):
                rows[item] = row
    low = min(rows.values(), default=0)
    return {item: row - low for item, row in rows.items()}


def _increasing(wanted: list[float], weights: list[float] | None = None) -> list[int]:
    """Integers r_0 < r_1 < ... closest (weighted least squares) to ``wanted``: the isotonic regression of
    wanted_i - i (pool adjacent violators), rounded, plus i."""
    weights = weights or [1.0] * len(wanted)
    blocks: list[tuple[float, float, int]] = []  # (weighted mean, total weight, items)
    for i, (value, weight) in enumerate(zip(wanted, weights, strict=True)):
        blocks.append((value - i, weight, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight_b, count = blocks.pop()
            prev_mean, prev_weight, prev_count = blocks[-1]
            total = prev_weight + weight_b
            blocks[-1] = ((prev_mean * prev_weight + mean * weight_b) / total, total, prev_count + count)
    out: list[int] = []
    for mean, _weight, count in blocks:
        base = math.floor(mean + 0.5) + len(out)  # halves up, always (round() takes halves to even)
        out += [base + j for j in range(count)]
    return out
