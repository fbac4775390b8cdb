"""Property-based tests of the parsers of what users type or upload (issue 13): references (``parse_ref``,
``parse_tag`` / ``check_tag`` / ``check_slug``, Hub repo ids and revisions), recipes (``load_recipe``), cron
expressions (``check_cron``) and training-data rows (``scan_rows`` / ``describe_dataset``).

Random input gives a value or the parser's documented RegistryError, never another exception; valid generated
input round-trips. Where an outside authority exists it is the oracle: huggingface_hub's ``validate_repo_id`` for
repo ids, ``git check-ref-format`` for revisions, pydantic's (Rust) regex for the publish branch pattern, and the
``datasets`` loader for the rows the training job reads.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registry.errors import InvalidName, InvalidReference, RegistryError
from registry.recipes import InvalidRecipe, Recipe, load_recipe
from registry.refs import MAX_VERSION, Ref, check_hub_repo, check_revision, check_slug, check_tag, parse_ref, parse_tag
from registry.schedules import InvalidCron, check_cron, next_fire, recent_fires
from registry.trainset import InvalidDataset, describe_dataset, load_rows, scan_rows

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies --------------------------------------------------------------------------------------------------

slugs = st.from_regex(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?", fullmatch=True).filter(lambda s: ".." not in s)
hub_parts = st.from_regex(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,20}[A-Za-z0-9_])?", fullmatch=True).filter(
    lambda s: ".." not in s and "--" not in s and not s.endswith(".git"))
hub_repos = st.one_of(hub_parts, st.tuples(hub_parts, hub_parts).map("/".join)).filter(
    lambda s: "--" not in s and ".." not in s and not s.endswith(".git"))
_runs = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)
_parts = st.lists(_runs, min_size=1, max_size=3).map(".".join).filter(lambda p: not p.endswith(".lock"))
revisions = st.lists(_parts, min_size=1, max_size=4).map("/".join).filter(
    lambda r: r[0].isascii() and r[0].isalnum() and len(r) <= 255)
printable_values = st.text(st.characters(min_codepoint=32, blacklist_categories=("Cs",), blacklist_characters="\x7f"),
                           max_size=40).map(str.strip)
ref_alphabet = st.sampled_from(list("abz09._-/@:~ hf\x00\n\udc80é٣²") + ["hf://", "..", "@", ":"])
ref_like = st.lists(ref_alphabet, max_size=30).map("".join)
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
                | st.datetimes().map(lambda d: d.date()) | st.binary(max_size=4))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                                                 max_size=4),
    max_leaves=24,
)


def _git_accepts(revision: str) -> bool:
    return subprocess.run(["git", "check-ref-format", f"refs/heads/{revision}"], capture_output=True).returncode == 0


# --- references ----------------------------------------------------------------------------------------------------


@FAST
@given(st.one_of(st.text(max_size=60), ref_like, ref_like.map(lambda s: "hf://" + s),
                 st.tuples(slugs, st.text(max_size=25)).map(":".join)))
@example("a0:99999999999999999999")
@example("tone:\u00b2")
@example("hf://org/repo@main/../../x")
@example("~0")  # ~user of no such user: pathlib raises RuntimeError
def test_random_references_parse_or_are_refused(text):
    try:
        ref = parse_ref(text)
    except (InvalidReference, InvalidName):
        return
    assert isinstance(ref, Ref)
    if ref.version is not None:
        assert 1 <= ref.version <= MAX_VERSION
    if ref.hub_repo is not None:
        check_hub_repo(ref.hub_repo)
        if ref.hub_revision is not None:
            check_revision(ref.hub_revision)
            assert ".." not in ref.hub_revision


@FAST
@given(slugs, st.integers(1, MAX_VERSION), slugs)
def test_catalog_references_round_trip(name, version, alias):
    for ref in (Ref(name=name), Ref(name=name, version=version), Ref(name=name, alias=alias)):
        assert parse_ref(str(ref)) == ref


@FAST
@given(hub_repos, st.none() | revisions)
def test_hub_references_round_trip(repo, revision):
    ref = Ref(hub_repo=repo, hub_revision=revision)
    assert parse_ref(str(ref)) == ref


@FAST
@given(st.one_of(hub_repos, st.text(st.sampled_from(list("aZ09._-/é ")), max_size=20)))
def test_hub_repo_ids_follow_huggingface_hub(repo):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
        hub_ok = True
    except HFValidationError:
        hub_ok = False
    try:
        check_hub_repo(repo)
        ours = True
    except InvalidReference:
        ours = False
    assert ours == hub_ok, repo


@settings(max_examples=100, deadline=None)
@given(st.one_of(revisions, st.text(st.sampled_from(list("ab0.-_/@{~^: ")), min_size=1, max_size=16)))
def test_revisions_we_accept_git_accepts_and_pydantic_agrees(revision):
    from pydantic import ValidationError

    from registry.jobs import PublishTarget

    try:
        check_revision(revision)
        ours = True
    except InvalidReference:
        ours = False
    if ours:
        assert _git_accepts(revision), revision
    try:
        PublishTarget(repo_id="acme/x", branch=revision)
        pydantic_ok = True
    except ValidationError:
        pydantic_ok = False
    assert pydantic_ok == ours, revision


@FAST
@given(st.one_of(st.text(max_size=80), st.tuples(st.text(max_size=10), printable_values).map("=".join)))
def test_random_tags_and_slugs_parse_or_are_refused(text):
    try:
        key, value = parse_tag(text)
    except InvalidName:
        pass
    else:
        assert check_tag(key, value) == (key, value)
    with contextlib.suppress(InvalidName):
        assert check_slug(text) == text


@FAST
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True), printable_values, slugs)
def test_valid_tags_and_slugs_round_trip(key, value, slug):
    assert parse_tag(f"{key}={value}") == (key, value)
    assert parse_tag(f" {key} = {value} ") == (key, value)
    assert check_slug(slug) == slug


# --- recipes -------------------------------------------------------------------------------------------------------

refs_in_recipes = st.one_of(slugs, st.tuples(slugs, slugs).map("@".join),
                            st.tuples(slugs, st.integers(1, 99).map(str)).map(":".join))


@st.composite
def valid_recipes(draw) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    names = draw(st.lists(slugs, min_size=1, max_size=6, unique=True))
    steps: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        earlier = [f"@{n}" for n in names[:i]]
        target = draw(st.sampled_from(earlier) if earlier and draw(st.booleans()) else refs_in_recipes)
        kind = draw(st.sampled_from(["promote", "merge", "validate", "publish", "train"]))
        if kind == "promote":
            body: dict[str, Any] = {"target": target, "alias": draw(slugs)}
        elif kind == "merge":
            sources = [target, draw(refs_in_recipes)]
            body = {"sources": sources, "weights": draw(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2)),
                    "method": draw(st.sampled_from(["svd", "ties", "linear", "cat"])), "name": draw(slugs),
                    "params": draw(st.dictionaries(st.sampled_from(["density", "svd_rank"]),
                                                   st.integers(1, 64) | st.floats(0.1, 1.0), max_size=2))}
        elif kind == "validate":
            body = {"target": target, "gates": {"max_distance_from": draw(st.dictionaries(
                refs_in_recipes, st.floats(0.0, 100.0), max_size=2)), "require_exact": draw(st.booleans())}}
        elif kind == "publish":
            body = {"target": target, "repo": f"{draw(hub_parts)}/{draw(hub_parts)}", "branch": draw(revisions),
                    "private": draw(st.booleans())}
        else:
            body = {"source": target, "data": draw(st.text("abc./_-", min_size=1, max_size=20)),
                    "steps": draw(st.integers(1, 10_000)), "lr": draw(st.floats(1e-6, 1.0)),
                    "seed": draw(st.integers(0, 2**31)), "gates": {"max_eval_loss": draw(st.none() | st.floats(0, 9))}}
        steps.append({"name": name, kind: body})
    return {"name": draw(slugs), "steps": steps}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


@FAST
@given(valid_recipes())
def test_valid_recipes_round_trip_as_dict_and_yaml(recipe):
    try:
        parsed = load_recipe(recipe)
    except InvalidRecipe as exc:  # only a Hub rule can refuse a generated name (e.g. 'a--b' as a publish repo)
        assert "repo" in str(exc), str(exc)
        return
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    assert load_recipe(dumped) == parsed
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.dump(dumped, Dumper=_NoAliasDumper, sort_keys=False))
        assert load_recipe(path) == parsed
    assert isinstance(parsed, Recipe) and len(parsed.steps) == len(recipe["steps"])


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries({"name": json_values, "steps": st.lists(
    st.fixed_dictionaries({"name": st.text(max_size=8)}, optional={
        "promote": st.dictionaries(st.sampled_from(["target", "alias"]), json_values, max_size=2),
        "merge": st.dictionaries(st.sampled_from(["sources", "weights", "name", "params", "method"]), json_values),
        "train": st.dictionaries(st.sampled_from(["source", "data", "steps", "lr", "seed", "new"]), json_values),
        "publish": st.dictionaries(st.sampled_from(["target", "repo", "branch"]), json_values),
    }), max_size=4)})))
def test_random_recipe_documents_load_or_are_refused(doc):
    try:
        recipe = load_recipe(doc) if isinstance(doc, dict) else load_recipe({"name": "x", "steps": doc})
    except InvalidRecipe:
        return
    json.dumps(recipe.model_dump(by_alias=True))  # what a run row stores


@FAST
@given(st.one_of(st.text(max_size=200), json_values.map(lambda v: yaml.safe_dump({"name": "r", "steps": v})),
                 st.lists(st.sampled_from(["name: r\n", "steps:\n", "  - ", "name: s\n", "{", "[", "&a ", "*a ",
                                           "promote: {target: t@p, alias: a}\n", "    ", "!!binary ", "- ", "\t"]),
                          max_size=20).map("".join)))
@example("name: r\nsteps: &a [*a]\n")
@example("name: r\nsteps:\n  " + "- " * 300 + "x\n")
def test_random_yaml_loads_or_is_refused(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(InvalidRecipe):
            load_recipe(path)


# --- cron ----------------------------------------------------------------------------------------------------------

cron_tokens = st.sampled_from(["*", "0", "5", "59", "60", "23", "24", "31", "32", "7", "8", "*/5", "*/0", "1-5",
                               "5-1", "1,2", "jan", "MON", "L", "1#2", "?", "H", "@daily", "-", ",", "/", "٣", ""])
cron_like = st.lists(cron_tokens, min_size=0, max_size=8).map(" ".join)


def _cron_field(low: int, high: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    number = st.integers(low, high).map(str)
    if names:
        number = number | st.sampled_from(names)
    item = st.one_of(st.just("*"), number, st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda t: f"{min(t)}-{max(t)}"))
    item = st.tuples(item, st.none() | st.integers(1, 30)).map(lambda t: t[0] + (f"/{t[1]}" if t[1] else ""))
    return st.lists(item, min_size=1, max_size=3).map(",".join)


valid_crons = st.tuples(_cron_field(0, 59), _cron_field(0, 23), _cron_field(1, 28),
                        _cron_field(1, 12, ["jan", "Jun", "DEC"]), _cron_field(0, 7, ["sun", "Mon", "SAT"])).map(
    " ".join)
zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"])


@FAST
@given(st.one_of(st.text(max_size=40), cron_like))
@example("0 0 30 2 *")
@example("* * * * * *")
def test_random_cron_is_accepted_or_refused(cron):
    try:
        assert check_cron(cron) == cron
    except InvalidCron:
        return
    assert len(cron.split()) == 5


@FAST
@given(valid_crons, zones, st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)))
def test_valid_cron_round_trips_and_iterates(cron, tz, start):
    assert check_cron(cron, tz) == cron
    start = start.replace(tzinfo=timezone.utc)
    fire = next_fire(cron, tz, start)
    assert fire > start
    fires = recent_fires(cron, tz, start, start + timedelta(days=3), 24)
    assert fires == sorted(fires) and len(fires) <= 24
    assert all(start < f <= start + timedelta(days=3) for f in fires)


# --- training data rows -------------------------------------------------------------------------------------------

TASK_FIELDS = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "messages": ["messages"]}
row_keys = st.sampled_from(["text", "prompt", "completion", "messages", "label", "extra"])
rows = st.dictionaries(row_keys, json_values | st.lists(st.fixed_dictionaries(
    {"role": st.text(max_size=5), "content": st.text(max_size=5) | st.integers()}), max_size=2), max_size=4)


def _unique(tmp: str, suffix: str) -> Path:
    return Path(tmp) / f"d-{uuid.uuid4().hex}{suffix}"  # datasets caches by path: never reuse one


@FAST
@given(st.lists(st.binary(max_size=40) | rows.map(lambda r: json.dumps(r, default=str).encode()), min_size=1,
                max_size=6), st.sampled_from([".jsonl", ".json", ".txt"]))
def test_random_data_lines_are_scanned_or_refused(lines, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = _unique(tmp, suffix)
        path.write_bytes(b"\n".join(lines))
        try:
            fields, count = scan_rows(path, "text" if suffix == ".txt" else "json")
        except InvalidDataset:
            return
        assert fields in TASK_FIELDS and count >= 1


@FEW
@given(st.lists(rows, min_size=1, max_size=5))
@example([{"text": "2000-01-01"}])  # pyarrow reads a column of ISO dates as timestamps
@example([{"messages": [{"role": "user", "content": "2000-01-01T10:00:00Z"}]}])
def test_rows_accepted_are_rows_the_job_can_read(data):
    """Whatever describe_dataset accepts, datasets loads with the task's fields of the right types."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _unique(tmp, ".jsonl")
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in data))
        try:
            spec = describe_dataset(path)
        except RegistryError:
            return
        loaded = load_rows(path, "json")
        assert len(loaded) == spec.rows == len(data)
        for row in loaded:
            for key in TASK_FIELDS[spec.fields]:
                value = row[key]
                if key == "messages":
                    assert isinstance(value, list) and value
                    assert all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in value)
                else:
                    assert isinstance(value, str)


valid_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
valid_rows = st.one_of(
    st.lists(st.fixed_dictionaries({"text": valid_text}), min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({"prompt": valid_text, "completion": valid_text}), min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]), "content": valid_text}), min_size=1, max_size=3)}),
        min_size=1, max_size=5),
)


@FEW
@given(valid_rows, st.booleans())
def test_valid_rows_round_trip(data, as_array):
    with tempfile.TemporaryDirectory() as tmp:
        path = _unique(tmp, ".json" if as_array else ".jsonl")
        path.write_text(json.dumps(data) if as_array else "".join(json.dumps(r) + "\n" for r in data))
        spec = describe_dataset(path)
        assert spec.rows == len(data) and set(TASK_FIELDS[spec.fields]) == set(data[0])
        loaded = load_rows(path, "json")
        assert [{k: row[k] for k in data[0]} for row in loaded] == data


@pytest.mark.parametrize("task", ["SEQ_CLS", "TOKEN_CLS", "SEQ_2_SEQ_LM"])
@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.dictionaries(st.sampled_from(["text", "tokens", "labels", "label", "target"]), json_values,
                                     max_size=4), min_size=1, max_size=4))
def test_random_rows_of_other_tasks_are_described_or_refused(task, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _unique(tmp, ".jsonl")
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in data))
        with contextlib.suppress(RegistryError):
            describe_dataset(path, task)
