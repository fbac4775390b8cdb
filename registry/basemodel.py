"""Describe a base model from its ``config.json`` alone: architecture, config hash and module shapes.

The model is instantiated on the meta device (no weights, no memory), so shapes of every module an
adapter can target are known exactly, for any architecture ``transformers`` ships. Remote code is
never run unless the caller asks for it explicitly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import RegistryError

# Keys that change with the tooling that saved a config, not with the model it describes.
_VOLATILE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "use_cache"}


@dataclass
class BaseModelDescription:
    architecture: str | None
    model_type: str | None
    config_hash: str
    vocab_size: int | None
    module_shapes: dict[str, dict[str, Any]] = field(default_factory=dict)


def config_hash(config: dict[str, Any]) -> str:
    canonical = {k: v for k, v in config.items() if k not in _VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe_base(path: str | Path, *, trust_remote_code: bool = False) -> BaseModelDescription:
    """Read ``path/config.json`` and list every linear, embedding and conv module with its shape."""
    folder = Path(path).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise RegistryError(f"{folder} is not a model folder: config.json is missing")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{cfg_file} is not valid JSON: {exc}") from None

    import torch  # heavy imports stay out of the registry's import path
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise RegistryError(f"cannot read the model config in {folder}: {exc}") from None
    architectures = getattr(config, "architectures", None) or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    with torch.device("meta"):
        if model_cls is not None:
            model = model_cls(config)
        else:
            model = transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return BaseModelDescription(
        architecture=architectures[0] if architectures else type(model).__name__,
        model_type=getattr(config, "model_type", None),
        config_hash=config_hash(raw),
        vocab_size=getattr(config, "vocab_size", None),
        module_shapes=module_shapes(model),
    )


def module_shapes(model: Any) -> dict[str, dict[str, Any]]:
    """``{module path: {"kind", "in", "out"}}`` for every module LoRA can adapt."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            shapes[name] = {"kind": "linear", "in": module.in_features, "out": module.out_features}
        elif isinstance(module, Conv1D):  # GPT-2 style: weight is (in, out), adapters use fan_in_fan_out
            shapes[name] = {"kind": "linear", "in": module.weight.shape[0], "out": module.nf}
        elif isinstance(module, nn.Embedding):
            shapes[name] = {"kind": "embedding", "in": module.num_embeddings, "out": module.embedding_dim}
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            shapes[name] = {"kind": "conv", "in": module.in_channels, "out": module.out_channels}
    return shapes
