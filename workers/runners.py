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
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update

from registry import models as m
from registry.errors import RegistryError
from registry.jobs import parse_spec
from registry.service import Service

log = logging.getLogger("adreg.runner")
ProgressListener = Callable[[int, float, "str | None"], None]


class JobCancelled(Exception):
    """Raised inside a job when its row asks it to stop."""


def lease_seconds() -> float:
    return float(os.environ.get("ADREG_JOB_LEASE_SECONDS", "120"))


class JobContext:
    """What a job function gets: its row's id and attempt, progress reporting, cancel checks, scratch space."""

    def __init__(self, svc: Service, job_id: int, attempt: int,
                 on_progress: ProgressListener | None = None) -> None:
        self.svc = svc
        self.on_progress = on_progress
        self.job_id = job_id
        self.attempt = attempt
        self.scratch = svc.store.root / "scratch" / f"job-{job_id}"
        self.checkpoints = svc.store.root / "checkpoints" / f"job-{job_id}"
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False

    def _mine(self):  # type: ignore[no-untyped-def]
        t = m.Job.__table__
        return (t.c.id == self.job_id) & (t.c.attempts == self.attempt) & (t.c.status == "running")

    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        """Record progress on the job row (at most twice a second unless ``force``) and tell the listener."""
        fraction = max(0.0, min(1.0, fraction))
        if self.on_progress is not None:
            self.on_progress(self.job_id, fraction, message)
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        with self.svc.transaction() as s:
            s.execute(update(m.Job.__table__).where(self._mine())
                      .values(progress=fraction, progress_message=message))

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if self._cancelled or now - self._last_cancel_check < 0.25:
            return self._cancelled
        self._last_cancel_check = now
        with self.svc.sessions() as s:
            row = s.get(m.Job, self.job_id)
            self._cancelled = bool(row is None or row.cancel_requested or row.status != "running"
                                   or row.attempts != self.attempt)
        return self._cancelled

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise JobCancelled(f"job {self.job_id} was cancelled")


def claim(svc: Service, job_id: int) -> int | None:
    """Take the job for this process; return the attempt number, or None if it is not ours to run."""
    now = m.utcnow()
    t = m.Job.__table__
    with svc.transaction() as s:
        attempt = s.execute(
            update(t)
            .where(t.c.id == job_id, t.c.cancel_requested.is_(False),
                   or_(t.c.status == "queued", (t.c.status == "running") & (t.c.lease_expires_at < now)))
            .values(status="running", attempts=t.c.attempts + 1, started_at=now, heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds()),
                    worker_host=f"{socket.gethostname()}:{os.getpid()}", error_type=None, error_message=None)
            .returning(t.c.attempts)
        ).scalar_one_or_none()
    return attempt


def _heartbeat(svc: Service, ctx: JobContext, stop: threading.Event) -> None:
    period = max(0.5, lease_seconds() / 3)
    while not stop.wait(period):
        now = m.utcnow()
        try:
            with svc.transaction() as s:
                s.execute(update(m.Job.__table__).where(ctx._mine())
                          .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds())))
        except Exception:  # a missed beat only shortens the lease; the job itself goes on
            log.warning("heartbeat for job %s failed", ctx.job_id, exc_info=True)


def _ended(ctx: JobContext, status: str, **values: Any):  # type: ignore[no-untyped-def]
    """The UPDATE that ends this attempt's job with ``status``; it matches nothing once the job is not ours."""
    return (update(m.Job.__table__).where(ctx._mine())
            .values(status=status, finished_at=m.utcnow(), lease_expires_at=None, **values))


def _finish(svc: Service, ctx: JobContext, status: str, **values: Any) -> bool:
    with svc.transaction() as s:
        return bool(s.execute(_ended(ctx, status, **values)).rowcount)


JobFunction = Callable[[Service, JobContext, Any], None]


def _runners() -> dict[str, JobFunction]:
    from workers.hub import run_publish
    from workers.merge_job import run_merge
    from workers.train import run_train
    from workers.validate import run_validate

    return {"merge": run_merge, "validate": run_validate, "train": run_train, "publish": run_publish}


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
        _runners()[spec.kind](svc, ctx, spec)
        status, ended_here = "succeeded", True
    except JobCancelled:
        ended_here = _finish(svc, ctx, "cancelled", progress_message="cancelled")
        status = "cancelled"
    except Exception as exc:
        user_error = isinstance(exc, RegistryError)
        ended_here = _finish(svc, ctx, "failed", error_type=type(exc).__name__, error_message=str(exc),
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
        _advance_run_of(svc, job_id)
    return status


def _advance_run_of(svc: Service, job_id: int) -> None:
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


def complete(svc: Service, ctx: JobContext, session, **values: Any) -> None:  # type: ignore[no-untyped-def]
    """Mark the job succeeded inside ``session`` (the caller's transaction that registers its output).

    Raises JobCancelled if the row is no longer ours (cancelled, or taken over after a lost lease), so
    the caller's transaction rolls back and nothing is registered twice.
    """
    done = session.execute(_ended(ctx, "succeeded", progress=1.0, **values)).rowcount
    if not done:
        raise JobCancelled(f"job {ctx.job_id} is no longer held by this attempt")
