"""Celery tasks: thin wrappers that hand a job id to the runner."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from celery.signals import worker_process_init, worker_ready

from workers.celery_app import app

log = logging.getLogger("adreg.worker")
_service = None
_remote = None


def remote_mode() -> bool:
    """A worker with ``ADREG_URL`` (and no ``ADREG_DATABASE_URL``) works through the server, not the catalog."""
    return bool(os.environ.get("ADREG_URL")) and not os.environ.get("ADREG_DATABASE_URL")


def remote():  # type: ignore[no-untyped-def]
    """The HTTP client and artifact cache of a remote worker process (opened after the fork)."""
    global _remote
    if _remote is None:
        import httpx

        from registry.config import Settings
        from registry.errors import RegistryError
        from workers.remote_host import ArtifactCache

        token = os.environ.get("ADREG_TOKEN")
        if not token:
            raise RegistryError("a remote worker (ADREG_URL) needs ADREG_TOKEN: an admin user's token")
        work = Path(os.environ.get("ADREG_WORKER_DIR") or Settings.from_env().home / "worker").expanduser()
        cache = ArtifactCache(work / "cache", int(os.environ.get("ADREG_WORKER_CACHE_BYTES", str(20 << 30))))
        client = httpx.Client(base_url=os.environ["ADREG_URL"].rstrip("/"), timeout=httpx.Timeout(120, connect=10),
                              headers={"Authorization": f"Bearer {token}", "User-Agent": "adreg-worker"})
        _remote = (client, work, cache)
    return _remote


def service():  # type: ignore[no-untyped-def]
    """One service per worker process, opened after the fork (connections are never shared)."""
    global _service
    if _service is None:
        from registry.service import Service

        _service = Service.open()
    return _service


@worker_process_init.connect
def _reset_after_fork(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    global _service, _remote
    _service = _remote = None


@app.task(name="adreg.run_job", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    """Run one job. If the catalog cannot be reached, the message is not consumed: it comes back after a
    backoff (1, 2, 4 ... 60 s) until the database answers, instead of waiting for the recovery sweep."""
    from registry.errors import ServiceUnavailable
    from workers.runners import run_job as run

    try:
        if remote_mode():
            import httpx

            from workers.remote_host import run_remote_job

            client, work, cache = remote()
            try:
                return run_remote_job(client, int(job_id), work, cache)
            except httpx.TransportError as exc:
                raise ServiceUnavailable(f"the server at {os.environ['ADREG_URL']} is unreachable: {exc}") from None
        return run(service(), int(job_id))
    except ServiceUnavailable as exc:
        delay = min(60, 2 ** min(self.request.retries, 6))
        log.warning("job %s: %s; retrying in %ss", job_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay) from None


@app.task(name="adreg.tick", acks_late=False)
def tick() -> list[int]:
    """The schedule tick (sent by beat): due fires and alias events become runs, each exactly once."""
    from registry.schedules import tick as run_tick

    if remote_mode():  # the server owns the catalog: it runs the tick
        client, _work, _cache = remote()
        response = client.post("/v1/tick", json={})
        response.raise_for_status()
        return list(response.json())
    return run_tick(service())


@worker_ready.connect
def _start_recovery(sender=None, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Re-dispatch jobs the broker may have lost (expired leases, queued rows with no message). A remote worker
    has no catalog: the server (``adreg serve`` with a broker) runs the sweep instead."""
    from workers.recovery import recovery_loop

    if remote_mode():
        return
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender is not None else None
    threading.Thread(target=recovery_loop, args=(queues, service), daemon=True, name="adreg-recovery").start()
