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
        if current == head:
            checks.append(_stuck_jobs(engine, settings.queued_grace_seconds))
        engine.dispose()
    except Exception as exc:  # any failure to connect is what the check reports
        checks.append(_check("catalog schema", False, f"cannot connect: {type(exc).__name__}: {exc}"))
    checks.append(_leftovers(settings.artifact_dir))
    if settings.broker_url:
        checks += _broker_checks(settings.broker_url)
    else:
        checks.append(_check("broker", True, "none configured: jobs run in-process"))
    root = settings.artifact_dir if settings.artifact_dir.exists() else settings.home
    root = root if root.exists() else Path.home()
    free = shutil.disk_usage(root).free
    checks.append(_check("artifact store space", free > 1 << 30, f"{free / 2**30:.1f} GiB free at {root}"))
    return checks


def _stuck_jobs(engine: Any, grace: float) -> dict[str, Any]:
    """Running jobs whose lease expired (their worker is gone) and queued jobs nobody took for the grace period."""
    from datetime import timedelta

    from sqlalchemy import func, or_, select

    from registry import models as m

    now = m.utcnow()
    t = m.Job.__table__
    with engine.connect() as conn:
        waited_since = func.coalesce(t.c.heartbeat_at, t.c.created_at)
        stuck = [row.id for row in conn.execute(select(t.c.id).where(or_(
            (t.c.status == "running") & (t.c.lease_expires_at < now),
            (t.c.status == "queued") & (waited_since < now - timedelta(seconds=grace)),
        )).order_by(t.c.id))]
    if not stuck:
        return _check("stuck jobs", True, "none")
    return _check("stuck jobs", False, f"{len(stuck)} job(s) with no live worker: {', '.join(map(str, stuck[:10]))}; "
                  "workers re-send them once per lease (start one), or `adreg cancel ID`")


def _leftovers(artifacts: Path) -> dict[str, Any]:
    """Temporary files of interrupted writes in the artifact store (``.tmp-*``, older than a write takes)."""
    from registry.gc import stale_temporary_files

    found = stale_temporary_files(artifacts)
    if not found:
        return _check("temporary files", True, "none left in the artifact store")
    size = sum(f.stat().st_size for p in found for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return _check("temporary files", False, f"{len(found)} left by interrupted writes ({size:,} bytes, e.g. "
                  f"{found[0].relative_to(artifacts)}): `adreg gc --apply` removes them")


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
    from registry.celery_config import make_app

    replies = make_app(url).control.inspect(timeout=2.0).ping() or {}
    detail = f"{len(replies)} answering: {', '.join(sorted(replies))}" if replies else "no worker answered"
    checks.append(_check("workers", bool(replies), detail))
    return checks
