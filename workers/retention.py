"""How much of each parent's skill a merged adapter keeps, measured on the parents' held-out data (validation).

For each parent ``i`` of a merge and each of its held-out datasets (pinned in the validation's spec), the same
batches are run three times on one PEFT model: the bare base (adapters disabled), parent ``i`` and the merge. With
those next-token losses on the labelled tokens, :func:`registry.retention.retention` gives
``(L_base - L_merged) / (L_base - L_parent)``; a parent with several datasets gets their mean, and the merge the
mean and the minimum over its parents (:func:`registry.retention.summarize`).
"""

from __future__ import annotations

from typing import Any

from registry.jobs import ValidateSpec
from registry.retention import retention, summarize
from workers.context import JobContext
from workers.evaluate import eval_batches, measure
from workers.host import JobHost


def measure_retention(host: JobHost, ctx: JobContext, spec: ValidateSpec, peft_model: Any, tokenizer: Any,
                      merged: str, parents: dict[int, str], dev: str) -> dict[str, Any]:
    """The ``retention`` section of a validation report. ``peft_model`` holds the merge as adapter ``merged`` and
    each parent (by version id) as the adapter named in ``parents``; the merge is the active adapter afterwards."""
    from workers.train import collator

    collate = collator("CAUSAL_LM", tokenizer)
    rows: list[dict[str, Any]] = []
    for i, parent in enumerate(spec.parent_evals):
        adapter = parents.get(parent.version_id)
        if adapter is None:
            continue
        datasets = []
        for data in parent.datasets:
            ctx.check_cancel()
            ctx.progress(0.7 + 0.2 * i / len(spec.parent_evals), f"retention of {parent.ref} on {data.ref}",
                         force=True)
            _rows, batches = eval_batches(host.data_file(data), data, tokenizer, collate, spec)
            with peft_model.disable_adapter():
                base_loss = measure(peft_model, batches, dev)
            peft_model.set_adapter(adapter)
            parent_loss = measure(peft_model, batches, dev)
            peft_model.set_adapter(merged)
            merged_loss = measure(peft_model, batches, dev)
            datasets.append({
                "dataset": data.ref, "sha256": data.sha256, "tokens": merged_loss["tokens"],
                "base_loss": base_loss["eval_loss"], "parent_loss": parent_loss["eval_loss"],
                "merged_loss": merged_loss["eval_loss"],
                "retention": retention(base_loss["eval_loss"], parent_loss["eval_loss"], merged_loss["eval_loss"])})
        kept = [d["retention"] for d in datasets if d["retention"] is not None]
        rows.append({"parent": parent.ref, "datasets": datasets, "retention": sum(kept) / len(kept) if kept else None})
    return {"parents": rows, **summarize([r["retention"] for r in rows])}
