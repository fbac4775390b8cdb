"""The merge driver: streams module by module from the adapters' safetensors, writes a PEFT adapter atomically."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from registry.errors import InvalidAdapter, RegistryError
from registry.inspect import KEY_PREFIX, inspect_adapter, weights_path
from registry.lowrank import ExactDelta
from registry.manifest import AdapterManifest
from registry.merge_rules import MergePlan, check_merge, saved_module_tensors
from workers.merge.methods import (
    ModuleInputs,
    merge_cat,
    merge_core,
    merge_dense_svd,
    merge_exact_svd,
    merge_factors,
    merge_iso_c,
    merge_iso_cts,
    merge_knots,
    merge_tsv_m,
)
from workers.merge.report import MergeReport, ModuleReport, peak_rss_bytes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# PEFT's key suffixes: linear layers hold modules (``.weight``), embeddings hold bare parameters.
KEYS = {"linear": ("lora_A.weight", "lora_B.weight"), "embedding": ("lora_embedding_A", "lora_embedding_B")}
# Config fields that restrict which modules match target_modules: the output's target_modules lists the merged
# modules' full paths, which match exactly those modules, so these are cleared.
_RESTRICTIONS = ("layers_to_transform", "layers_pattern", "exclude_modules")


class MergeCancelled(RegistryError):
    """``should_cancel()`` asked the merge to stop; nothing was written at ``out``."""


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _out_dtype(dtype: str | torch.dtype | None, manifests: list[AdapterManifest]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise RegistryError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype})")
        return dtype
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise RegistryError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        return DTYPES[name]
    inputs = {d for m in manifests for d in m.dtypes}
    return DTYPES[inputs.pop()] if len(inputs) == 1 and inputs <= DTYPES.keys() else torch.float32


def _check_device(device: str) -> str:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise RegistryError(f"device must be cpu or cuda (got {device!r})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise RegistryError(f"device {device!r} was asked for but CUDA is not available")
    if kind not in ("cpu", "cuda"):
        raise RegistryError(f"device must be cpu or cuda (got {device!r})")
    return device


def _prepare_out(out: Path) -> Path:
    """A fresh staging folder beside ``out`` (same file system, so the final rename is atomic)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegistryError(f"{out} already exists and is not empty; choose another output folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise RegistryError(f"cannot write the merged adapter to {out}: {exc.strerror or exc}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_adapters(
    sources: list[str | Path],
    weights: list[float],
    method: str = "svd",
    *,
    out: str | Path,
    density: float | None = None,
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    majority_sign_method: str = "total",
    seed: int | None = None,
    scale: float | None = None,
    tsv_fraction: float | None = None,
    common_fraction: float | None = None,
    knots_inner: str | None = None,
    core_inner: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str = "cpu",
    allow_cross_base: bool = False,
    progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    manifests: list[AdapterManifest] | None = None,
    labels: list[str] | None = None,
) -> MergeReport:
    """Merge PEFT LoRA adapter folders into a new adapter folder ``out``, as PEFT's ``add_weighted_adapter``.

    ``sources`` are folders holding ``adapter_config.json`` and ``adapter_model.safetensors``;
    ``method`` is one of :data:`registry.merge_rules.METHODS` (PEFT's eleven combination types). Every
    static check runs first (:func:`registry.merge_rules.check_merge`) and raises
    :class:`~registry.errors.IncompatibleAdapters` listing every problem. Then modules are streamed one at
    a time from the safetensors files, so memory holds one module's tensors across inputs (plain ``svd``
    never forms a dense ``out x in`` delta). Computation is float32 (float64 for the exact SVD); the
    output is written in ``dtype`` (``float32``, ``float16``, ``bfloat16``), by default the inputs'
    common dtype. ``seed`` makes DARE's random masks reproducible.

    The output goes to a staging folder beside ``out`` that is renamed into place at the end: an error,
    or ``should_cancel()`` returning True (checked between modules; raises :class:`MergeCancelled`),
    leaves nothing at ``out``. A non-empty ``out`` is refused. ``progress(fraction, message)`` is called
    after each module.

    ``manifests`` (default: read from the folders) and ``labels`` (default: the folder paths) let the catalog's
    merge job pass the very metadata its static check ran on (base identity from the catalog, inputs named by
    their references), so the job cannot fail a check that passed before it was queued.
    """
    start = time.perf_counter()
    folders = [Path(s) for s in sources]
    if manifests is None:
        manifests = [inspect_adapter(f, scan=False) for f in folders]
    if labels is None:
        labels = [str(f) for f in folders]
    params = {"density": density, "svd_rank": svd_rank, "svd_clamp": svd_clamp,
              "majority_sign_method": majority_sign_method, "seed": seed, "scale": scale,
              "tsv_fraction": tsv_fraction, "common_fraction": common_fraction,
              "knots_inner": knots_inner,
              "core_inner": core_inner}
    plan = check_merge(manifests, list(weights), method, params, allow_cross_base=allow_cross_base, labels=labels)
    out = Path(out)
    out_dtype = _out_dtype(dtype, manifests)
    device = _check_device(device)
    staging = _prepare_out(out)
    try:
        if progress is not None:
            progress(0.0, f"merging {len(plan.modules)} modules by {plan.method}")
        with _intra_op_threads(1 if _small_work(manifests, plan, device) else None):
            tensors, module_reports, peak_module = _run(folders, manifests, labels, plan, device, out_dtype,
                                                        progress, should_cancel)
        if should_cancel is not None and should_cancel():
            raise MergeCancelled("the merge was cancelled; nothing was written")
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = _out_config(manifests, plan)
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            _fsync(staging / name)
        try:
            if out.exists():
                out.rmdir()  # empty when checked above; fails if something was written there since
            os.rename(staging, out)
        except OSError as exc:
            raise RegistryError(f"{out} was created by someone else during the merge ({exc.strerror}); "
                                "nothing was written") from None
        _fsync(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return MergeReport(
        method=plan.method, out=str(out), out_rank=plan.out_rank, weights=plan.weights, params=plan.params,
        modules=module_reports, partial_modules=plan.partial_modules,
        saved_modules={path: [labels[i] for i in owners] for path, owners in plan.saved_modules.items()},
        seconds=time.perf_counter() - start,
        peak_rss_bytes=peak_rss_bytes(), peak_module_bytes=peak_module,
        dtype=str(out_dtype).removeprefix("torch."), warnings=plan.warnings,
    )


def _run(folders: list[Path], manifests: list[AdapterManifest], labels: list[str], plan: MergePlan, device: str,
         out_dtype: torch.dtype, progress: Callable[[float, str], None] | None,
         should_cancel: Callable[[], bool] | None) -> tuple[dict[str, torch.Tensor], list[ModuleReport], int]:
    """Merge every module of ``plan``; return the output tensors, the module reports, the peak working set."""
    seed = plan.params.get("seed")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tensors: dict[str, torch.Tensor] = {}
    reports: list[ModuleReport] = []
    peak = 0
    modules = sorted(plan.modules, key=_natural_key)
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(weights_path(f)), framework="pt")) for f in folders]
        _check_saved_copies(handles, manifests, labels)
        for index, module in enumerate(modules):
            if should_cancel is not None and should_cancel():
                raise MergeCancelled("the merge was cancelled; nothing was written")
            present = [i for i, m in enumerate(manifests) if module in m.modules]
            kind = manifests[present[0]].modules[module].kind
            a_key, b_key = (f"{KEY_PREFIX}{module}.{suffix}" for suffix in KEYS[kind])
            x = ModuleInputs(
                a=[_read(handles[i], a_key, labels[i]) for i in present],
                b=[_read(handles[i], b_key, labels[i]) for i in present],
                scalings=[manifests[i].scaling(module) for i in present],
                weights=[plan.weights[i] for i in present],
            )
            a, b, singular = _merge_module(x, plan, plan.module_ranks[module], generator, device)
            peak = max(peak, _working_set(x, plan))
            a, b = a.to(out_dtype).contiguous(), b.to(out_dtype).contiguous()
            if not (_finite(a) and _finite(b)):
                raise RegistryError(f"module {module}: the merged factors overflow {out_dtype} (NaN/Inf); "
                                    "merge with dtype='float32' or smaller weights")
            tensors[a_key], tensors[b_key] = a, b
            error, reference = _error(x, a, b, singular if out_dtype == torch.float32 else None)
            reports.append(ModuleReport(module, len(present), a.shape[0],
                                        error / reference if reference > 0 else None, error, reference))
            if progress is not None:
                progress((index + 1) / len(modules), f"{index + 1}/{len(modules)} modules")
        tensors.update(_saved_copies(handles, manifests, labels, plan, out_dtype))
    return tensors, reports, peak


def _check_saved_copies(handles: list[Any], manifests: list[AdapterManifest], labels: list[str]) -> None:
    """Refuse metadata that misses modules_to_save copies its weights hold (e.g. a catalog row recorded before
    extra_tensors were): the plan would leave them out and PEFT could not load the output."""
    for handle, m, label in zip(handles, manifests, labels, strict=True):
        if not m.modules_to_save:
            continue
        shapes = {k: list(handle.get_slice(k).get_shape()) for k in handle.keys() if ".lora_" not in k}  # noqa: SIM118
        in_file = saved_module_tensors(m.model_copy(update={"extra_tensors": shapes}))
        if in_file != saved_module_tensors(m):
            raise RegistryError(f"{label}: its weights hold modules_to_save copies ({', '.join(sorted(in_file))}) "
                                "that its metadata does not list; register it again so that they are recorded")


def _saved_copies(handles: list[Any], manifests: list[AdapterManifest], labels: list[str], plan: MergePlan,
                  out_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The modules_to_save copies of the plan: ``sum_i w_i X_i`` per parameter over the inputs that train the
    module (their weights sum to 1, see :func:`registry.merge_rules.check_merge`), under PEFT's key names."""
    out: dict[str, torch.Tensor] = {}
    for path, owners in sorted(plan.saved_modules.items()):
        for param in sorted(saved_module_tensors(manifests[owners[0]])[path]):
            key = f"{KEY_PREFIX}{path}.{param}"
            total = sum(plan.weights[i] * _read(handles[i], key, labels[i]) for i in owners)
            assert isinstance(total, torch.Tensor)
            merged = total.to(out_dtype).contiguous()
            if not _finite(merged):
                raise RegistryError(f"module {path}: the merged copy of {param} overflows {out_dtype} (NaN/Inf); "
                                    "merge with dtype='float32'")
            out[key] = merged
    return out


def _small_work(manifests: list[AdapterManifest], plan: MergePlan, device: str) -> bool:
    """True when every module's work is small thin-factor algebra (no dense delta, inner size x (out + in)
    under 2**24): such ops gain little from intra-op threads, and on a busy CPU OpenMP's spin-waiting
    makes them several times slower (measured: 5x on the 2-core benchmark machine)."""
    if plan.combine == "dense_svd" or torch.device(device).type != "cpu":
        return False
    for module in plan.modules:
        tensors = [m.modules[module] for m in manifests if module in m.modules]
        inner = sum(t.rank for t in tensors) + plan.module_ranks[module]
        if inner * (tensors[0].in_features + tensors[0].out_features) >= 2**24:
            return False
    return True


@contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None: unchanged), restoring the previous count."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _finite(tensor: torch.Tensor) -> bool:
    # A NaN or Inf anywhere makes the sum non-finite; the sum is one cheap pass without a mask.
    return math.isfinite(float(tensor.float().sum())) or bool(torch.isfinite(tensor).all())


def _read(handle: Any, key: str, label: str) -> torch.Tensor:
    tensor = handle.get_tensor(key).float()
    if not _finite(tensor):
        raise InvalidAdapter(label, [f"tensor {key!r} contains NaN or Inf values"])
    return tensor


def _merge_module(x: ModuleInputs, plan: MergePlan, rank: int, generator: torch.Generator | None,
                  device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(A, B) of one module, and for the unclamped exact svd the singular values of the exact sum."""
    p = plan.params
    if plan.combine == "cat":
        return (*merge_cat(x), None)
    if plan.combine == "exact_svd":
        a, b, singular = merge_exact_svd(x, rank, p.get("svd_clamp"), device)
        return a, b, singular if p.get("svd_clamp") is None else None
    if plan.combine == "iso":
        return (*merge_iso_c(x, rank, p["scale"], device), None)
    if plan.combine == "tsv":
        return (*merge_tsv_m(x, rank, p["tsv_fraction"], p["scale"], device), None)
    if plan.combine == "cts":
        return (*merge_iso_cts(x, rank, p["common_fraction"], p["scale"], device), None)
    if plan.combine in ("knots", "core"):
        fn = merge_knots if plan.combine == "knots" else merge_core
        return (*fn(x, rank, p[f"{plan.combine}_inner"], p["density"], p.get("majority_sign_method", "total"), device),
                None)
    if plan.combine == "dense_svd":
        return (*merge_dense_svd(x, plan.op, rank, p.get("density"), p.get("majority_sign_method", "total"),
                                 p.get("svd_clamp"), generator, device), None)
    return (*merge_factors(x, plan.op, p.get("density"), p.get("majority_sign_method", "total"), generator), None)


def _error(x: ModuleInputs, a: torch.Tensor, b: torch.Tensor, singular: torch.Tensor | None) -> tuple[float, float]:
    """(||merged delta - exact delta||_F, ||exact delta||_F), never forming an out x in matrix.

    An unclamped exact svd written in float32 has its error in closed form: the singular values it
    discarded (float32 rounding, ~1e-7 relative, is not counted). Everything else goes through the
    Gram matrices of the written factors and of the exact thin factors.
    """
    if singular is not None:
        k = a.shape[0]
        return float(singular[k:].norm()), float(singular.norm())
    exact = ExactDelta(*x.thin_factors(torch.float64))
    return exact.distance(b, a), exact.norm


def _working_set(x: ModuleInputs, plan: MergePlan) -> int:
    """Bytes held for one module: its float32 inputs, plus (pruning *_svd) the dense deltas, their stack,
    the combined delta and the SVD's factors."""
    inputs = sum(t.numel() * 4 for t in x.a + x.b)
    if plan.combine != "dense_svd":
        return 2 * inputs  # the inputs and one combined/concatenated copy (the exact SVD's R x R core is tiny)
    dense = x.a[0].shape[1] * x.b[0].shape[0] * 4
    return inputs + (2 * len(x.a) + 3) * dense


def _peft_version() -> str | None:
    try:
        return importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        return None


def _out_config(manifests: list[AdapterManifest], plan: MergePlan) -> dict[str, Any]:
    """The first input's config (as PEFT's ``replace``), made to describe exactly the merged tensors.

    ``r`` is the largest module rank, ``lora_alpha = r`` and ``alpha_pattern = rank_pattern`` so that every
    module's scaling is 1; rsLoRA, DoRA and lora_bias are off. ``target_modules`` lists the merged modules' full
    paths (PEFT matches a list entry to a module whose name equals it or ends with ``.`` + it), so PEFT creates LoRA
    layers on exactly those modules, whatever form the inputs' target_modules had (a regex string, leaf names,
    with or without layers_to_transform / exclude_modules, which are therefore cleared). ``modules_to_save``
    lists the full paths of the carried copies (``None`` when there are none).
    """
    config = dict(manifests[0].config)
    config["base_model_name_or_path"] = manifests[0].base_model_name_or_path  # the resolved identity
    config["revision"] = manifests[0].revision
    for key in _RESTRICTIONS:
        config[key] = None
    config.update(
        r=plan.out_rank, lora_alpha=plan.out_rank, rank_pattern=dict(plan.rank_pattern),
        alpha_pattern={k: float(v) for k, v in plan.rank_pattern.items()}, use_rslora=False, use_dora=False,
        lora_bias=False, init_lora_weights=True, inference_mode=True,
        target_modules=sorted(plan.modules, key=_natural_key),
        modules_to_save=sorted(plan.saved_modules, key=_natural_key) or None, trainable_token_indices=None,
        peft_version=_peft_version(),
    )
    return config
