"""Jobs: the runner's claim/lease/cancel rules, the local executor, and real Celery workers on Redis."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta

import pytest
from conftest import kill_worker_while_running, wait_for_status
from sqlalchemy import update
from typer.testing import CliRunner

from registry import models as m
from registry.cli import app
from registry.jobs import JobFailed, ValidateSpec


def _register(reg, tiny, name="tone", key="tone"):  # type: ignore[no-untyped-def]
    return reg.register(tiny[key], name=name, base_path=tiny["llama"])


def test_local_validate_job_records_report_and_compatibility(registry, tiny):
    v = _register(registry, tiny)
    job = registry.validate(v.ref)
    assert job.status == "succeeded" and job.done and job.attempts == 1
    assert job.report["layer_status"]["layers"] == 4 and job.report["layer_status"]["missing"] == []
    assert job.report["layer_status"]["trainable_params"] == 0
    assert job.report["logits"]["finite"] and job.report["logits"]["max_abs_diff_from_base"] > 1e-3
    assert "validated" in {c.level for c in registry.get(v.ref).compatible}
    assert job.wait() is job


def test_validate_without_local_base_fails_cleanly(registry, tiny):
    v = registry.register(tiny["tone"], name="remote", base="org/remote-base")
    job = registry.validate(v.ref)
    assert job.status == "failed" and "no local weights" in job.error
    with pytest.raises(JobFailed, match="no local weights"):
        job.wait()
    assert "validated" not in {c.level for c in registry.get(v.ref).compatible}


def test_claim_is_exclusive_and_lease_expiry_allows_takeover(registry, tiny):
    from workers.runners import claim

    v = _register(registry, tiny)
    with registry.service.sessions() as s, s.begin():
        from registry.jobs import insert_job

        row, created = insert_job(s, ValidateSpec(version_id=v.id, ref=v.ref), queue="gpu", idempotency_key="k1")
        job_id = row.id
    with registry.service.sessions() as s, s.begin():
        again, created_again = insert_job(s, ValidateSpec(version_id=v.id, ref=v.ref), queue="gpu",
                                          idempotency_key="k1")
    assert created and not created_again and again.id == job_id
    assert claim(registry.service, job_id) == 1
    assert claim(registry.service, job_id) is None  # running, lease still valid
    with registry.service.sessions() as s, s.begin():
        s.execute(update(m.Job.__table__).where(m.Job.__table__.c.id == job_id)
                  .values(lease_expires_at=m.utcnow() - timedelta(seconds=1)))
    assert claim(registry.service, job_id) == 2  # the lease expired: another worker may take it over


def test_cancel_queued_job_and_finished_job(registry, tiny):
    from registry.jobs import insert_job
    from workers.runners import run_job

    v = _register(registry, tiny)
    with registry.service.sessions() as s, s.begin():
        job_id = insert_job(s, ValidateSpec(version_id=v.id, ref=v.ref), queue="gpu")[0].id
    assert registry.cancel(job_id) == "cancelled"
    assert run_job(registry.service, job_id) == "cancelled"  # a late message for it is a no-op
    assert registry.job(job_id).attempts == 0
    done = registry.validate(v.ref)
    with pytest.raises(Exception, match="already succeeded"):
        registry.cancel(done.id)


def test_idempotent_submission(registry, tiny):
    v = _register(registry, tiny)
    a = registry.submit(ValidateSpec(version_id=v.id, ref=v.ref), idempotency_key="same")
    b = registry.submit(ValidateSpec(version_id=v.id, ref=v.ref), idempotency_key="same")
    assert a.id == b.id and len(registry.jobs(kind="validate")) == 1


# -- Celery, real worker processes -------------------------------------------------------------------


def test_celery_worker_runs_validate_job(celery_registry, start_worker, tiny):
    start_worker("cpu,gpu")
    v = _register(celery_registry, tiny)
    job = celery_registry.validate(v.ref)
    assert job.queue == "gpu"
    job.wait(timeout=120)
    assert job.status == "succeeded" and job.report["logits"]["finite"]
    assert job.refresh().attempts == 1


def test_worker_killed_mid_job_is_recovered_by_lease_expiry(celery_registry, start_worker, tiny, job_env):
    """SIGKILL the worker while the job runs: a new worker takes it over once its lease expires.

    A fresh worker spends seconds importing torch/transformers/peft inside its first job, which is the
    window in which it is killed.
    """
    first = start_worker("cpu,gpu")
    v = _register(celery_registry, tiny)
    job = celery_registry.validate(v.ref)
    kill_worker_while_running(job, first)
    start_worker("cpu,gpu")
    job.wait(timeout=120)
    assert job.status == "succeeded" and job.attempts == 2
    versions = celery_registry.get(v.ref).compatible
    assert [c.level for c in versions].count("validated") == 1
    scratch = celery_registry.store.root / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_cli_jobs_and_job_json(celery_registry, start_worker, tiny, job_env):
    start_worker("cpu,gpu")
    v = _register(celery_registry, tiny)
    runner = CliRunner()
    out = runner.invoke(app, ["validate", v.ref, "--json"], env=job_env)
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and data["kind"] == "validate"
    listed = json.loads(runner.invoke(app, ["jobs", "--json"], env=job_env).stdout)
    assert [j["id"] for j in listed] == [data["id"]]
    shown = runner.invoke(app, ["job", str(data["id"]), "--wait", "--json"], env=job_env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["result_ref"] == v.ref


def test_two_workers_racing_for_one_job_run_it_once(celery_registry, start_worker, tiny):
    start_worker("cpu,gpu")
    start_worker("cpu,gpu")
    v = _register(celery_registry, tiny)
    job = celery_registry.validate(v.ref)
    celery_registry.service.executor.dispatch(job.id, "gpu")  # a duplicate message, as a redelivery would make
    job.wait(timeout=120)
    time.sleep(1.0)  # let the duplicate be consumed (a no-op)
    assert job.refresh().attempts == 1 and job.status == "succeeded"
    assert [c.level for c in celery_registry.get(v.ref).compatible].count("validated") == 1


def test_cancel_while_running(celery_registry, start_worker, tiny):
    start_worker("cpu,gpu")
    v = _register(celery_registry, tiny)
    job = celery_registry.validate(v.ref)
    wait_for_status(job, "running")
    assert celery_registry.cancel(job.id) == "cancelling"
    with pytest.raises(JobFailed, match="cancelled"):
        job.wait(timeout=120)
    assert "validated" not in {c.level for c in celery_registry.get(v.ref).compatible}


def _restart_redis() -> None:
    import subprocess

    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    with contextlib.suppress(redis.exceptions.ConnectionError):  # the server closes the connection as it exits
        client.shutdown(nosave=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
         "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"], check=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis did not come back")


def test_redis_restart_loses_no_queued_job(celery_registry, start_worker, tiny):
    """Queued messages die with a Redis that keeps nothing on disk; the catalog re-dispatches them."""
    v = _register(celery_registry, tiny)
    jobs = [celery_registry.validate(v.ref) for _ in range(3)]
    assert {j.status for j in jobs} == {"queued"}
    _restart_redis()
    start_worker("cpu,gpu")
    for job in jobs:
        job.wait(timeout=180)
        assert job.status == "succeeded"
