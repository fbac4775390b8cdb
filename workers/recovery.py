"""Re-dispatch jobs whose message may be gone: a running job whose lease expired (its worker died), or
a queued job older than a grace period (its message was lost, e.g. a Redis restart without persistence).

Dispatching a job twice is harmless: the runner's conditional claim lets only one attempt run it.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

from sqlalchemy import func, or_, select, update

from registry import models as m
from registry.jobs import TASK_NAME

log = logging.getLogger("adreg.recovery")


def stale_jobs(registry, queues: set[str] | None, queued_grace: float) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    now = m.utcnow()
    query = select(m.Job.id, m.Job.queue).where(
        m.Job.cancel_requested.is_(False),
        or_(
            (m.Job.status == "running") & (m.Job.lease_expires_at < now),
            # for queued jobs, heartbeat_at records the last (re-)dispatch
            (m.Job.status == "queued")
            & (func.coalesce(m.Job.heartbeat_at, m.Job.created_at) < now - timedelta(seconds=queued_grace)),
        ),
    )
    if queues:
        query = query.where(m.Job.queue.in_(queues))
    with registry._sessions() as s:
        return [(jid, q) for jid, q in s.execute(query.order_by(m.Job.id))]


def recover_once(registry, app, queues: set[str] | None = None, queued_grace: float = 300.0) -> list[int]:  # type: ignore[no-untyped-def]
    ids = []
    for job_id, queue in stale_jobs(registry, queues, queued_grace):
        jobs = m.Job.__table__
        with registry._sessions() as s, s.begin():
            redispatched = update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
            s.execute(redispatched.values(heartbeat_at=m.utcnow()))
        app.send_task(TASK_NAME, args=[job_id], queue=queue)
        ids.append(job_id)
    if ids:
        log.warning("re-dispatched jobs %s", ids)
    return ids


def recovery_loop(queues: set[str] | None) -> None:
    from workers.celery_app import app
    from workers.runners import lease_seconds
    from workers.tasks import registry

    period = float(os.environ.get("ADREG_RECOVERY_INTERVAL", str(max(1.0, lease_seconds() / 2))))
    grace = float(os.environ.get("ADREG_QUEUED_GRACE_SECONDS", "300"))
    while True:
        try:
            recover_once(registry(), app, queues, grace)
        except Exception:
            log.warning("recovery sweep failed", exc_info=True)
        time.sleep(period)
