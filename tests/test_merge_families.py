"""The merge engine against PEFT on more model families and task types (tiny configs, nothing downloaded).

T5 (encoder-decoder, targeted by a regex on the decoder only) runs every method; Mistral (GQA), Phi-3 (fused
``qkv_proj`` / ``gate_up_proj``), Gemma (tied embeddings) and OPT run two methods each; BERT and RoBERTa
(sequence classification, whose classifier PEFT saves as ``modules_to_save``; RoBERTa's is a nested head)
merge their classifiers. Every output is loaded by ``PeftModel.from_pretrained`` on a fresh base and must hold
exactly its LoRA layers and copies (``assert_loads_exactly``), and its deltas and logits must be PEFT's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from merge_fixtures import (
    CASES,
    FACTOR_TYPES,
    FAMILIES,
    WEIGHTS,
    PeftReference,
    assert_loads_exactly,
    assert_matches_peft,
    assert_same_layers,
    build_family_adapter,
    build_family_base,
    exact_deltas,
    logits,
    lora_layers,
    lora_only_copy,
    merged_deltas,
    patch_dare,
)
from peft import PeftModel
from safetensors.torch import load_file

from registry.errors import IncompatibleAdapters
from workers.merge import merge_adapters

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings(
    "ignore:Adapter .* was active which is now deleted:UserWarning",
    "ignore:The density .* no pruning will be performed:UserWarning",
    "ignore::FutureWarning",
)]
# Adapters per family: name -> (family, keyword arguments of build_family_adapter)
ADAPTERS = {
    "t5-a": ("t5", dict(seed=41)),  # all ten decoder linear layers of both blocks (20 modules)
    "t5-b": ("t5", dict(seed=42, alpha=16, targets=r".*decoder.*(SelfAttention|EncDecAttention)\.(q|v)")),
    "mistral-a": ("mistral", dict(seed=43)),
    "mistral-b": ("mistral", dict(seed=44, alpha=16)),
    # a list restricted to layer 0, and a regex string on layer 1 (PEFT cannot merge these two)
    "mistral-l0": ("mistral", dict(seed=45, targets=["q_proj"], layers_to_transform=[0])),
    "mistral-re": ("mistral", dict(seed=46, alpha=16, targets=r".*layers\.1\.self_attn\.(q|v)_proj")),
    "phi3-a": ("phi3", dict(seed=47)),
    "phi3-b": ("phi3", dict(seed=48, alpha=16)),
    "gemma-a": ("gemma", dict(seed=49)),
    "gemma-b": ("gemma", dict(seed=50, alpha=16, targets=["q_proj", "v_proj"])),  # partial modules
    "opt-a": ("opt", dict(seed=51)),
    "opt-b": ("opt", dict(seed=52, alpha=16)),
    "bert-a": ("bert", dict(seed=53)),
    "bert-b": ("bert", dict(seed=54, alpha=16)),
    "bert-bias": ("bert", dict(seed=55, bias="all")),
    "bert-lora-bias": ("bert", dict(seed=56, bias="lora_only")),
    "roberta-a": ("roberta", dict(seed=57)),
    "roberta-b": ("roberta", dict(seed=58, alpha=16)),
}




@pytest.fixture(scope="module")
def built(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Bases and adapters, each built on first use (so a -k selection builds only what it needs)."""
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name in FAMILIES:
                cache[name] = build_family_base(root / name, name)
            else:
                family, kw = ADAPTERS[name]
                cache[name] = build_family_adapter(get(family), family, root / name, **kw)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def references(built):  # type: ignore[no-untyped-def]
    """PEFT models with two inputs loaded, one per (family, inputs), reused across tests."""
    cache: dict[tuple[str, ...], PeftReference] = {}

    def get(family: str, *inputs: str) -> PeftReference:
        if (family, *inputs) not in cache:
            cache[(family, *inputs)] = PeftReference(built(family), [built(i) for i in inputs],
                                                     load=FAMILIES[family].load)
        return cache[(family, *inputs)]

    return get


def _load(built, family: str, folder: Path) -> PeftModel:  # type: ignore[no-untyped-def]
    spec = FAMILIES[family]
    return PeftModel.from_pretrained(spec.load(built(family)), str(folder)).eval()


def _check_output(built, family: str, folder: Path, report) -> PeftModel:  # type: ignore[no-untyped-def]
    """PEFT loads exactly the file's tensors, LoRA layers on the merged modules only; the config lists them."""
    model = _load(built, family, folder)
    assert_loads_exactly(model, folder)
    assert sorted(lora_layers(model, "default")) == sorted(f"base_model.model.{m.module}" for m in report.modules)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == [m.module for m in report.modules]
    assert config["task_type"] == FAMILIES[family].task
    return model


@pytest.mark.parametrize(("method", "kw"), CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in CASES])
def test_t5_decoder_regex_every_method(built, references, tmp_path, monkeypatch, method, kw):
    """A regex on T5's decoder: the output adapts the decoder's modules only (leaf names would add the encoder's)."""
    if method.startswith("dare"):
        patch_dare(monkeypatch)
    inputs = [built("t5-a"), built("t5-b")]
    report = merge_adapters(inputs, WEIGHTS, method, out=tmp_path / "out", **kw)
    assert len(report.modules) == 20 and all(m.module.startswith("decoder.") for m in report.modules)
    ref = references("t5", "t5-a", "t5-b")
    try:
        ref.merge("merged", WEIGHTS, method, **kw)  # PEFT joins the two regexes: "(a)|(b)"
        assert ref.model.peft_config["merged"].target_modules == "|".join(
            f"({ref.model.peft_config[i].target_modules})" for i in ("in0", "in1"))
        assert_matches_peft(ref, tmp_path / "out", method in FACTOR_TYPES)
    finally:
        ref.drop("merged", "ours")
    _check_output(built, "t5", tmp_path / "out", report)


FAMILY_CASES = [
    ("mistral", "svd", {}), ("mistral", "ties", {"density": 0.5}),
    ("phi3", "cat", {}), ("phi3", "dare_linear", {"density": 0.5}),
    ("gemma", "linear", {}), ("gemma", "magnitude_prune_svd", {"density": 0.5}),
    ("opt", "svd", {"svd_rank": 3}), ("opt", "ties_svd", {"density": 0.5}),
]


@pytest.mark.parametrize(("family", "method", "kw"), FAMILY_CASES, ids=[f"{f}-{m}" for f, m, _ in FAMILY_CASES])
def test_family_matches_peft(built, references, tmp_path, monkeypatch, family, method, kw):
    if method.startswith("dare"):
        patch_dare(monkeypatch)
    inputs = [built(f"{family}-a"), built(f"{family}-b")]
    report = merge_adapters(inputs, WEIGHTS, method, out=tmp_path / "out", **kw)
    ref = references(family, f"{family}-a", f"{family}-b")
    try:
        ref.merge("merged", WEIGHTS, method, **kw)
        assert_matches_peft(ref, tmp_path / "out", method in FACTOR_TYPES)
    finally:
        ref.drop("merged", "ours")
    _check_output(built, family, tmp_path / "out", report)
    if family == "gemma":
        assert report.partial_modules  # gemma-b adapts q_proj and v_proj only


@pytest.mark.parametrize(("family", "method", "kw"), [("bert", "svd", {}), ("roberta", "ties", {"density": 0.5})])
def test_classifier_heads_are_merged(built, tmp_path, family, method, kw):
    """Two SEQ_CLS adapters: their classifiers (modules_to_save) are averaged with the weights (summing to 1).

    PEFT refuses to merge them at all; the reference is PEFT's merge of their LoRA layers, run with the
    weighted average of the two trained classifiers in place of the base's.
    """
    weights = [0.7, 0.3]
    inputs = [built(f"{family}-a"), built(f"{family}-b")]
    report = merge_adapters(inputs, weights, method, out=tmp_path / "out", **kw)
    assert report.saved_modules == {"classifier": [str(p) for p in inputs]}
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]
    ours = _check_output(built, family, tmp_path / "out", report)

    spec = FAMILIES[family]
    peft_model = PeftModel.from_pretrained(spec.load(built(family)), str(inputs[0]), adapter_name="in0")
    peft_model.load_adapter(str(inputs[1]), adapter_name="in1")
    with pytest.raises(ValueError, match="target the same module with modules_to_save"):
        peft_model.add_weighted_adapter(["in0", "in1"], weights, "merged", combination_type=method, **kw)

    stripped = [lora_only_copy(p, tmp_path / f"lora{i}") for i, p in enumerate(inputs)]
    ref = PeftReference(built(family), stripped, load=spec.load)
    ref.merge("merged", weights, method, **kw)
    assert_same_layers(ref.layers("merged"), lora_layers(ours, "default"), method in FACTOR_TYPES)
    heads = [load_file(p / "adapter_model.safetensors") for p in inputs]
    with torch.no_grad():
        for name, param in ref.model.base_model.model.classifier.named_parameters():
            key = f"base_model.model.classifier.{name}"
            param.copy_(weights[0] * heads[0][key] + weights[1] * heads[1][key])
    torch.testing.assert_close(logits(ours), ref.logits("merged"), rtol=1e-4, atol=1e-5)

    with pytest.raises(IncompatibleAdapters, match="summing to 2") as info:
        merge_adapters(inputs, [1.0, 1.0], method, out=tmp_path / "sum2", **kw)
    assert "fully train module 'classifier' (modules_to_save)" in str(info.value)


def test_single_classifier_adapter_compressed_loads(built, tmp_path):
    """One SEQ_CLS adapter through svd: its classifier is carried, so PEFT loads it (it failed with a KeyError)."""
    adapter = built("bert-a")
    report = merge_adapters([adapter], [1.0], "svd", out=tmp_path / "out", svd_rank=2)
    model = _check_output(built, "bert", tmp_path / "out", report)
    head = load_file(adapter / "adapter_model.safetensors")["base_model.model.classifier.weight"]
    torch.testing.assert_close(model.base_model.model.classifier.modules_to_save["default"].weight, head, rtol=0,
                               atol=0)


def test_list_and_regex_targets_mixed(built, tmp_path):
    """A list restricted by layers_to_transform and a regex string: PEFT refuses to merge them; here the output
    targets exactly the union of their modules (leaf names would also adapt layer 0's v_proj) with the exact sum."""
    inputs = [built("mistral-l0"), built("mistral-re")]
    spec = FAMILIES["mistral"]
    peft_model = PeftModel.from_pretrained(spec.load(built("mistral")), str(inputs[0]), adapter_name="in0")
    peft_model.load_adapter(str(inputs[1]), adapter_name="in1")
    with pytest.raises(ValueError, match="mix of list/set and string"):
        peft_model.add_weighted_adapter(["in0", "in1"], [1.0, 0.5], "merged", combination_type="cat")
    report = merge_adapters(inputs, [1.0, 0.5], "cat", out=tmp_path / "out")
    assert [m.module for m in report.modules] == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] is None and config["exclude_modules"] is None
    _check_output(built, "mistral", tmp_path / "out", report)
    exact, merged = exact_deltas(inputs, [1.0, 0.5]), merged_deltas(tmp_path / "out")
    assert exact.keys() == merged.keys()
    for module, delta in exact.items():
        torch.testing.assert_close(merged[module], delta, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["bert-bias", "bert-lora-bias"])
def test_trained_biases_refused_as_peft_does(built, tmp_path, name):
    """bias='all' / 'lora_only' adapters hold trained base biases: refused (they were silently dropped)."""
    odd = built(name)
    bias = json.loads((odd / "adapter_config.json").read_text())["bias"]
    with pytest.raises(IncompatibleAdapters, match=f"bias='{bias}': the adapter trained the base model's own biases"
                       ) as info:
        merge_adapters([built("bert-a"), odd], [0.5, 0.5], "svd", out=tmp_path / "out")
    assert str(odd) in str(info.value) and not (tmp_path / "out").exists()
    two = shutil.copytree(odd, tmp_path / "two")
    spec = FAMILIES["bert"]
    peft_model = PeftModel.from_pretrained(spec.load(built("bert")), str(odd), adapter_name="in0")
    with pytest.raises(ValueError, match="supports only 1 adapter with bias"):  # PEFT cannot even hold two
        peft_model.load_adapter(str(two), adapter_name="in1")
