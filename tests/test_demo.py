"""`adreg demo`, the README's first command, on the embedded default."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from registry.cli import app


def test_demo_runs_end_to_end_on_embedded_default(tmp_path):
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "demo", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["catalog"].startswith("sqlite:///")
    steps = {s["step"]: s for s in report["steps"]}
    validations = [s for name, s in steps.items() if name.startswith("runtime validation")]
    assert len(validations) == 2 and all(s["result"].startswith("succeeded") for s in validations)
    assert {e["child"] for e in report["lineage"]["edges"]} == {"demo-tone-legal-svd:1", "demo-tone-legal-ties:1"}
    listed = json.loads(CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "list", "--json"]).stdout)
    assert listed["total"] == 5
