"""Static compatibility rules: does an adapter fit a base model? (Merge rules: ``registry.merge_rules``.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.manifest import AdapterManifest, ModuleTensors

MAX_LISTED = 5
#: Compatibility levels that are evidence an adapter fits a base (``declared`` is a claim whose shapes were never
#: checked, so "compatible with" never counts it).
EVIDENCE_LEVELS = ("exact", "shape", "validated")


def shape_mismatches(manifest: AdapterManifest, base_shapes: dict[str, dict[str, Any]]) -> list[str]:
    """Every module of the adapter that the base lacks or whose shape differs, as readable lines."""
    return module_mismatches(manifest.modules, base_shapes)


def module_mismatches(modules: Mapping[str, ModuleTensors], base_shapes: dict[str, dict[str, Any]]) -> list[str]:
    """:func:`shape_mismatches` for an adapter's modules alone (e.g. as stored in the catalog)."""
    problems: list[str] = []
    for module, tensors in modules.items():
        shape = base_shapes.get(module)
        if shape is None:
            problems.append(f"{module}: no such module in the base model")
        elif shape["kind"] != tensors.kind:
            problems.append(f"{module}: the base has a {shape['kind']} module, the adapter a {tensors.kind} one")
        elif (shape["in"], shape["out"]) != (tensors.in_features, tensors.out_features):
            problems.append(
                f"{module}: the adapter expects in={tensors.in_features}, out={tensors.out_features}; "
                f"the base has in={shape['in']}, out={shape['out']}"
            )
    return problems


def summarise(problems: list[str]) -> str:
    """The first few problems, then how many more."""
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    return "\n".join(f"  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
