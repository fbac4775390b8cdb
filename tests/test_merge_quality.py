"""Retention (registry/retention.py) on made-up losses, and benchmarks/merge_quality.py --quick end to end."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from registry.retention import retention, summarize

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_quality.py"


def test_retention_is_one_at_the_parent_zero_at_the_base_negative_below_it() -> None:
    assert retention(base_loss=3.0, parent_loss=1.0, merged_loss=1.0) == 1.0
    assert retention(3.0, 1.0, 3.0) == 0.0
    assert retention(3.0, 1.0, 2.0) == 0.5
    assert retention(3.0, 1.0, 4.0) == -0.5  # worse than the base
    assert retention(3.0, 1.0, 0.5) == 1.25  # better than the parent (another parent helped)


def test_retention_is_undefined_when_the_parent_learned_nothing_or_a_loss_is_not_finite() -> None:
    assert retention(2.0, 2.0, 1.0) is None
    assert retention(2.0, 2.5, 1.0) is None
    assert retention(math.nan, 1.0, 1.0) is None
    assert retention(3.0, 1.0, math.inf) is None
    assert retention(True, 0.0, 0.0) is None  # type: ignore[arg-type]


def test_summarize_gives_mean_and_minimum_of_the_defined_retentions() -> None:
    assert summarize([1.0, 0.5, -0.5, None]) == {"mean": pytest.approx(1 / 3), "min": -0.5, "undefined": 1}
    assert summarize([None]) == {"mean": None, "min": None, "undefined": 1}


def test_quick_mode_runs_end_to_end(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """2 tasks, 1 seed, few steps, two methods: trains, merges with the engine, loads with PEFT, tabulates."""
    spec = importlib.util.spec_from_file_location("merge_quality", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "merge_quality", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--methods", "cat,iso_c", "--steps", "20", "--base-steps", "10"])
    out = capsys.readouterr().out
    assert result["tasks"] == ["reverse", "upper"] and result["seeds"] == [0]
    rows = {(r["method"], r["weighting"]): r for r in result["rows"]}
    assert set(rows) == {("cat", "mean"), ("cat", "sum"), ("iso_c", "mean"), ("iso_c", "sum"), ("cat", "learned"),
                         ("cat", "learned-worst")}
    assert not rows[("cat", "learned")]["peft"]  # learned weights are beyond PEFT's eleven
    assert not rows[("cat", "learned-worst")]["peft"]
    learned = result["parents"][0]["learned"]  # workers.learn_weights on the benchmark's adapters
    assert len(learned["weights"]) == 2 and learned["objective_final"] <= learned["objective_initial"]
    worst = result["parents"][0]["searches"]["learned-worst"]  # the worst objective, on the same examples
    assert worst["objective"] == "worst" and worst["tau"] == 20.0
    assert worst["objective_final"] <= worst["objective_initial"] and worst["weights"] != learned["weights"]
    assert all(r["included"] for r in worst["reference"])  # both parents learned their task
    assert max(worst["normalised_final"]) <= max(worst["normalised_initial"])
    for row in rows.values():
        assert row["refused"] is None
        assert math.isfinite(row["mean"]) and row["min"] <= row["mean"]
        assert row["seconds"]["mean"] > 0
    alone = result["parents"][0]["alone"]  # each parent alone on every task; on its own task retention is 1
    assert set(alone) == {"reverse", "upper"} and all(alone[t][t] in (None, pytest.approx(1.0)) for t in alone)
    assert "| `cat` |" in out and "| `iso_c` * |" in out and "best of PEFT's eleven" in out
    assert "| `cat` * | learned |" in out and "learned weights: best mean cat" in out
    assert "| `cat` * | learned-worst |" in out and "learned-worst weights: best mean cat" in out
    assert "beats PEFT's best on both mean and minimum:" in out
