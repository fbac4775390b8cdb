"""The Celery app: settings for long, expensive, non-idempotent-looking tasks made safe.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is redelivered, not lost.
* ``worker_prefetch_multiplier = 1``: a worker holds one job at a time; others stay on the queue.
* The Redis visibility timeout (an unacked message is redelivered after it) is longer than the hard
  time limit, and is set in every place Celery 5.5+ reads it (broker, result backend, top level), or a
  long merge would be handed to a second worker while the first still runs it.
* Pools: ``prefork`` for the ``cpu`` queue (merges touch no GPU), ``solo`` for ``gpu`` workers: CUDA
  cannot be used in a child forked after the parent initialised it, and a solo worker never forks.
* Results are not stored: the catalog's ``jobs`` table is the source of truth.
"""

from __future__ import annotations

import os

from celery import Celery


def time_limits() -> tuple[int, int, int]:
    """(soft, hard, visibility) in seconds; the visibility timeout always exceeds the hard limit."""
    soft = int(os.environ.get("ADREG_TASK_SOFT_TIME_LIMIT", str(6 * 3600)))
    hard = soft + 300
    return soft, hard, hard + 3600


def make_app(broker_url: str | None = None, include: tuple[str, ...] = ()) -> Celery:
    """The Celery app with these settings; a sender (``CeleryExecutor``) needs no task modules, a worker names them."""
    url = broker_url or os.environ.get("ADREG_BROKER_URL") or "redis://127.0.0.1:6379/0"
    soft, hard, visibility = time_limits()
    app = Celery("adreg", broker=url, include=list(include))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        visibility_timeout=visibility,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            "adreg-tick": {"task": "adreg.tick", "schedule": float(os.environ.get("ADREG_TICK_SECONDS", "30")),
                           "options": {"queue": "cpu", "expires": 60}},
        },
    )
    return app

