"""Resolve LoRA target modules to explicit names of a base model's linear/embedding modules."""

from __future__ import annotations

from typing import Any

from registry.errors import RegistryError

# Never adapted by "all-linear" (PEFT excludes the output layer too).
_OUTPUT_LAYERS = {"lm_head", "embed_out", "output", "score", "classifier"}


def valid_targets(module_shapes: dict[str, dict[str, Any]]) -> list[str]:
    kinds = ("linear", "embedding")
    return sorted({name.rsplit(".", 1)[-1] for name, s in module_shapes.items() if s["kind"] in kinds})


def resolve_targets(module_shapes: dict[str, dict[str, Any]], targets: list[str] | str) -> list[str]:
    """Explicit, sorted leaf names; ``all-linear`` expands to every linear leaf except the output layer.

    Anything else that is not a linear or embedding leaf of the base (a Dropout, a LoRA-internal name,
    a misspelling) is refused with the list of valid targets.
    """
    if not module_shapes:
        raise RegistryError("the base model's module shapes are unknown: register it with --base-path to train on it")
    wanted = [targets] if isinstance(targets, str) else list(targets)
    if not wanted:
        raise RegistryError("no target modules given")
    valid = valid_targets(module_shapes)
    resolved: set[str] = set()
    bad = []
    for target in wanted:
        if target == "all-linear":
            resolved |= {name.rsplit(".", 1)[-1] for name, s in module_shapes.items()
                         if s["kind"] == "linear" and name.rsplit(".", 1)[-1] not in _OUTPUT_LAYERS}
        elif target in valid:
            resolved.add(target)
        else:
            bad.append(target)
    if bad:
        raise RegistryError(f"unknown target module(s) {bad}: valid targets for this base are {valid}"
                            " (or all-linear)")
    return sorted(resolved)
