"""Recipes, runs, schedules and alias triggers, against SQLite and the real PostgreSQL; time is injected."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from registry import models as m
from registry.errors import RegistryError
from registry.recipes import InvalidRecipe

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)  # a Monday


@pytest.fixture
def cat(registry, tiny):  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    registry.set_alias("legal:1", "production")
    registry.set_alias("tone:1", "production")
    return registry


def merge_recipe(**gates) -> dict:  # type: ignore[no-untyped-def]
    return {
        "name": "tone-legal-weekly",
        "steps": [
            {"name": "merged", "merge": {"sources": ["tone@production", "legal@production"], "weights": [0.7, 0.3],
                                         "method": "cat", "name": "tone-legal"}},
            {"name": "check", "validate": {"target": "@merged", "gates": gates}},
            {"name": "stage", "promote": {"target": "@merged", "alias": "staging"}},
        ],
    }


def promote_recipe() -> dict:
    return {"name": "pin", "steps": [{"name": "pin", "promote": {"target": "tone@production", "alias": "pinned"}}]}


def _runs(reg, **where) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        query = select(func.count()).select_from(m.Run)
        for key, value in where.items():
            query = query.where(getattr(m.Run, key) == value)
        return s.scalar(query)


def test_recipe_runs_as_a_chain_and_promotes(cat):
    run = cat.run_recipe(merge_recipe(max_distance_from={"tone@production": 100.0}))
    assert run.status == "succeeded", run.message
    assert run.outputs == {"merged": "tone-legal:1", "check": "tone-legal:1", "stage": "tone-legal:1"}
    assert [j["kind"] for j in run.jobs] == ["merge", "validate"]
    assert cat.get("tone-legal@staging").ref == "tone-legal:1"
    again = cat.run_recipe(merge_recipe(max_distance_from={"tone@production": 100.0}))
    assert again.status == "skipped" and "inputs unchanged" in again.message and again.jobs == []


def test_failed_gate_stops_the_chain_and_says_by_how_much(cat):
    run = cat.run_recipe(merge_recipe(max_distance_from={"tone@production": 1e-9}))
    assert run.status == "failed" and "gate max_distance_from tone:1" in run.message and "by" in run.message
    with pytest.raises(RegistryError):
        cat.get("tone-legal@staging")  # promote never ran


def test_invalid_recipes_refused_before_anything_is_queued(cat, tmp_path):
    bad = {"name": "bad", "steps": [
        {"name": "m", "merge": {"sources": ["tone@nope", "legal:1"], "weights": [1.0], "method": "ties",
                                "name": "x"}},
        {"name": "m2", "merge": {"sources": ["@later", "legal:1"], "weights": [1, 1], "method": "ties",
                                 "params": {"density": 7}, "name": "y"}},
        {"name": "later", "promote": {"target": "@m", "alias": "ok"}},
    ]}
    with pytest.raises(InvalidRecipe) as info:
        cat.run_recipe(bad)
    text = str(info.value)
    assert "@later is not an earlier step" in text
    (tmp_path / "r.yaml").write_text(json.dumps({**bad, "steps": bad["steps"][:1]}))
    with pytest.raises(InvalidRecipe) as info:
        cat.run_recipe(tmp_path / "r.yaml")
    assert "has no alias 'nope'" in str(info.value)
    with pytest.raises(InvalidRecipe, match="exactly one of"):
        cat.run_recipe({"name": "x", "steps": [{"name": "a"}]})
    assert _runs(cat) == 0
    with cat.service.sessions() as s:
        assert s.scalar(select(func.count()).select_from(m.Job)) == 0


def test_schedule_validation(cat):
    with pytest.raises(RegistryError, match="invalid cron"):
        cat.add_schedule(promote_recipe(), cron="61 * * * *")
    with pytest.raises(RegistryError, match="unknown time zone"):
        cat.add_schedule(promote_recipe(), cron="0 3 * * 1", tz="Mars/Olympus")
    with pytest.raises(RegistryError, match="catch-up"):
        cat.add_schedule(promote_recipe(), cron="0 3 * * 1", catch_up="sometimes")


def test_cron_in_time_zone_and_pause(cat):
    info = cat.add_schedule(promote_recipe(), cron="0 3 * * 1", tz="Europe/Paris", now=T0)
    assert info["next_fire_at"].startswith("2026-11-02T02:00")  # 03:00 Paris = 02:00 UTC in winter
    assert cat.tick(T0 + timedelta(hours=1)) == []
    assert len(cat.tick(T0 + timedelta(hours=2, minutes=1))) == 1
    assert cat.tick(T0 + timedelta(hours=2, minutes=2)) == []  # the same fire never runs twice
    cat.set_schedule_enabled("pin", False)
    assert cat.tick(T0 + timedelta(days=7, hours=3)) == []
    assert _runs(cat, trigger="cron") == 1


@pytest.mark.parametrize(("policy", "expected"), [("all", 3), ("latest", 1), ("none", 0)])
def test_catch_up_after_three_hour_outage(cat, policy, expected):
    cat.add_schedule(promote_recipe(), name=f"hourly-{policy}", cron="0 * * * *", catch_up=policy, now=T0)
    # the scheduler was down from T0 to T0+3h10: fires at 01:00, 02:00, 03:00 were missed
    cat.tick(T0 + timedelta(hours=3, minutes=10))
    assert _runs(cat) == expected
    with cat.service.sessions() as s:
        fires = sorted(r.fire_time for r in s.scalars(select(m.Run)))
    if policy == "all":
        assert [f.replace(tzinfo=timezone.utc) for f in fires] == [T0 + timedelta(hours=h) for h in (1, 2, 3)]


def test_alias_trigger_fires_once_per_move(cat, tiny):
    cat.tick(T0)  # drain the events of the fixture's alias moves
    follow = {"name": "follow-legal", "steps": [{"name": "seen", "promote": {"target": "legal@production",
                                                                              "alias": "seen"}}]}
    cat.add_schedule(follow, name="on-legal", on_alias="legal@production", now=T0)
    cat.set_alias("legal:1", "production")  # not a move: same version, no event
    assert cat.tick(T0 + timedelta(minutes=1)) == []
    legal2 = cat.register(tiny["legal"], name="legal")
    cat.set_alias(legal2.ref, "production")
    assert len(cat.tick(T0 + timedelta(minutes=2))) == 1
    assert cat.tick(T0 + timedelta(minutes=3)) == []
    cat.set_alias("legal:1", "production")  # moved back: a second move, a second run
    assert len(cat.tick(T0 + timedelta(minutes=4))) == 1
    assert _runs(cat, trigger="alias_moved") == 2
    assert cat.get("legal@seen").ref == "legal:1"


TICKER = """
import sys
from datetime import datetime, timedelta, timezone
from registry import Registry
reg = Registry(sys.argv[1], home=sys.argv[2])
start = datetime.fromisoformat(sys.argv[3])
for minute in range(0, 6 * 60, 7):  # simulated time, several ticks per hour, in both processes
    reg.tick(start + timedelta(minutes=minute))
"""


def test_two_tick_processes_run_each_fire_once(cat, db_url, tmp_path):
    cat.add_schedule(promote_recipe(), name="hourly", cron="0 * * * *", catch_up="all", now=T0)
    procs = [subprocess.Popen([sys.executable, "-c", TICKER, db_url, str(cat.settings.home), T0.isoformat()],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    with cat.service.sessions() as s:
        fires = [r.fire_time for r in s.scalars(select(m.Run).where(m.Run.trigger == "cron"))]
    assert len(fires) == len(set(fires)) == 5  # 01:00 .. 05:00 (the last tick is at 05:57)
