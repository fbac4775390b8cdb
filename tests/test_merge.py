"""The merge engine against PEFT's own add_weighted_adapter, on tiny Llama, GPT-2 (Conv1D) and Qwen2 bases.

Every method is compared with PEFT on the same adapters: A and B themselves for the methods that combine
factors, the delta ``s B A`` for the SVD methods (singular vectors are unique only up to sign), and the
logits of our output loaded by PEFT against PEFT's merged adapter for all. DARE is compared with PEFT's
random masks replaced, on both sides, by one value-derived mask, so the non-random arithmetic must match
exactly; the randomness itself is tested for reproducibility. Where PEFT 0.21 is wrong (rsLoRA,
rank_pattern), the reference is the exact weighted delta instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import factories
import pytest
import torch
from merge_fixtures import (
    CASES,
    FACTOR_TYPES,
    WEIGHTS,
    PeftReference,
    assert_loads_exactly,
    assert_matches_peft,
    exact_deltas,
    fake_adapter,
    logits,
    merged_deltas,
    patch_dare,
)
from peft import PeftModel
from peft.utils import merge_utils
from safetensors.torch import load_file, save_file

import workers.merge.methods as methods
from registry.errors import IncompatibleAdapters, InvalidAdapter, RegistryError
from registry.inspect import inspect_adapter
from workers.merge import MergeCancelled, merge_adapters

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings(
    "ignore:Adapter .* was active which is now deleted:UserWarning",
    "ignore:The density .* no pruning will be performed:UserWarning",
    "ignore:Setting `save_embedding_layers` to `True`:UserWarning",
)]
PAIRS = {  # name -> (base, first adapter, second adapter)
    "llama": ("llama", "llama-a", "llama-b"),
    "gpt2": ("gpt2", "gpt2-a", "gpt2-b"),  # Conv1D layers: fan_in_fan_out
    "qwen2": ("qwen2", "qwen2-a", "qwen2-b"),
    "embedding": ("llama", "emb-a", "emb-b"),  # embed_tokens (lora_embedding_A/B) and lm_head
    "partial": ("llama", "llama-a", "llama-c"),  # q,v,o + q,k: modules present in only one input
}




@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    out: dict[str, Path] = {arch: factories.build_base(root / arch, arch) for arch in ("llama", "gpt2", "qwen2")}
    targets = {"llama": ["q_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"], "qwen2": ["q_proj", "v_proj"]}

    def adapter(name: str, base: str, **kw) -> None:  # type: ignore[no-untyped-def]
        out[name] = factories.build_adapter(out[base], root / name, **kw)

    for arch in ("llama", "gpt2", "qwen2"):
        adapter(f"{arch}-a", arch, r=4, alpha=8, targets=targets[arch], seed=11)
        adapter(f"{arch}-b", arch, r=4, alpha=16, targets=targets[arch], seed=12)
    adapter("llama-c", "llama", r=4, alpha=16, targets=["q_proj", "k_proj"], seed=17)
    adapter("emb-a", "llama", r=4, alpha=8, targets=["q_proj", "embed_tokens", "lm_head"], seed=18)
    adapter("emb-b", "llama", r=4, alpha=4, targets=["q_proj", "embed_tokens", "lm_head"], seed=19)
    adapter("llama-r8", "llama", r=8, alpha=4, targets=["q_proj"], seed=13)
    adapter("llama-rs", "llama", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=14, use_rslora=True)
    adapter("llama-rs8", "llama", r=8, alpha=8, targets=["q_proj", "v_proj"], seed=20, use_rslora=True)
    adapter("pat-a", "llama", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=15,
            rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 32})
    adapter("pat-b", "llama", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=21, rank_pattern={"v_proj": 2})
    adapter("llama-bf16", "llama", r=4, alpha=8, targets=["q_proj", "v_proj", "o_proj"], seed=16,
            dtype=torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def references(bases):  # type: ignore[no-untyped-def]
    cache: dict[tuple[str, ...], PeftReference] = {}

    def get(base: str, *adapters: str) -> PeftReference:
        key = (base, *adapters)
        if key not in cache:
            cache[key] = PeftReference(bases[base], [bases[a] for a in adapters])
        return cache[key]

    return get


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize(("method", "kw"), CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in CASES])
def test_matches_peft(bases, references, tmp_path, monkeypatch, pair, method, kw):
    if method.startswith("dare"):
        patch_dare(monkeypatch)
    base, *inputs = PAIRS[pair]
    report = merge_adapters([bases[i] for i in inputs], WEIGHTS, method, out=tmp_path / "out", **kw)
    ref = references(base, *inputs)
    try:
        ref.merge("merged", WEIGHTS, method, **kw)
        assert_matches_peft(ref, tmp_path / "out", method in FACTOR_TYPES)
    finally:
        ref.drop("merged", "ours")

    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == report.out_rank and config["use_rslora"] is False
    assert config["target_modules"] == [m.module for m in report.modules]  # full paths: exactly these modules
    assert config["base_model_name_or_path"] == str(bases[base]) and config["task_type"] == "CAUSAL_LM"
    if pair == "embedding":  # PEFT saved copies of the embedding and lm_head base layers; they are not merged
        assert sum("non-LoRA tensor" in w for w in report.warnings) == 2
    if method == "cat" or (method == "svd" and kw.get("svd_rank") == 8 and pair != "partial"):
        assert report.overall["max_rel_error"] < 1e-6  # exact methods (up to float32 storage)
    if method == "svd" and kw.get("svd_rank") == 3:
        assert report.overall["max_rel_error"] > 1e-3  # a truncated svd says how lossy it was


@pytest.mark.parametrize(("method", "kw"), [("linear", {}), ("ties", {"density": 0.5}), ("svd", {"svd_rank": 3}),
                                             ("ties_svd", {"density": 0.5}), ("cat", {})])
def test_reported_error_is_the_true_error(bases, tmp_path, method, kw):
    adapters = [bases["llama-a"], bases["llama-b"]]
    calls: list[tuple[float, str]] = []
    report = merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "out", progress=lambda f, m: calls.append((f, m)),
                            **kw)
    exact, merged = exact_deltas(adapters, WEIGHTS), merged_deltas(tmp_path / "out")
    for m in report.modules:
        true = float((merged[m.module] - exact[m.module]).norm())
        assert m.error_norm == pytest.approx(true, rel=1e-5, abs=1e-6)
        assert m.reference_norm == pytest.approx(float(exact[m.module].norm()), rel=1e-9)
    error = sum(float((merged[k] - exact[k]).norm() ** 2) for k in exact) ** 0.5
    reference = sum(float(d.norm() ** 2) for d in exact.values()) ** 0.5
    assert report.overall["rel_error"] == pytest.approx(error / reference, rel=1e-4, abs=1e-7)
    json.dumps(report.to_dict(), allow_nan=False)
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and calls[-1][0] == 1.0
    assert len(calls) == len(report.modules) + 1 == 7 and calls[0][0] == 0.0


@pytest.mark.parametrize("method", ["cat", "svd", "linear"])
def test_rslora_inputs_give_the_intended_delta(bases, references, tmp_path, method):
    """PEFT copies use_rslora into the merged config: its merged adapter is scaled by r/sqrt(r), not 1."""
    inputs = ["llama-rs", "llama-b"] if method == "linear" else ["llama-rs", "llama-rs8"]
    adapters, weights, kw = [bases[i] for i in inputs], [0.6, 0.4], {"svd_rank": 12} if method == "svd" else {}
    merge_adapters(adapters, weights, method, out=tmp_path / "out", **kw)
    exact, merged = exact_deltas(adapters, weights), merged_deltas(tmp_path / "out")
    ref = references("llama", *inputs)
    try:
        ref.merge("merged", weights, method, **kw)
        assert ref.model.peft_config["merged"].use_rslora  # the defect
        theirs = ref.layers("merged")
        r = ref.model.peft_config["merged"].r
        for name, (a_ref, b_ref, s_ref) in theirs.items():
            assert s_ref == pytest.approx(r**0.5)  # PEFT scales the merged factors by sqrt(r) instead of 1
            module = name.removeprefix("base_model.model.")
            if method != "linear":  # exact methods: ours is the weighted delta, PEFT's is sqrt(r) times it
                torch.testing.assert_close(merged[module], exact[module], rtol=1e-5, atol=1e-7)
                peft_delta = s_ref * (b_ref.double() @ a_ref.double())
                torch.testing.assert_close(peft_delta, r**0.5 * exact[module], rtol=1e-4, atol=1e-6)
            else:  # the same factors as PEFT, with scaling 1
                ours = load_file(tmp_path / "out" / "adapter_model.safetensors")
                torch.testing.assert_close(ours[f"{name}.lora_A.weight"], a_ref)
                torch.testing.assert_close(ours[f"{name}.lora_B.weight"], b_ref)
    finally:
        ref.drop("merged")
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["use_rslora"] is False


@pytest.mark.parametrize(("method", "kw"), [("linear", {}), ("ties", {"density": 0.5}), ("cat", {}),
                                             ("svd", {"svd_rank": 8}), ("magnitude_prune_svd", {"density": 0.5})])
def test_rank_and_alpha_patterns_are_honoured(bases, references, tmp_path, method, kw):
    """Per-module ranks and alphas of the inputs are used, and the output's rank_pattern makes it loadable.

    PEFT merges these in memory, but what it saves declares r=4 for the rank-2 modules and cannot be
    loaded back (size mismatch): our config carries rank_pattern / alpha_pattern.
    """
    inputs = ["pat-a", "pat-b"]
    adapters = [bases[i] for i in inputs]
    report = merge_adapters(adapters, [0.5, 0.5], method, out=tmp_path / "out", **kw)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    ranks = {m.module.rsplit(".", 1)[-1]: m.out_rank for m in report.modules}
    expected = {"linear": (4, 2), "ties": (4, 2), "cat": (8, 4), "svd": (8, 4), "magnitude_prune_svd": (4, 4)}[method]
    assert (ranks["q_proj"], ranks["v_proj"]) == expected
    if expected[1] != expected[0]:
        assert config["rank_pattern"] == {"v_proj": expected[1]} and config["alpha_pattern"] == {"v_proj": expected[1]}
    ref = references("llama", *inputs)
    try:
        ref.merge("merged", [0.5, 0.5], method, **kw)
        ref.load("ours", tmp_path / "out")
        torch.testing.assert_close(ref.logits("ours"), ref.logits("merged"), rtol=1e-4, atol=1e-5)
        if method == "linear":
            ref.model.save_pretrained(tmp_path / "peft", selected_adapters=["merged"])
            with pytest.raises(RuntimeError, match="size mismatch"):
                PeftModel.from_pretrained(factories.load_base(bases["llama"]), str(tmp_path / "peft" / "merged"))
    finally:
        ref.drop("merged", "ours")
    if method in ("cat", "svd"):
        exact, merged = exact_deltas(adapters, [0.5, 0.5]), merged_deltas(tmp_path / "out")
        for module, delta in exact.items():
            torch.testing.assert_close(merged[module], delta, rtol=1e-5, atol=1e-7)


def test_different_ranks_cat_sums_and_svd_keeps_the_largest(bases, references, tmp_path):
    inputs = ["llama-a", "llama-r8"]  # r=4 on q,v,o ; r=8 on q only
    adapters = [bases[i] for i in inputs]
    ref = references("llama", *inputs)
    for method, rank, q_rank, other in (("cat", 12, 12, 4), ("svd", 8, 8, 4)):
        report = merge_adapters(adapters, [1.0, 0.5], method, out=tmp_path / method)
        assert report.out_rank == rank
        assert {m.module.rsplit(".", 1)[-1]: m.out_rank for m in report.modules} == {
            "q_proj": q_rank, "v_proj": other, "o_proj": other}
        assert sorted(report.partial_modules) == sorted(m.module for m in report.modules if "q_proj" not in m.module)
        config = json.loads((tmp_path / method / "adapter_config.json").read_text())
        assert config["r"] == rank and config["rank_pattern"] == {"o_proj": 4, "v_proj": 4}
        try:
            ref.merge("merged", [1.0, 0.5], method)
            ref.load("ours", tmp_path / method)
            torch.testing.assert_close(ref.logits("ours"), ref.logits("merged"), rtol=1e-4, atol=1e-5)
        finally:
            ref.drop("merged", "ours")
    with pytest.raises(IncompatibleAdapters, match="needs equal ranks"):
        merge_adapters(adapters, [1.0, 1.0], "linear", out=tmp_path / "lin")
    assert not (tmp_path / "lin").exists()


def test_svd_rank_above_the_exact_rank_keeps_the_exact_rank(bases, tmp_path):
    adapters = [bases["llama-a"], bases["llama-b"]]
    report = merge_adapters(adapters, WEIGHTS, "svd", out=tmp_path / "out", svd_rank=32)
    assert report.out_rank == 8 and report.overall["max_rel_error"] < 1e-6
    assert any("exceeds the rank" in w for w in report.warnings)


def test_single_adapter_svd_compresses_it(bases, tmp_path):
    """One source with svd: its truncated SVD (PEFT would silently switch a single adapter to linear)."""
    report = merge_adapters([bases["llama-r8"]], [1.0], "svd", out=tmp_path / "out", svd_rank=2)
    exact = exact_deltas([bases["llama-r8"]], [1.0])
    for m in report.modules:
        s = torch.linalg.svdvals(exact[m.module])
        assert m.rel_error == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-4)
    assert inspect_adapter(tmp_path / "out").r == 2


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"])
def test_dare_is_reproducible_with_a_seed(bases, tmp_path, method):
    adapters = [bases["llama-a"], bases["llama-b"]]
    one = merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "1", density=0.5, seed=7)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "2", density=0.5, seed=7)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "3", density=0.5, seed=8)
    read = [(tmp_path / d / "adapter_model.safetensors").read_bytes() for d in ("1", "2", "3")]
    assert read[0] == read[1] and read[0] != read[2]
    assert one.overall["max_rel_error"] > 0
    torch.manual_seed(3)  # without a seed the masks come from the global RNG, as in PEFT
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "4", density=0.5)
    torch.manual_seed(3)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "5", density=0.5)
    assert (tmp_path / "4" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "5" / "adapter_model.safetensors").read_bytes()


def test_dare_masks_keep_density_and_rescale():
    gen = torch.Generator().manual_seed(0)
    tensor = torch.ones(400, 500)
    mask = methods.dare_mask(tensor, 0.3, gen)
    assert set(mask.unique().tolist()) == {0.0, 1.0} and abs(float(mask.mean()) - 0.3) < 0.01
    pruned = methods._dare_prune(tensor, 0.3, gen)
    assert pruned.unique().tolist() == [0.0, pytest.approx(1 / 0.3)]
    assert abs(float(pruned.mean()) - 1.0) < 0.03  # unbiased


@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.999, 1.0])
def test_magnitude_mask_is_peft_magnitude_pruning(density):
    gen = torch.Generator().manual_seed(1)
    tensor = torch.randn(300, 70, generator=gen)
    expected = merge_utils.magnitude_based_pruning(tensor, density) if density < 1 else tensor
    torch.testing.assert_close(tensor * methods.magnitude_mask(tensor, density), expected, rtol=0, atol=0)
    tied = torch.randint(-3, 4, (50, 40), generator=gen).float()  # many equal magnitudes (and zeros)
    mask = methods.magnitude_mask(tied, density)
    assert int(mask.sum()) == min(int(density * tied.numel()), tied.numel())
    kept = tied.abs()[mask.bool()]
    if 0 < kept.numel() < tied.numel():
        assert float(kept.min()) >= float(tied.abs()[~mask.bool()].max())


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties_svd"])
def test_dare_at_density_one_is_its_deterministic_counterpart(bases, references, tmp_path, method):
    merge_adapters([bases["llama-a"], bases["llama-b"]], WEIGHTS, method, out=tmp_path / "out", density=1.0, seed=0)
    ref = references("llama", "llama-a", "llama-b")
    try:
        ref.merge("merged", WEIGHTS, method, density=1.0)  # PEFT draws nothing at density 1
        ref.load("ours", tmp_path / "out")
        torch.testing.assert_close(ref.logits("ours"), ref.logits("merged"), rtol=1e-4, atol=1e-5)
    finally:
        ref.drop("merged", "ours")


def test_bf16_inputs_computed_in_fp32_written_bf16(bases, tmp_path):
    twin = shutil.copytree(bases["llama-bf16"], tmp_path / "twin")  # the same adapter given twice is refused
    adapters = [bases["llama-bf16"], twin]
    merge_adapters(adapters, [0.5, 0.5], "svd", out=tmp_path / "bf", svd_rank=8)
    merge_adapters(adapters, [0.5, 0.5], "svd", out=tmp_path / "f32", svd_rank=8, dtype="float32")
    merge_adapters(adapters, [0.5, 0.5], "cat", out=tmp_path / "f16", dtype=torch.float16)
    assert inspect_adapter(tmp_path / "bf").dtypes == ["bfloat16"]
    assert inspect_adapter(tmp_path / "f32").dtypes == ["float32"]
    assert inspect_adapter(tmp_path / "f16").dtypes == ["float16"]
    exact = exact_deltas([bases["llama-bf16"]], [1.0])
    for module, delta in merged_deltas(tmp_path / "f32").items():
        torch.testing.assert_close(delta, exact[module], rtol=1e-5, atol=1e-6)  # fp32 math on bf16 inputs
    with pytest.raises(RegistryError, match="dtype must be one of"):
        merge_adapters(adapters, [0.5, 0.5], "cat", out=tmp_path / "bad", dtype="int8")


def test_svd_clamp_follows_peft_semantics(bases, tmp_path):
    """svd_clamp clamps U*S and Vh to +-(the quantile of their entries): checked on our own factors."""
    adapters = [bases["llama-a"], bases["llama-b"]]
    merge_adapters(adapters, WEIGHTS, "svd", out=tmp_path / "plain")
    report = merge_adapters(adapters, WEIGHTS, "svd", out=tmp_path / "clamped", svd_clamp=0.9)
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    clamped = load_file(tmp_path / "clamped" / "adapter_model.safetensors")
    for key in plain:
        if key.endswith("lora_A.weight"):
            b_key = key.replace("lora_A", "lora_B")
            hi = torch.quantile(torch.cat([plain[b_key].flatten(), plain[key].flatten()]), 0.9)
            torch.testing.assert_close(clamped[key], plain[key].clamp(-hi, hi))
            torch.testing.assert_close(clamped[b_key], plain[b_key].clamp(-hi, hi))
    assert report.overall["max_rel_error"] > 1e-3


def test_svd_never_builds_the_dense_delta(tmp_path):
    """A 20000 x 20000 module at rank 8: a dense delta is 1.6 GB in fp32; the exact path needs a few MB."""
    shapes = {"model.layers.0.mlp.big": (20000, 20000)}
    folders = [fake_adapter(tmp_path / f"in{i}", shapes, r=8, seed=i) for i in range(2)]
    script = (
        "import json, sys, time; from pathlib import Path; from workers.merge import merge_adapters\n"
        "t = time.perf_counter()\n"
        f"r = merge_adapters({[str(f) for f in folders]!r}, [0.5, 0.5], 'svd', out={str(tmp_path / 'out')!r},"
        " svd_rank=16)\n"
        "hwm = [int(l.split()[1]) * 1024 for l in Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmHWM')][0]\n"
        "print(json.dumps({'s': time.perf_counter() - t, 'hwm': hwm, 'err': r.overall['max_rel_error']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent.parent)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["err"] < 1e-6 and result["s"] < 10
    assert result["hwm"] < 1_200_000_000  # the interpreter with torch is ~0.4 GB; a dense delta alone is 1.6 GB


def _cases(bases: dict[str, Path]) -> list[tuple[dict, str]]:
    a, b = bases["llama-a"], bases["llama-b"]
    return [
        (dict(sources=[a, b], weights=[1.0]), "1 weight(s) for 2 adapter(s)"),
        (dict(sources=[a, b], weights=[1.0, 1.0, 1.0]), "3 weight(s) for 2 adapter(s)"),
        (dict(sources=[a, b], weights=[0.0, 0.0]), "all weights are zero"),
        (dict(sources=[a, b], weights=[1.0, float("nan")]), "finite"),
        (dict(sources=[a, b], weights=[1.0, float("inf")]), "finite"),
        (dict(sources=[a, b], weights=[1, 1], method="ties"), "needs parameter density"),
        (dict(sources=[a, b], weights=[1, 1], method="dare_linear_svd"), "needs parameter density"),
        (dict(sources=[a, b], weights=[1, 1], method="ties", density=1.5), "density must be a number in (0, 1]"),
        (dict(sources=[a, b], weights=[1, 1], method="ties", density=0.0), "density must be a number in (0, 1]"),
        (dict(sources=[a, b], weights=[1, 1], method="ties", density=0.5, majority_sign_method="vote"),
         "majority_sign_method must be"),
        (dict(sources=[a, b], weights=[1, 1], method="linear", density=0.5), "density is not used by method linear"),
        (dict(sources=[a, b], weights=[1, 1], method="svd", seed=3), "seed is not used by method svd"),
        (dict(sources=[a, b], weights=[1, 1], method="svd", svd_rank=0), "svd_rank must be a positive integer"),
        (dict(sources=[a, b], weights=[1, 1], method="svd", svd_clamp=1.5), "svd_clamp must be a quantile in (0, 1]"),
        (dict(sources=[a, b], weights=[1, 1], method="frobnicate"), "unknown merge method"),
        (dict(sources=[a, bases["gpt2-a"]], weights=[1, 1]), "different base models"),
        (dict(sources=[a, bases["llama-r8"]], weights=[1, 1], method="ties", density=0.5), "needs equal ranks"),
    ]


def test_refusals_name_the_problem_and_write_nothing(bases, tmp_path):
    for kwargs, message in _cases(bases):
        kwargs.setdefault("method", "svd")
        with pytest.raises(IncompatibleAdapters) as info:
            merge_adapters(out=tmp_path / "out", **kwargs)
        assert message in str(info.value)
        assert list(tmp_path.iterdir()) == []


def test_every_problem_is_reported_at_once(bases, tmp_path):
    with pytest.raises(IncompatibleAdapters) as info:
        merge_adapters([bases["llama-a"], bases["gpt2-a"]], [1.0], "ties", out=tmp_path / "out", svd_rank=4)
    assert len(info.value.problems) == 4  # weights, density missing, svd_rank unused, base models
    assert str(bases["gpt2-a"]) in str(info.value)


@pytest.mark.parametrize(("edit", "message"), [
    ({"use_dora": True}, "DoRA"), ({"lora_bias": True}, "lora_bias"),
    ({"target_parameters": ["mlp.experts"]}, "target_parameters"), ({"init_lora_weights": "pissa"}, "pissa"),
    ({"revision": "abc123"}, "different base models or revisions"),
    ({"bias": "all"}, "bias='all': the adapter trained"), ({"bias": "lora_only"}, "bias='lora_only'"),
])
def test_unsupported_features_refused_before_work(bases, tmp_path, edit, message):
    odd = shutil.copytree(bases["llama-b"], tmp_path / "odd")
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg.update(edit)
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleAdapters, match=message) as info:
        merge_adapters([bases["llama-a"], odd], [1, 1], "cat", out=tmp_path / "out")
    assert str(odd) in str(info.value)
    assert not (tmp_path / "out").exists()
    if "revision" in edit:
        merge_adapters([bases["llama-a"], odd], [1, 1], "cat", out=tmp_path / "out", allow_cross_base=True)


def _with_head(bases: dict[str, Path], folder: Path, seed: int) -> Path:
    """llama-a's LoRA plus a trained copy of lm_head (modules_to_save), written as PEFT saves it."""
    shutil.copytree(bases["llama-a"], folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["modules_to_save"] = ["lm_head"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = torch.randn(128, 64, generator=torch.Generator().manual_seed(seed))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_modules_to_save_copies_are_carried(bases, references, tmp_path):
    """A fully trained lm_head is carried as the weighted sum of the trained copies, when those weights sum to 1.

    PEFT's add_weighted_adapter gives the merged adapter a fresh copy of the base model's lm_head instead (and
    refuses two inputs that train it): the trained head is lost. Here the output loads in PEFT with exactly
    the LoRA layers and the head of the inputs, and gives PEFT's merged LoRA with the carried head.
    """
    x, y = _with_head(bases, tmp_path / "x", 1), _with_head(bases, tmp_path / "y", 2)
    heads = [load_file(f / "adapter_model.safetensors")["base_model.model.lm_head.weight"] for f in (x, y)]
    report = merge_adapters([x, bases["llama-b"]], [1.0, 0.5], "cat", out=tmp_path / "one")
    assert report.saved_modules == {"lm_head": [str(x)]} and report.warnings == []
    two = merge_adapters([x, y], [0.7, 0.3], "svd", out=tmp_path / "two")
    assert two.saved_modules == {"lm_head": [str(x), str(y)]}
    for out, head in (("one", heads[0]), ("two", 0.7 * heads[0] + 0.3 * heads[1])):
        config = json.loads((tmp_path / out / "adapter_config.json").read_text())
        assert config["modules_to_save"] == ["lm_head"]
        model = PeftModel.from_pretrained(factories.load_base(bases["llama"]), str(tmp_path / out))
        assert_loads_exactly(model, tmp_path / out)
        torch.testing.assert_close(model.base_model.model.lm_head.modules_to_save["default"].weight, head)
    ref = references("llama", "llama-a", "llama-b")
    try:  # PEFT on the same LoRA factors; the lm_head it would use is the one carried here
        ref.merge("merged", [1.0, 0.5], "cat")
        peft_head = ref.model.base_model.model.lm_head
        ours = PeftModel.from_pretrained(factories.load_base(bases["llama"]), str(tmp_path / "one")).eval()
        original = peft_head.weight.detach().clone()
        with torch.no_grad():
            peft_head.weight.copy_(heads[0])
            expected = ref.logits("merged")
            peft_head.weight.copy_(original)
        torch.testing.assert_close(logits(ours), expected, rtol=1e-4, atol=1e-5)
    finally:
        ref.drop("merged")
    with pytest.raises(IncompatibleAdapters, match="fully trains module 'lm_head'") as info:
        merge_adapters([x, bases["llama-b"]], [0.5, 0.5], "cat", out=tmp_path / "half")
    assert "weight(s) summing to 0.5" in str(info.value)
    with pytest.raises(IncompatibleAdapters, match="summing to 2"):
        merge_adapters([x, y], [1, 1], "cat", out=tmp_path / "sum2")
    peft_two = PeftModel.from_pretrained(factories.load_base(bases["llama"]), str(x), adapter_name="x")
    peft_two.load_adapter(str(y), adapter_name="y")
    with pytest.raises(ValueError, match="target the same module with modules_to_save"):  # PEFT refuses
        peft_two.add_weighted_adapter(["x", "y"], [0.7, 0.3], "xy", combination_type="svd")


def test_metadata_missing_saved_copies_refused(bases, tmp_path):
    """Manifests (as a catalog passes them) that do not list an input's modules_to_save copies: refused, since
    the output would lack the copy and not load."""
    x = _with_head(bases, tmp_path / "x", 1)
    stale = inspect_adapter(x).model_copy(update={"extra_tensors": {}})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RegistryError, match="modules_to_save copies \\(lm_head\\) that its metadata does not list"):
        merge_adapters([x], [1.0], "svd", out=work / "out", manifests=[stale], labels=["x:1"])
    assert list(work.iterdir()) == []


def test_conv_layers_refused(tmp_path):
    folder = tmp_path / "conv"
    folder.mkdir()
    save_file({"base_model.model.conv.lora_A.weight": torch.randn(4, 3, 3, 3),
               "base_model.model.conv.lora_B.weight": torch.randn(8, 4, 1, 1)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4,
                                                            "target_modules": ["conv"]}))
    with pytest.raises(IncompatibleAdapters, match="conv LoRA layers are not supported") as info:
        merge_adapters([folder, folder], [1, 1], "svd", out=tmp_path / "out")
    assert str(folder) in str(info.value)


def test_pickle_and_existing_output_refused(bases, tmp_path):
    pickled = shutil.copytree(bases["llama-a"], tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InvalidAdapter, match="safetensors only"):
        merge_adapters([pickled, bases["llama-b"]], [1, 1], "cat", out=tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RegistryError, match="not empty"):
        merge_adapters([bases["llama-a"], bases["llama-b"]], [1, 1], "cat", out=tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["file"]
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    merge_adapters([bases["llama-a"], bases["llama-b"]], [1, 1], "cat", out=tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]


def test_cancelled_merge_leaves_nothing(bases, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    calls = iter([False, False, True])
    with pytest.raises(MergeCancelled):
        merge_adapters([bases["llama-a"], bases["llama-b"]], [1, 1], "svd", out=work / "out",
                       should_cancel=lambda: next(calls, True))
    assert list(work.iterdir()) == []


def test_failure_mid_merge_leaves_nothing(bases, tmp_path):
    broken = shutil.copytree(bases["llama-b"], tmp_path / "broken")
    tensors = load_file(broken / "adapter_model.safetensors")
    last = sorted(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)[0]
    tensors[last][0, 0] = float("nan")
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InvalidAdapter, match="NaN") as info:
        merge_adapters([bases["llama-a"], broken], [1, 1], "linear", out=work / "out")
    assert str(broken) in str(info.value)
    assert list(work.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("method", "kw"), [("svd", {"svd_rank": 3}), ("ties_svd", {"density": 0.5})])
def test_cuda_matches_cpu(bases, tmp_path, method, kw):
    adapters = [bases["llama-a"], bases["llama-b"]]
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "cpu", **kw)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "gpu", device="cuda", **kw)
    cpu, gpu = merged_deltas(tmp_path / "cpu"), merged_deltas(tmp_path / "gpu")
    for module, delta in cpu.items():
        # cuSOLVER's and LAPACK's float32 SVDs agree to ~1e-4 of the largest entry, not to a fixed 1e-6 (an H200
        # gave 1.8e-6 on entries of ~1e-2).
        torch.testing.assert_close(gpu[module], delta, rtol=1e-4, atol=1e-4 * float(delta.abs().max()))
