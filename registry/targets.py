"""Resolve LoRA target modules to explicit names of a base model's linear/embedding modules; find the modules an
adapter trains in full (``modules_to_save``) or per token from its stored tensors, and its classification head."""

from __future__ import annotations

from typing import Any

from registry.errors import RegistryError
from registry.inspect import KEY_PREFIX

# Never adapted by "all-linear" (PEFT excludes the output layer too).
_OUTPUT_LAYERS = {"lm_head", "embed_out", "output", "score", "classifier"}


def valid_targets(module_shapes: dict[str, dict[str, Any]]) -> list[str]:
    kinds = ("linear", "embedding")
    return sorted({name.rsplit(".", 1)[-1] for name, s in module_shapes.items() if s["kind"] in kinds})


def resolve_targets(module_shapes: dict[str, dict[str, Any]], targets: list[str] | str,
                    trained_in_full: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Explicit, sorted leaf names; ``all-linear`` expands to every linear leaf except the output layer.

    Anything else that is not a linear or embedding leaf of the base (a Dropout, a LoRA-internal name,
    a misspelling) is refused with the list of valid targets, and so is a module the adapter trains in full
    (``trained_in_full``: a classifier head in ``modules_to_save``), which cannot also carry a LoRA layer.
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
    full = sorted(t for t in resolved if t in trained_in_full)
    if full:
        raise RegistryError(f"target module(s) {full} are trained in full (modules_to_save) for this task; "
                            "they cannot also carry a LoRA layer")
    return sorted(resolved)


# --- modules an adapter trains in full (``modules_to_save``) or per token (trainable tokens) ------------------

TOKEN_ADAPTER = ".token_adapter."  # trainable tokens: <module>.token_adapter.trainable_tokens_delta
HEAD_NAMES = ("classifier", "score", "out_proj")  # classification heads (RoBERTa: classifier.out_proj)


def saved_modules(extra_tensors: dict[str, Any], modules_to_save: list[str] | None) -> tuple[set[str], list[str]]:
    """The module paths (in the base model) that the adapter's non-LoRA tensors belong to, and the tensors that
    belong to none.

    A ``modules_to_save`` tensor is stored under the module's own path (``base_model.model.lm_head.weight``);
    its module is the shortest prefix of the path that ends with a ``modules_to_save`` name (PEFT's own
    ``endswith`` rule). A trainable-tokens tensor is stored under ``<module>.token_adapter.<...>``; its module is
    reported as ``<module>.token_adapter``, where PEFT's layer status shows it.
    """
    names = list(modules_to_save or [])
    modules: set[str] = set()
    strays: list[str] = []
    for key in sorted(extra_tensors):
        path = key.removeprefix(KEY_PREFIX)
        if TOKEN_ADAPTER in path:
            modules.add(path.split(TOKEN_ADAPTER)[0] + TOKEN_ADAPTER.rstrip("."))
            continue
        parts = path.split(".")
        owner = next((".".join(parts[:i]) for i in range(1, len(parts))
                      if any(".".join(parts[:i]).endswith(n) for n in names)), None)
        if owner is None:
            strays.append(key)
        else:
            modules.add(owner)
    return modules, strays


def head_labels(extra_tensors: dict[str, Any]) -> int | None:
    """The number of classes of the classification head an adapter stores in full, if it stores one.

    The head is the deepest 2-D ``weight`` among the stored modules named like a head (``classifier``,
    ``score``, ``out_proj``); its first dimension is the number of labels.
    """
    sizes: dict[str, int] = {}
    for key, shape in extra_tensors.items():
        module, _, leaf = key.removeprefix(KEY_PREFIX).rpartition(".")
        if leaf == "weight" and len(shape) == 2 and module.rsplit(".", 1)[-1] in HEAD_NAMES:
            sizes[module] = int(shape[0])
    return sizes[max(sizes, key=lambda m: (m.count("."), m))] if sizes else None
