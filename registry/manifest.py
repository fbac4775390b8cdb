"""The metadata of one LoRA adapter, as read from its folder or from the catalog (no tensors).

A manifest is what static validation (``registry.compat``) and the catalog work on: both merge checks and
base-model checks run on manifests only, before any tensor is read.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from registry.errors import RegistryError

ModuleKind = Literal["linear", "embedding", "conv"]

# What a registered adapter may declare (checked by ``registry.inspect`` at registration, with the rule in the
# message; documented in docs/architecture.md, "Hostile adapter folders").
MAX_RANK = 65536  # r and every rank_pattern value: 1..MAX_RANK
MAX_ALPHA = 1e6  # lora_alpha and every alpha_pattern value: finite, 0 < alpha <= MAX_ALPHA
MAX_PATTERNS = 4096  # entries of rank_pattern / alpha_pattern
MAX_PATTERN_CHARS = 1024  # one rank_pattern / alpha_pattern key (a regular expression)
# Free-text fields: the longest value accepted (the catalog column's width where it has one).
TEXT_LIMITS = {
    "task_type": 64,
    "peft_type": 32,
    "peft_version": 128,  # the catalog column keeps 32: PEFT dev builds write "0.18.0.dev0@<commit>" (52)
    "revision": 255,
    "base model name": 255,
    "base_model_name_or_path": 1024,
    "description": 4096,
    "tensor name": 512,
    "target module": 128,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def text_problem(value: object, what: str, *, limit: int | None = None, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as the free-text field ``what`` (None when it can): not a string, longer than
    its limit (``TEXT_LIMITS[what]``), a NUL or another control character (tab and newline allowed when
    ``multiline``), or text that is not valid Unicode (a lone surrogate)."""
    limit = limit if limit is not None else TEXT_LIMITS[what]
    if not isinstance(value, str):
        return f"{what} must be a string, not {type(value).__name__}"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long; at most {limit} are accepted"
    bad = (_CONTROL_MULTILINE if multiline else _CONTROL).search(value)
    if bad is not None:
        return f"{what} contains the control character {bad.group()!r} at position {bad.start()}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid Unicode text ({exc.reason} at position {exc.start})"
    return None


def check_text(value: str | None, what: str, *, limit: int | None = None, multiline: bool = False) -> str | None:
    """``value`` if it is None or acceptable free text for ``what`` (see :func:`text_problem`); raises
    :class:`~registry.errors.RegistryError` saying why not."""
    if value is None:
        return None
    problem = text_problem(value, what, limit=limit, multiline=multiline)
    if problem is not None:
        raise RegistryError(problem)
    return value


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
