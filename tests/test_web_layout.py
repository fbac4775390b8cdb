"""The lineage page's DAG layout (registry/web/dag_layout.py), pure: layers, crossings, no overlaps, speed."""

from __future__ import annotations

import itertools
import random
import time

from registry.web import dag_layout
from registry.web.dag_layout import Spacing, layout


def assert_sound(placed: dag_layout.Layout, nodes: list[str], edges: list[tuple[str, str]]) -> None:
    """Every node placed once; no two boxes overlap; parents left of children; boxes inside the canvas; edges start
    at their parent's right side, end at their child's left side and cross no node's box."""
    assert set(placed.boxes) == set(nodes)
    boxes = list(placed.boxes.items())
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), (a, box_a, b, box_b)
    for box in placed.boxes.values():
        assert box.x >= 0 and box.right <= placed.width and box.y >= 0 and box.bottom <= placed.height
    for parent, child in edges:
        assert placed.boxes[parent].layer < placed.boxes[child].layer, (parent, child)
    assert len(placed.routes) == len(edges)
    for route in placed.routes:
        start, end = placed.boxes[route.parent], placed.boxes[route.child]
        assert route.points[0] == (start.right, start.mid_y) and route.points[-1] == (end.x, end.mid_y)
        # the straight runs through columns (odd segments) pass no box of that column
        for (x0, y0), (_x1, y1) in zip(route.points[1::2], route.points[2::2], strict=False):
            assert y0 == y1
            for box in placed.boxes.values():
                if box.x <= x0 < box.right:
                    assert not box.y <= y0 <= box.bottom, (route.parent, route.child, box)


def chain_with_merges(length: int = 200) -> tuple[list[str], list[tuple[str, str]]]:
    """A 200-version history: a chain of fine-tunes, a side adapter merged in every tenth version, and an old
    version merged back into a later one now and then (long edges)."""
    nodes, edges = [], []
    for i in range(length):
        if i % 10 == 5:
            nodes.append(f"side-{i}:1")
        nodes.append(f"main:{i + 1}")
        if i:
            edges.append((f"main:{i}", f"main:{i + 1}"))
        if i % 10 == 5:
            edges.append((f"side-{i}:1", f"main:{i + 1}"))
        if i % 25 == 0 and i >= 50:
            edges.append((f"main:{i - 40}", f"main:{i + 1}"))
    return nodes, edges


def test_layers_are_longest_paths_from_the_roots() -> None:
    nodes = ["a", "b", "c", "d", "e"]
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("e", "d")]
    placed = layout(nodes, edges)
    assert {k: b.layer for k, b in placed.boxes.items()} == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 2}  # e: pulled right
    assert placed.layers == [["a"], ["b"], ["c", "e"], ["d"]] or placed.layers == [["a"], ["b"], ["e", "c"], ["d"]]
    assert placed.placeholders == 1  # a -> c crosses layer 1
    assert_sound(placed, nodes, edges)


def test_a_diamond() -> None:
    nodes, edges = ["base", "left", "right", "merged"], [("base", "left"), ("base", "right"), ("left", "merged"),
                                                          ("right", "merged")]
    placed = layout(nodes, edges)
    layer = {k: b.layer for k, b in placed.boxes.items()}
    assert layer == {"base": 0, "left": 1, "right": 1, "merged": 2}
    assert placed.boxes["left"].row != placed.boxes["right"].row and placed.crossings == 0
    rows = sorted([placed.boxes["left"].row, placed.boxes["right"].row])
    assert rows[0] <= placed.boxes["merged"].row <= rows[1] and rows[0] <= placed.boxes["base"].row <= rows[1]
    assert_sound(placed, nodes, edges)


def test_empty_and_single_node() -> None:
    empty = layout([], [])
    assert empty.boxes == {} and empty.routes == [] and empty.width > 0 and empty.height > 0
    single = layout(["only:1"], [], widths={"only:1": 150})
    box = single.boxes["only:1"]
    assert (box.layer, box.row, box.w) == (0, 0, 150) and single.width == box.w + 2 * Spacing().margin
    assert_sound(single, ["only:1"], [])


def test_barycenter_sweeps_remove_a_crossing() -> None:
    # created in an order that crosses: a's child is made after b's child
    nodes, edges = ["a", "b", "child-of-b", "child-of-a"], [("b", "child-of-b"), ("a", "child-of-a")]
    assert dag_layout.count_crossings([[0, 1], [2, 3]], [[3], [2], [], []]) == 1  # the creation order's crossing
    placed = layout(nodes, edges)
    assert placed.crossings == 0
    rows = {key: box.row for key, box in placed.boxes.items()}
    assert rows["a"] < rows["b"] and rows["child-of-a"] < rows["child-of-b"]
    assert_sound(placed, nodes, edges)


def test_crossings_are_counted() -> None:
    #   0 -> 3, 1 -> 2, 1 -> 3 with the lower layer [2, 3]: 0->3 crosses 1->2 only
    assert dag_layout.count_crossings([[0, 1], [2, 3]], [[3], [2, 3], [], []]) == 1
    assert dag_layout.count_crossings([[0, 1], [2, 3]], [[2], [3], [], []]) == 0
    assert dag_layout.count_crossings([[0, 1, 2], [3, 4, 5]], [[5], [4], [3], [], [], []]) == 3


def test_rows_are_strictly_increasing_and_near_their_wish() -> None:
    assert dag_layout._increasing([0, 0, 0]) in ([-1, 0, 1], [0, 1, 2])
    assert dag_layout._increasing([5, 1]) == [2, 3] or dag_layout._increasing([5, 1]) == [3, 4]
    assert dag_layout._increasing([0, 4, 9]) == [0, 4, 9]


def test_a_chain_runs_straight() -> None:
    nodes = [f"v:{i}" for i in range(30)]
    edges = list(itertools.pairwise(nodes))
    placed = layout(nodes, edges)
    assert {b.row for b in placed.boxes.values()} == {0} and placed.height == Spacing().node_h + 2 * Spacing().margin
    assert [placed.boxes[n].layer for n in nodes] == list(range(30))


def test_200_versions_with_merges_are_laid_out_in_milliseconds() -> None:
    nodes, edges = chain_with_merges()
    assert len([n for n in nodes if n.startswith("main:")]) == 200
    widths = {n: 7.4 * len(n) + 24 for n in nodes}
    layout(nodes, edges, widths=widths)  # warm up
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        placed = layout(nodes, edges, widths=widths)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    print(f"layout of {len(nodes)} nodes, {len(edges)} edges: best {best * 1000:.1f} ms, "
          f"{placed.placeholders} placeholders, {placed.crossings} crossings")
    assert best < 0.1, f"{best * 1000:.1f} ms"
    assert_sound(placed, nodes, edges)
    # at most one crossing per long edge (where an older trunk, running outside a newer one, returns to the chain)
    assert placed.crossings <= sum(1 for p, c in edges if p.startswith("main:") and int(c[5:]) - int(p[5:]) > 1)
    # the main chain runs along one row; each side adapter sits one row beside its merge
    assert len({placed.boxes[n].row for n in nodes if n.startswith("main:")}) <= 2
    assert placed.height < 8 * (Spacing().node_h + Spacing().row_gap)


def test_a_wide_dag() -> None:
    """Twenty bases, each fine-tuned eight times, the fine-tunes merged pairwise across bases, then a final merge of
    some of those: wide layers, many edges between them."""
    rng = random.Random(7)
    nodes, edges = [], []
    bases = [f"base-{i}:1" for i in range(20)]
    nodes += bases
    tunes = []
    for b in bases:
        for j in range(8):
            tune = f"{b.split(':')[0]}-ft{j}:1"
            nodes.append(tune)
            edges.append((b, tune))
            tunes.append(tune)
    merges = []
    for k in range(40):
        merged = f"merge-{k}:1"
        nodes.append(merged)
        for parent in rng.sample(tunes, 3):
            edges.append((parent, merged))
        merges.append(merged)
    nodes.append("final:1")
    edges += [(m, "final:1") for m in rng.sample(merges, 6)]
    edges.append((bases[3], "final:1"))  # a long edge from the first layer to the last
    start = time.perf_counter()
    placed = layout(nodes, edges)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.1, f"{elapsed * 1000:.1f} ms"
    assert_sound(placed, nodes, edges)
    assert [len(layer) for layer in placed.layers] == [20, 160, 40, 1]
    # the sweeps did better than the creation order
    first = layout(nodes, edges, sweeps=0)
    assert placed.crossings < first.crossings


def test_many_long_edges_from_one_parent_share_a_trunk() -> None:
    """A version merged into every later one: one placeholder per layer crossed, not one per edge."""
    nodes = [f"v:{i}" for i in range(60)]
    edges = list(itertools.pairwise(nodes)) + [("v:0", f"v:{i}") for i in range(2, 60)]
    placed = layout(nodes, edges)
    assert placed.placeholders == 58
    assert_sound(placed, nodes, edges)


def test_unknown_nodes_duplicates_and_cycles_do_not_break_it() -> None:
    nodes = ["a", "b", "c"]
    edges = [("a", "b"), ("a", "b"), ("b", "c"), ("c", "a"), ("a", "ghost")]
    placed = layout(nodes, edges)
    assert set(placed.boxes) == {"a", "b", "c"}
    assert len(placed.routes) == 4 and sum(not r.layered for r in placed.routes) == 1
    for (_, one), (_, two) in itertools.combinations(placed.boxes.items(), 2):
        assert not one.overlaps(two)
