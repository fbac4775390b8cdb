"""Read a PEFT adapter folder into an :class:`AdapterManifest`, refusing anything unsafe or inconsistent.

Only ``adapter_config.json`` and the safetensors header are parsed to build the manifest; with
``scan=True`` the tensors are then read once (one at a time) to reject NaN/Inf and to hash the file.
Pickled weights (``adapter_model.bin``) are never opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from registry.errors import InvalidAdapter, field_problems
from registry.manifest import AdapterManifest, ModuleTensors, match_pattern

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
KEY_PREFIX = "base_model.model."

# Module-path segments that only exist inside a LoRA layer: seeing one in the module path of a LoRA
# tensor means a LoRA layer was wrapped by another (``target_modules='all-linear'`` applied twice).
_LORA_INTERNALS = {
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_layer", "lora_dropout",
    "lora_magnitude_vector",
}


def lora_internals(module_path: str) -> set[str]:
    """The LoRA-internal names in a module path: non-empty means a LoRA layer nested inside another."""
    return _LORA_INTERNALS.intersection(module_path.split("."))


_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?(?:\.(?P<leaf>weight|bias))?$"
)
CONVERT_HINT = (
    "Convert it once, in a trusted environment, with PEFT: "
    "`PeftModel.from_pretrained(base, path).save_pretrained(out, safe_serialization=True)`."
)


class _LoraConfigFile(BaseModel):
    """The fields of adapter_config.json that the registry relies on; the rest is kept verbatim."""

    model_config = ConfigDict(extra="allow")

    peft_type: str
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    r: int = 8
    lora_alpha: float = 8
    use_rslora: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None
    target_modules: list[str] | str | None = None
    target_parameters: list[str] | None = None
    modules_to_save: list[str] | None = None
    peft_version: str | None = None

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("r must be a positive integer")
        return v

    @field_validator("lora_alpha")
    @classmethod
    def _finite_alpha(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("lora_alpha must be finite")
        return v


def read_config(folder: Path) -> dict[str, Any]:
    """Parse ``adapter_config.json`` (raises InvalidAdapter when missing or malformed)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InvalidAdapter(str(folder), [f"{CONFIG_FILE} is missing"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(str(folder), [f"{CONFIG_FILE} is not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise InvalidAdapter(str(folder), [f"{CONFIG_FILE} must hold a JSON object"])
    return data


def weights_path(folder: Path) -> Path:
    """The safetensors weights of an adapter folder; refuses pickle-only folders with how to convert."""
    path = folder / WEIGHTS_FILE
    if path.is_file():
        return path
    pickles = [name for name in PICKLE_WEIGHTS if (folder / name).exists()]
    if pickles:
        raise InvalidAdapter(
            str(folder),
            [f"only pickle weights found ({', '.join(pickles)}); the registry accepts safetensors only, "
             "because loading a pickle can run arbitrary code"],
            hint=CONVERT_HINT,
        )
    raise InvalidAdapter(str(folder), [f"{WEIGHTS_FILE} is missing"])


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dtype_name(st_dtype: str) -> str:
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(st_dtype, st_dtype)


def _collect_modules(
    shapes: dict[str, list[int]], dtypes: dict[str, str], cfg: _LoraConfigFile, problems: list[str]
) -> tuple[dict[str, ModuleTensors], dict[str, list[int]]]:
    parts: dict[str, dict[str, list[int]]] = {}
    extra: dict[str, list[int]] = {}
    module_dtype: dict[str, str] = {}
    for key, shape in shapes.items():
        if not key.startswith(KEY_PREFIX):
            problems.append(f"tensor {key!r} does not start with {KEY_PREFIX!r} (not a PEFT checkpoint)")
            continue
        m = _LORA_KEY.match(key[len(KEY_PREFIX):])
        if m is None:
            extra[key] = shape
            continue
        module = m.group("module")
        nested = lora_internals(module)
        if nested:
            problems.append(
                f"tensor {key!r} is a LoRA layer nested inside another LoRA layer ({sorted(nested)[0]} in "
                "its module path), as target_modules='all-linear' applied twice produces"
            )
            continue
        slot = m.group("part") + (".bias" if m.group("leaf") == "bias" else "")
        parts.setdefault(module, {})[slot] = shape
        module_dtype.setdefault(module, dtypes[key])

    modules: dict[str, ModuleTensors] = {}
    for module, got in sorted(parts.items()):
        kind = "embedding" if "lora_embedding_A" in got or "lora_embedding_B" in got else "linear"
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A", "lora_B")
        if a_key not in got or b_key not in got:
            missing = a_key if a_key not in got else b_key
            problems.append(f"module {module!r} has no {missing} tensor")
            continue
        a, b = got[a_key], got[b_key]
        if len(a) == 4:
            kind = "conv"
        expected_r = _rank_for(cfg, module)
        if kind == "embedding":  # PEFT stores embedding A as (r, num_embeddings), B as (dim, r)
            rank_a, rank_b, in_f, out_f = a[0], b[-1], a[1], b[0]
        elif kind == "conv":  # A: (r, in, k...), B: (out, r, 1...)
            rank_a, rank_b, in_f, out_f = a[0], b[1], a[1], b[0]
        else:
            if len(a) != 2 or len(b) != 2:
                problems.append(f"module {module!r} has LoRA tensors of rank {len(a)}/{len(b)}, expected 2-D")
                continue
            rank_a, rank_b, in_f, out_f = a[0], b[1], a[1], b[0]
        if rank_a != rank_b:
            problems.append(f"module {module!r}: lora_A has rank {rank_a} but lora_B has rank {rank_b}")
            continue
        if rank_a != expected_r:
            problems.append(
                f"module {module!r}: tensors have rank {rank_a} but the config says r={expected_r}"
            )
            continue
        modules[module] = ModuleTensors(
            kind=kind, rank=rank_a, in_features=in_f, out_features=out_f, a_shape=a, b_shape=b,
            dtype=_dtype_name(module_dtype[module]), has_bias="lora_B.bias" in got,
            has_magnitude="lora_magnitude_vector" in got,
        )
    if not modules and not problems:
        problems.append("the weights file holds no LoRA tensors")
    return modules, extra


def _rank_for(cfg: _LoraConfigFile, module: str) -> int:
    pattern = cfg.rank_pattern or {}
    key = match_pattern(pattern, module)
    return int(pattern[key]) if key is not None else cfg.r


def scan_tensors(path: Path) -> list[str]:
    """Read every tensor once and return the names of those holding NaN or Inf."""
    import torch  # imported here: the registry package must import without torch
    from safetensors import safe_open

    bad: list[str] = []
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor = fh.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(key)
    return bad


def inspect_adapter(path: str | Path, *, scan: bool = True) -> AdapterManifest:
    """Validate the adapter folder at ``path`` and describe it.

    Raises :class:`InvalidAdapter` listing every problem: missing or malformed config, pickle-only
    weights, non-LoRA adapters, tensors inconsistent with the config, nested LoRA keys and (with
    ``scan``) NaN/Inf values. ``scan=False`` skips reading tensor data and hashing.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise InvalidAdapter(str(folder), ["not a folder (expected a PEFT adapter folder)"])
    raw = read_config(folder)
    wpath = weights_path(folder)
    try:
        cfg = _LoraConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{CONFIG_FILE}: {p}" for p in field_problems(exc, "config")]
        raise InvalidAdapter(str(folder), problems) from None
    if cfg.peft_type.upper() != "LORA":
        raise InvalidAdapter(str(folder), [f"peft_type is {cfg.peft_type!r}; only LoRA adapters are supported"])

    try:
        with safe_open(str(wpath), framework="numpy") as fh:
            shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
            dtypes = {k: fh.get_slice(k).get_dtype() for k in shapes}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidAdapter(str(folder), [f"{WEIGHTS_FILE} is not a readable safetensors file: {exc}"]) from None

    problems: list[str] = []
    modules, extra = _collect_modules(shapes, dtypes, cfg, problems)
    if scan and not problems:
        problems += [f"tensor {k!r} contains NaN or Inf values" for k in scan_tensors(wpath)]
    if problems:
        raise InvalidAdapter(str(folder), problems)

    leaf_names = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return AdapterManifest(
        peft_type="LORA",
        task_type=cfg.task_type,
        base_model_name_or_path=cfg.base_model_name_or_path,
        revision=cfg.revision,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        lora_bias=cfg.lora_bias,
        fan_in_fan_out=cfg.fan_in_fan_out,
        rank_pattern=cfg.rank_pattern or {},
        alpha_pattern=cfg.alpha_pattern or {},
        target_modules=leaf_names,
        target_parameters=cfg.target_parameters,
        modules_to_save=list(cfg.modules_to_save or []),
        peft_version=cfg.peft_version,
        config=raw,
        modules=modules,
        extra_tensors=extra,
        weights_sha256=sha256_file(wpath) if scan else "",
        size_bytes=wpath.stat().st_size,
        param_count=sum(math.prod(s) for s in shapes.values()),
        dtypes=sorted({_dtype_name(d) for d in dtypes.values()}),
    )
