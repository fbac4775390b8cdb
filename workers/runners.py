"""Run one job: claim its row, do the work, record the outcome. One code path for every executor.

* Claiming is one conditional UPDATE (``queued`` -> ``running``, or a ``running`` job whose lease has
  expired), so a redelivered message never runs a job twice at once, and a finished job is a no-op.
* While it runs, a heartbeat thread extends the lease; progress and cooperative cancellation go through
  the job row.
* Outputs are built in the job's scratch folder, moved into the content-addressed store, and registered
  in the same transaction that marks the job ``succeeded``. Any failure marks it ``failed`` and removes
  the scratch folder: nothing half-made remains.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update

from registry import models as m
from registry.errors import RegistryError
from registry.jobs import parse_spec
from registry.service import Service
from workers.context import JobCancelled, JobContext, ProgressListener, ended, held, lease_seconds
from workers.host import LocalHost

log = logging.getLogger("adreg.runner")


def claim(svc: Service, job_id: int, worker: str | None = None) -> int | None:
    """Take the job for this process (or for ``worker``, a remote worker's ``host:pid``); return the attempt number,
    or None if it is not ours to run."""
    now = m.utcnow()
    t = m.Job.__table__
    with svc.transaction() as s:
        attempt = s.execute(
            update(t)
            .where(t.c.id == job_id, t.c.cancel_requested.is_(False),
                   or_(t.c.status == "queued", (t.c.status == "running") & (t.c.lease_expires_at < now)))
            .values(status="running", attempts=t.c.attempts + 1, started_at=now, heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds()),
                    worker_host=(worker or f"{socket.gethostname()}:{os.getpid()}")[:255], error_type=None,
                    error_message=None)
            .returning(t.c.attempts)
        ).scalar_one_or_none()
    return attempt


def beat(svc: Service, ctx: JobContext, **values: Any) -> bool:
    """Extend the attempt's lease (and set ``values``, e.g. progress); False once the job is no longer ours."""
    now = m.utcnow()
    with svc.transaction() as s:
        return bool(s.execute(update(m.Job.__table__).where(held(ctx.job_id, ctx.attempt)).values(
            heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds()), **values)).rowcount)


def _heartbeat(svc: Service, ctx: JobContext, stop: threading.Event) -> None:
    period = max(0.5, lease_seconds() / 3)
    while not stop.wait(period):
        try:
            beat(svc, ctx)
        except Exception:  # a missed beat only shortens the lease; the job itself goes on
            log.warning("heartbeat for job %s failed", ctx.job_id, exc_info=True)


def finish(svc: Service, ctx: JobContext, status: str, **values: Any) -> bool:
    """End the attempt with ``status`` (failed, cancelled); False if the job was no longer ours."""
    with svc.transaction() as s:
        return bool(s.execute(ended(ctx, status, **values)).rowcount)


JobFunction = Callable[[LocalHost, JobContext, Any], None]


def job_functions() -> dict[str, JobFunction]:
    from workers.evaluate import run_eval
    from workers.hub import run_publish
    from workers.merge_job import run_merge
    from workers.train import run_train
    from workers.validate import run_validate

    return {"merge": run_merge, "validate": run_validate, "train": run_train, "publish": run_publish,
            "eval": run_eval}


def run_job(svc: Service, job_id: int, on_progress: ProgressListener | None = None) -> str:
    """Claim and run job ``job_id``; return its status afterwards. Never raises for job failures.

    ``on_progress(job_id, fraction, message)`` hears every progress report (the local executor's way to show
    progress in the process that waits for the job; Celery workers report through the job row only).
    """
    attempt = claim(svc, job_id)
    if attempt is None:
        with svc.sessions() as s:
            row = s.get(m.Job, job_id)
            return row.status if row is not None else "missing"
    ctx = JobContext(svc, job_id, attempt, on_progress)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(svc, ctx, stop), daemon=True)
    beat.start()
    try:
        with svc.sessions() as s:
            spec = parse_spec(s.get(m.Job, job_id).spec)  # type: ignore[union-attr]
        shutil.rmtree(ctx.scratch, ignore_errors=True)  # leftovers of a killed attempt
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        job_functions()[spec.kind](LocalHost(svc), ctx, spec)
        status, ended_here = "succeeded", True
    except JobCancelled:
        ended_here = finish(svc, ctx, "cancelled", progress_message="cancelled")
        status = "cancelled"
    except Exception as exc:
        user_error = isinstance(exc, RegistryError)
        ended_here = finish(svc, ctx, "failed", error_type=type(exc).__name__, error_message=str(exc),
                             error_traceback=None if user_error else traceback.format_exc(),
                             report=getattr(exc, "report", None) or {})
        if not user_error:
            log.exception("job %s failed", job_id)
        status = "failed"
    finally:
        stop.set()
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    if ended_here:  # checkpoints outlive a killed attempt, not the job's end
        shutil.rmtree(ctx.checkpoints, ignore_errors=True)
        advance_run_of(svc, job_id)
    return status


def advance_run_of(svc: Service, job_id: int) -> None:
    """A job that belongs to a recipe run moves the run on (next step, or the run's end)."""
    with svc.sessions() as s:
        row = s.get(m.Job, job_id)
        run_id = row.run_id if row is not None else None
    if run_id is None:
        return
    from registry.runs import advance_run

    try:
        advance_run(svc, run_id)
    except Exception:
        log.exception("advancing run %s after job %s failed", run_id, job_id)


