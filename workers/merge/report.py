"""What a merge did: per-module and overall error against the exact weighted sum, ranks, time, memory."""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
from typing import Any


@dataclasses.dataclass
class ModuleReport:
    """One merged module. ``rel_error`` is None when the exact weighted delta is zero."""

    module: str
    inputs: int  # how many of the sources have this module
    out_rank: int
    rel_error: float | None  # ||merged delta - exact weighted delta||_F / ||exact weighted delta||_F
    error_norm: float  # ||merged delta - exact weighted delta||_F
    reference_norm: float  # ||exact weighted delta||_F


@dataclasses.dataclass
class MergeReport:
    """The outcome of :func:`workers.merge.merge_adapters`; ``to_dict()`` is JSON-serialisable."""

    method: str
    out: str
    out_rank: int
    weights: list[float]
    params: dict[str, Any]
    modules: list[ModuleReport]
    partial_modules: dict[str, list[str]]
    saved_modules: dict[str, list[str]]  # modules_to_save copies carried -> labels of the inputs combined
    seconds: float
    peak_rss_bytes: int  # the process's peak RSS (ru_maxrss), which includes what ran before the merge
    peak_module_bytes: int  # the largest per-module working set: inputs read plus dense intermediates
    dtype: str
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> dict[str, Any]:
        """``rel_error``: the error of all modules together (Frobenius over every module's delta)."""
        errors = [m.rel_error for m in self.modules if m.rel_error is not None]
        reference = math.sqrt(sum(m.reference_norm**2 for m in self.modules))
        error = math.sqrt(sum(m.error_norm**2 for m in self.modules))
        return {
            "modules": len(self.modules),
            "rel_error": error / reference if reference > 0 else None,
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
