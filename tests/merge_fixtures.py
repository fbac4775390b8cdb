"""Helpers for the merge tests: PEFT's own merge as the reference, exact weighted deltas, fake adapters, and
tiny bases of more model families (built from configs, nothing downloaded)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import factories
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, merge_utils
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GemmaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    RobertaConfig,
    T5Config,
)

import workers.merge.methods as methods
from registry.inspect import inspect_adapter

PREFIX = "base_model.model."

WEIGHTS = [0.7, -0.3]
FACTOR_TYPES = {"linear", "cat", "ties", "magnitude_prune", "dare_linear", "dare_ties"}
CASES = [
    ("svd", {}), ("svd", {"svd_rank": 8}), ("svd", {"svd_rank": 3}), ("linear", {}), ("cat", {}),
    ("ties", {"density": 0.5}), ("ties", {"density": 0.5, "majority_sign_method": "frequency"}),
    ("magnitude_prune", {"density": 0.4}), ("ties_svd", {"density": 0.5}),
    ("ties_svd", {"density": 0.7, "svd_rank": 3}), ("magnitude_prune_svd", {"density": 0.5}),
    ("dare_linear", {"density": 0.5}), ("dare_ties", {"density": 0.6}), ("dare_linear_svd", {"density": 0.5}),
    ("dare_ties_svd", {"density": 0.5, "majority_sign_method": "frequency"}),
]


class PeftReference:
    """A PEFT model with the inputs loaded once (``in0``, ``in1``, ...); merges are added and removed per test."""

    def __init__(self, base: Path, adapters: list[Path],
                 load: Callable[[Path], torch.nn.Module] = factories.load_base) -> None:
        self.model = PeftModel.from_pretrained(load(base), str(adapters[0]), adapter_name="in0")
        for i, path in enumerate(adapters[1:], start=1):
            self.model.load_adapter(str(path), adapter_name=f"in{i}")
        self.inputs = [f"in{i}" for i in range(len(adapters))]
        self.model.eval()

    def merge(self, name: str, weights: list[float], method: str, **kw: Any) -> None:
        self.model.add_weighted_adapter(self.inputs, weights, name, combination_type=method, **kw)

    def load(self, name: str, folder: Path) -> None:
        self.model.load_adapter(str(folder), adapter_name=name)

    def drop(self, *names: str) -> None:
        for name in names:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)

    def layers(self, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return lora_layers(self.model, adapter)

    def logits(self, adapter: str, seed: int = 0) -> torch.Tensor:
        self.model.set_adapter(adapter)
        return logits(self.model, seed)


def lora_layers(model: torch.nn.Module, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """module -> (A, B, scaling) of ``adapter``, in B @ A orientation (embeddings included)."""
    out = {}
    for name, mod in model.named_modules():
        if adapter in getattr(mod, "lora_A", {}):
            out[name] = (mod.lora_A[adapter].weight.detach(), mod.lora_B[adapter].weight.detach(),
                         mod.scaling[adapter])
        elif adapter in getattr(mod, "lora_embedding_A", {}):
            out[name] = (mod.lora_embedding_A[adapter].detach(), mod.lora_embedding_B[adapter].detach(),
                         mod.scaling[adapter])
    return out


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """The model's logits on a fixed random batch (with decoder inputs for encoder-decoder models)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {"input_ids": torch.randint(3, 128, (2, 12), generator=gen)}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(3, 128, (2, 5), generator=gen)
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def assert_matches_peft(ref: PeftReference, folder: Path, factors: bool) -> None:
    """The adapter at ``folder``, loaded by PEFT next to PEFT's merge ``merged``, has the same layers, scaling 1,
    the same factors (``factors``: methods that combine A's and B's) or the same delta, and the same logits."""
    ref.load("ours", folder)
    assert_same_layers(ref.layers("merged"), ref.layers("ours"), factors)
    torch.testing.assert_close(ref.logits("ours"), ref.logits("merged"), rtol=1e-4, atol=1e-5)


def assert_same_layers(theirs: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                       ours: dict[str, tuple[torch.Tensor, torch.Tensor, float]], factors: bool) -> None:
    """Our layers are PEFT's merged ones: the same modules, scaling 1, and the same factors (``factors``) or delta."""
    assert theirs.keys() == ours.keys()
    for name, (a_ref, b_ref, s_ref) in theirs.items():
        a, b, s = ours[name]
        assert s == 1.0
        if factors and a.shape == a_ref.shape:
            torch.testing.assert_close(a, a_ref * s_ref, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(b, b_ref, rtol=1e-6, atol=1e-7)
        else:
            torch.testing.assert_close(b @ a, s_ref * (b_ref @ a_ref), rtol=1e-4, atol=2e-6)


def assert_loads_exactly(model: PeftModel, folder: Path, adapter: str = "default") -> None:
    """PEFT loaded exactly the tensors of ``folder``: what it would save back from ``model`` (its LoRA layers and
    modules_to_save copies) has the file's keys, no more, no fewer, and the file's values."""
    saved = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    written = load_file(folder / "adapter_model.safetensors")
    assert sorted(saved) == sorted(written), (sorted(set(saved) ^ set(written)))[:6]
    for key, value in written.items():
        torch.testing.assert_close(saved[key].float(), value.float(), rtol=0, atol=0)


def lora_factors(folder: Path) -> dict[str, tuple[float, torch.Tensor, torch.Tensor]]:
    """Each module's ``(s, B, A)`` of an adapter folder (float64), with the scaling its config gives (rsLoRA and
    patterns included, as PEFT loads it)."""
    manifest = inspect_adapter(folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for module, info in manifest.modules.items():
        a_key, b_key = _keys(module, info.kind)
        out[module] = (manifest.scaling(module), tensors[b_key].double(), tensors[a_key].double())
    return out


def exact_deltas(adapters: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i w_i s_i B_i A_i`` per module in float64, with each input's own (rsLoRA/pattern aware) scaling."""
    out: dict[str, torch.Tensor] = {}
    for path, w in zip(adapters, weights, strict=True):
        for module, (scaling, b, a) in lora_factors(path).items():
            out[module] = out.get(module, 0) + w * scaling * (b @ a)
    return out


def merged_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Each module's ``s B A`` of an adapter folder, with the scaling its config gives (as PEFT loads it)."""
    return {module: scaling * (b @ a) for module, (scaling, b, a) in lora_factors(folder).items()}


def _keys(module: str, kind: str) -> tuple[str, str]:
    if kind == "embedding":
        return f"{PREFIX}{module}.lora_embedding_A", f"{PREFIX}{module}.lora_embedding_B"
    return f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"


def fake_adapter(folder: Path, shapes: dict[str, tuple[int, int]], r: int = 8, seed: int = 0,
                 dtype: torch.dtype = torch.float32, **config: Any) -> Path:
    """An adapter folder written directly (no base model): module -> (in, out), random A and B."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (fan_in, fan_out) in shapes.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = (torch.randn(r, fan_in, generator=gen) * 0.05).to(dtype)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = (torch.randn(fan_out, r, generator=gen) * 0.05).to(dtype)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
           "target_modules": sorted({m.rsplit(".", 1)[-1] for m in shapes}), "base_model_name_or_path": "org/base"}
    cfg.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def value_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """A 'random-looking' keep-mask that is a function of the values only, identical in PEFT and here."""
    return ((tensor.double().abs() * 12345.678).frac() < density).to(tensor.dtype)


@dataclass(frozen=True)
class Family:
    """A tiny model family: its config, the auto class that loads it, its PEFT task type and default targets."""

    config: PretrainedConfig
    auto: Any
    task: str
    targets: list[str] | str
    heads: list[str] = field(default_factory=list)  # what PEFT adds to modules_to_save for this task

    def load(self, path: Path) -> torch.nn.Module:
        return self.auto.from_pretrained(path, dtype=torch.float32)


_DECODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENCODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64)
FAMILIES: dict[str, Family] = {
    # GQA: k_proj and v_proj are 64 -> 32
    "mistral": Family(MistralConfig(**_DECODER, tie_word_embeddings=False), AutoModelForCausalLM, "CAUSAL_LM",
                      ["q_proj", "k_proj", "v_proj", "o_proj"]),
    # fused projections: qkv_proj 64 -> 128 (GQA), gate_up_proj 64 -> 256
    "phi3": Family(Phi3Config(**_DECODER), AutoModelForCausalLM, "CAUSAL_LM",
                   ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    # tied input and output embeddings
    "gemma": Family(GemmaConfig(**_DECODER, head_dim=16), AutoModelForCausalLM, "CAUSAL_LM",
                    ["q_proj", "v_proj", "gate_proj", "down_proj"]),
    "opt": Family(OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2,
                            eos_token_id=2), AutoModelForCausalLM, "CAUSAL_LM", ["q_proj", "v_proj", "fc1", "fc2"]),
    # encoder-decoder, targeted by a regex on the decoder only (PEFT fullmatches a string target)
    "t5": Family(T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), AutoModelForSeq2SeqLM,
                 "SEQ_2_SEQ_LM", r".*decoder.*\.(q|k|v|o|wi|wo)"),
    # sequence classification: PEFT saves the classifier as modules_to_save
    "bert": Family(BertConfig(**_ENCODER, num_labels=3), AutoModelForSequenceClassification, "SEQ_CLS",
                   ["query", "value"], ["classifier"]),
    # its classifier is a nested head (classifier.dense, classifier.out_proj)
    "roberta": Family(RobertaConfig(**_ENCODER, num_labels=2, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                      AutoModelForSequenceClassification, "SEQ_CLS", ["query", "key", "value"], ["classifier"]),
}


def build_family_base(path: Path, family: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    spec = FAMILIES[family]
    spec.auto.from_config(spec.config).save_pretrained(path)
    return path


def build_family_adapter(base: Path, family: str, out: Path, *, seed: int, r: int = 4, alpha: int = 8,
                         targets: list[str] | str | None = None, **lora: Any) -> Path:
    """A PEFT adapter on a tiny ``family`` base with every trainable tensor random: the LoRA factors and the
    modules_to_save copies (a classifier), so that neither equals what the base or PEFT's init would give."""
    spec = FAMILIES[family]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=spec.targets if targets is None else targets,
                        task_type=spec.task, **lora)
    model = get_peft_model(spec.load(base), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def lora_only_copy(adapter: Path, out: Path) -> Path:
    """``adapter`` without its modules_to_save copies and task type, so that PEFT's add_weighted_adapter (which
    refuses two adapters that save the same module) can merge its LoRA layers as a reference."""
    out.mkdir(parents=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(modules_to_save=None, task_type=None)
    (out / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".lora_" in k}, str(out / "adapter_model.safetensors"))
    return out


def patch_dare(monkeypatch: Any) -> None:
    """The same value-derived mask on both sides, in place of each side's random draws."""
    monkeypatch.setattr(methods, "dare_mask", lambda tensor, density, generator: value_mask(tensor, density))
    monkeypatch.setattr(merge_utils, "random_pruning",
                        lambda tensor, density, rescale: tensor * value_mask(tensor, density) / density)


def paper_method_inputs(tiny: dict[str, Path], root: Path) -> dict[str, tuple[Path, list[Path], list[float]]]:
    """family -> (base folder, adapters, weights) for the merge methods from the papers: Llama (three inputs, unequal
    ranks and modules, a negative weight), GPT-2 (Conv1D c_attn and c_fc, fan_in_fan_out), T5 (decoder only)."""
    llama = tiny["llama"]
    llama_3 = factories.build_adapter(llama, root / "llama-3", r=6, alpha=12, targets=["q_proj", "o_proj"], seed=7)
    gpt2 = tiny["gpt2"]
    gpt2_b = factories.build_adapter(gpt2, root / "gpt2-b", r=8, alpha=8, targets=["c_attn", "c_fc"], seed=8)
    t5 = build_family_base(root / "t5", "t5")
    t5_a = build_family_adapter(t5, "t5", root / "t5-a", seed=41)
    t5_b = build_family_adapter(t5, "t5", root / "t5-b", seed=42, r=6, alpha=16)
    return {
        "llama": (llama, [tiny["tone"], tiny["legal"], llama_3], [0.6, -0.3, 0.5]),
        "gpt2": (gpt2, [tiny["gpt2_attn"], gpt2_b], [0.7, 0.4]),
        "t5": (t5, [t5_a, t5_b], [0.5, 0.5]),
    }


def load_family_base(family: str, base: Path) -> torch.nn.Module:
    return FAMILIES["t5"].load(base) if family == "t5" else factories.load_base(base)
