"""The merge driver: streams module by module from the adapters' safetensors, writes a PEFT adapter atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from registry.errors import RegistryError
from registry.inspect import inspect_adapter, weights_path
from registry.merge_rules import check_merge
from workers.merge.methods import ModuleInputs, merge_ab, merge_cat, merge_svd_dense, merge_svd_exact
from workers.merge.report import MergeReport, ModuleReport, low_rank_rel_error, peak_rss_bytes

PREFIX = "base_model.model."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MergeCancelled(RegistryError):
    """``should_cancel()`` asked the merge to stop; nothing was written at ``out``."""


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _out_dtype(dtype: str | None, input_dtypes: set[str]) -> torch.dtype:
    if dtype is not None:
        if dtype not in DTYPES:
            raise RegistryError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        return DTYPES[dtype]
    if len(input_dtypes) == 1 and next(iter(input_dtypes)) in DTYPES:
        return DTYPES[next(iter(input_dtypes))]
    return torch.float32


def _prepare_out(out: Path) -> Path:
    """A fresh temporary folder beside ``out`` (refusing a non-empty ``out``)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegistryError(f"{out} already exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


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
    dtype: str | None = None,
    device: str = "cpu",
    allow_cross_base: bool = False,
    progress: Callable[..., None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> MergeReport:
    """Merge PEFT LoRA adapter folders into a new adapter folder ``out``, as PEFT's ``add_weighted_adapter``.

    Every static check runs first (:func:`registry.merge_rules.check_merge`); then modules are streamed
    one at a time from the safetensors files, so memory holds one module's tensors across inputs. The
    output is written to a temporary folder beside ``out`` and renamed into place at the end: a failed
    or cancelled merge leaves nothing at ``out``. Computation is float32 (float64 for the exact SVD);
    the output dtype is ``dtype`` or the inputs' common dtype.
    """
    start = time.perf_counter()
    folders = [Path(s) for s in sources]
    manifests = [inspect_adapter(f, scan=False) for f in folders]
    params = {"density": density, "svd_rank": svd_rank, "svd_clamp": svd_clamp,
              "majority_sign_method": majority_sign_method, "seed": seed}
    plan = check_merge(manifests, list(weights), method, params, allow_cross_base=allow_cross_base,
                       labels=[str(f) for f in folders])
    out = Path(out)
    out_dtype = _out_dtype(dtype, {d for m in manifests for d in m.dtypes})
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    staging = _prepare_out(out)
    tensors: dict[str, torch.Tensor] = {}
    module_reports: list[ModuleReport] = []
    peak_module = 0
    try:
        with ExitStack() as stack:
            handles = [stack.enter_context(safe_open(str(weights_path(f)), framework="pt")) for f in folders]
            modules = sorted(plan.modules, key=_natural_key)
            for index, module in enumerate(modules):
                if should_cancel is not None and should_cancel():
                    raise MergeCancelled("the merge was cancelled")
                present = [i for i, m in enumerate(manifests) if module in m.modules]
                x = ModuleInputs(
                    a=[handles[i].get_tensor(f"{PREFIX}{module}.lora_A.weight").float() for i in present],
                    b=[handles[i].get_tensor(f"{PREFIX}{module}.lora_B.weight").float() for i in present],
                    scalings=[manifests[i].scaling(module) for i in present],
                    weights=[float(weights[i]) for i in present],
                )
                peak_module = max(peak_module, sum(t.numel() * t.element_size() for t in x.a + x.b))
                a, b, residual = _merge_module(x, plan.method, plan.family, plan.out_rank, params, generator,
                                               device)
                rel = _relative_error(x, a, b, residual)
                a, b = _pad(a, b, plan.out_rank)
                tensors[f"{PREFIX}{module}.lora_A.weight"] = a.to(out_dtype).contiguous()
                tensors[f"{PREFIX}{module}.lora_B.weight"] = b.to(out_dtype).contiguous()
                module_reports.append(ModuleReport(module, len(present), plan.out_rank, rel))
                if progress is not None:
                    progress((index + 1) / len(modules), f"{index + 1}/{len(modules)} modules")
        bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise RegistryError(f"the merge produced NaN/Inf in {len(bad)} tensor(s), e.g. {bad[0]}")
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(_out_config(manifests, plan), indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return MergeReport(
        method=plan.method, out=str(out), out_rank=plan.out_rank, weights=plan.weights, params=plan.params,
        modules=module_reports, partial_modules=plan.partial_modules, seconds=time.perf_counter() - start,
        peak_rss_bytes=peak_rss_bytes(), peak_module_bytes=peak_module, dtype=str(out_dtype).removeprefix("torch."),
        warnings=plan.warnings,
    )


def _merge_module(x: ModuleInputs, method: str, fam: str, rank: int, params: dict[str, Any],
                  generator: torch.Generator | None, device: str) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    density, sign, clamp = params["density"], params["majority_sign_method"], params["svd_clamp"]
    if fam == "cat":
        a, b = merge_cat(x)
        return a, b, 0.0
    if method == "svd":
        a, b, residual = merge_svd_exact(x, rank, clamp, device)
        return a.cpu(), b.cpu(), (residual if clamp is None else None)
    if fam == "svd":
        a, b = merge_svd_dense(x, method, rank, density, sign, clamp, generator, device)
        return a, b, None
    a, b = merge_ab(x, method, density, sign, generator)
    return a, b, None


def _relative_error(x: ModuleInputs, a: torch.Tensor, b: torch.Tensor, residual: float | None) -> float:
    b_cat = torch.cat(x.b, dim=1)
    a_cat = torch.cat([ai * (w * s) for ai, w, s in zip(x.a, x.weights, x.scalings, strict=True)], dim=0)
    if residual is not None and residual == 0.0:
        return 0.0
    return low_rank_rel_error(b, a, b_cat, a_cat)


def _pad(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a module's factors to the adapter's rank (zeros add nothing to B @ A), as PEFT does."""
    r = a.shape[0]
    if r == rank:
        return a, b
    if r > rank:
        raise AssertionError(f"module rank {r} exceeds the output rank {rank}")
    return (torch.cat([a, a.new_zeros(rank - r, a.shape[1])], dim=0),
            torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1))


def _out_config(manifests: list[Any], plan: Any) -> dict[str, Any]:
    """The first input's config (as PEFT's ``replace``), with the merged rank and scaling 1 made explicit."""
    config = dict(manifests[0].config)
    config.update(
        r=plan.out_rank, lora_alpha=plan.out_rank, rank_pattern={}, alpha_pattern={}, use_rslora=False,
        use_dora=False, target_modules=sorted({t for m in manifests for t in m.target_modules}),
        modules_to_save=None, inference_mode=True,
    )
    return config
