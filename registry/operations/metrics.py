"""Metrics on versions: named numbers (``eval_loss``, ``accuracy``), optionally per dataset, logged by users and
recorded by jobs.

One value per (version, name, dataset): logging again replaces it. Names follow :data:`registry.where.METRIC_NAME`,
datasets :data:`registry.where.DATASET_NAME` (or none), values are finite floats. ``Registry.search`` filters
(``where="eval_loss<2.5"``) and sorts (``sort="metric:eval_loss"``) on them; ``show`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from registry import audit, catalog, queries
from registry import models as m
from registry import types as t
from registry.errors import RegistryError
from registry.models import utcnow
from registry.refs import parse_ref
from registry.service import Service
from registry.where import check_dataset, check_metric_name, check_value

SOURCES = ("user", "train", "validate", "merge", "eval")
MAX_METRICS_PER_CALL = 64


def check_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """``values`` as {name: finite float}, every name and value checked (at least one, at most 64)."""
    if not isinstance(values, Mapping) or not values:
        raise RegistryError("give at least one metric (name=value)")
    if len(values) > MAX_METRICS_PER_CALL:
        raise RegistryError(f"at most {MAX_METRICS_PER_CALL} metrics at once, not {len(values)}")
    return {check_metric_name(name): check_value(name, value) for name, value in values.items()}


def record(session: Session, version_id: int, values: Mapping[str, float], *, dataset: str = "",
           source: str = "user", job_id: int | None = None, actor: str | None = None) -> dict[str, float | None]:
    """Write checked ``values`` for one version in ``session`` (inserting, or replacing the value, source, job and
    time of a metric already logged under the same name and dataset). Returns the values they replaced (None:
    new). One ``INSERT ... ON CONFLICT DO UPDATE`` per metric, so concurrent loggers of one metric never collide."""
    if source not in SOURCES:
        raise ValueError(f"metric source must be one of {SOURCES}, not {source!r}")
    mt = m.Metric
    before: dict[str, float | None] = dict.fromkeys(values)
    before.update(session.execute(select(mt.name, mt.value).where(
        mt.version_id == version_id, mt.dataset == dataset, mt.name.in_(list(values)))).all())
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    for name, value in values.items():
        row = {"version_id": version_id, "name": name, "dataset": dataset, "value": value, "source": source,
               "job_id": job_id, "recorded_at": now, "recorded_by": actor}
        statement = insert(mt).values(**row)
        session.execute(statement.on_conflict_do_update(
            index_elements=[mt.version_id, mt.name, mt.dataset],
            set_={k: statement.excluded[k] for k in ("value", "source", "job_id", "recorded_at", "recorded_by")},
        ))
    return before


def log_metrics(svc: Service, ref: str, values: dict[str, float], *, dataset: str | None = None) -> t.AdapterVersion:
    """Log several metrics of version ``ref`` at once (one transaction, one audit event ``metric.log``); a metric
    logged again under the same name and dataset gets the new value. Returns the version with all its metrics."""
    checked = check_metrics(values)
    data = check_dataset(dataset)
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        exact = catalog.exact_ref(session, row)
        before = record(session, row.id, checked, dataset=data, source="user", actor=svc.actor)
        try:
            audit.record(session, svc.actor, "metric.log", adapter_name=exact.rpartition(":")[0], ref=exact,
                         before={"dataset": data, "metrics": [{"name": k, "value": v} for k, v in before.items()]},
                         after={"dataset": data, "metrics": [{"name": k, "value": v} for k, v in checked.items()]})
        except ValueError as exc:  # a metric name that looks like a credential is never written to the log
            raise RegistryError(f"refused: {exc}") from None
        return queries.describe(session, [row], svc.store.root)[0]


def log_metric(svc: Service, ref: str, name: str, value: float, *, dataset: str | None = None) -> t.AdapterVersion:
    """Log one metric of version ``ref`` (``log_metric(svc, "tone:3", "eval_loss", 1.92, dataset="wiki")``)."""
    return log_metrics(svc, ref, {name: value}, dataset=dataset)
