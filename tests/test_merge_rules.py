"""Static validation of merges (registry.merge_rules) on hand-built manifests: metadata only, no tensors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from registry.errors import IncompatibleAdapters
from registry.manifest import AdapterManifest, ModuleTensors
from registry.merge_rules import METHODS, PARAMS, check_merge, check_params

# methods from the papers (tested in test_merge_iso_tsv.py), not PEFT combination types
BEYOND_PEFT = {"iso_c", "tsv_m", "iso_cts", "knots", "core"}

LAYERS = 2
SHAPES = {"q_proj": ("self_attn", 64, 64), "v_proj": ("self_attn", 64, 32), "down_proj": ("mlp", 128, 64)}


def manifest(r: int = 4, leaves: tuple[str, ...] = ("q_proj", "v_proj"), rank_pattern: dict[str, int] | None = None,
             kind: str = "linear", **fields: Any) -> AdapterManifest:
    """A manifest as inspect_adapter or the catalog builds it, for a tiny 2-layer Llama."""
    base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "org/base"}
    m = AdapterManifest(r=r, lora_alpha=2 * r, rank_pattern=rank_pattern or {}, target_modules=sorted(leaves),
                        **{**base, **fields})
    for layer in range(LAYERS):
        for leaf in leaves:
            block, fan_in, fan_out = SHAPES[leaf]
            path = f"model.layers.{layer}.{block}.{leaf}"
            rank = m.rank_of(path)
            m.modules[path] = ModuleTensors(kind=kind, rank=rank, in_features=fan_in, out_features=fan_out,
                                            a_shape=[rank, fan_in], b_shape=[fan_out, rank], dtype="float32")
    return m


def problems(*args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(IncompatibleAdapters) as info:
        check_merge(*args, **kwargs)
    return info.value.problems


def test_registry_side_imports_without_torch():
    code = "import sys, registry.merge_rules; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table_covers_peft_combination_types():
    assert set(METHODS) >= {"svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                             "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd"}
    for name, rule in METHODS.items():
        if name in BEYOND_PEFT:
            continue
        assert rule.accepts <= PARAMS.keys() and rule.requires <= rule.accepts
        assert ("density" in rule.requires) == (rule.op not in ("linear", "concat"))
        assert rule.random == name.startswith("dare") == ("seed" in rule.accepts)
        assert (rule.combine in ("exact_svd", "dense_svd")) == name.endswith("svd") == (rule.rank_rule == "svd")


@pytest.mark.parametrize("method", sorted(m for m, rule in METHODS.items() if "density" in rule.requires))
def test_density_required_and_in_range(method):
    a, b = manifest(), manifest()
    assert any(f"method {method} needs parameter density" in p for p in problems([a, b], [1, 1], method, {}))
    for bad in (0, -0.1, 1.01, float("nan"), "half", True):
        found = problems([a, b], [1, 1], method, {"density": bad})
        assert found == [f"parameter density must be a number in (0, 1] (got {bad!r})"]
    assert check_merge([a, b], [1, 1], method, {"density": 1}).params["density"] == 1


@pytest.mark.parametrize(("name", "bad"), [("svd_rank", 0), ("svd_rank", -2), ("svd_rank", 2.5), ("svd_rank", True),
                                           ("svd_clamp", 0), ("svd_clamp", 1.5), ("majority_sign_method", "vote"),
                                           ("seed", "abc")])
def test_parameter_ranges_are_named(name, bad):
    method = "dare_ties_svd"
    found = check_params(method, {"density": 0.5, name: bad})
    assert found == [f"parameter {name} must be {PARAMS[name].meaning} (got {bad!r})"]


def test_unknown_and_unused_parameters():
    assert check_params("linear", {"density": 0.5}) == [
        "parameter density is not used by method linear (it accepts: no parameters)"]
    assert "unknown parameter 'dens'" in check_params("linear", {"dens": 0.5})[0]
    assert check_params("svd", {"majority_sign_method": "total"}) == []  # the default is never an error
    assert "not used by method ties" in check_params("ties", {"density": 0.5, "seed": 1})[0]
    assert "unknown merge method" in check_params("average", {})[0]


def test_weights_rules():
    a, b = manifest(), manifest()
    assert problems([a, b], [1.0], "svd", {}) == [
        "1 weight(s) for 2 adapter(s): give one weight per adapter (PEFT would silently drop the extra adapters or "
        "weights)"]
    assert "all weights are zero" in problems([a, b], [0, 0.0], "svd", {})[0]
    assert "weight 2 is nan" in problems([a, b], [1, float("nan")], "svd", {})[0]
    assert "finite" in problems([a, b], [float("-inf"), 1], "svd", {})[0]
    assert check_merge([a, b], [1, -1], "svd", {}).weights == [1.0, -1.0]
    assert problems([], [], "svd", {}) == ["no adapters to merge"]


def test_every_problem_collected_with_labels():
    a = manifest(use_dora=True)
    b = manifest(r=8, base_model_name_or_path="org/other", lora_bias=True, target_parameters=["experts.w"])
    found = problems([a, b], [1.0], "linear", {"density": 0.5}, labels=["tone:1", "legal@prod"])
    text = "\n".join(found)
    for expected in ("density is not used by method linear", "1 weight(s) for 2 adapter(s)", "tone:1: DoRA",
                     "legal@prod: adapters with lora_bias", "legal@prod: adapters with target_parameters",
                     "different base models", "needs equal ranks per module (tone:1: r=4, legal@prod: r=8) on 4 "):
        assert expected in text, expected
    assert len(found) == 7


@pytest.mark.parametrize(("fields", "message"), [
    ({"config": {"init_lora_weights": "pissa_niter_4"}}, "init_lora_weights='pissa_niter_4'"),
    ({"config": {"init_lora_weights": "olora"}}, "changes the base weights"),
    ({"config": {"alora_invocation_tokens": [1, 2]}}, "activated LoRA"),
    ({"peft_type": "LOHA"}, "peft_type LOHA is not LoRA"),
])
def test_unsupported_features_name_the_adapter(fields, message):
    found = problems([manifest(), manifest(**fields)], [1, 1], "cat", {}, labels=["x", "odd"])
    assert any(p.startswith("odd: ") and message in p for p in found), found


def test_conv_refused_and_embedding_accepted():
    conv = manifest(kind="conv")
    assert any("input 2: conv LoRA layers are not supported" in p for p in problems([manifest(), conv], [1, 1], "cat"))
    plan = check_merge([manifest(kind="embedding"), manifest(kind="embedding")], [1, 1], "svd")
    assert plan.out_rank == 4


def test_cross_base_and_revision():
    a, b = manifest(), manifest(revision="abc123")
    assert any("org/base@unpinned; input 2: org/base@abc123" in p for p in problems([a, b], [1, 1], "cat"))
    assert check_merge([a, b], [1, 1], "cat", allow_cross_base=True).out_rank == 8
    assert any("different task types" in p for p in problems([a, manifest(task_type="SEQ_CLS")], [1, 1], "cat"))


def saving(*modules: str, classes: int = 3, **fields: Any) -> AdapterManifest:
    """A manifest whose weights hold PEFT's trained copies of ``modules`` (modules_to_save), as a classifier."""
    extra = {f"base_model.model.{module}.{param}": shape for module in modules
             for param, shape in (("weight", [classes, 64]), ("bias", [classes]))}
    return manifest(modules_to_save=[m.rsplit(".", 1)[-1] for m in modules] + ["score"], extra_tensors=extra,
                    **fields)


def test_modules_to_save_copies_are_combined_when_their_weights_sum_to_one():
    a, b = saving("classifier"), saving("classifier")
    plan = check_merge([a, b], [0.7, 0.3], "cat", labels=["a", "b"])
    assert plan.saved_modules == {"classifier": [0, 1]} and plan.warnings == []
    assert check_merge([a, manifest()], [1, 0.5], "cat").saved_modules == {"classifier": [0]}
    assert check_merge([a], [1.0], "svd").saved_modules == {"classifier": [0]}
    # weights not summing to 1: the base model's own copy would be needed
    found = problems([a, b], [1, 1], "cat", labels=["a", "b"])
    assert found == [
        "a and b fully train module 'classifier' (modules_to_save) with weight(s) summing to 2: the merged copy is "
        "the weighted sum of the trained copies, which merges what they learned only when those weights sum to 1 "
        "(otherwise it needs the base model's own 'classifier', which a merge does not read); give them weights "
        "summing to 1"]
    assert "fully trains module 'classifier'" in problems([manifest(), a], [0.5, 0.5], "cat")[0]
    # copies that differ cannot be summed
    found = problems([a, saving("classifier", classes=5)], [0.5, 0.5], "cat", labels=["a", "b"])
    assert len(found) == 1
    assert "with different parameters or shapes (a: bias [3], weight [3, 64]; b: bias [5]" in found[0]


def test_modules_to_save_nested_head_and_lora_conflict():
    head = manifest(modules_to_save=["classifier"], extra_tensors={
        "base_model.model.classifier.dense.weight": [64, 64], "base_model.model.classifier.out_proj.weight": [2, 64]})
    plan = check_merge([head, head.model_copy()], [0.5, 0.5], "svd", labels=["a", "b"])
    assert plan.saved_modules == {"classifier": [0, 1]}
    # one input fully trains a module that another adapts with LoRA: PEFT cannot hold both in one adapter
    lora = manifest(leaves=("q_proj",))
    saved_q = manifest(leaves=("v_proj",), modules_to_save=["q_proj"], extra_tensors={
        f"base_model.model.model.layers.{i}.self_attn.q_proj.weight": [64, 64] for i in range(2)})
    found = problems([lora, saved_q], [0.5, 0.5], "cat", labels=["a", "b"])
    assert len(found) == 2 and all("fully trained (modules_to_save) by b but adapted with LoRA by a" in p
                                   for p in found)


def test_non_lora_tensors_are_named_correctly():
    emb = manifest(extra_tensors={"base_model.model.model.embed_tokens.base_layer.weight": [128, 64]})
    odd = manifest(extra_tensors={"base_model.model.model.norm.weight": [64]})
    assert check_merge([emb, odd], [1, 1], "cat", labels=["a", "b"]).warnings == [
        "a holds 1 non-LoRA tensor(s) copying base layers (e.g. "
        "base_model.model.model.embed_tokens.base_layer.weight), which PEFT saves with embedding adapters; not "
        "carried into the merged adapter",
        "b holds 1 non-LoRA tensor(s) that are not modules_to_save copies (e.g. base_model.model.model.norm.weight); "
        "not carried into the merged adapter"]


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_refused(bias):
    extra = {"base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias": [64]}
    found = problems([manifest(), manifest(config={"bias": bias}, extra_tensors=extra)], [1, 1], "cat",
                     labels=["a", "b"])
    assert found == [f"b: bias={bias!r}: the adapter trained the base model's own biases, which replace the base's "
                     "values instead of adding a delta to them, so they cannot be weighted or combined without the "
                     "base model (PEFT refuses to hold two adapters with biases); train it with bias='none'"]
    assert check_merge([manifest(), manifest(config={"bias": "none"})], [1, 1], "cat").warnings == []


def test_shapes_must_agree_on_shared_modules():
    a, b = manifest(), manifest()
    for module in b.modules.values():
        if module.out_features == 32:
            module.out_features = 48
    found = problems([a, b], [1, 1], "cat")
    assert len(found) == 1 and "disagree on the shape of 2 module(s)" in found[0] and "out=48" in found[0]


def test_rank_rules_per_module_with_rank_pattern():
    pat = manifest(rank_pattern={"v_proj": 2})
    same = manifest(rank_pattern={"v_proj": 2})
    plain = manifest()
    # equal-rank methods: compared per module, so the same pattern passes and a different one fails
    plan = check_merge([pat, same], [1, 1], "ties", {"density": 0.5})
    assert plan.out_rank == 4 and plan.rank_pattern == {"v_proj": 2}
    assert plan.module_ranks["model.layers.1.self_attn.v_proj"] == 2
    found = problems([pat, plain], [1, 1], "linear")
    assert len(found) == 1 and "(input 1: r=2, input 2: r=4) on 2 module(s)" in found[0]
    # cat sums per module; svd takes svd_rank or the largest rank, capped by what the sum can have
    assert check_merge([pat, plain], [1, 1], "cat").module_ranks == {
        f"model.layers.{i}.self_attn.{leaf}": rank for i in range(2) for leaf, rank in (("q_proj", 8), ("v_proj", 6))}
    svd = check_merge([pat, plain], [1, 1], "svd")
    assert svd.out_rank == 4 and svd.rank_pattern == {}
    big = check_merge([pat, plain], [1, 1], "svd", {"svd_rank": 64})
    assert big.module_ranks["model.layers.0.self_attn.q_proj"] == 8  # the exact sum has rank <= 4 + 4
    assert big.module_ranks["model.layers.0.self_attn.v_proj"] == 6
    assert "svd_rank 64 exceeds" in big.warnings[0]
    dense = check_merge([pat, plain], [1, 1], "ties_svd", {"density": 0.5, "svd_rank": 64})
    assert dense.module_ranks["model.layers.0.self_attn.v_proj"] == 32  # min(in, out) for a pruned dense delta


def test_partial_modules_and_pattern_compression():
    a = manifest(leaves=("q_proj", "v_proj"))
    b = manifest(r=8, leaves=("q_proj", "down_proj"))
    plan = check_merge([a, b], [1, 1], "cat", labels=["a", "b"])
    assert plan.partial_modules == {
        "model.layers.0.mlp.down_proj": ["b"], "model.layers.0.self_attn.v_proj": ["a"],
        "model.layers.1.mlp.down_proj": ["b"], "model.layers.1.self_attn.v_proj": ["a"]}
    assert plan.out_rank == 12 and plan.rank_pattern == {"down_proj": 8, "v_proj": 4}
    mixed = manifest(rank_pattern={r"model\.layers\.0\.self_attn\.q_proj": 2})
    plan = check_merge([mixed, mixed], [1, 1], "linear")
    assert plan.rank_pattern == {r"model\.layers\.0\.self_attn\.q_proj": 2}
    for module, rank in plan.module_ranks.items():  # the compressed pattern reproduces every module's rank
        assert AdapterManifest(peft_type="LORA", r=plan.out_rank, lora_alpha=1,
                               rank_pattern=plan.rank_pattern).rank_of(module) == rank


def test_plan_resolves_defaults():
    plan = check_merge([manifest(), manifest()], [0.5, 0.5], "dare_ties", {"density": 0.3, "seed": None})
    assert plan.params == {"density": 0.3, "majority_sign_method": "total", "seed": None}
    assert (plan.combine, plan.op) == ("factors", "dare_ties")
    assert plan.model_dump(mode="json")["module_ranks"]["model.layers.0.self_attn.q_proj"] == 4
