"""How much of each parent's skill a merged adapter keeps, measured on the parents' held-out data (validation).

For each parent ``i`` of a merge and each of its held-out datasets (pinned in the validation's spec), the same
batches are run three times on one PEFT model: the bare base (adapters disabled), parent ``i`` and the merge. With
those losses (next-token loss on the labelled tokens for causal LMs, the classifier's cross-entropy for SEQ_CLS and
TOKEN_CLS, as the eval job measures them), :func:`registry.retention.retention` gives
``(L_base - L_merged) / (L_base - L_parent)``; a parent with several datasets gets their mean, and the merge the
mean and the minimum over its parents (:func:`registry.retention.summarize`).
"""

from __future__ import annotations

from typing import Any

from registry.jobs import ValidateSpec
from registry.retention import retention, summarize
from registry.trainset import CLASSIFICATION_TASKS
from workers.context import JobContext
from workers.evaluate import classify, eval_batches, measure
from workers.host import JobHost
from workers.train import collator, tokenizer_for


def measure_retention(host: JobHost, ctx: JobContext, spec: ValidateSpec, peft_model: Any, task: str, base: Any,
                      merged: str, parents: dict[int, str], dev: str) -> dict[str, Any]:
    """The ``retention`` section of a validation report. ``peft_model`` (of ``task`` on ``base``) holds the merge as
    adapter ``merged`` and each parent (by version id) as the adapter named in ``parents``; the merge is the active
    adapter afterwards."""
    tokenizer = tokenizer_for(base, task)
    collate = collator(task, tokenizer)
    loss_of, counted = (classify, "examples") if task in CLASSIFICATION_TASKS else (measure, "tokens")
    config = peft_model.get_base_model().config
    pad_id = config.pad_token_id
    if task == "SEQ_CLS":  # read each padded row's last real token (as the eval job does); restored below
        config.pad_token_id = tokenizer.pad_token_id
    rows: list[dict[str, Any]] = []
    try:
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
                    base_loss = loss_of(peft_model, batches, dev)
                peft_model.set_adapter(adapter)
                parent_loss = loss_of(peft_model, batches, dev)
                peft_model.set_adapter(merged)
                merged_loss = loss_of(peft_model, batches, dev)
                datasets.append({
                    "dataset": data.ref, "sha256": data.sha256, counted: merged_loss[counted],
                    "base_loss": base_loss["eval_loss"], "parent_loss": parent_loss["eval_loss"],
                    "merged_loss": merged_loss["eval_loss"],
                    "retention": retention(base_loss["eval_loss"], parent_loss["eval_loss"],
                                           merged_loss["eval_loss"])})
            kept = [d["retention"] for d in datasets if d["retention"] is not None]
            rows.append({"parent": parent.ref, "datasets": datasets,
                         "retention": sum(kept) / len(kept) if kept else None})
    finally:
        config.pad_token_id = pad_id
        peft_model.set_adapter(merged)
    return {"task_type": task, "parents": rows, **summarize([r["retention"] for r in rows])}
