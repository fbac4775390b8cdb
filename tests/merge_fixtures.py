"""Helpers for the merge tests: PEFT's own merge as the reference, exact weighted deltas, fake adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import factories
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from registry.inspect import inspect_adapter

PREFIX = "base_model.model."


class PeftReference:
    """A PEFT model with the inputs loaded once (``in0``, ``in1``, ...); merges are added and removed per test."""

    def __init__(self, base: Path, adapters: list[Path]) -> None:
        self.model = PeftModel.from_pretrained(factories.load_base(base), str(adapters[0]), adapter_name="in0")
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
        """module -> (A, B, scaling) of ``adapter``, in B @ A orientation (embeddings included)."""
        out = {}
        for name, mod in self.model.named_modules():
            if adapter in getattr(mod, "lora_A", {}):
                out[name] = (mod.lora_A[adapter].weight.detach(), mod.lora_B[adapter].weight.detach(),
                             mod.scaling[adapter])
            elif adapter in getattr(mod, "lora_embedding_A", {}):
                out[name] = (mod.lora_embedding_A[adapter].detach(), mod.lora_embedding_B[adapter].detach(),
                             mod.scaling[adapter])
        return out

    def logits(self, adapter: str, seed: int = 0) -> torch.Tensor:
        self.model.set_adapter(adapter)
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return self.model(input_ids=ids).logits


def exact_deltas(adapters: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i w_i s_i B_i A_i`` per module in float64, with each input's own (rsLoRA/pattern aware) scaling."""
    out: dict[str, torch.Tensor] = {}
    for path, w in zip(adapters, weights, strict=True):
        manifest = inspect_adapter(path)
        tensors = load_file(path / "adapter_model.safetensors")
        for module, info in manifest.modules.items():
            a_key, b_key = _keys(module, info.kind)
            delta = tensors[b_key].double() @ tensors[a_key].double()
            out[module] = out.get(module, 0) + w * manifest.scaling(module) * delta
    return out


def merged_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Each module's ``s B A`` of an adapter folder, with the scaling its config gives (as PEFT loads it)."""
    manifest = inspect_adapter(folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for module, info in manifest.modules.items():
        a_key, b_key = _keys(module, info.kind)
        out[module] = manifest.scaling(module) * (tensors[b_key].double() @ tensors[a_key].double())
    return out


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
