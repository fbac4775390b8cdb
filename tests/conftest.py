"""Shared fixtures: real SQLite and PostgreSQL catalogs, tiny models and adapters built locally.

PostgreSQL: ``ADREG_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each
test that asks for a PostgreSQL catalog gets a fresh schema, dropped afterwards, so runs never see each
other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import factories
import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("ADREG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.adreg or a database URL from the environment."""
    monkeypatch.setenv("ADREG_HOME", str(tmp_path / "adreg-home"))
    monkeypatch.delenv("ADREG_DATABASE_URL", raising=False)
    monkeypatch.delenv("ADREG_ARTIFACT_DIR", raising=False)
    monkeypatch.delenv("ADREG_BROKER_URL", raising=False)
    monkeypatch.delenv("ADREG_URL", raising=False)  # nor a server from the environment or `adreg login`
    monkeypatch.delenv("ADREG_TOKEN", raising=False)
    monkeypatch.setenv("ADREG_CONFIG_DIR", str(tmp_path / "adreg-config"))


@pytest.fixture(scope="module")
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny models gain nothing from intra-op threads; on a shared CPU, OpenMP's spinning made them 3x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def pg_admin():  # type: ignore[no-untyped-def]
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # pragma: no cover - the suite requires the real service
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_url(pg_admin) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A URL whose connections live in a fresh, empty schema of the test database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty catalog URL on each real database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def registry(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from registry import Registry

    if db_url.startswith("postgresql"):
        Registry.init(db_url, home=tmp_path / "home")
    reg = Registry(db_url, home=tmp_path / "home")
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base, a second base of the same shape, a GPT-2 base and a few adapters, built once."""
    root = tmp_path_factory.mktemp("tiny")
    llama = factories.build_base(root / "llama-base", "llama", seed=0)
    gpt2 = factories.build_base(root / "gpt2-base", "gpt2", seed=0)
    return {
        "llama": llama,
        "llama_twin": factories.build_base(root / "llama-twin", "llama", seed=1),  # same shapes, other weights
        "gpt2": gpt2,
        "tone": factories.build_adapter(llama, root / "tone", r=4, alpha=8, seed=1),
        "tone2": factories.build_adapter(llama, root / "tone2", r=4, alpha=8, seed=2),
        "legal": factories.build_adapter(llama, root / "legal", r=8, alpha=16, targets=factories.LLAMA_TARGETS, seed=3),
        "gpt2_attn": factories.build_adapter(gpt2, root / "gpt2-attn", r=4, alpha=8, targets=["c_attn"], seed=4),
    }


REDIS_URL = os.environ.get("ADREG_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis database of its own for this test (flushed before and after)."""
    import random

    import redis

    db = random.randint(1, 15)
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    client.ping()
    client.flushdb()
    yield f"{REDIS_URL}/{db}"
    client.flushdb()


class WorkerProcess:
    """A real ``adreg worker`` subprocess whose log goes to a file."""

    def __init__(self, env: dict[str, str], log: Path, queues: str, extra: list[str]) -> None:
        import subprocess
        import sys

        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "worker", "--queues", queues, "--loglevel", "INFO", *extra],
            env=env, stdout=self._fh, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()


@pytest.fixture
def job_env(pg_schema_url: str, broker_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a Celery deployment: PostgreSQL catalog (migrated), Redis broker, shared artifacts."""
    from registry import Registry

    Registry.init(pg_schema_url)
    return {
        **os.environ,
        "ADREG_DATABASE_URL": pg_schema_url,
        "ADREG_BROKER_URL": broker_url,
        "ADREG_HOME": str(tmp_path / "home"),
        "ADREG_JOB_LEASE_SECONDS": "3",
        "ADREG_RECOVERY_INTERVAL": "1",
        "ADREG_QUEUED_GRACE_SECONDS": "2",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture
def start_worker(job_env: dict[str, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    workers: list[WorkerProcess] = []

    def start(queues: str = "cpu,gpu", *extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(env or job_env, tmp_path / f"worker-{len(workers)}.log", queues, list(extra))
        workers.append(w)
        return w.wait_ready()

    yield start
    for w in workers:
        w.stop()


@pytest.fixture
def celery_registry(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A Registry in this process that sends jobs to the Celery broker of ``job_env``."""
    from registry import Registry

    for key in ("ADREG_DATABASE_URL", "ADREG_BROKER_URL", "ADREG_HOME", "ADREG_JOB_LEASE_SECONDS"):
        monkeypatch.setenv(key, job_env[key])
    reg = Registry()
    yield reg
    reg.close()


def wait_for_status(job, wanted: str, timeout: float = 60, poll: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll a job until it reaches ``wanted`` (asserting it does within ``timeout``)."""
    import time

    deadline = time.monotonic() + timeout
    while job.refresh().status != wanted and time.monotonic() < deadline:
        time.sleep(poll)
    assert job.status == wanted, job
    return job


def kill_worker_while_running(job, worker: WorkerProcess) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL ``worker`` once ``job`` is running on it."""
    import signal

    wait_for_status(job, "running")
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)


SENTINEL = "hf_sentinel_write_token_9f8e7d"  # the fake Hub's write token
READ_ONLY = "hf_read_only_token_1a2b3c"


@pytest.fixture
def hub(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """A local fake Hub (tests/fake_hub.py) that the real huggingface_hub client talks to."""
    import huggingface_hub.constants
    from fake_hub import FakeHub

    server = FakeHub().add_token(SENTINEL, "write").add_token(READ_ONLY, "read").start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # The fake Hub speaks the LFS protocol; the real one also speaks Xet, which hf_xet would use.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.stop()


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a server on the embedded default (SQLite + the in-process executor)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    return {**env, "ADREG_HOME": str(tmp_path / "server-home"), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def start_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start real ``adreg serve`` processes: ``start_server(env)`` -> ServerProcess (stopped after the test)."""
    from server_process import ServerProcess

    servers: list[ServerProcess] = []

    def start(env: dict[str, str], admin: str = "admin") -> ServerProcess:
        server = ServerProcess(env, tmp_path / f"server-{len(servers)}.log", admin)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server, server_env):  # type: ignore[no-untyped-def]
    """A running server on the embedded default catalog."""
    return start_server(server_env)


@pytest.fixture
def adreg(db_url, tmp_path):  # type: ignore[no-untyped-def]
    """``adreg(*args, code=0)`` runs the CLI in-process on a fresh catalog (SQLite and PostgreSQL: ``db_url``) and
    checks its exit code; ``adreg("init")`` has run."""
    from typer.testing import CliRunner

    from registry.cli import app

    runner = CliRunner()

    def run(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, ["--db", db_url, "--home", str(tmp_path / "home"), *args])
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    run("init")
    return run
