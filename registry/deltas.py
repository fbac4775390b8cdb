"""The weights side of ``adreg diff``: two adapters' deltas compared module by module from their safetensors files.

Each module's delta is ``dX = s B A`` (``s`` the module's scaling: alpha/r, or alpha/sqrt(r) with rsLoRA, per
module with rank_pattern / alpha_pattern); a conv's A is flattened to (r, in * kh * kw), its B (out, r, 1, 1) to
(out, r). PEFT's ``get_delta_weight`` returns the transpose of ``s B A`` for ``fan_in_fan_out`` layers (GPT-2's
Conv1D) and for embeddings (``lora_embedding_A`` is (r, num_embeddings)); Frobenius norms and inner products do not
change when both sides are transposed, so the factors are used as stored and the distances are those of PEFT's
deltas. Distances come from the thin factors (:class:`registry.lowrank.ExactDelta`, the merge engine's
arithmetic): no ``out x in`` matrix is formed. Other tensors (DoRA magnitudes, lora_B biases, modules_to_save
copies) are compared value by value, a slice at a time.

Files are opened with ``safe_open`` and read one module at a time (never ``torch.load``); torch and safetensors
are imported inside the functions, so ``registry`` imports without them.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import types as t
from registry.errors import RegistryError
from registry.inspect import KEY_PREFIX
from registry.manifest import AdapterManifest, ModuleTensors
from registry.merge_rules import saved_module_tensors

if TYPE_CHECKING:
    import torch

    from registry.lowrank import ExactDelta

#: The names PEFT gives a module's A and B tensors, by module kind.
FACTOR_KEYS = {"linear": ("lora_A.weight", "lora_B.weight"), "conv": ("lora_A.weight", "lora_B.weight"),
               "embedding": ("lora_embedding_A", "lora_embedding_B")}
#: Elements read at once when a non-factor tensor is compared (bounded memory for e.g. an lm_head copy).
CHUNK_ELEMENTS = 1 << 22
# ExactDelta's names for "one factor is the same", in PEFT's terms (its ``b`` is s B, its ``a`` is A).
_SAME_FACTOR = {"shared_b": "same_lora_B", "shared_a": "same_lora_A"}


@dataclass(frozen=True)
class Side:
    """One version to compare: its weights file, its manifest (from the catalog), and how errors name it."""

    weights: Path
    manifest: AdapterManifest
    label: str


@dataclass
class WeightComparison:
    modules: list[t.ModuleDistance] = field(default_factory=list)
    tensors: list[t.TensorDistance] = field(default_factory=list)
    tensors_added: list[str] = field(default_factory=list)
    tensors_removed: list[str] = field(default_factory=list)
    not_compared: list[t.NotCompared] = field(default_factory=list)


def delta_shape(info: ModuleTensors) -> tuple[int, ...] | None:
    """The shape of ``B @ A`` as stored (a conv's: (out, in, kh, kw)); None for a conv whose B is not 1x1."""
    if info.kind == "conv":
        if any(d != 1 for d in info.b_shape[2:]):
            return None
        return (info.b_shape[0], *info.a_shape[1:])
    return (info.b_shape[0], info.a_shape[1])


def compare_weights(a: Side, b: Side) -> WeightComparison:
    """Compare every module both sides have (the deltas) and every other tensor both files hold (the values)."""
    from safetensors import safe_open

    out = WeightComparison()
    common = sorted(a.manifest.modules.keys() & b.manifest.modules.keys(), key=natural_key)
    with ExitStack() as stack:
        handles = []
        for side in (a, b):
            try:
                handles.append(stack.enter_context(safe_open(str(side.weights), framework="pt")))
            except OSError as exc:
                raise RegistryError(f"the stored weights of {side.label} cannot be read ({exc.strerror or exc})",
                                    hint="`adreg doctor` checks the store") from None
        for module in common:
            distance = _module_distance(module, a, b, handles[0], handles[1])
            if isinstance(distance, t.NotCompared):
                out.not_compared.append(distance)
            else:
                out.modules.append(distance)
        _compare_other_tensors(a, b, handles[0], handles[1], out)
    out.modules.sort(key=lambda m: most_different_first(m.distance, m.abs_distance, m.module))
    out.tensors.sort(key=lambda x: most_different_first(x.distance, x.abs_distance, x.key))
    return out


def natural_key(name: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.9``."""
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def most_different_first(distance: float | None, abs_distance: float, name: str) -> tuple[int, float, list[Any]]:
    """Sort key: a nonzero difference from a zero reference first, then by relative distance, equal ones last."""
    if distance is not None:
        return (1, -distance, natural_key(name))
    return (0 if abs_distance > 0 else 2, -abs_distance, natural_key(name))


def _module_distance(module: str, a: Side, b: Side, ha: Any, hb: Any) -> t.ModuleDistance | t.NotCompared:
    ia, ib = a.manifest.modules[module], b.manifest.modules[module]
    shape_a, shape_b = delta_shape(ia), delta_shape(ib)
    if shape_a is None or shape_b is None:
        return t.NotCompared(module, "a conv LoRA whose B has a kernel larger than 1x1 (not a matrix product)")
    if ia.kind != ib.kind or shape_a != shape_b:
        return t.NotCompared(module, f"the deltas differ in kind or shape ({ia.kind} {_shape(shape_a)} in A, "
                                     f"{ib.kind} {_shape(shape_b)} in B): different base models?")
    da, db = _thin_delta(module, a, ia, ha), _thin_delta(module, b, ib, hb)
    abs_distance, method = db.compare(da)
    method = _SAME_FACTOR.get(method, method)
    norm_a, norm_b = da.norm, db.norm
    if not all(math.isfinite(x) for x in (abs_distance, norm_a, norm_b)):
        raise RegistryError(f"module {module}: the stored weights give a non-finite distance; the store may be "
                            "damaged", hint="`adreg doctor` checks the store")
    return t.ModuleDistance(
        module=module, kind=ia.kind, distance=abs_distance / norm_b if norm_b > 0 else None,
        abs_distance=abs_distance, norm_a=norm_a, norm_b=norm_b, rank_a=ia.rank, rank_b=ib.rank, method=method,
    )


def _thin_delta(module: str, side: Side, info: ModuleTensors, handle: Any) -> ExactDelta:
    """The module's delta ``s B A`` as float64 thin factors (``s B``, ``A``)."""
    from registry.lowrank import ExactDelta

    a_key, b_key = (f"{KEY_PREFIX}{module}.{suffix}" for suffix in FACTOR_KEYS[info.kind])
    lora_a, lora_b = _read(handle, a_key, side), _read(handle, b_key, side)
    lora_a = lora_a.reshape(lora_a.shape[0], -1)  # conv: (r, in, kh, kw) -> (r, in * kh * kw)
    lora_b = lora_b.reshape(lora_b.shape[0], -1)  # conv: (out, r, 1, 1) -> (out, r)
    return ExactDelta(lora_b * side.manifest.scaling(module), lora_a)


def _read(handle: Any, key: str, side: Side) -> torch.Tensor:
    try:
        return handle.get_tensor(key).double()
    except Exception:  # safetensors raises its own error type for a missing key
        raise RegistryError(f"the stored weights of {side.label} have no tensor {key!r} although the catalog lists "
                            "its module; the store may be damaged", hint="`adreg doctor` checks the store") from None


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def _compare_other_tensors(a: Side, b: Side, ha: Any, hb: Any, out: WeightComparison) -> None:
    """Tensors other than the LoRA factors, by name: in one file only (added/removed) or compared by value."""
    keys_a, keys_b = _other_keys(a, ha), _other_keys(b, hb)
    out.tensors_added = sorted(keys_b.keys() - keys_a.keys(), key=natural_key)
    out.tensors_removed = sorted(keys_a.keys() - keys_b.keys(), key=natural_key)
    for name in sorted(keys_a.keys() & keys_b.keys(), key=natural_key):
        key = KEY_PREFIX + name
        shape_a, shape_b = list(ha.get_slice(key).get_shape()), list(hb.get_slice(key).get_shape())
        if shape_a != shape_b:
            out.not_compared.append(t.NotCompared(name, f"shapes differ ({shape_a} in A, {shape_b} in B)"))
            continue
        kind = keys_a[name]
        scales = [_bias_scaling(side, name) if kind == "bias" else 1.0 for side in (a, b)]
        abs_distance, norm_a, norm_b = _value_distance(ha, hb, key, shape_a, scales[0], scales[1])
        if not all(math.isfinite(x) for x in (abs_distance, norm_a, norm_b)):
            raise RegistryError(f"tensor {name}: the stored weights give a non-finite distance; the store may be "
                                "damaged", hint="`adreg doctor` checks the store")
        out.tensors.append(t.TensorDistance(
            key=name, kind=kind, distance=abs_distance / norm_b if norm_b > 0 else None, abs_distance=abs_distance,
            norm_a=norm_a, norm_b=norm_b))


def _other_keys(side: Side, handle: Any) -> dict[str, str]:
    """Name (without the prefix) -> kind of every tensor of the file that is not a LoRA factor of a module."""
    factors = {f"{KEY_PREFIX}{module}.{suffix}" for module, info in side.manifest.modules.items()
               for suffix in FACTOR_KEYS[info.kind]}
    saved = {f"{path}.{param}" for path, params in saved_module_tensors(side.manifest).items() for param in params}
    found = {}
    for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
        if key in factors or not key.startswith(KEY_PREFIX):
            continue
        name = key[len(KEY_PREFIX):]
        if ".lora_magnitude_vector" in name:
            kind = "magnitude"
        elif name.endswith(".lora_B.bias"):
            kind = "bias"
        elif name in saved:
            kind = "saved"
        else:
            kind = "other"
        found[name] = kind
    return found


def _bias_scaling(side: Side, name: str) -> float:
    """lora_B's bias is added times the module's scaling, like ``B A``."""
    module = name.removesuffix(".lora_B.bias")
    return side.manifest.scaling(module) if module in side.manifest.modules else 1.0


def _value_distance(ha: Any, hb: Any, key: str, shape: list[int], scale_a: float,
                    scale_b: float) -> tuple[float, float, float]:
    """``(||sa a - sb b||, ||sa a||, ||sb b||)`` in float64, reading at most :data:`CHUNK_ELEMENTS` at a time."""
    if len(shape) == 0:
        xa, xb = ha.get_tensor(key).double() * scale_a, hb.get_tensor(key).double() * scale_b
        return float((xa - xb).abs()), float(xa.abs()), float(xb.abs())
    row = math.prod(shape[1:])
    step = max(1, CHUNK_ELEMENTS // max(row, 1))
    diff = na = nb = 0.0
    sa, sb = ha.get_slice(key), hb.get_slice(key)
    for start in range(0, shape[0], step):
        xa = sa[start:start + step].double() * scale_a
        xb = sb[start:start + step].double() * scale_b
        diff += float(((xa - xb) ** 2).sum())
        na += float((xa**2).sum())
        nb += float((xb**2).sum())
    return math.sqrt(diff), math.sqrt(na), math.sqrt(nb)
