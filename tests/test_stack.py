"""docker-compose.yml checked statically, and every command it runs exercised here, outside Docker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# The adreg commands this suite runs outside Docker (below, with the services' environments).
EXERCISED = {"adreg init", "adreg serve --host 0.0.0.0 --port 8080", "adreg worker --queues cpu",
             "adreg worker --queues gpu", "adreg beat"}


def test_services_and_commands():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "api", "worker-cpu", "worker-gpu", "beat"}
    for name, service in SERVICES.items():
        command = service.get("command")
        if name in ("postgres", "redis"):
            continue
        assert command[0] == "adreg", name
        assert " ".join(command) in EXERCISED, f"{name} runs {command}, which the suite never runs"
    assert SERVICES["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    gpu = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_only_the_api_is_published_and_workers_hold_no_catalog_credentials():
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"api"} and SERVICES["api"]["ports"] == ["8080:8080"]
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])
    for name in ("worker-cpu", "worker-gpu"):
        env = SERVICES[name]["environment"]
        assert env["ADREG_URL"] == "http://api:8080" and str(env["ADREG_TOKEN"]).startswith("${")
        assert "ADREG_DATABASE_URL" not in env, f"{name} must reach the catalog only through the API"
        assert not any(v.startswith("artifacts:") for v in SERVICES[name]["volumes"]), name
        assert SERVICES[name]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "ADREG_DATABASE_URL" not in SERVICES["beat"]["environment"]


def test_dependencies_are_coherent():
    for name, service in SERVICES.items():
        for dep, rule in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy, it has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", f"{dep} must run once"
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for volume in ("pgdata", "redisdata", "artifacts", "cache-cpu", "cache-gpu"):
        assert volume in COMPOSE["volumes"]
    assert "artifacts:/data" in SERVICES["api"]["volumes"] and "artifacts:/data" in SERVICES["migrate"]["volumes"]


def test_no_secret_inline():
    secretish = re.compile(r"(PASSWORD|TOKEN|SECRET|KEY)", re.I)
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                assert str(value).startswith("${"), f"{name}: {key} is inline"
            assert "hf_" not in str(value) and "adreg_" not in str(value), f"{name}: {key} looks like a token"
        url = (service.get("environment") or {}).get("ADREG_DATABASE_URL", "")
        assert not url or "${POSTGRES_PASSWORD" in url
    assert (ROOT / ".env.example").exists()
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0


def test_dockerfile_is_multistage_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2 and "USER adreg" in text and "ARG BASE_IMAGE" in text


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0, reason="no docker compose plugin")
def test_docker_compose_config(tmp_path):
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=x\nHF_TOKEN=\n")
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env),
                             "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _service_env(name: str, substitutions: dict[str, str]) -> dict[str, str]:
    """A service's compose environment with the Docker host names replaced by this machine's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    for key, value in (SERVICES[name].get("environment") or {}).items():
        env[key] = substitutions.get(key, str(value))
    return {**env, "TOKENIZERS_PARALLELISM": "false", "ADREG_TICK_SECONDS": "1"}


def _wait_for(proc: subprocess.Popen, log: Path, marker: str, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited: {log.read_text()}"
        time.sleep(0.1)
    assert marker in log.read_text(), f"{what} never got ready: {log.read_text()[-2000:]}"


def test_compose_commands_run_outside_docker(pg_schema_url, broker_url, tmp_path, tiny):
    """migrate, api, the workers (through the API only) and beat, with the compose commands and environments."""
    import httpx
    from server_process import free_port

    from registry.remote import RemoteRegistry

    port = free_port()
    catalog = {"ADREG_DATABASE_URL": pg_schema_url, "ADREG_BROKER_URL": broker_url,
               "ADREG_HOME": str(tmp_path / "data"), "HF_HOME": str(tmp_path / "hf")}
    migrate = subprocess.run([sys.executable, "-m", "registry.cli", *SERVICES["migrate"]["command"][1:]],
                             env=_service_env("migrate", catalog), capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    init = subprocess.run([sys.executable, "-m", "registry.cli", "init", "--admin", "ops", "--json"],
                          env=_service_env("migrate", catalog), capture_output=True, text=True, check=True)
    token = json.loads(init.stdout)["token"]
    procs = []
    try:
        def start(name: str, env: dict[str, str], argv: list[str]) -> tuple[subprocess.Popen, Path]:
            log = tmp_path / f"{name}.log"
            proc = subprocess.Popen([sys.executable, "-m", "registry.cli", *argv[1:]], env=env,
                                    stdout=log.open("w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            return proc, log

        api_argv = [*SERVICES["api"]["command"][:-1], str(port)]  # the compose command, on a free port
        api, api_log = start("api", _service_env("api", catalog), api_argv)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert api.poll() is None, api_log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        remote = {"ADREG_URL": f"http://127.0.0.1:{port}", "ADREG_TOKEN": token, "ADREG_BROKER_URL": broker_url}
        for name in ("worker-gpu", "worker-cpu"):
            proc, log = start(name, _service_env(name, {**remote, "ADREG_HOME": str(tmp_path / name)}),
                              SERVICES[name]["command"])
            _wait_for(proc, log, " ready.", name)
        beat, beat_log = start("beat", _service_env("beat", {"ADREG_BROKER_URL": broker_url,
                                                            "ADREG_HOME": str(tmp_path / "beat")}),
                               SERVICES["beat"]["command"])
        _wait_for(beat, beat_log, "Starting", "beat")

        with RemoteRegistry(f"http://127.0.0.1:{port}", token=token) as reg:
            reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
            reg.register(tiny["tone2"], name="style")
            reg.tick()  # drain the registrations' events
            reg.add_schedule({"name": "follow", "steps": [{"name": "seen", "promote": {
                "target": "tone@production", "alias": "seen"}}]}, on_alias="tone@production")
            job = reg.merge(["tone:1", "style:1"], weights=[0.5, 0.5], method="linear", name="mixed",
                            validate=True).wait(120)  # the merge on worker-cpu, its validation on worker-gpu
            checks = [j.wait(120) for j in reg.jobs(parent_job_id=job.id)]
            assert [c.status for c in checks] == ["succeeded"]
            reg.set_alias("tone:1", "production")  # beat -> adreg.tick on the cpu worker -> the API -> a run
            deadline = time.monotonic() + 60
            while not [r for r in reg.runs() if r.status != "running"] and time.monotonic() < deadline:
                time.sleep(0.2)
            runs = reg.runs()
            assert len(runs) == 1 and runs[0].trigger == "alias_moved" and runs[0].status == "succeeded"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
