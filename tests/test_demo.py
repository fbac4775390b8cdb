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
    edges = {(e["child"], e["relation"]) for e in report["lineage"]["edges"]}
    assert edges == {("demo-tone-legal-svd:1", "merge"), ("demo-tone-legal-ties:1", "merge"),
                     ("demo-style:2", "finetune")}
    trained = next(s for name, s in steps.items() if name.startswith("continue training demo-style:1"))
    assert trained["result"].startswith("demo-style:2") and trained["result"].endswith("base unchanged: True")
    listed = json.loads(CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "list", "--json"]).stdout)
    assert listed["total"] == 6
