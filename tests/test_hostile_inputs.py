"""Hostile input is refused cleanly and cheaply (issue 13, items 3, 4, 10, 11 and parts of 13).

Recipes (nesting, YAML aliases, size, step count, runs that must end), training data (line length, row count,
non-UTF-8 bytes, wrong field types, before any job exists), cron expressions and catch-up, Hub revisions and
version numbers. Each test fails on the code before these checks.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from registry import models as m
from registry.errors import InvalidReference, RegistryError
from registry.refs import parse_ref

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
    with reg._sessions() as s:
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

    for text in ("a0:99999999999999999999", "a0:2147483648", "tone:\u0663"):
        with pytest.raises(InvalidReference, match="integer from 1 to 2147483647"):
            registry.get(text)
    with pytest.raises(RegistryError, match="no adapter named 'a0'"):
        registry.get("a0:2147483647")  # the largest version parses and is looked up
    result = CliRunner().invoke(app, ["--db", db_url, "--home", str(tmp_path / "home"), "show",
                                      "a0:99999999999999999999"])
    assert result.exit_code == 1 and "integer from 1 to 2147483647" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
