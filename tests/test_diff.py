"""``Registry.diff`` / ``adreg diff``: config, target and rank differences, and per-module delta distances checked
against PEFT's own dense deltas (``get_delta_weight``) for Llama, embedding, rsLoRA + patterns, GPT-2 (Conv1D,
fan_in_fan_out), T5, DoRA + modules_to_save and conv LoRA adapters, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import resource
import shutil
from pathlib import Path

import factories
import pytest
import torch
from merge_fixtures import fake_adapter
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from registry import types as t
from registry.errors import AdapterNotFound, InvalidName, InvalidReference, RegistryError
from registry.lowrank import ExactDelta
from workers.quiet import quiet_loading

PREFIX = "base_model.model."
CONV_BASE = "org/convnet"


class ConvNet(torch.nn.Module):
    """A custom model with a 3x3 conv (conv LoRA: A is (r, in, 3, 3), B (out, r, 1, 1)) and a head to save."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def conv_adapter(out: Path, seed: int) -> Path:
    torch.manual_seed(0)
    model = get_peft_model(ConvNet(), LoraConfig(r=2, lora_alpha=4, target_modules=["conv"], modules_to_save=["head"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def untrained_adapter(base: Path, out: Path) -> Path:
    """What PEFT writes before any training: lora_B is zero, so every delta is zero."""
    with quiet_loading():
        model = get_peft_model(factories.load_base(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
                                                                                                         "v_proj"]))
        model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The adapters of the comparisons (built once), besides ``tiny``'s."""
    root = tmp_path_factory.mktemp("diff")
    llama, build = tiny["llama"], factories.build_adapter
    t5 = factories.build_base(root / "t5-base", "t5", seed=0)
    with_embedding = ["q_proj", "v_proj", "embed_tokens"]
    return {
        "t5_base": t5,
        "emb1": build(llama, root / "emb1", r=4, alpha=8, targets=with_embedding, seed=11),
        "emb2": build(llama, root / "emb2", r=2, alpha=4, targets=with_embedding, seed=12),
        "rs": build(llama, root / "rs", r=4, alpha=8, use_rslora=True, rank_pattern={"q_proj": 8},
                    alpha_pattern={"v_proj": 32}, seed=13),
        "gpt2_b": build(tiny["gpt2"], root / "gpt2-b", r=2, alpha=8, targets=["c_attn"], seed=14),
        "t5a": build(t5, root / "t5a", r=4, alpha=8, targets=["q", "v"], task_type="SEQ_2_SEQ_LM", seed=15),
        "t5b": build(t5, root / "t5b", r=4, alpha=16, targets=["q", "v"], task_type="SEQ_2_SEQ_LM", seed=16),
        "dora1": build(llama, root / "dora1", r=4, alpha=8, use_dora=True, modules_to_save=["lm_head"], seed=17),
        "dora2": build(llama, root / "dora2", r=4, alpha=8, use_dora=True, modules_to_save=["lm_head"], seed=18),
        "conv1": conv_adapter(root / "conv1", 19),
        "conv2": conv_adapter(root / "conv2", 20),
        "untrained": untrained_adapter(llama, root / "untrained"),
    }


def dense_deltas(folder: Path, base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's own delta of every LoRA layer (``get_delta_weight``: scaling, fan_in_fan_out, embeddings, convs), in
    float64."""
    with quiet_loading():
        model = PeftModel.from_pretrained(base, str(folder)).double()
    out = {}
    for name, module in model.named_modules():
        if "default" in getattr(module, "lora_A", {}) or "default" in getattr(module, "lora_embedding_A", {}):
            out[name.removeprefix(PREFIX)] = module.get_delta_weight("default").detach()
    return out


_DENSE: dict[str, dict[str, torch.Tensor]] = {}


@pytest.fixture(scope="module")
def dense(tiny, made):  # type: ignore[no-untyped-def]
    """``dense(key)``: PEFT's deltas of the adapter ``key`` (of ``tiny`` or ``made``), computed once."""
    folders = {**tiny, **made}

    def get(key: str) -> dict[str, torch.Tensor]:
        if key not in _DENSE:
            folder = folders[key]
            if key.startswith("conv"):
                base = ConvNet()
            else:
                base_path = Path(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"])
                base = factories.load_base(base_path)
            _DENSE[key] = dense_deltas(folder, base)
        return _DENSE[key]

    return get


def register(registry, folder: Path, name: str):  # type: ignore[no-untyped-def]
    base = CONV_BASE if name.startswith("conv") else None
    return registry.register(folder, name=name, base=base)


def assert_matches_dense(diff: t.VersionDiff, ref_a: dict[str, torch.Tensor], ref_b: dict[str, torch.Tensor]) -> None:
    """Every module distance and norm is PEFT's dense one to 1e-6 relative; most different first."""
    common = ref_a.keys() & ref_b.keys()
    assert {m.module for m in diff.modules} == common and common
    for m in diff.modules:
        da, db = ref_a[m.module], ref_b[m.module]
        assert da.shape == db.shape
        expected = float(torch.linalg.vector_norm(da - db))
        assert m.abs_distance == pytest.approx(expected, rel=1e-6)
        assert m.norm_a == pytest.approx(float(torch.linalg.vector_norm(da)), rel=1e-6)
        assert m.norm_b == pytest.approx(float(torch.linalg.vector_norm(db)), rel=1e-6)
        assert m.distance == pytest.approx(expected / float(torch.linalg.vector_norm(db)), rel=1e-6)
    distances = [m.distance for m in diff.modules]
    assert distances == sorted(distances, reverse=True)
    total = math.sqrt(sum(float(torch.linalg.vector_norm(ref_a[k] - ref_b[k])) ** 2 for k in common))
    reference = math.sqrt(sum(float(torch.linalg.vector_norm(ref_b[k])) ** 2 for k in common))
    assert diff.overall_distance == pytest.approx(total / reference, rel=1e-6)
    assert "NaN" not in json.dumps(diff.to_dict())


PAIRS = {
    "llama": ("tone", "tone2"),
    "embedding": ("emb1", "emb2"),
    "rslora-patterns": ("rs", "tone"),
    "gpt2-fan-in-fan-out": ("gpt2_attn", "gpt2_b"),
    "t5": ("t5a", "t5b"),
    "dora-saved": ("dora1", "dora2"),
    "conv": ("conv1", "conv2"),
}


@pytest.mark.parametrize("case", list(PAIRS))
def test_module_distances_match_peft_dense_deltas(registry, tiny, made, dense, case: str) -> None:  # type: ignore[no-untyped-def]
    first, second = PAIRS[case]
    folders = {**tiny, **made}
    a = register(registry, folders[first], f"{case}-a")
    b = register(registry, folders[second], f"{case}-b")
    diff = registry.diff(a.ref, b.ref)
    assert type(diff) is t.VersionDiff and (diff.a, diff.b, diff.same_weights) == (a.ref, b.ref, False)
    assert_matches_dense(diff, dense(first), dense(second))
    assert diff.seconds > 0 and diff.not_compared == []
    kinds = {m.kind for m in diff.modules}
    if case == "embedding":
        assert kinds == {"linear", "embedding"}
        assert [c for c in diff.rank_changes if c.key == "r"] == [t.ConfigChange("r", 4, 2)]
    if case == "conv":
        assert kinds == {"conv"}
        assert [(x.key, x.kind) for x in diff.tensors] == [("head.bias", "saved"), ("head.weight", "saved")]
    if case == "rslora-patterns":
        assert {(c.key, c.old, c.new) for c in diff.rank_changes} == {("use_rslora", True, False)}
        by_module = {c.module: c for c in diff.module_ranks}
        assert len(by_module) == 4  # rsLoRA changes every scaling; the patterns change q's rank and v's alpha
        q = by_module["model.layers.0.self_attn.q_proj"]
        assert (q.rank_a, q.rank_b, q.alpha_a, q.alpha_b) == (8, 4, 8.0, 8.0)
        assert q.scaling_a == pytest.approx(8 / math.sqrt(8)) and q.scaling_b == 2.0
        v = by_module["model.layers.1.self_attn.v_proj"]
        assert (v.rank_a, v.alpha_a, v.alpha_b, v.scaling_a) == (4, 32.0, 8.0, 16.0)
        assert {m.module: (m.rank_a, m.rank_b) for m in diff.modules}["model.layers.1.self_attn.q_proj"] == (8, 4)
    if case == "dora-saved":
        magnitudes = [x for x in diff.tensors if x.kind == "magnitude"]
        saved = [x for x in diff.tensors if x.kind == "saved"]
        assert len(magnitudes) == 4 and [x.key for x in saved] == ["lm_head.weight"]
        files = [load_file(folders[k] / "adapter_model.safetensors") for k in (first, second)]
        for x in magnitudes + saved:
            va, vb = (f[PREFIX + x.key].double() for f in files)
            assert x.abs_distance == pytest.approx(float(torch.linalg.vector_norm(va - vb)), rel=1e-9)
            assert x.distance == pytest.approx(x.abs_distance / float(torch.linalg.vector_norm(vb)), rel=1e-9)
        assert any("DoRA" in note for note in diff.notes)
    if case == "t5":
        assert diff.rank_changes == [t.ConfigChange("lora_alpha", 8, 16)]
        assert all(c.scaling_a == 2.0 and c.scaling_b == 4.0 for c in diff.module_ranks)


def test_a_version_against_itself_and_the_same_weights_under_another_name(registry, tiny) -> None:  # type: ignore[no-untyped-def]
    one = registry.register(tiny["legal"], name="same")
    registry.set_alias(one.ref, "production")
    other = registry.register(tiny["legal"], name="copy")
    for a, b in (("same:1", "same@production"), ("same", "copy:1")):
        diff = registry.diff(a, b)
        assert diff.same_weights and diff.modules and diff.notes == []
        assert all(m.distance == 0.0 and m.abs_distance == 0.0 and m.method == "identical" for m in diff.modules)
        assert diff.overall_distance == 0.0 and diff.overall_abs_distance == 0.0
        assert (diff.base_changes, diff.config_changes, diff.rank_changes, diff.module_ranks) == ([], [], [], [])
        assert (diff.modules_added, diff.modules_removed, diff.tensors_added, diff.tensors_removed) == ([], [], [], [])
    assert registry.diff("same", "copy").b == other.ref


def test_config_target_and_rank_differences_and_modules_in_one_side(registry, tiny) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="small")  # r=4, alpha 8, q_proj and v_proj
    registry.register(tiny["legal"], name="wide")  # r=8, alpha 16, all seven projections
    diff = registry.diff("small", "wide")
    assert {(c.key, c.old, c.new) for c in diff.rank_changes} == {("r", 4, 8), ("lora_alpha", 8, 16)}
    changed = {c.key: (c.old, c.new) for c in diff.config_changes}
    assert changed["r"] == (4, 8) and changed["lora_alpha"] == (8, 16)
    assert sorted(changed["target_modules"][1]) == sorted(factories.LLAMA_TARGETS)
    assert "inference_mode" not in changed and "base_model_name_or_path" not in changed and diff.base_changes == []
    assert diff.target_modules_added == ["down_proj", "gate_proj", "k_proj", "o_proj", "up_proj"]
    assert diff.target_modules_removed == []
    assert len(diff.modules_added) == 10 and "model.layers.0.self_attn.k_proj" in diff.modules_added
    assert diff.modules_removed == []
    assert sorted(m.module for m in diff.modules) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj"))
    assert all((m.rank_a, m.rank_b) == (4, 8) for m in diff.modules)
    assert all((c.rank_a, c.rank_b, c.scaling_a, c.scaling_b) == (4, 8, 2.0, 2.0) for c in diff.module_ranks)
    back = registry.diff("wide", "small")
    assert back.modules_removed == diff.modules_added and back.modules_added == []
    assert back.target_modules_removed == diff.target_modules_added


def test_an_alpha_change_alone_scales_the_distance_exactly(registry, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "tone-alpha16"
    shutil.copytree(tiny["tone"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 16}))
    registry.register(tiny["tone"], name="alpha")
    registry.register(folder, name="alpha")  # the same weights, another config: version 2
    diff = registry.diff("alpha:1", "alpha:2")
    assert diff.same_weights and diff.config_changes == [t.ConfigChange("lora_alpha", 8, 16)]
    assert diff.rank_changes == [t.ConfigChange("lora_alpha", 8, 16)]
    # dA = 2 B A, dB = 4 B A: ||dA - dB|| / ||dB|| is 1/2, from the shared lora_A without cancellation
    assert all(m.distance == pytest.approx(0.5, rel=1e-12) and m.method == "same_lora_A" for m in diff.modules)


def test_a_zero_delta_gives_absolute_distances_and_no_nan(registry, tiny, made) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="trained")
    registry.register(made["untrained"], name="fresh")
    diff = registry.diff("trained", "fresh")
    assert diff.modules and diff.overall_distance is None
    for m in diff.modules:
        assert m.distance is None and m.norm_b == 0.0 and m.norm_a > 0
        assert m.abs_distance == pytest.approx(m.norm_a, rel=1e-12)
    assert any("zero delta in B" in note for note in diff.notes)
    text = json.dumps(diff.to_dict(), allow_nan=False)
    assert '"distance": null' in text
    assert all(m.distance == pytest.approx(1.0, rel=1e-12) for m in registry.diff("fresh", "trained").modules)
    both = registry.diff("fresh", "fresh")
    assert all(m.distance is None and m.abs_distance == 0.0 for m in both.modules)
    json.dumps(both.to_dict(), allow_nan=False)


def test_nearly_identical_deltas_do_not_lose_their_digits(registry, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tiny change of both factors: the Gram expansion would cancel ~12 of 16 digits; the QR path keeps them."""
    folder = tmp_path / "nudged"
    shutil.copytree(tiny["tone"], folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(0)
    nudged = {k: v + (torch.randn(v.shape, generator=gen) * 1e-6 * v.abs().max()).to(v.dtype)
              for k, v in tensors.items()}
    save_file(nudged, str(folder / "adapter_model.safetensors"))
    registry.register(tiny["tone"], name="near")
    registry.register(folder, name="near")
    diff = registry.diff("near:2", "near:1")
    assert {m.method for m in diff.modules} == {"qr"} and any("QR" in note for note in diff.notes)
    for m in diff.modules:
        a_key, b_key = f"{PREFIX}{m.module}.lora_A.weight", f"{PREFIX}{m.module}.lora_B.weight"
        da = 2.0 * nudged[b_key].double() @ nudged[a_key].double()
        db = 2.0 * tensors[b_key].double() @ tensors[a_key].double()
        assert 1e-8 < m.distance < 1e-4
        assert m.abs_distance == pytest.approx(float(torch.linalg.vector_norm(da - db)), rel=1e-7)


def test_exact_delta_qr_path_against_gram_expansion() -> None:
    gen = torch.Generator().manual_seed(1)
    b, a = torch.randn(300, 8, generator=gen, dtype=torch.float64), torch.randn(8, 200, generator=gen,
                                                                                dtype=torch.float64)
    eps_b, eps_a = torch.randn(300, 8, generator=gen, dtype=torch.float64), torch.randn(8, 200, generator=gen,
                                                                                        dtype=torch.float64)
    for scale in (1e-2, 1e-5, 1e-9):
        reference, other = ExactDelta(b, a), ExactDelta(b + scale * eps_b, a + scale * eps_a)
        d_b, d_a = other.b - b, other.a - a  # the perturbations as stored (the subtraction is exact)
        exact = float(torch.linalg.vector_norm(d_b @ a + b @ d_a + d_b @ d_a))  # no cancellation in this form
        distance, method = reference.compare(other)
        assert method == ("gram" if scale == 1e-2 else "qr")
        assert distance == pytest.approx(exact, rel=1e-9)
    assert ExactDelta(b, a).compare(ExactDelta(b, a)) == (0.0, "identical")
    assert ExactDelta(b, a).compare(ExactDelta(0 * b, a))[1] == "shared_a"


def test_a_huge_module_is_never_formed(registry, tmp_path: Path) -> None:
    """Two modules of 65536 x 65536: one dense float64 delta would be 32 GiB, so the diff could not finish (nor
    stay within a few MB) if it formed one; the distance is checked against an independent QR computation."""
    n, r = 65536, 2
    shapes = {"model.layers.0.mlp.wide": (n, n)}
    registry.register(fake_adapter(tmp_path / "h1", shapes, r=r, seed=1), name="huge")
    registry.register(fake_adapter(tmp_path / "h2", shapes, r=r, seed=2), name="huge")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    diff = registry.diff("huge:1", "huge:2")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024 and diff.seconds < 30
    (m,) = diff.modules
    f1, f2 = (load_file(tmp_path / h / "adapter_model.safetensors") for h in ("h1", "h2"))
    key = f"{PREFIX}model.layers.0.mlp.wide"
    left = torch.cat([f1[key + ".lora_B.weight"], -f2[key + ".lora_B.weight"]], 1).double()
    right = torch.cat([f1[key + ".lora_A.weight"], f2[key + ".lora_A.weight"]], 0).double()
    core = torch.linalg.qr(left, mode="r").R @ torch.linalg.qr(right.T, mode="r").R.T
    assert m.abs_distance == pytest.approx(2.0 * float(torch.linalg.vector_norm(core)), rel=1e-9)  # alpha/r = 2


def test_bad_references_are_refused(registry, tiny) -> None:  # type: ignore[no-untyped-def]
    real = registry.register(tiny["tone"], name="real")
    with pytest.raises(AdapterNotFound, match="no adapter named 'ghost'"):
        registry.diff("real", "ghost")
    with pytest.raises(AdapterNotFound, match="no version 7"):
        registry.diff("real:7", "real")
    with pytest.raises(AdapterNotFound, match="not a catalog reference"):
        registry.diff("real", "../etc")  # a folder path: diff compares catalog versions
    with pytest.raises(InvalidReference):
        registry.diff("a b", "real")
    with pytest.raises(InvalidName):
        registry.diff("real@", "real")
    gone = registry.register(tiny["tone2"], name="gone")
    (Path(gone.path) / "adapter_model.safetensors").unlink()
    with pytest.raises(RegistryError, match="the stored weights of gone:1 cannot be read") as missing:
        registry.diff(real.ref, "gone")
    assert missing.value.hint and "doctor" in missing.value.hint




def test_cli_diff_human_and_json(adreg, tiny, made) -> None:  # type: ignore[no-untyped-def]
    adreg("register", str(tiny["tone"]), "--name", "cx")
    adreg("register", str(tiny["legal"]), "--name", "cx")
    adreg("register", str(made["untrained"]), "--name", "blank")
    data = json.loads(adreg("diff", "cx:1", "cx:2", "--json").stdout)
    assert (data["a"], data["b"], len(data["modules"]), len(data["modules_added"])) == ("cx:1", "cx:2", 4, 10)
    assert {c["key"] for c in data["rank_changes"]} == {"r", "lora_alpha"} and data["seconds"] > 0
    human = adreg("diff", "cx:1", "cx:2", "--top", "2").stdout
    assert "A = cx:1, B = cx:2" in human and "r: 4 -> 8" in human and "modules +10 (in B only)" in human
    assert "most different modules (2 of 4)" in human and "targets   +down_proj" in human
    shown = human.split("most different modules")[1]
    assert data["modules"][0]["module"] in shown and data["modules"][2]["module"] not in shown
    zero = adreg("diff", "cx:1", "blank").stdout
    assert "(abs)" in zero and "note:" in zero
    assert json.loads(adreg("diff", "cx:1", "blank", "--json").stdout)["modules"][0]["distance"] is None
    result = adreg("diff", "cx:1", "nope", code=1)
    assert "no adapter named 'nope'" in result.stderr and "Traceback" not in result.stdout + result.stderr
