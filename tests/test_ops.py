"""`adreg doctor` and `adreg gc` on a real catalog."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from registry.cli import app


def test_gc_lists_then_removes_only_unreferenced_files(registry, tiny):
    kept = registry.register(tiny["tone"], name="tone")
    root = registry.store.root
    orphan = root / "adapters" / ("f" * 64 + "-000000000000")
    orphan.mkdir(parents=True)
    (orphan / "adapter_model.safetensors").write_bytes(b"x" * 10)
    (root / "scratch" / "job-999").mkdir(parents=True)
    from registry.gc import collect

    dry = collect(registry.service)
    assert not dry["applied"] and sorted(dry["paths"]) == sorted([
        f"adapters/{orphan.name}", "scratch/job-999"])
    assert orphan.exists()
    done = collect(registry.service, apply=True)
    assert done["applied"] and not orphan.exists() and not (root / "scratch" / "job-999").exists()
    assert (root / kept.path.split(str(root) + "/", 1)[1] / "adapter_model.safetensors").exists()
    assert registry.get("tone:1").weights_sha256 == kept.weights_sha256


def test_doctor_reports_and_exits_1_when_unhealthy(tmp_path, db_url, broker_url, monkeypatch):
    runner = CliRunner()
    fresh = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--json"])
    assert fresh.exit_code == 1 and "adreg init" in fresh.stdout  # no catalog yet
    assert runner.invoke(app, ["--home", str(tmp_path / "h"), "init"]).exit_code == 0
    ok = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--json"])
    assert ok.exit_code == 0, ok.stdout
    checks = {c["check"]: c for c in json.loads(ok.stdout)}
    assert checks["catalog schema"]["ok"] and checks["broker"]["detail"].startswith("none configured")
    monkeypatch.setenv("ADREG_BROKER_URL", broker_url)
    no_workers = runner.invoke(app, ["--home", str(tmp_path / "h"), "doctor", "--json"])
    assert no_workers.exit_code == 1
    checks = {c["check"]: c for c in json.loads(no_workers.stdout)}
    assert checks["broker"]["ok"] and not checks["workers"]["ok"]
    if db_url.startswith("postgresql"):
        behind = runner.invoke(app, ["--db", db_url, "doctor", "--json"])
        assert behind.exit_code == 1 and "adreg init" in behind.stdout
