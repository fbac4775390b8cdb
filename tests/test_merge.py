"""The merge engine against PEFT's own add_weighted_adapter, on tiny Llama, GPT-2 (Conv1D) and Qwen2 bases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import factories
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from registry.errors import IncompatibleAdapters, InvalidAdapter, RegistryError
from registry.inspect import inspect_adapter
from workers.merge import MergeCancelled, merge_adapters

pytestmark = pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")
WEIGHTS = [0.7, -0.3]
DETERMINISTIC = [
    ("linear", {}), ("cat", {}), ("svd", {}), ("svd", {"svd_rank": 8}), ("ties", {"density": 0.5}),
    ("ties", {"density": 0.5, "majority_sign_method": "frequency"}), ("magnitude_prune", {"density": 0.4}),
    ("ties_svd", {"density": 0.5}), ("magnitude_prune_svd", {"density": 0.5}), ("svd", {"svd_rank": 3}),
]
AB_TYPES = {"linear", "cat", "ties", "magnitude_prune", "dare_linear", "dare_ties"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    out = {}
    for arch in ("llama", "gpt2", "qwen2"):
        out[arch] = factories.build_base(root / arch, arch)
    targets = {"llama": ["q_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"], "qwen2": ["q_proj", "v_proj"]}
    for arch in ("llama", "gpt2", "qwen2"):
        out[f"{arch}-a"] = factories.build_adapter(out[arch], root / f"{arch}-a", r=4, alpha=8,
                                                   targets=targets[arch], seed=11)
        out[f"{arch}-b"] = factories.build_adapter(out[arch], root / f"{arch}-b", r=4, alpha=16,
                                                   targets=targets[arch], seed=12)
    llama = out["llama"]
    out["llama-r8"] = factories.build_adapter(llama, root / "llama-r8", r=8, alpha=4, targets=["q_proj"], seed=13)
    out["llama-rs"] = factories.build_adapter(llama, root / "llama-rs", r=4, alpha=8, targets=["q_proj", "v_proj"],
                                              seed=14, use_rslora=True)
    out["llama-pat"] = factories.build_adapter(out["llama"], root / "llama-pat", r=4, alpha=8,
                                               targets=["q_proj", "v_proj"], seed=15,
                                               rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 32})
    out["llama-bf16"] = factories.build_adapter(out["llama"], root / "llama-bf16", r=4, alpha=8,
                                                targets=["q_proj", "v_proj", "o_proj"], seed=16, dtype=torch.bfloat16)
    return out


def peft_merge(base: Path, adapters: list[Path], weights: list[float], method: str, **kw) -> PeftModel:
    model = PeftModel.from_pretrained(factories.load_base(base), str(adapters[0]), adapter_name="in0")
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"in{i}")
    model.add_weighted_adapter([f"in{i}" for i in range(len(adapters))], weights, "merged",
                               combination_type=method, **kw)
    model.set_adapter("merged")
    return model.eval()


def lora_layers(model: PeftModel, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    return {
        name: (mod.lora_A[adapter].weight.detach(), mod.lora_B[adapter].weight.detach(), mod.scaling[adapter])
        for name, mod in model.named_modules() if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {})
    }


def logits(model, seed: int = 0) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def exact_deltas(adapters: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i s_i B_i A_i per module, from the files and the manifests' own (rsLoRA/pattern aware) scaling."""
    out: dict[str, torch.Tensor] = {}
    for path, w in zip(adapters, weights, strict=True):
        manifest = inspect_adapter(path)
        tensors = load_file(path / "adapter_model.safetensors")
        for module in manifest.modules:
            a = tensors[f"base_model.model.{module}.lora_A.weight"].double()
            b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
            out[module] = out.get(module, 0) + w * manifest.scaling(module) * (b @ a)
    return out


def merged_deltas(folder: Path) -> dict[str, torch.Tensor]:
    manifest = inspect_adapter(folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    return {m: manifest.scaling(m) * (tensors[f"base_model.model.{m}.lora_B.weight"].double()
                                      @ tensors[f"base_model.model.{m}.lora_A.weight"].double())
            for m in manifest.modules}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize(("method", "kw"), DETERMINISTIC,
                         ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in DETERMINISTIC])
def test_matches_peft(bases, tmp_path, arch, method, kw):
    adapters = [bases[f"{arch}-a"], bases[f"{arch}-b"]]
    report = merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "out", **kw)
    reference = peft_merge(bases[arch], adapters, WEIGHTS, method, **kw)
    ours = PeftModel.from_pretrained(factories.load_base(bases[arch]), str(tmp_path / "out")).eval()
    theirs, mine = lora_layers(reference, "merged"), lora_layers(ours, "default")
    assert theirs.keys() == mine.keys()
    for name, (a_ref, b_ref, s_ref) in theirs.items():
        a, b, s = mine[name]
        if method in AB_TYPES:  # A and B themselves
            torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6)
        else:  # SVD signs are not unique: compare the delta
            torch.testing.assert_close(s * (b @ a), s_ref * (b_ref @ a_ref), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(ours), logits(reference), rtol=1e-4, atol=1e-4)
    assert report.out_rank == inspect_adapter(tmp_path / "out").r
    if method == "cat" or (method == "svd" and kw.get("svd_rank") == 8):
        assert report.overall["max_rel_error"] < 1e-6  # exact methods
    if method == "svd" and kw.get("svd_rank") == 3:
        assert report.overall["max_rel_error"] > 1e-3  # a truncated svd says how lossy it was


def test_relative_error_is_the_true_error(bases, tmp_path):
    adapters = [bases["llama-a"], bases["llama-b"]]
    report = merge_adapters(adapters, WEIGHTS, "linear", out=tmp_path / "out")
    exact, merged = exact_deltas(adapters, WEIGHTS), merged_deltas(tmp_path / "out")
    for m in report.modules:
        true = float((merged[m.module] - exact[m.module]).norm() / exact[m.module].norm())
        assert m.rel_error == pytest.approx(true, rel=1e-6)


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_rslora_inputs_give_the_intended_delta(bases, tmp_path, method):
    """PEFT copies use_rslora into the merged config and over-scales it; we reproduce the weighted delta."""
    adapters = [bases["llama-rs"], bases["llama-a"]]
    merge_adapters(adapters, [0.6, 0.4], method, out=tmp_path / "out", svd_rank=8 if method == "svd" else None)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["use_rslora"] is False
    exact, merged = exact_deltas(adapters, [0.6, 0.4]), merged_deltas(tmp_path / "out")
    for module, delta in exact.items():
        torch.testing.assert_close(merged[module], delta, rtol=1e-6, atol=1e-7)
    kw = {"svd_rank": 8} if method == "svd" else {}
    peft_model = peft_merge(bases["llama"], adapters, [0.6, 0.4], method, **kw)
    assert peft_model.peft_config["merged"].use_rslora  # the PEFT defect this engine fixes


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_rank_and_alpha_patterns_are_honoured(bases, tmp_path, method):
    adapters = [bases["llama-pat"], bases["llama-a"]]
    merge_adapters(adapters, [0.5, 0.5], method, out=tmp_path / "out", svd_rank=8 if method == "svd" else None)
    exact, merged = exact_deltas(adapters, [0.5, 0.5]), merged_deltas(tmp_path / "out")
    for module, delta in exact.items():
        torch.testing.assert_close(merged[module], delta, rtol=1e-6, atol=1e-7)


def test_different_ranks_cat_sums_and_svd_keeps_max(bases, tmp_path):
    adapters = [bases["llama-a"], bases["llama-r8"]]  # r=4 on q,v,o ; r=8 on q only
    cat = merge_adapters(adapters, [1.0, 1.0], "cat", out=tmp_path / "cat")
    svd = merge_adapters(adapters, [1.0, 1.0], "svd", out=tmp_path / "svd")
    assert (cat.out_rank, svd.out_rank) == (12, 8)
    assert sorted(cat.partial_modules) == sorted(m for m in cat.partial_modules if "q_proj" not in m)
    with pytest.raises(IncompatibleAdapters, match="needs equal ranks"):
        merge_adapters(adapters, [1.0, 1.0], "linear", out=tmp_path / "lin")
    assert not (tmp_path / "lin").exists()


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"])
def test_dare_is_reproducible_with_a_seed(bases, tmp_path, method):
    adapters = [bases["llama-a"], bases["llama-b"]]
    one = merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "1", density=0.5, seed=7)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "2", density=0.5, seed=7)
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "3", density=0.5, seed=8)
    read = [(tmp_path / d / "adapter_model.safetensors").read_bytes() for d in ("1", "2", "3")]
    assert read[0] == read[1] and read[0] != read[2]
    assert one.overall["max_rel_error"] > 0


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"])
def test_dare_at_density_one_is_its_deterministic_counterpart_in_peft(bases, tmp_path, method):
    """With density 1 nothing is dropped: DARE reduces to PEFT's linear / ties arithmetic exactly."""
    adapters = [bases["llama-a"], bases["llama-b"]]
    merge_adapters(adapters, WEIGHTS, method, out=tmp_path / "out", density=1.0, seed=0)
    reference = peft_merge(bases["llama"], adapters, WEIGHTS, method, density=1.0)
    ours = PeftModel.from_pretrained(factories.load_base(bases["llama"]), str(tmp_path / "out")).eval()
    torch.testing.assert_close(logits(ours), logits(reference), rtol=1e-4, atol=1e-4)


def test_bf16_inputs_computed_in_fp32_written_bf16(bases, tmp_path):
    adapters = [bases["llama-bf16"], bases["llama-bf16"]]
    merge_adapters(adapters, [0.5, 0.5], "svd", out=tmp_path / "bf", svd_rank=8)
    merge_adapters(adapters, [0.5, 0.5], "svd", out=tmp_path / "f32", svd_rank=8, dtype="float32")
    assert inspect_adapter(tmp_path / "bf").dtypes == ["bfloat16"]
    assert inspect_adapter(tmp_path / "f32").dtypes == ["float32"]
    exact = exact_deltas([bases["llama-bf16"]], [1.0])
    for module, delta in merged_deltas(tmp_path / "f32").items():
        torch.testing.assert_close(delta, exact[module], rtol=1e-5, atol=1e-6)  # fp32 math on bf16 inputs


def test_svd_never_builds_the_dense_delta(tmp_path):
    """A 20000 x 20000 module at rank 8: a dense delta would be 3.2 GB in fp64; the exact path needs ~MBs."""
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["big"], "task_type": "CAUSAL_LM",
           "base_model_name_or_path": "org/huge"}
    gen = torch.Generator().manual_seed(0)
    folders = []
    for i in range(2):
        folder = tmp_path / f"in{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        save_file({"base_model.model.big.lora_A.weight": torch.randn(8, 20000, generator=gen),
                   "base_model.model.big.lora_B.weight": torch.randn(20000, 8, generator=gen)},
                  str(folder / "adapter_model.safetensors"))
        folders.append(folder)
    report = merge_adapters(folders, [0.5, 0.5], "svd", out=tmp_path / "out", svd_rank=16)
    assert report.overall["max_rel_error"] < 1e-9
    assert report.peak_rss_bytes < 2_500_000_000


def test_refusals_name_the_problem_and_write_nothing(bases, tmp_path):
    a, b = bases["llama-a"], bases["llama-b"]
    cases = [
        (dict(sources=[a, b], weights=[1.0]), "1 weight(s) for 2 adapter(s)"),
        (dict(sources=[a, b], weights=[0.0, 0.0]), "all weights are zero"),
        (dict(sources=[a, b], weights=[1.0, float("nan")]), "finite"),
        (dict(sources=[a, b], weights=[1, 1], method="ties"), "needs parameter density"),
        (dict(sources=[a, b], weights=[1, 1], method="ties", density=1.5), "density must be a number in (0, 1]"),
        (dict(sources=[a, b], weights=[1, 1], method="ties", density=0.5, majority_sign_method="vote"),
         "majority_sign_method must be"),
        (dict(sources=[a, b], weights=[1, 1], method="linear", density=0.5), "density is not used by method linear"),
        (dict(sources=[a, b], weights=[1, 1], method="svd", svd_rank=0), "svd_rank must be a positive integer"),
        (dict(sources=[a, b], weights=[1, 1], method="frobnicate"), "unknown merge method"),
        (dict(sources=[a, bases["gpt2-a"]], weights=[1, 1]), "different base models"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("method", "svd")
        with pytest.raises(IncompatibleAdapters, match=message.replace("(", r"\(").replace(")", r"\)")):
            merge_adapters(out=tmp_path / "out", **kwargs)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("edit", "message"), [
    ({"use_dora": True}, "DoRA"), ({"lora_bias": True}, "lora_bias"),
    ({"target_parameters": ["mlp.experts"]}, "target_parameters"),
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


def test_modules_to_save_on_the_same_module_refused(bases, tmp_path):
    folders = []
    for name in ("x", "y"):
        folder = shutil.copytree(bases["llama-a"], tmp_path / name)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["modules_to_save"] = ["lm_head"]
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        folders.append(folder)
    with pytest.raises(IncompatibleAdapters, match="modules_to_save"):
        merge_adapters(folders, [1, 1], "cat", out=tmp_path / "out")


def test_pickle_and_existing_output_refused(bases, tmp_path):
    pickled = shutil.copytree(bases["llama-a"], tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InvalidAdapter, match="safetensors only"):
        merge_adapters([pickled, bases["llama-b"]], [1, 1], "cat", out=tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RegistryError, match="not empty"):
        merge_adapters([bases["llama-a"], bases["llama-b"]], [1, 1], "cat", out=tmp_path / "taken")


def test_cancelled_merge_leaves_nothing(bases, tmp_path):
    calls = iter([False, False, True])
    with pytest.raises(MergeCancelled):
        merge_adapters([bases["llama-a"], bases["llama-b"]], [1, 1], "svd", out=tmp_path / "out",
                       should_cancel=lambda: next(calls, True))
    assert list(tmp_path.iterdir()) == []
