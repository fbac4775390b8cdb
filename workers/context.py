"""What a running job function gets: its row's attempt, progress, cancellation checks, scratch space, and the
one call that marks it succeeded inside the transaction registering its output."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update

from registry import models as m
from registry.service import Service

ProgressListener = Callable[[int, float, "str | None"], None]


class JobCancelled(Exception):
    """Raised inside a job when its row asks it to stop."""


def lease_seconds() -> float:
    return float(os.environ.get("ADREG_JOB_LEASE_SECONDS", "120"))


def held(job_id: int, attempt: int):  # type: ignore[no-untyped-def]
    """The condition "job ``job_id`` is still running as attempt ``attempt``" (it matches nothing once it is not)."""
    t = m.Job.__table__
    return (t.c.id == job_id) & (t.c.attempts == attempt) & (t.c.status == "running")


class JobContext:
    """What a job function gets: its row's id and attempt, progress reporting, cancel checks, scratch space."""

    def __init__(self, svc: Service | None, job_id: int, attempt: int,
                 on_progress: ProgressListener | None = None, work_root: Path | None = None) -> None:
        """``svc`` is None for a job run on another host (see ``workers.remote_host``), which overrides
        :meth:`progress` and :meth:`should_cancel`; ``work_root`` holds scratch and checkpoints (default: the
        store's root)."""
        self.svc = svc
        self.on_progress = on_progress
        self.job_id = job_id
        self.attempt = attempt
        root = work_root if work_root is not None else svc.store.root  # type: ignore[union-attr]
        self.scratch = root / "scratch" / f"job-{job_id}"
        self.checkpoints = root / "checkpoints" / f"job-{job_id}"
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False

    def _mine(self):  # type: ignore[no-untyped-def]
        return held(self.job_id, self.attempt)

    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        """Record progress on the job row (at most twice a second unless ``force``) and tell the listener."""
        fraction = max(0.0, min(1.0, fraction))
        if self.on_progress is not None:
            self.on_progress(self.job_id, fraction, message)
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        with self.svc.transaction() as s:  # type: ignore[union-attr]
            s.execute(update(m.Job.__table__).where(self._mine())
                      .values(progress=fraction, progress_message=message))

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if self._cancelled or now - self._last_cancel_check < 0.25:
            return self._cancelled
        self._last_cancel_check = now
        with self.svc.sessions() as s:  # type: ignore[union-attr]
            row = s.get(m.Job, self.job_id)
            self._cancelled = bool(row is None or row.cancel_requested or row.status != "running"
                                   or row.attempts != self.attempt)
        return self._cancelled

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise JobCancelled(f"job {self.job_id} was cancelled")


def ended(ctx: JobContext, status: str, **values: Any):  # type: ignore[no-untyped-def]
    """The UPDATE that ends this attempt's job with ``status``; it matches nothing once the job is not ours."""
    return (update(m.Job.__table__).where(held(ctx.job_id, ctx.attempt))
            .values(status=status, finished_at=m.utcnow(), lease_expires_at=None, **values))


def complete(svc: Service, ctx: JobContext, session, **values: Any) -> None:  # type: ignore[no-untyped-def]
    """Mark the job succeeded inside ``session`` (the caller's transaction that registers its output).

    Raises JobCancelled if the row is no longer ours (cancelled, or taken over after a lost lease), so
    the caller's transaction rolls back and nothing is registered twice.
    """
    done = session.execute(ended(ctx, "succeeded", progress=1.0, **values)).rowcount
    if not done:
        raise JobCancelled(f"job {ctx.job_id} is no longer held by this attempt")
