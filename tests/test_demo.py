"""`adreg demo`, the README's first command, on the embedded default."""

from __future__ import annotations

import json
import re

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
    edges = {(e["child"], e["relation"], e["parent"]) for e in report["lineage"]["edges"]}
    assert edges == {(f"demo-tone-legal-{m}:1", "merge", p) for m in ("svd", "ties")
                     for p in ("demo-tone:2", "demo-legal:2")} | {
        ("demo-tone:2", "finetune", "demo-tone:1"), ("demo-legal:2", "finetune", "demo-legal:1"),
        ("demo-style:2", "finetune", "demo-style:1")}
    # each parent learned its task, and each merge says how much of it it keeps
    for name in ("demo-tone", "demo-legal"):
        taught = next(s for step, s in steps.items() if step.startswith(f"teach {name}:1"))
        before, after = (float(x) for x in taught["result"].split("loss ")[1].split(" -> "))
        assert taught["result"].startswith(f"{name}:2") and after < before
    for method in ("svd", "ties"):
        kept = steps[f"retention of each parent in demo-tone-legal-{method}:1"]["result"]
        assert re.fullmatch(r"demo-tone:2 -?\d+\.\d\d, demo-legal:2 -?\d+\.\d\d \(mean -?\d+\.\d\d, "
                            r"min -?\d+\.\d\d\)", kept), kept
    trained = next(s for name, s in steps.items() if name.startswith("continue training demo-style:1"))
    assert trained["result"].startswith("demo-style:2") and trained["result"].endswith("base unchanged: True")
    listed = json.loads(CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "list", "--json"]).stdout)
    assert listed["total"] == 8  # three made, two taught, two merges, one continued
