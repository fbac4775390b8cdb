"""Hostile input is refused cleanly and cheaply (issue 13, items 3, 4, 10, 11 and parts of 13).

Recipes (nesting, YAML aliases, size, step count, runs that must end), training data (line length, row count,
non-UTF-8 bytes, wrong field types, before any job exists), cron expressions and catch-up, Hub revisions and
version numbers. Each test fails on the code before these checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry import models as m
from registry.errors import InvalidReference, RegistryError
from registry.recipes import MAX_STEPS, InvalidRecipe, load_recipe
from registry.refs import parse_ref
from registry.trainset import InvalidDataset

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def embedded(tiny):  # type: ignore[no-untyped-def]
    """The embedded default (SQLite under $ADREG_HOME, jobs in-process) with tone:1 at tone@production."""
    from registry import Registry

    reg = Registry()
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    reg.set_alias("tone:1", "production")
    yield reg
    reg.close()


def _count(reg, model) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def _promote(name: str, alias: str = "pinned") -> dict:
    return {"name": name, "promote": {"target": "tone@production", "alias": alias}}


# --- 11 and 13. references: the Hub's rules, bounded versions ----------------------------------------------------


@pytest.mark.parametrize("text", [
    "hf://org/repo@main/../../x", "hf://org/repo@../x", "hf://org/repo@/main", "hf://org/repo@main/",
    "hf://org/repo@a//b", "hf://org/repo@.hidden", "hf://org/repo@v1.lock", "hf://org/repo@v1.",
    "hf://org/repo@ma in", "hf://org/repo@main?x=1", "hf://org/repo@main%2F..", "hf://org--x/repo",
    "hf://org/repo.git", "hf://-org/repo", "hf://a/b/c",
])
def test_hub_references_follow_the_hub_rules(text):
    with pytest.raises(InvalidReference):
        parse_ref(text)


def test_valid_hub_references_still_parse():
    for rev in ("main", "v1.0", "refs/pr/1", "refs/convert/parquet", "0123456789abcdef0123456789abcdef01234567"):
        assert parse_ref(f"hf://org/repo@{rev}").hub_revision == rev
    assert parse_ref("hf://Org_1/my.repo-2").hub_repo == "Org_1/my.repo-2"


def test_traversing_hub_reference_never_reaches_the_network(embedded, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail differently
    with pytest.raises(InvalidReference, match="not a valid Hub revision"):
        embedded.register("hf://org/repo@main/../../x", name="x")


def test_publish_branch_follows_the_hub_rules(embedded):
    from registry.jobs import PublishTarget

    for branch in ("main/../../x", "a//b", "x.lock", "-x", "b" * 256):
        with pytest.raises(RegistryError):
            embedded.publish("tone:1", "acme/tone", branch=branch, base_model_id="acme/base")
        with pytest.raises(ValueError):
            PublishTarget(repo_id="acme/tone", branch=branch)
    assert PublishTarget(repo_id="acme/tone", branch="refs/pr/3").branch == "refs/pr/3"
    assert _count(embedded, m.Job) == 0


def test_version_numbers_beyond_the_bound_are_refused(registry, db_url, tmp_path):
    from typer.testing import CliRunner

    from registry.cli import app

    with pytest.raises(InvalidReference, match="no such user"):
        registry.get("~no-such-user-here/adapter")
    for text in ("a0:99999999999999999999", "a0:2147483648", "tone:\u0663"):
        with pytest.raises(InvalidReference, match="integer from 1 to 2147483647"):
            registry.get(text)
    with pytest.raises(RegistryError, match="no adapter named 'a0'"):
        registry.get("a0:2147483647")  # the largest version parses and is looked up
    result = CliRunner().invoke(app, ["--db", db_url, "--home", str(tmp_path / "home"), "show",
                                      "a0:99999999999999999999"])
    assert result.exit_code == 1 and "integer from 1 to 2147483647" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- 3. recipes: nesting, aliases, size, step count; runs that always end ---------------------------------------

LAUGHS = "\n".join(
    [f"      l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
)


@pytest.mark.parametrize("where", ["params", "train"])
def test_yaml_aliases_are_refused(tmp_path, where):
    merge = ("  - name: m\n    merge:\n      sources: [tone@production]\n      weights: [1.0]\n      name: x\n"
             "      params:\n" + LAUGHS.replace("      ", "        ") + "\n")
    train = ("  - name: t\n    train:\n      source: tone@production\n      data: ./d.jsonl\n      new:\n"
             + LAUGHS.replace("      ", "        ") + "\n")
    path = tmp_path / "laughs.yaml"
    path.write_text("name: laughs\nsteps:\n" + (merge if where == "params" else train))
    start = time.monotonic()
    with pytest.raises(InvalidRecipe, match="anchors"):
        load_recipe(path)
    assert time.monotonic() - start < 2


def test_deeply_nested_recipes_are_refused_not_a_recursion_error(tmp_path):
    (tmp_path / "deep.yaml").write_text("name: deep\nsteps:\n  " + "- " * 1200 + "x\n")  # 1200 nested lists
    with pytest.raises(InvalidRecipe, match="nested more than 32 levels"):
        load_recipe(tmp_path / "deep.yaml")
    nested: list = []
    inner = nested
    for _ in range(200):
        inner.append([])
        inner = inner[0]
    recipe = {"name": "deep", "steps": [{"name": "m", "merge": {"sources": ["tone@production"], "weights": [1.0],
                                                                "name": "x", "params": {"deep": nested}}}]}
    with pytest.raises(InvalidRecipe, match="steps.0.merge.params.deep.*nested more than 32 levels"):
        load_recipe(recipe)


def test_recipe_values_are_plain_json(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\nsteps:\n  - name: t\n    train: {data: d.jsonl, lr: .inf}\n")
    with pytest.raises(InvalidRecipe, match="steps.0.train.lr: inf is not a finite number"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("name: r\nsteps:\n  - name: t\n    train: {data: d.jsonl, seed: 2026-01-01}\n")
    with pytest.raises(InvalidRecipe, match="steps.0.train.seed: a date is not allowed"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_bytes(b"name: \xff\n")
    with pytest.raises(InvalidRecipe, match="not UTF-8"):
        load_recipe(tmp_path / "r.yaml")


CHECK = """
import sys, time
from registry.recipes import InvalidRecipe, load_recipe
steps = [{"name": f"s{i}", "promote": {"target": "tone@production", "alias": "a"}} for i in range(100_000)]
start = time.monotonic()
try:
    load_recipe({"name": "big", "steps": steps})
except InvalidRecipe as exc:
    print(str(exc).splitlines()[1], round(time.monotonic() - start, 2))
"""


def test_huge_recipes_are_refused_quickly(tmp_path):
    # 100k steps: the duplicate-name check was quadratic (hours); now the step count is checked first
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"at most {MAX_STEPS} are allowed" in out.stdout
    assert float(out.stdout.split()[-1]) < 5
    # the same as a file: refused by its size before YAML is parsed, through the real CLI
    lines = ["name: big", "steps:"] + [f"  - {{name: s{i}, promote: {{target: tone@production, alias: a}}}}"
                                       for i in range(100_000)]
    (tmp_path / "big.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    cli = subprocess.run([sys.executable, "-m", "registry.cli", "recipe", "check", str(tmp_path / "big.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "larger than 512 KiB" in cli.stderr and "Traceback" not in cli.stderr
    assert time.monotonic() - start < 30
    (tmp_path / "many.yaml").write_text("\n".join(lines[:2 + MAX_STEPS + 1]) + "\n")
    with pytest.raises(InvalidRecipe, match=f"{MAX_STEPS + 1} steps, at most {MAX_STEPS}"):
        load_recipe(tmp_path / "many.yaml")


def test_a_run_of_many_promote_steps_ends_succeeded(embedded):
    # 1000 promote steps (the most a recipe may have): the old loop gave up after 1000 passes, leaving it running
    recipe = {"name": "many", "steps": [_promote(f"s{i}", f"a{i % 3}") for i in range(MAX_STEPS)]}
    run = embedded.run_recipe(recipe)
    assert run.status == "succeeded", run.message
    assert run.current_step == MAX_STEPS and len(run.outputs) == MAX_STEPS
    assert embedded.get("tone@a2").ref == "tone:1"


def test_job_steps_advance_without_recursion(embedded, monkeypatch):
    """In-process jobs finish inside their step's submission; the run's loop goes on instead of nesting a new
    advance per step, so the stack depth at each submission is the same."""
    import inspect

    from registry import runs

    depths: list[int] = []
    submit = runs._submit_step

    def recording(reg, run, step, steps):  # type: ignore[no-untyped-def]
        depths.append(len(inspect.stack(0)))
        return submit(reg, run, step, steps)

    monkeypatch.setattr(runs, "_submit_step", recording)
    steps = [{"name": f"m{i}", "merge": {"sources": ["tone@production"], "weights": [1.0], "method": "linear",
                                         "name": f"copy{i}"}} for i in range(4)]
    run = embedded.run_recipe({"name": "chain", "steps": [*steps, _promote("pin")]})
    assert run.status == "succeeded", run.message
    assert len(depths) == 4 and len(set(depths)) == 1, depths


def test_a_step_that_raises_fails_the_run_instead_of_stranding_it(embedded, monkeypatch):
    from registry import catalog

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RegistryError("alias store unavailable")

    monkeypatch.setattr(catalog, "set_alias", broken)
    run = embedded.run_recipe({"name": "pin", "steps": [_promote("pin")]})
    assert run.status == "failed" and "step pin failed: alias store unavailable" in run.message
    monkeypatch.setattr(catalog, "set_alias", lambda *a, **k: 1 / 0)
    run = embedded.run_recipe({"name": "pin2", "steps": [_promote("pin")]})
    assert run.status == "failed" and "ZeroDivisionError" in run.message
    with embedded.service.sessions() as s:
        assert s.scalar(select(func.count()).select_from(m.Run).where(m.Run.status == "running")) == 0


def test_recipe_names_and_branches_are_checked_when_loaded():
    bad = {"name": "r", "steps": [
        {"name": "m", "merge": {"sources": ["tone@production"], "weights": [1.0], "name": "Not A Slug"}},
        {"name": "p", "promote": {"target": "@m", "alias": "Prod"}},
        {"name": "s", "publish": {"target": "@m", "repo": "acme/x", "branch": "main/../../x"}},
    ]}
    with pytest.raises(InvalidRecipe) as info:
        load_recipe(bad)
    text = str(info.value)
    assert "steps.0.merge.name" in text and "steps.1.promote.alias" in text and "steps.2.publish.branch" in text


# --- 10. cron: exactly five fields, never a schedule that cannot fire, bounded catch-up ----------------------------


@pytest.mark.parametrize(("cron", "message"), [
    ("* * * * * *", "6 field"),
    ("0 0 * * * * 2030", "7 field"),
    ("@daily", "1 field"),
    ("0 0 L * *", "day of month field 'L'"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6 *", "never fires"),
])
def test_cron_is_five_fields_that_fire(embedded, cron, message):
    with pytest.raises(RegistryError, match=message):
        embedded.add_schedule({"name": "pin", "steps": [_promote("pin")]}, cron=cron, now=T0)
    assert _count(embedded, m.Schedule) == 0


def test_cli_refuses_a_never_firing_cron_without_traceback(tmp_path):
    (tmp_path / "pin.yaml").write_text(json.dumps({"name": "pin", "steps": [_promote("pin")]}))
    out = subprocess.run([sys.executable, "-m", "registry.cli", "schedule", "add", str(tmp_path / "pin.yaml"),
                          "--cron", "0 0 30 2 *"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "never fires" in out.stderr and "Traceback" not in out.stderr


def test_catch_up_all_is_bounded_per_tick(embedded):
    from registry.schedules import MAX_CATCH_UP_RUNS

    embedded.add_schedule({"name": "pin", "steps": [_promote("pin")]}, cron="* * * * *", catch_up="all", now=T0)
    started = embedded.tick(T0 + timedelta(hours=2))  # 120 missed fires
    assert len(started) == MAX_CATCH_UP_RUNS
    with embedded.service.sessions() as s:
        fires = sorted(r.fire_time.replace(tzinfo=timezone.utc) for r in s.scalars(select(m.Run)))
    assert fires == [T0 + timedelta(hours=2, minutes=-i) for i in reversed(range(MAX_CATCH_UP_RUNS))]
    assert embedded.tick(T0 + timedelta(hours=2)) == []


def test_catch_up_latest_runs_the_latest_fire_after_a_long_outage(embedded):
    embedded.add_schedule({"name": "pin", "steps": [_promote("pin")]}, cron="* * * * *", now=T0)
    assert len(embedded.tick(T0 + timedelta(days=2))) == 1  # 2880 missed fires; the latest is "now"
    with embedded.service.sessions() as s:
        fire = s.scalars(select(m.Run.fire_time)).one()
    assert fire.replace(tzinfo=timezone.utc) == T0 + timedelta(days=2)


# --- 4 and 13. training data: bounded, streamed, every row usable, before any job ---------------------------------


def _train(reg, data: Path) -> None:  # type: ignore[no-untyped-def]
    reg.train("tone:1", data=data, steps=1)


def test_a_line_longer_than_the_limit_is_refused_before_a_job(embedded, tmp_path, monkeypatch):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"text": "a" * (3 << 20)}) + "\n")  # one 3 MiB row
    with pytest.raises(InvalidDataset, match=r"long.jsonl line 1 is longer than 1048576 bytes"):
        _train(embedded, long)
    monkeypatch.setenv("ADREG_MAX_DATA_LINE_BYTES", "100")
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "b" * 200}) + "\n")
    with pytest.raises(InvalidDataset, match="short.jsonl line 2 is longer than 100 bytes"):
        _train(embedded, short)
    assert _count(embedded, m.Job) == 0


def test_too_many_rows_are_refused_before_a_job(embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("ADREG_MAX_DATA_ROWS", "10")
    for name, body in [("rows.jsonl", "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(11))),
                       ("rows.txt", "".join(f"row {i}\n" for i in range(11))),
                       ("rows.json", json.dumps([{"text": f"row {i}"} for i in range(11)]))]:
        (tmp_path / name).write_text(body)
        with pytest.raises(InvalidDataset, match="more than 10 rows"):
            _train(embedded, tmp_path / name)
    monkeypatch.setenv("ADREG_MAX_DATA_ROWS", "many")
    with pytest.raises(RegistryError, match="ADREG_MAX_DATA_ROWS='many' must be a positive whole number"):
        _train(embedded, tmp_path / "rows.jsonl")
    assert _count(embedded, m.Job) == 0


MEASURE = """
import resource, sys
from registry.trainset import InvalidDataset, describe_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    describe_dataset(sys.argv[1])
    print("accepted")
except InvalidDataset as exc:
    print("refused", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, exc)
"""


def test_a_huge_single_line_is_refused_in_bounded_memory(tmp_path):
    # The audit's 200 MB single line reached 21.7 GB RSS (4 MiB already cost +160 MB): the scan reads at most
    # one line's limit of it.
    big = tmp_path / "one-line.jsonl"
    with big.open("w") as fh:
        fh.write('{"text": "')
        for _ in range(64):
            fh.write("a" * (1 << 20))
        fh.write('"}\n')
    out = subprocess.run([sys.executable, "-c", MEASURE, str(big)], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("refused"), (out.stdout, out.stderr)
    grew_mb = int(out.stdout.split()[1])
    assert grew_mb < 32, out.stdout
    assert "line 1 is longer than" in out.stdout


@pytest.mark.parametrize(("body", "message"), [
    (b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n', r"bad.jsonl line 2: field 'text' is not valid UTF-8"),
    (b'{"messages": "hello there"}\n', r"bad.jsonl line 1: field 'messages' must be a non-empty list .* not a string"),
    (b'{"messages": [{"role": "user", "content": 7}]}\n', r"line 1: field 'messages' item 0: 'content' must be a str"),
    (b'{"text": "a"}\n{"text": 12345}\n', r"bad.jsonl line 2: field 'text' must be a string, not an integer"),
    (b'{"text": 1}\n{"text": 2}\n', r"bad.jsonl line 1: field 'text' must be a string, not an integer"),
    (b'{"prompt": "a", "completion": 3}\n', r"line 1: field 'completion' must be a string"),
    (b'{"text": "a"}\n[1, 2]\n', r"line 2: a JSON Lines row is an object"),
    (b'{"text": "a"}\n{"text": \n', r"line 2 is not valid JSON"),
    (b'{"text": "\\udc80"}\n', r"line 1: field 'text' is not valid Unicode"),
    (b'{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", r"line 1 is nested more than 32 levels"),
    (b'{"text": "2026-01-01"}\n{"text": "2026-01-02"}\n', r"every 'text' value looks like a date"),
])
def test_rows_the_job_cannot_use_are_refused_with_line_and_field(embedded, tmp_path, body, message):
    (tmp_path / "bad.jsonl").write_bytes(body)
    with pytest.raises(InvalidDataset, match=message):
        _train(embedded, tmp_path / "bad.jsonl")
    assert _count(embedded, m.Job) == 0


def test_non_utf8_text_file_names_its_line(embedded, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"one\ntwo\nthr\xffee\n")
    with pytest.raises(InvalidDataset, match=r"bad.txt line 3: byte 4 of the line \(0xff\) is not UTF-8"):
        _train(embedded, tmp_path / "bad.txt")
    assert _count(embedded, m.Job) == 0
