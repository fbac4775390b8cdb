"""docker-compose.yml checked statically, and every command it runs exercised here, outside Docker."""

from __future__ import annotations

import re
import shlex
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
# The adreg commands this suite runs outside Docker (below and in the Celery tests).
EXERCISED = {"adreg init", "adreg worker --queues cpu", "adreg worker --queues gpu", "adreg beat"}


def test_services_and_commands():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "worker-cpu", "worker-gpu", "beat"}
    for name, service in SERVICES.items():
        command = service.get("command")
        if name in ("postgres", "redis"):
            continue
        assert command[0] == "adreg", name
        assert " ".join(command) in EXERCISED, f"{name} runs {command}, which the suite never runs"
    assert SERVICES["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    gpu = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_dependencies_are_coherent():
    for name, service in SERVICES.items():
        for dep, rule in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy, it has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", f"{dep} must run once"
    for name in ("worker-cpu", "worker-gpu", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for volume in ("pgdata", "redisdata", "artifacts"):
        assert volume in COMPOSE["volumes"]
    assert "artifacts:/data" in SERVICES["worker-cpu"]["volumes"] and "artifacts:/data" in SERVICES["beat"]["volumes"]


def test_no_secret_inline():
    secretish = re.compile(r"(PASSWORD|TOKEN|SECRET|KEY)", re.I)
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                assert str(value).startswith("${"), f"{name}: {key} is inline"
            assert "hf_" not in str(value), f"{name}: {key} looks like a token"
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


def _compose_env(job_env: dict[str, str]) -> dict[str, str]:
    return {**job_env, "ADREG_TICK_SECONDS": "1"}


def test_compose_commands_run_outside_docker(job_env, tmp_path, tiny):
    """migrate, worker-gpu, worker-cpu and beat, with the compose commands, against the real services."""
    env = _compose_env(job_env)
    command = SERVICES["migrate"]["command"]
    done = subprocess.run([sys.executable, "-m", "registry.cli", *command[1:]], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr

    from registry import Registry

    reg = Registry(env["ADREG_DATABASE_URL"], home=env["ADREG_HOME"])
    reg.register(tiny["tone"], name="tone")
    reg.tick()  # drain the registration's events
    reg.add_schedule({"name": "follow", "steps": [{"name": "seen", "promote": {"target": "tone@production",
                                                                            "alias": "seen"}}]},
                     on_alias="tone@production")
    procs = []
    try:
        for name in ("worker-gpu", "worker-cpu", "beat"):
            log = (tmp_path / f"{name}.log").open("w")
            argv = SERVICES[name]["command"]
            procs.append((name, subprocess.Popen([sys.executable, "-m", "registry.cli", *argv[1:]], env=env,
                                                 stdout=log, stderr=subprocess.STDOUT), tmp_path / f"{name}.log"))
        for name, proc, log_path in procs:
            marker = "Starting" if name == "beat" else " ready."
            deadline = time.monotonic() + 90
            while marker not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, f"{name} exited: {log_path.read_text()}"
                time.sleep(0.1)
            assert marker in log_path.read_text(), f"{name}: {shlex.join(SERVICES[name]['command'])} never got ready"
        reg.set_alias("tone:1", "production")  # beat -> adreg.tick on the cpu worker -> a run
        deadline = time.monotonic() + 60
        while not [r for r in reg.runs() if r.status != "running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        runs = reg.runs()
        assert len(runs) == 1 and runs[0].trigger == "alias_moved" and runs[0].status == "succeeded"
    finally:
        for _, proc, _ in procs:
            proc.terminate()
            proc.wait(30)
        reg.close()
