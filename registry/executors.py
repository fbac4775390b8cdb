"""Executors: how a submitted job's id reaches the code that runs it (in this process, or a Celery queue)."""

from __future__ import annotations

from collections.abc import Callable

from registry.errors import BrokerUnavailable
from registry.jobs import TASK_NAME


class LocalExecutor:
    """Runs the job in this process, right away (the embedded default: no broker).

    ``run(job_id)`` is the service's runner bound to it; None where this process runs no jobs itself.
    """

    name = "local"

    def __init__(self, run: Callable[[int], object] | None) -> None:
        self.run = run

    def dispatch(self, job_id: int, queue: str) -> None:
        if self.run is None:
            raise BrokerUnavailable(f"job {job_id} is queued, but this process has no broker and runs no jobs itself",
                                    job_id=job_id, hint="set ADREG_BROKER_URL and start a worker (`adreg worker`)")
        self.run(job_id)


class CeleryExecutor:
    """Sends the job id to a Celery queue by task name (no import of the task code)."""

    name = "celery"

    def __init__(self, broker_url: str, fallback_gpu_to_cpu: bool = False) -> None:
        from registry.celery_config import make_app

        self.app = make_app(broker_url)
        self.fallback_gpu_to_cpu = fallback_gpu_to_cpu

    def dispatch(self, job_id: int, queue: str) -> None:
        """Send the job's id; a broker that cannot be reached raises :class:`BrokerUnavailable` (the row stays)."""
        from kombu.exceptions import OperationalError
        from kombu.utils.url import maybe_sanitize_url

        if queue == "gpu" and self.fallback_gpu_to_cpu:
            queue = "cpu"
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue)
        except (OperationalError, OSError) as exc:
            where = maybe_sanitize_url(self.app.conf.broker_url)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BrokerUnavailable(
                f"job {job_id} is recorded in the catalog (queued), but the broker at {where} is unreachable "
                f"({reason}); a worker's recovery sweep sends it once the broker is back",
                job_id=job_id,
                hint=f"follow it with `adreg job {job_id} --wait`; submitting again makes a second job unless you "
                     "pass the same --idempotency-key",
            ) from None
