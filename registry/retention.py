"""How much of each parent's skill a merged adapter keeps: retention, from three held-out losses (pure, no torch).

For a merge of parents ``1..n`` and parent ``i``'s held-out data,

    retention_i = (L_base,i - L_merged,i) / (L_base,i - L_parent_i,i)

where ``L_base,i`` is the base model's loss on that data, ``L_parent_i,i`` parent ``i``'s and ``L_merged,i`` the
merged adapter's. It is 1 when the merge does as well as the parent, 0 when it does no better than the base,
negative when it does worse than the base, and above 1 when it beats the parent (another parent helped).
A merge's validation measures it on each parent's held-out data (``workers/retention.py``);
``benchmarks/merge_quality.py`` uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The task types whose merges get retention: their eval jobs measure a loss (next-token, or the classifier's).
RETAINED_TASKS = ("CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS")


def retention(base_loss: float, parent_loss: float, merged_loss: float) -> float | None:
    """``(base_loss - merged_loss) / (base_loss - parent_loss)``, or None when it means nothing.

    None when the parent is no better than the base on its own data (``parent_loss >= base_loss``: there was no
    skill to keep) or when a loss is not a finite number.
    """
    losses = (base_loss, parent_loss, merged_loss)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in losses):
        return None
    gain = base_loss - parent_loss
    if gain <= 0:
        return None
    return (base_loss - merged_loss) / gain


def summarize(retentions: Sequence[float | None]) -> dict[str, float | int | None]:
    """``mean`` and ``min`` of the defined retentions (None when none is defined); ``undefined``: how many were
    None (parents that learned nothing, or non-finite losses)."""
    defined = [r for r in retentions if r is not None]
    return {
        "mean": sum(defined) / len(defined) if defined else None,
        "min": min(defined) if defined else None,
        "undefined": len(retentions) - len(defined),
    }
