"""The workers' Celery app: :func:`registry.celery_config.make_app` with the task modules."""

from __future__ import annotations

from registry.celery_config import make_app, time_limits

TASK_MODULES = ("workers.tasks",)
app = make_app(include=TASK_MODULES)

__all__ = ["app", "make_app", "time_limits"]
