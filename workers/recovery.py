"""Re-dispatch jobs whose message may be gone: a running job whose lease expired (its worker died), or
a queued job older than a grace period (its message was lost, e.g. a Redis restart without persistence).

Dispatching a job twice is harmless: the runner's conditional claim lets only one attempt run it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, or_, select, update

from registry import models as m
from registry.jobs import TASK_NAME
from registry.service import Service

log = logging.getLogger("adreg.recovery")


def _stale(now, queued_grace: float, lease: float):  # type: ignore[no-untyped-def]
    """Jobs whose message may be lost and that were not (re-)dispatched within the last grace period or lease.

    ``heartbeat_at`` records the last (re-)dispatch of a queued job; for a running job it is the last heartbeat,
    and a re-dispatch moves it too, so a dead worker's job is sent once per lease, not once per sweep."""
    t = m.Job.__table__
    return t.c.cancel_requested.is_(False) & or_(
        (t.c.status == "running") & (t.c.lease_expires_at < now)
        & (func.coalesce(t.c.heartbeat_at, t.c.started_at, t.c.created_at) < now - timedelta(seconds=lease)),
        (t.c.status == "queued")
        & (func.coalesce(t.c.heartbeat_at, t.c.created_at) < now - timedelta(seconds=queued_grace)),
    )


def stale_jobs(svc: Service, queues: set[str] | None, queued_grace: float, lease: float) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    t = m.Job.__table__
    query = select(t.c.id, t.c.queue).where(_stale(m.utcnow(), queued_grace, lease))
    if queues:
        query = query.where(t.c.queue.in_(queues))
    with svc.sessions() as s:
        return [(jid, q) for jid, q in s.execute(query.order_by(t.c.id))]


def recover_once(svc: Service, app, queues: set[str] | None = None, queued_grace: float = 300.0,  # type: ignore[no-untyped-def]
                 lease: float | None = None) -> list[int]:
    """Send each stale job once more. The row is marked re-dispatched by a conditional UPDATE first, so that
    several workers' sweeps (or one sweep every few seconds) send a job once per lease or grace period."""
    from workers.context import lease_seconds

    lease = lease_seconds() if lease is None else lease
    t = m.Job.__table__
    ids = []
    for job_id, queue in stale_jobs(svc, queues, queued_grace, lease):
        now = m.utcnow()
        with svc.sessions() as s, s.begin():
            mine = s.execute(update(t).where(t.c.id == job_id, _stale(now, queued_grace, lease))
                             .values(heartbeat_at=now)).rowcount
        if mine:
            app.send_task(TASK_NAME, args=[job_id], queue=queue)
            ids.append(job_id)
    if ids:
        log.warning("re-dispatched jobs %s", ids)
    return ids


def recovery_loop(queues: set[str] | None, service: Callable[[], Service]) -> None:
    """Sweep every half lease, forever (a daemon thread of each worker), with the worker's service."""
    from workers.celery_app import app
    from workers.context import lease_seconds

    period = float(os.environ.get("ADREG_RECOVERY_INTERVAL", str(max(1.0, lease_seconds() / 2))))
    while True:
        try:
            svc = service()
            recover_once(svc, app, queues, svc.settings.queued_grace_seconds)
        except Exception:
            log.warning("recovery sweep failed", exc_info=True)
        time.sleep(period)
