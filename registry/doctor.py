"""`adreg doctor`: is this deployment healthy? Each check returns ok and a line a person can act on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from registry.config import Settings


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def run_checks(database_url: str | None = None, home: str | Path | None = None) -> list[dict[str, Any]]:
    from registry.db import current_revision, head_revision, make_engine

    settings = Settings.from_env(database_url, home)
    checks = []
    try:
        engine = make_engine(settings.database_url)
        current, head = current_revision(engine), head_revision()
        checks.append(_check("catalog schema", current == head,
                             f"at {current}" if current == head else f"at {current}, needs {head}: run `adreg init`"))
        engine.dispose()
    except Exception as exc:  # any failure to connect is what the check reports
        checks.append(_check("catalog schema", False, f"cannot connect: {type(exc).__name__}: {exc}"))
    if settings.broker_url:
        checks += _broker_checks(settings.broker_url)
    else:
        checks.append(_check("broker", True, "none configured: jobs run in-process"))
    root = settings.artifact_dir if settings.artifact_dir.exists() else settings.home
    root = root if root.exists() else Path.home()
    free = shutil.disk_usage(root).free
    checks.append(_check("artifact store space", free > 1 << 30, f"{free / 2**30:.1f} GiB free at {root}"))
    return checks


def _broker_checks(url: str) -> list[dict[str, Any]]:
    import redis

    checks = []
    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.ping()
        checks.append(_check("broker", True, f"reachable at {url.split('@')[-1]}"))
        depths = {q: client.llen(q) for q in ("cpu", "gpu")}
        checks.append(_check("queue depth", True, ", ".join(f"{q}: {n}" for q, n in depths.items())))
    except Exception as exc:
        return [_check("broker", False, f"cannot reach {url.split('@')[-1]}: {exc}")]
    from workers.celery_app import make_app

    replies = make_app(url).control.inspect(timeout=2.0).ping() or {}
    detail = f"{len(replies)} answering: {', '.join(sorted(replies))}" if replies else "no worker answered"
    checks.append(_check("workers", bool(replies), detail))
    return checks
