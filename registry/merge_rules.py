"""The merge methods, declared once, and the one static validation of a merge (metadata only, no torch).

Every method is one entry of :data:`METHODS`: its family (how tensors are combined), the parameters it
accepts and requires. The CLI, the SDK, the workers and the docs all read this table; errors for bad
parameters are generated from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from registry.errors import IncompatibleAdapters
from registry.manifest import AdapterManifest

Family = Literal["cat", "ab", "svd"]


@dataclass(frozen=True)
class Param:
    """A method parameter: its check and what the check means, for generated messages."""

    check: Callable[[Any], bool]
    meaning: str
    default: Any = None


PARAMS: dict[str, Param] = {
    "density": Param(lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
    "svd_rank": Param(lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "svd_clamp": Param(lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a quantile in (0, 1]"),
    "majority_sign_method": Param(lambda v: v in ("total", "frequency"), "'total' or 'frequency'", "total"),
    "seed": Param(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}


@dataclass(frozen=True)
class Method:
    """``family``: ``cat`` concatenates ranks; ``ab`` combines A and B separately (equal ranks per module);
    ``svd`` combines deltas then truncates by SVD (``svd`` itself exactly and without a dense delta)."""

    family: Family
    accepts: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    random: bool = False
    rank_rule: str = ""


_PRUNE = frozenset({"density"})
_SIGN = frozenset({"density", "majority_sign_method"})
_SVD = frozenset({"svd_rank", "svd_clamp"})

METHODS: dict[str, Method] = {
    "svd": Method("svd", _SVD, rank_rule="svd_rank, or the largest input rank"),
    "linear": Method("ab", rank_rule="inputs' ranks must be equal per module"),
    "cat": Method("cat", rank_rule="the sum of the inputs' ranks"),
    "ties": Method("ab", _SIGN, _PRUNE, rank_rule="inputs' ranks must be equal per module"),
    "ties_svd": Method("svd", _SIGN | _SVD, _PRUNE, rank_rule="svd_rank, or the largest input rank"),
    "dare_linear": Method("ab", _PRUNE | {"seed"}, _PRUNE, True, "inputs' ranks must be equal per module"),
    "dare_ties": Method("ab", _SIGN | {"seed"}, _PRUNE, True, "inputs' ranks must be equal per module"),
    "dare_linear_svd": Method("svd", _PRUNE | _SVD | {"seed"}, _PRUNE, True, "svd_rank, or the largest input rank"),
    "dare_ties_svd": Method("svd", _SIGN | _SVD | {"seed"}, _PRUNE, True, "svd_rank, or the largest input rank"),
    "magnitude_prune": Method("ab", _PRUNE, _PRUNE, rank_rule="inputs' ranks must be equal per module"),
    "magnitude_prune_svd": Method("svd", _PRUNE | _SVD, _PRUNE, rank_rule="svd_rank, or the largest input rank"),
}


class MergePlan(BaseModel):
    """What a validated merge will do: output rank, modules, which inputs each partial module has."""

    method: str
    family: Family
    out_rank: int
    params: dict[str, Any]
    weights: list[float]
    modules: list[str]
    partial_modules: dict[str, list[str]] = Field(default_factory=dict)  # module -> labels of inputs having it
    warnings: list[str] = Field(default_factory=list)


def _max_rank(m: AdapterManifest) -> int:
    return max([m.r, *m.rank_pattern.values()]) if m.rank_pattern else m.r


def check_params(method: str, params: dict[str, Any]) -> list[str]:
    """Problems with ``method`` and its parameters (unknown, unused, missing or out of range)."""
    rule = METHODS.get(method)
    if rule is None:
        return [f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}"]
    problems = []
    for name, value in params.items():
        spec = PARAMS.get(name)
        if spec is None:
            problems.append(f"unknown parameter {name!r}")
        elif name not in rule.accepts:
            if value != spec.default:
                accepted = ", ".join(sorted(rule.accepts)) or "no parameters"
                problems.append(f"parameter {name} is not used by method {method} (it accepts: {accepted})")
        elif not spec.check(value):
            problems.append(f"parameter {name} must be {spec.meaning} (got {value!r})")
    for name in sorted(rule.requires):
        if params.get(name) is None:
            problems.append(f"method {method} needs parameter {name} ({PARAMS[name].meaning})")
    return problems


def check_merge(
    manifests: list[AdapterManifest],
    weights: list[float],
    method: str,
    params: dict[str, Any] | None = None,
    *,
    allow_cross_base: bool = False,
    labels: list[str] | None = None,
) -> MergePlan:
    """Validate a merge on metadata alone; raise :class:`IncompatibleAdapters` listing every problem."""
    params = {k: v for k, v in (params or {}).items() if v is not None}
    labels = labels or [f"input {i}" for i in range(len(manifests))]
    problems = check_params(method, params)
    rule = METHODS.get(method)
    if not manifests:
        problems.append("no adapters to merge")
    if len(weights) != len(manifests):
        problems.append(f"{len(weights)} weight(s) for {len(manifests)} adapter(s): give one weight per adapter")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        problems.append("weights must be finite numbers")
    elif weights and all(w == 0 for w in weights):
        problems.append("all weights are zero: the merge would be a no-op")

    for label, m in zip(labels, manifests, strict=False):
        if m.peft_type.upper() != "LORA":
            problems.append(f"{label}: peft_type {m.peft_type} is not LoRA")
        if m.use_dora:
            problems.append(f"{label}: DoRA adapters (use_dora) cannot be merged by these methods")
        if m.lora_bias or any(t.has_bias for t in m.modules.values()):
            problems.append(f"{label}: adapters with lora_bias cannot be merged")
        if m.target_parameters:
            problems.append(f"{label}: adapters with target_parameters cannot be merged")
        unsupported = sorted({t.kind for t in m.modules.values()} - {"linear"})
        if unsupported:
            problems.append(f"{label}: {' and '.join(unsupported)} LoRA layers are not supported by the merge engine")

    if manifests and not allow_cross_base:
        bases = {(m.base_model_name_or_path, m.revision) for m in manifests}
        if len(bases) > 1:
            listed = "; ".join(f"{lab}: {m.base_model_name_or_path}@{m.revision or 'unpinned'}"
                               for lab, m in zip(labels, manifests, strict=False))
            problems.append(f"the adapters were made for different base models or revisions ({listed}); "
                            "pass allow_cross_base to merge them anyway")

    saved: dict[str, list[str]] = {}
    for label, m in zip(labels, manifests, strict=False):
        for module in m.modules_to_save:
            saved.setdefault(module, []).append(label)
    for module, owners in saved.items():
        if len(owners) > 1:
            problems.append(f"{' and '.join(owners)} both fully train module {module!r} (modules_to_save)")
    warnings = [f"modules_to_save of {owners[0]} ({module}) is not carried into the merged adapter"
                for module, owners in saved.items() if len(owners) == 1]

    modules = sorted({name for m in manifests for name in m.modules})
    partial: dict[str, list[str]] = {}
    for module in modules:
        present = [(lab, m.modules[module]) for lab, m in zip(labels, manifests, strict=False) if module in m.modules]
        if len(present) < len(manifests):
            partial[module] = [lab for lab, _ in present]
        shapes = {(t.in_features, t.out_features) for _, t in present}
        if len(shapes) > 1:
            listed = ", ".join(f"{lab}: in={t.in_features} out={t.out_features}" for lab, t in present)
            problems.append(f"module {module}: the adapters disagree on its shape ({listed})")
        if rule is not None and rule.family == "ab":
            ranks = {t.rank for _, t in present}
            if len(ranks) > 1:
                listed = ", ".join(f"{lab}: r={t.rank}" for lab, t in present)
                problems.append(f"module {module}: method {method} needs equal ranks ({listed}); use cat or svd")

    if problems:
        raise IncompatibleAdapters(problems)
    assert rule is not None
    if rule.family == "cat":
        out_rank = sum(_max_rank(m) for m in manifests)
    elif rule.family == "svd":
        out_rank = params.get("svd_rank") or max(_max_rank(m) for m in manifests)
    else:
        out_rank = max(t.rank for m in manifests for t in m.modules.values())
    resolved = {k: params.get(k, PARAMS[k].default) for k in sorted(rule.accepts)}
    return MergePlan(method=method, family=rule.family, out_rank=out_rank, params=resolved,
                     weights=[float(w) for w in weights], modules=modules, partial_modules=partial, warnings=warnings)
