"""The metrics a job records on the versions it made or checked, read from its report (names in docs/catalog.md).

:func:`workers.host.commit_outcome` calls :func:`record_job_metrics` in the transaction that marks the job
succeeded, wherever the job ran (a remote worker's report reaches the server's commit unchanged), so the
metrics exist exactly when the outcome does. A report value that is missing, not a number or not finite is
skipped: the report comes from a worker and is checked like any input.

=========================  ========  =============================================================================
metric                     source    value
=========================  ========  =============================================================================
eval_loss                  train     loss on the held-out rows after training
eval_loss_before           train     the same rows' loss before training (the adapter as it was, or untrained)
eval_accuracy(_before)     train     classification tasks: accuracy on the held-out rows after (before)
train_loss                 train     the last logged training loss
merge_rel_error            merge     ||merged delta - exact weighted delta||_F / ||exact||_F over all modules
merge_max_rel_error        merge     the largest per-module relative error
validate_base_distance     validate  max |logit difference| between base + adapter and the bare base on the probes
validate_parent_distance   validate  a merge's max |logit difference| from its nearest parent
validate_exact_error       validate  exact merges (cat, full-rank svd): max |logit difference| from the parents'
                                     weighted sum
retention                  validate  a merge, per parent dataset (name:N): (L_base - L_merged) / (L_base - L_parent)
retention_mean, _min       validate  a merge: the mean and the minimum of its parents' retention
eval_loss                  eval      per dataset (name:N): mean next-token loss of the version on its rows
                                     (classifiers: mean cross-entropy over labelled sequences / tokens)
perplexity, token_accuracy eval      causal LMs, per dataset: exp(eval_loss); share of labelled tokens predicted
accuracy, f1               eval      classifiers (SEQ_CLS, TOKEN_CLS), per dataset: share of labelled examples whose
                                     argmax class is the label; macro-F1 over the classes seen in labels or predictions
base_eval_loss, ...        eval      the same for the bare base on the same rows (base_accuracy, base_f1, ...)
=========================  ========  =============================================================================
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from registry.jobs import AnySpec, EvalSpec, MergeSpec, TrainSpec, ValidateSpec
from registry.operations.metrics import record
from registry.where import check_dataset


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _at(report: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(report, dict):
            return None
        report = report.get(key)  # type: ignore[assignment]
    return report


def metrics_of(spec: AnySpec, report: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The job's metric source and {name: value} from its report (empty for kinds that measure nothing)."""
    found: dict[str, Any] = {}
    if isinstance(spec, TrainSpec):
        source = "train"
        for metric in ("loss", "accuracy"):
            found[f"eval_{metric}"] = report.get(f"eval_{metric}_after")
            found[f"eval_{metric}_before"] = report.get(f"eval_{metric}_before")
        curve = report.get("loss_curve")
        if isinstance(curve, list) and curve and isinstance(curve[-1], (list, tuple)) and len(curve[-1]) == 2:
            found["train_loss"] = curve[-1][1]
    elif isinstance(spec, MergeSpec):
        source = "merge"
        found["merge_rel_error"] = _at(report, "overall", "rel_error")
        found["merge_max_rel_error"] = _at(report, "overall", "max_rel_error")
    elif isinstance(spec, ValidateSpec):
        source = "validate"
        found["validate_base_distance"] = _at(report, "logits", "max_abs_diff_from_base")
        parents = report.get("distance_from_parents")
        if isinstance(parents, dict):
            distances = [d for d in map(_number, parents.values()) if d is not None]
            found["validate_parent_distance"] = min(distances) if distances else None
        found["validate_exact_error"] = _at(report, "exact_check", "max_abs_diff")
        found["retention_mean"] = _at(report, "retention", "mean")
        found["retention_min"] = _at(report, "retention", "min")
    else:
        return "", {}
    return source, {name: number for name, value in found.items() if (number := _number(value)) is not None}


EVAL_METRICS = ("eval_loss", "perplexity", "token_accuracy", "accuracy", "f1")  # causal LMs' three, classifiers'


def eval_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """An eval job's metrics per dataset (``name:N``): the version's and the bare base's (``base_`` prefix)."""
    found: dict[str, dict[str, float]] = {}
    per_dataset = report.get("datasets")
    for dataset, result in (per_dataset.items() if isinstance(per_dataset, dict) else []):
        values: dict[str, float] = {}
        for prefix, side in (("", "adapter"), ("base_", "base")):
            for name in EVAL_METRICS:
                number = _number(_at(result, side, name))
                if number is not None:
                    values[prefix + name] = number
        if values and isinstance(dataset, str):
            found[dataset] = values
    return found


def retention_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A validation's retention per parent dataset (``name:N``) from its report's ``retention`` section."""
    found: dict[str, float] = {}
    parents = _at(report, "retention", "parents")
    for parent in parents if isinstance(parents, list) else []:
        datasets = parent.get("datasets") if isinstance(parent, dict) else None
        for data in datasets if isinstance(datasets, list) else []:
            number = _number(data.get("retention")) if isinstance(data, dict) else None
            if number is not None and isinstance(data.get("dataset"), str):
                found[data["dataset"]] = number
    return found


def record_job_metrics(session: Session, job_id: int, spec: AnySpec, report: dict[str, Any],
                       registered: list[int]) -> None:
    """Record the job's metrics on each version it registered (a validation: on the version it validated)."""
    if isinstance(spec, EvalSpec):
        for dataset, values in eval_metrics(report if isinstance(report, dict) else {}).items():
            record(session, spec.version_id, values, dataset=check_dataset(dataset), source="eval", job_id=job_id,
                   actor=spec.submitted_by)
        return
    if isinstance(spec, ValidateSpec):
        for dataset, value in retention_metrics(report if isinstance(report, dict) else {}).items():
            record(session, spec.version_id, {"retention": value}, dataset=check_dataset(dataset), source="validate",
                   job_id=job_id, actor=spec.submitted_by)
    source, values = metrics_of(spec, report if isinstance(report, dict) else {})
    targets = [spec.version_id] if isinstance(spec, ValidateSpec) else registered
    if not values:
        return
    for version_id in targets:
        record(session, version_id, values, source=source, job_id=job_id, actor=spec.submitted_by)
