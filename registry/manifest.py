"""The metadata of one LoRA adapter, as read from its folder or from the catalog (no tensors).

A manifest is what static validation (``registry.compat``) and the catalog work on: both merge checks and
base-model checks run on manifests only, before any tensor is read.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

ModuleKind = Literal["linear", "embedding", "conv"]


def match_pattern(patterns: dict[str, Any], module: str) -> str | None:
    """Return the key of ``patterns`` that applies to ``module``, with PEFT's rule.

    PEFT (``peft.utils.other.get_pattern_key``) takes the first key, in insertion order, for which
    ``re.match(rf"(.*\\.)?({key})$", module)`` matches.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


class ModuleTensors(BaseModel):
    """The LoRA tensors of one adapted module. Shapes follow PEFT: A is (r, in), B is (out, r)."""

    kind: ModuleKind
    rank: int
    in_features: int
    out_features: int
    a_shape: list[int]
    b_shape: list[int]
    dtype: str
    has_bias: bool = False  # lora_B.bias (``lora_bias=True``)
    has_magnitude: bool = False  # DoRA's lora_magnitude_vector


class AdapterManifest(BaseModel):
    """Everything about an adapter that can be known without loading its weights."""

    peft_type: str
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    r: int
    lora_alpha: float
    use_rslora: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    target_modules: list[str] = Field(default_factory=list)  # explicit leaf names, sorted
    target_parameters: list[str] | None = None
    modules_to_save: list[str] = Field(default_factory=list)
    peft_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)  # the full adapter_config.json
    modules: dict[str, ModuleTensors] = Field(default_factory=dict)  # module path in the base -> tensors
    extra_tensors: dict[str, list[int]] = Field(default_factory=dict)  # non-LoRA tensors (modules_to_save)
    weights_sha256: str = ""
    size_bytes: int = 0
    param_count: int = 0
    dtypes: list[str] = Field(default_factory=list)

    def rank_of(self, module: str) -> int:
        key = match_pattern(self.rank_pattern, module)
        return int(self.rank_pattern[key]) if key is not None else self.r

    def alpha_of(self, module: str) -> float:
        key = match_pattern(self.alpha_pattern, module)
        return float(self.alpha_pattern[key]) if key is not None else self.lora_alpha

    def scaling(self, module: str) -> float:
        """The factor PEFT applies to B @ A for ``module``: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        r = self.rank_of(module)
        alpha = self.alpha_of(module)
        return alpha / (r**0.5) if self.use_rslora else alpha / r
