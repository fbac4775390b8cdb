"""What a merge did: per-module and overall error against the exact weighted sum, ranks, time, memory."""

from __future__ import annotations

import dataclasses
import resource
import sys
from typing import Any

import torch


@dataclasses.dataclass
class ModuleReport:
    module: str
    inputs: int  # how many of the sources have this module
    out_rank: int
    rel_error: float  # ||merged delta - exact weighted delta||_F / ||exact weighted delta||_F


@dataclasses.dataclass
class MergeReport:
    method: str
    out: str
    out_rank: int
    weights: list[float]
    params: dict[str, Any]
    modules: list[ModuleReport]
    partial_modules: dict[str, list[str]]
    seconds: float
    peak_rss_bytes: int
    peak_module_bytes: int  # the largest working set of input tensors held for one module
    dtype: str
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> dict[str, float]:
        errors = [m.rel_error for m in self.modules]
        return {
            "modules": len(errors),
            "mean_rel_error": sum(errors) / len(errors) if errors else 0.0,
            "max_rel_error": max(errors, default=0.0),
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overall"] = self.overall
        return data


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def low_rank_rel_error(b1: torch.Tensor, a1: torch.Tensor, b2: torch.Tensor, a2: torch.Tensor) -> float:
    """||B1 A1 - B2 A2||_F / ||B2 A2||_F from the thin factors only (Gram matrices, never out x in)."""
    b1, a1, b2, a2 = (t.double() for t in (b1, a1, b2, a2))
    x = torch.cat([b1, -b2], dim=1)
    y = torch.cat([a1, a2], dim=0)
    diff_sq = float(torch.sum((x.T @ x) * (y @ y.T)))
    ref_sq = float(torch.sum((b2.T @ b2) * (a2 @ a2.T)))
    if ref_sq <= 0:
        return 0.0 if diff_sq <= 0 else float("inf")
    return max(diff_sq, 0.0) ** 0.5 / ref_sq**0.5
