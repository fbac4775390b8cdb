"""The command line a new user meets in the first hour: exit codes, --weights, descriptions, aliases, lineage,
validation tables, progress, summaries. (Issue 12, items 4-8 and 12-16.)"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from registry import cli_output
from registry.cli import app

runner = CliRunner()


@pytest.fixture
def adreg(tmp_path):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'catalog.db'}"

    def run(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, ["--db", db, "--home", str(tmp_path / "home"), *args])
        assert result.exit_code == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    return run


@pytest.fixture
def two(adreg, tiny):  # type: ignore[no-untyped-def]
    adreg("register", str(tiny["tone"]), "--name", "a", "--description", "support tone, polite")
    adreg("register", str(tiny["tone2"]), "--name", "b")
    return adreg


def _noop_adapter(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose B matrices are zero: a valid adapter that changes nothing."""
    folder = shutil.copytree(src, dest)
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}, folder / "adapter_model.safetensors")
    return folder


def test_failed_validation_and_failed_run_exit_1_with_a_readable_table(adreg, tiny, tmp_path):
    adreg("register", str(_noop_adapter(tiny["tone"], tmp_path / "noop")), "--name", "noop")
    result = adreg("validate", "noop:1", code=1)
    assert "failed runtime validation" in result.stderr and "a no-op" in result.stderr
    assert "changes the base" in result.stdout and "FAIL" in result.stdout and "{" not in result.stdout
    assert "max |diff|: the largest absolute difference" in result.stdout
    failed = json.loads(adreg("validate", "noop:1", "--json", code=1).stdout)
    assert failed["status"] == "failed" and failed["report"]["logits"]["max_abs_diff_from_base"] == 0.0

    recipe = tmp_path / "check.yaml"
    recipe.write_text("name: check-noop\nsteps:\n  - name: check\n    validate: {target: noop:1}\n")
    result = adreg("run", str(recipe), code=1)
    assert "run 1 of check-noop failed" in result.stderr and "check" in result.stdout


def test_validation_numbers_have_three_significant_digits(two):
    assert two("merge", "a:1", "b:1", "--weights", "0.5", "0.5", "--method", "cat", "--name", "ab",
               "--validate").exit_code == 0
    shown = two("validate", "ab:1").stdout
    assert "equals the weighted sum (cat)" in shown and "ok" in shown and "distance from a:1" in shown
    merged = json.loads(two("merge", "a:1", "b:1", "--weights", "0.5,0.5", "--method", "cat", "--name", "ab2",
                            "--validate", "--json").stdout)
    [check] = merged["follow_ups"]
    assert check["kind"] == "validate" and check["status"] == "succeeded"


@pytest.mark.parametrize("form", [["0.5", "0.5"], ["0.5,0.5"], ["0.5,", "0.5"]])
def test_weights_in_every_documented_form(two, form):
    data = json.loads(two("merge", "a:1", "b:1", "--weights", *form, "--method", "linear", "--name", "m",
                          "--json").stdout)
    assert data["status"] == "succeeded" and data["spec"]["weights"] == [0.5, 0.5]


def test_weights_before_the_references_and_bad_numbers(two):
    data = json.loads(two("merge", "--weights", "0.3", "0.7", "a:1", "b:1", "--method", "linear", "--name", "m",
                          "--json").stdout)
    assert data["spec"]["weights"] == [0.3, 0.7]
    result = two("merge", "a:1", "b:1", "--weights", "0.5", "abc", "--name", "m", code=1)
    assert "'abc' is not a number" in result.stderr and "no adapter" not in result.stderr


def test_merge_of_a_version_with_itself_is_a_message_not_a_traceback(two):
    result = two("merge", "a:1", "a:1", "--weights", "0.5", "0.5", "--name", "aa", code=1)
    assert "a:1 is given more than once" in result.stderr and "UNIQUE" not in result.stderr


def test_train_new_on_an_existing_name_is_refused_unless_asked(two, tiny, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"hello number {i}"}) + "\n" for i in range(8)))
    args = ["train", "--new", "a", "--base", str(tiny["llama"]), "--data", str(data), "--steps", "1",
            "--targets", "q_proj", "--r", "2"]
    result = two(*args, code=1)
    assert "an adapter named 'a' exists" in result.stderr and "--reuse-name" in result.stderr
    assert json.loads(two("jobs", "--json").stdout) == []
    done = json.loads(two(*args, "--reuse-name", "--json").stdout)
    assert done["status"] == "succeeded" and done["result_ref"] == "a:2"


def test_description_is_shown(two):
    assert "support tone, polite" in two("show", "a:1").stdout
    assert json.loads(two("show", "a:1", "--json").stdout)["description"] == "support tone, polite"
    listed = json.loads(two("list", "--json").stdout)["items"]
    assert {v["ref"]: v["description"] for v in listed} == {"a:1": "support tone, polite", "b:1": None}


def test_summaries_carry_parents_and_compatibility_like_show(two):
    two("merge", "a:1", "b:1", "--weights", "0.6", "0.4", "--method", "svd", "--name", "ab")
    shown = json.loads(two("show", "ab:1", "--json").stdout)
    listed = {v["ref"]: v for v in json.loads(two("list", "--json").stdout)["items"]}
    assert listed["ab:1"]["parents"] == shown["parents"] and [p["ref"] for p in shown["parents"]] == ["a:1", "b:1"]
    assert listed["ab:1"]["compatible"] == shown["compatible"] != []
    # The edge records the resolved default: svd_rank is the largest input rank (4).
    assert shown["parents"][0]["params"]["svd_rank"] == 4


def test_alias_rm_takes_name_at_alias_and_alias_list(two):
    two("alias", "set", "a:1", "production")
    two("alias", "set", "b:1", "staging")
    listed = json.loads(two("alias", "list", "--json").stdout)
    assert [(x["name"], x["alias"], x["ref"]) for x in listed] == [("a", "production", "a:1"), ("b", "staging", "b:1")]
    assert "a@production" in two("alias", "list").stdout
    assert json.loads(two("alias", "rm", "a@production", "--json").stdout) == {"name": "a", "alias": "production"}
    two("alias", "rm", "b", "staging")  # the older two-word form still works
    assert json.loads(two("alias", "list", "--json").stdout) == []
    assert "not name@alias" in two("alias", "rm", "a", code=1).stderr


def test_lineage_is_a_tree_with_relation_method_and_weights(two):
    two("merge", "a:1", "b:1", "--weights", "0.7", "0.3", "--method", "ties", "--density", "0.5", "--name", "ab")
    tree = two("lineage", "ab:1").stdout
    assert "ancestors" in tree and "descendants" not in tree
    line = next(x for x in tree.splitlines() if "a:1" in x)
    assert "merge ties w=0.7" in line and "density=0.5" in line and "majority_sign_method=total" in line
    below = two("lineage", "a:1").stdout
    assert "descendants" in below and "ab:1" in below


def test_progress_for_in_process_jobs_only_on_a_terminal_and_never_with_json(two, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli_output, "stderr", Console(file=screen, force_terminal=True, width=120))
    two("merge", "a:1", "b:1", "--weights", "0.5", "0.5", "--method", "svd", "--name", "p1")
    assert "job 1:" in screen.getvalue() and "%" in screen.getvalue()  # the live line (last frame kept)
    screen.truncate(0)
    screen.seek(0)
    two("merge", "a:1", "b:1", "--weights", "0.5", "0.5", "--method", "svd", "--name", "p2", "--json")
    assert screen.getvalue() == ""
