"""Outages and hostile text never end in a traceback, a duplicate job or a stuck one (issue 13, items 5, 12-15).

Real processes throughout: `adreg` subprocesses killed with SIGKILL, Celery workers whose database connection
goes through a TCP proxy that the test cuts and restores, brokers and databases that are not there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from tcp_proxy import TcpProxy
from typer.testing import CliRunner

from registry import Registry
from registry import models as m
from registry.cli import app
from registry.errors import ServiceUnavailable

runner = CliRunner()


def _cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args), env=env)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def test_user_text_is_printed_literally_never_as_markup(tmp_path, tiny):
    db = ["--db", f"sqlite:///{tmp_path / 'c.db'}"]
    for ref in ("[/]x", "[bold red]boom:1", "a@[/]"):
        result = _cli(*db, "show", ref)
        assert result.exit_code == 1 and "error:" in result.stderr
    result = _cli(*db, "register", str(tiny["tone"]), "--name", "[bold red]boom")
    assert result.exit_code == 1 and "'[bold red]boom' is not allowed" in result.stderr
    assert _cli(*db, "register", str(tiny["tone"]), "--name", "t", "--tag", "k=[/]v[bold]x").exit_code == 0
    shown = _cli(*db, "show", "t:1").stdout
    assert "k=[/]v[bold]x" in shown


def test_search_text_with_nul_is_refused_on_postgresql(pg_schema_url):
    Registry.init(pg_schema_url)
    result = _cli("--db", pg_schema_url, "list", "--name", "a\x00b")
    assert result.exit_code == 1 and "printable characters" in result.stderr


def test_unwritable_merge_output_is_a_message(tiny):
    result = _cli("merge", str(tiny["tone"]), str(tiny["tone2"]), "--weights", "0.5", "0.5", "--out", "/proc/x/y")
    assert result.exit_code == 1 and "cannot write the merged adapter to /proc/x/y" in result.stderr


def test_database_unreachable_is_named_with_its_password_hidden():
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"
    result = _cli("--db", url, "list")
    assert result.exit_code == 1
    assert "database unreachable at postgresql+psycopg://postgres:***@127.0.0.1:1/test" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    with pytest.raises(ServiceUnavailable, match="database unreachable"):
        Registry(url)


def test_broker_down_at_submission_is_one_job_and_a_retry_returns_it(job_env, tiny, start_worker, monkeypatch):
    """The row is written, the user is told so (exit 1), a retry with the same key returns the same job, and a
    worker's recovery sweep sends it once the broker is back."""
    down = {**job_env, "ADREG_BROKER_URL": "redis://:pw@127.0.0.1:1/0"}
    for key in ("ADREG_DATABASE_URL", "ADREG_HOME"):
        monkeypatch.setenv(key, job_env[key])
    with Registry() as reg:
        reg.register(tiny["tone"], name="a")
        reg.register(tiny["tone2"], name="b")
    merge = ["merge", "a:1", "b:1", "--weights", "0.5", "0.5", "--method", "linear", "--name", "ab",
             "--idempotency-key", "retry-1"]
    first = _cli(*merge, env=down)
    assert first.exit_code == 1
    assert "job 1 is recorded in the catalog" in first.stderr and "redis://:**@127.0.0.1:1/0" in first.stderr
    assert "pw@" not in first.stderr
    again = _cli(*merge, "--no-wait", "--json", env=down)
    assert again.exit_code == 0 and json.loads(again.stdout)["id"] == 1
    with Registry() as reg:
        assert [j.id for j in reg.jobs()] == [1]
        start_worker("cpu")  # its sweep sends the job whose message never left (grace 2 s in job_env)
        assert reg.job(1).wait(timeout=60).status == "succeeded"


def test_sweep_sends_a_stale_job_once_per_lease(pg_schema_url, monkeypatch):
    Registry.init(pg_schema_url)
    from workers.recovery import recover_once

    class Broker:
        def __init__(self) -> None:
            self.sent: list[int] = []

        def send_task(self, name: str, args: list[int], queue: str) -> None:
            self.sent.append(args[0])

    with Registry(pg_schema_url) as reg:
        long_ago = m.utcnow() - timedelta(minutes=10)
        with reg.service.sessions() as s, s.begin():
            s.add(m.Job(kind="merge", status="running", queue="cpu", spec={}, attempts=1, created_at=long_ago,
                        started_at=long_ago, heartbeat_at=long_ago, lease_expires_at=long_ago))
        broker = Broker()
        for _ in range(5):  # five sweeps in a row: one message
            recover_once(reg.service, broker, lease=60)
        assert broker.sent == [1]
        with reg.service.sessions() as s, s.begin():  # a lease later, nobody took it: sent once more
            s.execute(update(m.Job).values(heartbeat_at=m.utcnow() - timedelta(seconds=61)))
        recover_once(reg.service, broker, lease=60)
        recover_once(reg.service, broker, lease=60)
        assert broker.sent == [1, 1]


def test_worker_without_its_database_keeps_the_message_and_runs_the_job_when_it_is_back(
        job_env, tiny, start_worker, celery_registry):
    from sqlalchemy.engine import make_url

    url = make_url(job_env["ADREG_DATABASE_URL"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    try:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        # The sweep would rescue a lost message only after 10 minutes: the job must not need it.
        start_worker("cpu", env={**job_env, "ADREG_DATABASE_URL": via_proxy, "ADREG_QUEUED_GRACE_SECONDS": "600"})
        celery_registry.register(tiny["tone"], name="a")
        celery_registry.register(tiny["tone2"], name="b")
        proxy.cut()
        started = time.monotonic()
        job = celery_registry.merge(["a:1", "b:1"], weights=[0.5, 0.5], method="linear", name="ab")
        time.sleep(4)
        assert job.refresh().status == "queued"
        proxy.start()
        assert job.wait(timeout=90).status == "succeeded"
        recovery = time.monotonic() - started - 4
        assert recovery < 70, recovery  # the backoff caps at 60 s
    finally:
        proxy.cut()


def test_a_killed_local_job_is_failed_when_the_catalog_is_next_opened(tiny, tmp_path):
    home = tmp_path / "home"
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} " * 8}) + "\n" for i in range(40)))
    with Registry(home=home) as reg:
        reg.register(tiny["tone"], name="t")  # records the base (and its folder) in this catalog
    env = {**os.environ, "ADREG_HOME": str(home), "ADREG_JOB_LEASE_SECONDS": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry.cli", "train", "--new", "slow", "--base", str(tiny["llama"]),
         "--data", str(data), "--steps", "100000", "--targets", "q_proj", "--r", "2", "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != "running":
            time.sleep(0.2)
            if (home / "catalog.db").exists():
                with Registry(home=home) as reg:  # a live job: left alone
                    status = next((j.status for j in reg.jobs()), None)
        assert status == "running"
        scratch = home / "artifacts" / "scratch" / "job-1"
        assert scratch.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with Registry(home=home) as reg:
        job = reg.job(1)
    assert job.status == "failed" and job.error_type == "WorkerLost" and "is gone" in (job.error or "")
    assert not scratch.exists()


def test_doctor_reports_stuck_jobs_and_leftover_temporary_files(tmp_path):
    home = tmp_path / "home"
    with Registry(home=home, database_url=f"sqlite:///{tmp_path / 'c.db'}") as reg:
        long_ago = m.utcnow() - timedelta(hours=1)
        with reg.service.sessions() as s, s.begin():
            s.add(m.Job(kind="merge", status="queued", queue="cpu", spec={}, attempts=0, created_at=long_ago))
        leftover = reg.store.root / "blobs" / "ab" / ".tmp-123"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"x" * 10)
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
        with reg.service.sessions() as s:
            assert s.scalar(select(m.Job.status)) == "queued"
    env = {**os.environ, "ADREG_HOME": str(home), "ADREG_BROKER_URL": "", "ADREG_DATABASE_URL": ""}
    result = _cli("--db", f"sqlite:///{tmp_path / 'c.db'}", "doctor", "--json", env=env)
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert result.exit_code == 1
    assert not checks["stuck jobs"]["ok"] and "1 job(s)" in checks["stuck jobs"]["detail"]
    assert not checks["temporary files"]["ok"] and ".tmp-123" in checks["temporary files"]["detail"]
    assert Path(leftover).exists()
