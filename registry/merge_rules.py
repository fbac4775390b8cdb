"""The merge methods, declared once, and the one static validation of a merge (metadata only, no torch).

Every method is one row of :data:`METHODS` (mergekit-style): how it combines tensors, which PEFT
``merge_utils`` operation it applies, the parameters it accepts and requires, and its rank rule. The
CLI, the SDK, the workers and the docs read this table; messages for bad parameters are generated from
it and from :data:`PARAMS`. :func:`check_merge` runs on :class:`~registry.manifest.AdapterManifest`
objects only, so the catalog can call it with manifests rebuilt from stored rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from registry.errors import IncompatibleAdapters
from registry.inspect import KEY_PREFIX
from registry.manifest import AdapterManifest

# How a method combines one module's inputs:
#   cat        - concatenate the factors (rank = sum of ranks); exact
#   factors    - combine the A's and the B's separately (equal ranks); PEFT's "rough approximation"
#   exact_svd  - truncated SVD of the exact weighted sum, from the thin factors (no dense delta)
#   dense_svd  - combine the dense deltas element-wise (pruning), then truncate by SVD
#   iso        - Iso-C: the exact weighted sum's SVD with its nonzero singular values set to their mean
#                (thin factors, no dense delta); not exact by design
#   tsv        - TSV-M: each task's top singular components, their singular vectors orthogonalised across tasks
#   cts        - Iso-CTS: the sum's top directions (common subspace) plus each task's top directions off it,
#                orthogonalised, with an isotropic spectrum
#   knots      - KnOTS: one SVD of the concatenated task updates, the tasks' S V_i^T merged (TIES or linear)
#   core       - Core Space: the tasks in the reference bases of their stacked A's and B's (R x R), merged there
Combine = Literal["cat", "factors", "exact_svd", "dense_svd", "iso", "tsv", "cts", "knots", "core"]
# The peft.utils.merge_utils operation applied to the tensors being combined.
Op = Literal["concat", "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"]
RankRule = Literal["equal", "sum", "svd", "thin_sum", "tsv"]


KNOTS_INNER = ("linear", "ties")
#: The methods that merge aligned tasks by an inner rule, and the parameter naming it (TIES or linear).
INNER = {"knots": "knots_inner", "core": "core_inner"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Param:
    """A method parameter: its check, what the check means (for generated messages), its default."""

    check: Callable[[Any], bool]
    meaning: str
    default: Any = None
    help: str = ""


PARAMS: dict[str, Param] = {
    "density": Param(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]",
                     help="fraction of entries kept by pruning (1 keeps everything; knots, core with ties: default 1)"),
    "majority_sign_method": Param(lambda v: v in ("total", "frequency"), "'total' or 'frequency'", "total",
                                  help="how TIES elects the sign of each entry"),
    "svd_rank": Param(lambda v: _is_int(v) and v > 0, "a positive integer",
                      help="output rank of the SVD methods (default: the largest input rank)"),
    "svd_clamp": Param(lambda v: _is_number(v) and 0 < v <= 1, "a quantile in (0, 1]",
                       help="clamp U*S and Vh entries to this quantile of their values, as PEFT does"),
    "seed": Param(_is_int, "an integer", help="seed of DARE's random masks (reproducible merges)"),
    "scale": Param(lambda v: _is_number(v) and v > 0, "a positive number", 1.0,
                   help="the papers' alpha: multiplies the merged delta of iso_c, tsv_m and iso_cts"),
    "tsv_fraction": Param(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]",
                          help="fraction of each task's rank TSV-M keeps (default 1 / number of inputs)"),
    "common_fraction": Param(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]", 0.8,
                             help="fraction of the merged rank Iso-CTS gives the common subspace (the paper's 0.8)"),
    "knots_inner": Param(lambda v: v in KNOTS_INNER, "'linear' or 'ties'", "ties",
                         help="how KnOTS merges the tasks' aligned S V_i^T: TIES (density, majority_sign_method) or "
                              "the weighted sum"),
    "core_inner": Param(lambda v: v in KNOTS_INNER, "'linear' or 'ties'", "ties",
                        help="how Core Space merging merges the tasks' R x R core matrices: TIES (density, "
                             "majority_sign_method) or the weighted sum"),
}


@dataclass(frozen=True)
class Method:
    """One merge method: how it combines, with which operation, its parameters and its rank rule."""

    combine: Combine
    op: Op
    accepts: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    rank_rule: RankRule = "equal"

    @property
    def random(self) -> bool:
        return self.op.startswith("dare")

    @property
    def rank_rule_text(self) -> str:
        return {"equal": "inputs' ranks, which must be equal per module",
                "sum": "the sum of the inputs' ranks",
                "svd": "svd_rank, or the largest input rank",
                "thin_sum": "the sum of the inputs' ranks, at most min(in, out)",
                "tsv": "sum of max(1, floor(r_i * tsv_fraction)), at most min(in, out)"}[self.rank_rule]


_DENSITY = frozenset({"density"})
_SIGN = frozenset({"majority_sign_method"})
_SVD = frozenset({"svd_rank", "svd_clamp"})
_SEED = frozenset({"seed"})
_SCALE = frozenset({"scale"})

METHODS: dict[str, Method] = {
    "svd": Method("exact_svd", "linear", _SVD, rank_rule="svd"),
    "linear": Method("factors", "linear"),
    "cat": Method("cat", "concat", rank_rule="sum"),
    "ties": Method("factors", "ties", _DENSITY | _SIGN, _DENSITY),
    "ties_svd": Method("dense_svd", "ties", _DENSITY | _SIGN | _SVD, _DENSITY, "svd"),
    "dare_linear": Method("factors", "dare_linear", _DENSITY | _SEED, _DENSITY),
    "dare_ties": Method("factors", "dare_ties", _DENSITY | _SIGN | _SEED, _DENSITY),
    "dare_linear_svd": Method("dense_svd", "dare_linear", _DENSITY | _SVD | _SEED, _DENSITY, "svd"),
    "dare_ties_svd": Method("dense_svd", "dare_ties", _DENSITY | _SIGN | _SVD | _SEED, _DENSITY, "svd"),
    "magnitude_prune": Method("factors", "magnitude_prune", _DENSITY, _DENSITY),
    "magnitude_prune_svd": Method("dense_svd", "magnitude_prune", _DENSITY | _SVD, _DENSITY, "svd"),
    # Beyond PEFT: methods from the model-merging papers, in the thin factors (see docs/merge.md)
    "iso_c": Method("iso", "linear", _SCALE, rank_rule="thin_sum"),
    "tsv_m": Method("tsv", "linear", _SCALE | frozenset({"tsv_fraction"}), rank_rule="tsv"),
    "iso_cts": Method("cts", "linear", _SCALE | frozenset({"common_fraction"}), rank_rule="thin_sum"),
    "knots": Method("knots", "linear", _DENSITY | _SIGN | frozenset({"knots_inner"}), rank_rule="thin_sum"),
    "core": Method("core", "linear", _DENSITY | _SIGN | frozenset({"core_inner"}), rank_rule="thin_sum"),
}

# init_lora_weights values whose adapters only work on a base that PEFT modified when creating them.
_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")


class MergePlan(BaseModel):
    """What a validated merge will do. Pure metadata: the engine follows it, the catalog can store it."""

    method: str
    combine: Combine
    op: Op
    out_rank: int  # the merged config's ``r``: the largest module rank
    module_ranks: dict[str, int]  # module path -> its output rank
    rank_pattern: dict[str, int] = Field(default_factory=dict)  # for the merged config (alpha_pattern equal)
    params: dict[str, Any]  # every parameter the method accepts, defaults resolved
    weights: list[float]
    modules: list[str]
    partial_modules: dict[str, list[str]] = Field(default_factory=dict)  # module -> labels of inputs having it
    # modules_to_save module -> indices of the inputs whose trained copies are summed with their weights
    saved_modules: dict[str, list[int]] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


def check_params(method: str, params: dict[str, Any]) -> list[str]:
    """Problems with ``method`` and its parameters: unknown, unused, missing or out of range."""
    rule = METHODS.get(method)
    if rule is None:
        return [f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}"]
    problems = []
    for name, value in params.items():
        spec = PARAMS.get(name)
        if spec is None:
            problems.append(f"unknown parameter {name!r}; known parameters: {', '.join(PARAMS)}")
        elif name not in rule.accepts:
            if value is not None and value != spec.default:
                accepted = ", ".join(sorted(rule.accepts)) or "no parameters"
                problems.append(f"parameter {name} is not used by method {method} (it accepts: {accepted})")
        elif value is not None and not spec.check(value):
            problems.append(f"parameter {name} must be {spec.meaning} (got {value!r})")
        elif rule.combine in INNER and params.get(INNER[rule.combine]) == "linear" and name in _DENSITY | _SIGN \
                and value is not None and value != spec.default:
            problems.append(f"parameter {name} is not used by method {method} with {INNER[rule.combine]} 'linear' "
                            "(TIES only)")
    for name in sorted(rule.requires):
        if params.get(name) is None:
            problems.append(f"method {method} needs parameter {name} ({PARAMS[name].meaning})")
    return problems


def _check_weights(weights: list[float], count: int) -> list[str]:
    problems = []
    if len(weights) != count:
        problems.append(f"{len(weights)} weight(s) for {count} adapter(s): give one weight per adapter "
                        "(PEFT would silently drop the extra adapters or weights)")
    bad = [i for i, w in enumerate(weights) if not _is_number(w)]
    if bad:
        problems.append(f"weights must be finite numbers (weight {', '.join(str(i + 1) for i in bad)} is "
                        f"{', '.join(repr(weights[i]) for i in bad)})")
    elif weights and all(w == 0 for w in weights):
        problems.append("all weights are zero: the merge would be a no-op")
    return problems


def _check_source(label: str, m: AdapterManifest) -> list[str]:
    """Features of one adapter that the merge cannot carry, each named with the adapter."""
    problems = []
    if m.peft_type.upper() != "LORA":
        problems.append(f"{label}: peft_type {m.peft_type} is not LoRA")
    if m.use_dora or any(t.has_magnitude for t in m.modules.values()):
        problems.append(f"{label}: DoRA adapters (use_dora) cannot be merged: the magnitude vector of a sum "
                        "is not a combination of the inputs' magnitudes")
    if m.lora_bias or any(t.has_bias for t in m.modules.values()):
        problems.append(f"{label}: adapters with lora_bias cannot be merged (PEFT's merge drops the bias)")
    bias = m.config.get("bias") or "none"
    if bias != "none":
        problems.append(f"{label}: bias={bias!r}: the adapter trained the base model's own biases, which replace "
                        "the base's values instead of adding a delta to them, so they cannot be weighted or "
                        "combined without the base model (PEFT refuses to hold two adapters with biases); train "
                        "it with bias='none'")
    if m.target_parameters:
        problems.append(f"{label}: adapters with target_parameters ({', '.join(m.target_parameters)}) "
                        "cannot be merged")
    kinds = sorted({t.kind for t in m.modules.values()} - {"linear", "embedding"})
    if kinds:
        examples = [name for name, t in m.modules.items() if t.kind in kinds][:3]
        problems.append(f"{label}: {' and '.join(kinds)} LoRA layers are not supported by the merge engine "
                        f"(e.g. {', '.join(examples)})")
    init = m.config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
        problems.append(f"{label}: initialised with init_lora_weights={init!r}, which changes the base "
                        "weights; convert it to a plain LoRA first (PEFT's "
                        "path_initial_model_for_weight_conversion)")
    if m.config.get("alora_invocation_tokens"):
        problems.append(f"{label}: activated LoRA (alora_invocation_tokens) cannot be merged")
    return problems


def _group(lines: dict[str, list[str]], limit: int = 3) -> list[str]:
    """One problem per distinct message, naming up to ``limit`` modules and how many more."""
    out = []
    for message, modules in lines.items():
        shown = ", ".join(modules[:limit]) + (f" and {len(modules) - limit} more" if len(modules) > limit else "")
        out.append(message.replace("{count}", str(len(modules))).replace("{modules}", shown))
    return out


def tsv_components(rank: int, fraction: float) -> int:
    """How many singular components TSV-M keeps of a task of rank ``rank``: ``max(1, floor(rank * fraction))``
    (the tiny tolerance keeps ``floor(9 * (1/3))`` at 3 despite rounding)."""
    return max(1, math.floor(rank * fraction + 1e-9))


def _max_rank(m: AdapterManifest) -> int:
    """The largest rank an adapter uses anywhere (PEFT's rule for the default svd rank)."""
    ranks = [m.r, *m.rank_pattern.values(), *(t.rank for t in m.modules.values())]
    return max(ranks)


def _compress_pattern(module_ranks: dict[str, int], out_rank: int) -> dict[str, int]:
    """A rank_pattern reproducing ``module_ranks`` under a global ``r = out_rank`` (PEFT's matching rule).

    A leaf name (``v_proj``) is used when every module with that leaf has the same rank; otherwise the
    full module path, escaped, so that it matches that module only.
    """
    by_leaf: dict[str, set[int]] = {}
    for module, rank in module_ranks.items():
        by_leaf.setdefault(module.rsplit(".", 1)[-1], set()).add(rank)
    pattern: dict[str, int] = {}
    for module, rank in sorted(module_ranks.items()):
        leaf = module.rsplit(".", 1)[-1]
        if len(by_leaf[leaf]) == 1:
            if rank != out_rank:
                pattern[leaf] = rank
        elif rank != out_rank:
            pattern[re.escape(module)] = rank
    return pattern


def saved_module_tensors(m: AdapterManifest) -> dict[str, dict[str, list[int]]]:
    """The trained copies of ``modules_to_save`` modules in an adapter's weights: module path -> {parameter: shape}.

    PEFT saves its copy of a module (``classifier``) under the module's own path
    (``base_model.model.classifier.weight``, ``...classifier.out_proj.bias`` for a nested head) and matches a
    ``modules_to_save`` entry to a module path with ``path.endswith(entry)``; the shortest such path wins.
    """
    names = tuple(n for n in m.modules_to_save if n)
    out: dict[str, dict[str, list[int]]] = {}
    if not names:
        return out
    for key, shape in m.extra_tensors.items():
        if not key.startswith(KEY_PREFIX) or "trainable_tokens" in key:
            continue
        parts = key[len(KEY_PREFIX):].split(".")
        for cut in range(1, len(parts)):
            path = ".".join(parts[:cut])
            if path.endswith(names):
                out.setdefault(path, {})[".".join(parts[cut:])] = list(shape)
                break
    return out


def _params_text(label: str, params: dict[str, list[int]]) -> str:
    return f"{label}: " + ", ".join(f"{name} {shape}" for name, shape in sorted(params.items()))


def _trains_biases(m: AdapterManifest) -> bool:
    return (m.config.get("bias") or "none") != "none"


def _plan_saved_modules(manifests: list[AdapterManifest], weights: list[float], labels: list[str],
                        lora_modules: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Which ``modules_to_save`` copies the merge carries (module -> owning inputs), and why others cannot be.

    A fully trained module's merged copy is ``sum_i w_i X_i`` over the inputs that train it. With ``X_0`` the
    base model's own copy (untrained inputs keep it), the weighted merge of what the inputs learned is
    ``X_0 + sum_i w_i (X_i - X_0)``: the same, without ``X_0``, exactly when those weights sum to 1.
    """
    copies = [{} if _trains_biases(m) else saved_module_tensors(m) for m in manifests]
    owners: dict[str, list[int]] = {}
    for i, found in enumerate(copies):
        for path in found:
            owners.setdefault(path, []).append(i)
    plan: dict[str, list[int]] = {}
    problems: list[str] = []
    weights_ok = len(weights) == len(manifests) and all(_is_number(w) for w in weights)
    for path, idx in sorted(owners.items()):
        names = " and ".join(labels[i] for i in idx)
        if len({repr(sorted(copies[i][path].items())) for i in idx}) > 1:
            listed = "; ".join(_params_text(labels[i], copies[i][path]) for i in idx)
            problems.append(f"{names} fully train module {path!r} (modules_to_save) with different parameters or "
                            f"shapes ({listed}); their copies cannot be combined")
            continue
        excluded = re.compile(rf"(^|.*\.){re.escape(path)}($|\..*)")  # PEFT's rule: no LoRA inside a saved module
        lora = [module for module in lora_modules if excluded.match(module)]
        if lora:
            adapting = [labels[i] for i, m in enumerate(manifests) if lora[0] in m.modules]
            problems.append(f"module {path!r} is fully trained (modules_to_save) by {names} but adapted with LoRA "
                            f"by {' and '.join(adapting)} ({lora[0]}): a PEFT adapter cannot hold both")
            continue
        if weights_ok:
            total = sum(weights[i] for i in idx)
            if abs(total - 1) > 1e-6:
                problems.append(
                    f"{names} fully train{'s' if len(idx) == 1 else ''} module {path!r} (modules_to_save) with "
                    f"weight(s) summing to {total:g}: the merged copy is the weighted sum of the trained copies, "
                    "which merges what they learned only when those weights sum to 1 (otherwise it needs the "
                    f"base model's own {path!r}, which a merge does not read); give "
                    f"{'it weight 1' if len(idx) == 1 else 'them weights summing to 1'}")
                continue
        plan[path] = idx
    return plan, problems


def _not_carried(manifests: list[AdapterManifest], labels: list[str]) -> list[str]:
    """Warnings for what an input holds that the merged adapter leaves out."""
    warnings = []
    for label, m in zip(labels, manifests, strict=True):
        if m.config.get("trainable_token_indices"):
            warnings.append(f"trainable tokens of {label} are not carried into the merged adapter")
        carried = {f"{KEY_PREFIX}{path}.{param}" for path, params in saved_module_tensors(m).items()
                   for param in params}
        other = sorted(k for k in m.extra_tensors if k not in carried and "trainable_tokens" not in k)
        base_copies = [k for k in other if ".base_layer." in k]
        rest = [k for k in other if ".base_layer." not in k]
        if base_copies:
            warnings.append(f"{label} holds {len(base_copies)} non-LoRA tensor(s) copying base layers (e.g. "
                            f"{base_copies[0]}), which PEFT saves with embedding adapters; not carried into the "
                            "merged adapter")
        if rest:
            warnings.append(f"{label} holds {len(rest)} non-LoRA tensor(s) that are not modules_to_save copies "
                            f"(e.g. {rest[0]}); not carried into the merged adapter")
    return warnings


def check_merge(
    manifests: list[AdapterManifest],
    weights: list[float],
    method: str,
    params: dict[str, Any] | None = None,
    *,
    allow_cross_base: bool = False,
    labels: list[str] | None = None,
) -> MergePlan:
    """Validate a merge on metadata alone and return its plan.

    Collects every problem (parameters, weights, per-adapter features, base models, modules_to_save,
    module shapes and rank rules) and raises :class:`IncompatibleAdapters` listing them all. ``labels``
    name the adapters in messages (default ``input 1``, ``input 2``, ...).
    """
    params = {k: v for k, v in (params or {}).items() if v is not None}
    if labels is None or len(labels) != len(manifests):
        labels = [f"input {i + 1}" for i in range(len(manifests))]
    problems = check_params(method, params)
    rule = METHODS.get(method)
    if not manifests:
        problems.append("no adapters to merge")
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        problems.append(f"{', '.join(repeated)} is given more than once: give each input once, with the sum of "
                        "its weights (a version is one parent of the merged one)")
    problems += _check_weights(list(weights), len(manifests))
    for label, m in zip(labels, manifests, strict=True):
        problems += _check_source(label, m)

    if manifests and not allow_cross_base:
        bases = {(m.base_model_name_or_path, m.revision) for m in manifests}
        if len(bases) > 1:
            listed = "; ".join(f"{lab}: {m.base_model_name_or_path}@{m.revision or 'unpinned'}"
                               for lab, m in zip(labels, manifests, strict=True))
            problems.append(f"the adapters were made for different base models or revisions ({listed}); "
                            "pass allow_cross_base to merge them anyway")
    tasks = {m.task_type for m in manifests if m.task_type}
    if len(tasks) > 1:
        problems.append(f"the adapters have different task types ({', '.join(sorted(tasks))})")
    replication = {repr(m.config.get("layer_replication")) for m in manifests}
    if len(replication) > 1:
        problems.append("the adapters use different layer_replication settings, so module paths differ")

    modules = sorted({name for m in manifests for name in m.modules})
    saved_modules, saved_problems = _plan_saved_modules(manifests, list(weights), labels, modules)
    problems += saved_problems
    warnings = _not_carried(manifests, labels)

    partial: dict[str, list[str]] = {}
    mismatches: dict[str, list[str]] = {}
    module_ranks: dict[str, int] = {}
    default_svd_rank = max((_max_rank(m) for m in manifests), default=0)
    fraction = params.get("tsv_fraction")
    tsv_fraction = fraction if _is_number(fraction) and 0 < fraction <= 1 else 1 / max(len(manifests), 1)
    capped: list[str] = []
    for module in modules:
        present = [(lab, m.modules[module]) for lab, m in zip(labels, manifests, strict=True)
                   if module in m.modules]
        if len(present) < len(manifests):
            partial[module] = [lab for lab, _ in present]
        if len({(t.kind, t.in_features, t.out_features) for _, t in present}) > 1:
            shapes = ", ".join(f"{lab}: {t.kind} in={t.in_features} out={t.out_features}" for lab, t in present)
            mismatches.setdefault(f"the adapters disagree on the shape of {{count}} module(s) ({shapes}): "
                                  + "{modules}", []).append(module)
            continue
        ranks = [t.rank for _, t in present]
        if rule is None:
            continue
        if rule.rank_rule == "equal":
            if len(set(ranks)) > 1:
                listed = ", ".join(f"{lab}: r={t.rank}" for lab, t in present)
                mismatches.setdefault(f"method {method} needs equal ranks per module ({listed}) on {{count}} "
                                      "module(s): {modules}; use cat or svd", []).append(module)
            module_ranks[module] = ranks[0]
        elif rule.rank_rule == "sum":
            module_ranks[module] = sum(ranks)
        elif rule.rank_rule in ("thin_sum", "tsv"):
            t = present[0][1]
            if rule.rank_rule == "tsv":
                ranks = [tsv_components(r, tsv_fraction) for r in ranks]
            module_ranks[module] = min(sum(ranks), t.in_features, t.out_features)
        else:
            t = present[0][1]
            limit = min(t.in_features, t.out_features)
            if rule.combine == "exact_svd":
                limit = min(limit, sum(ranks))  # the exact weighted sum has at most this rank
            wanted = params.get("svd_rank") or default_svd_rank
            if _is_int(wanted) and wanted > limit:
                if "svd_rank" in params:
                    capped.append(module)
                wanted = limit
            module_ranks[module] = wanted
    problems += _group(mismatches)
    if capped:
        warnings.append(f"svd_rank {params['svd_rank']} exceeds the rank the weighted sum can have on "
                        f"{len(capped)} module(s) (e.g. {capped[0]}); those keep their full rank exactly")

    if problems:
        raise IncompatibleAdapters(problems)
    assert rule is not None
    out_rank = max(module_ranks.values())
    resolved = {k: params.get(k, PARAMS[k].default) for k in sorted(rule.accepts)}
    if rule.rank_rule == "svd" and resolved.get("svd_rank") is None:
        resolved["svd_rank"] = out_rank  # record the rank the default rule chose
    if rule.rank_rule == "tsv":
        resolved["tsv_fraction"] = tsv_fraction  # 1 / number of tasks unless given
    if rule.combine in INNER:  # TIES keeps every entry unless told (KnOTS's LLaMA setting, topK 100%)
        tied = resolved[INNER[rule.combine]] == "ties"
        resolved["density"] = resolved["density"] if resolved["density"] is not None else 1.0 if tied else None
        if not tied:
            resolved.pop("majority_sign_method")
    return MergePlan(
        method=method, combine=rule.combine, op=rule.op, out_rank=out_rank, module_ranks=module_ranks,
        rank_pattern=_compress_pattern(module_ranks, out_rank), params=resolved,
        weights=[float(w) for w in weights], modules=modules, partial_modules=partial,
        saved_modules=saved_modules, warnings=warnings,
    )
