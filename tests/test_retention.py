"""Retention: a merge whose parents have held-out data is validated on it, and keeps the numbers everywhere.

Two adapters are trained (a few steps, so each is better than the base on its own data; training records its
held-out split and links it), merged, and the merge's validation measures each parent's retention. The losses
are checked against ``eval`` jobs (one adapter loaded alone with ``PeftModel.from_pretrained``) on the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import RegistryError
from registry.retention import retention


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task_files(tmp_path: Path) -> tuple[Path, Path]:
    """Two small prompt/completion tasks: support replies and a legal clause."""
    replies = _jsonl(tmp_path / "replies.jsonl", [
        {"prompt": f"Customer {i}: where is my order?", "completion": " It ships tomorrow, thank you."}
        for i in range(24)])
    clauses = _jsonl(tmp_path / "clauses.jsonl", [
        {"prompt": f"Clause {i}:", "completion": " this agreement is governed by the laws of Oregon."}
        for i in range(24)])
    return replies, clauses


@pytest.fixture
def trained(registry, tiny, tmp_path):  # type: ignore[no-untyped-def]
    """Two trained versions, ``reply:2`` and ``clause:2``, each with its held-out split linked."""
    return _train(registry, tiny, tmp_path)


def _train(registry, tiny, tmp_path):  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="reply", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="clause")
    replies, clauses = _task_files(tmp_path)
    for ref, data, name in (("reply:1", replies, "reply"), ("clause:1", clauses, "clause")):
        job = registry.train(ref, data=data, steps=25, lr=1e-2, batch_size=8, eval_rows=6, seed=0, name=name)
        assert job.status == "succeeded", job.error
    return registry


def test_a_merge_of_trained_parents_reports_retention_per_parent(trained) -> None:  # type: ignore[no-untyped-def]
    reg = trained
    job = reg.merge(["reply:2", "clause:2"], weights=[0.5, 0.5], method="cat", name="both")  # validate: auto
    assert job.status == "succeeded", job.error
    assert job.spec["validate_after"] is True and len(job.spec["parent_evals"]) == 2
    check = reg.wait_job(reg.jobs(kind="validate", parent_job_id=job.id)[0].id, timeout=120)
    assert check.status == "succeeded", check.error
    measured = check.report["retention"]
    assert [p["parent"] for p in measured["parents"]] == ["reply:2", "clause:2"]
    for parent, data in (("reply:2", "reply-heldout:1"), ("clause:2", "clause-heldout:1")):
        row = next(p for p in measured["parents"] if p["parent"] == parent)
        [numbers] = row["datasets"]
        assert numbers["dataset"] == data
        # the same losses from eval jobs, which load one adapter alone with PeftModel.from_pretrained
        alone = reg.evaluate(parent, data=[data]).wait(timeout=120).report["datasets"][data]
        merged = reg.evaluate("both:1", data=[data]).wait(timeout=120).report["datasets"][data]
        assert numbers["base_loss"] == pytest.approx(alone["base"]["eval_loss"], rel=1e-4)
        assert numbers["parent_loss"] == pytest.approx(alone["adapter"]["eval_loss"], rel=1e-4)
        assert numbers["merged_loss"] == pytest.approx(merged["adapter"]["eval_loss"], rel=1e-4)
        assert numbers["parent_loss"] < numbers["base_loss"]  # training taught each parent its task
        assert row["retention"] == pytest.approx(retention(numbers["base_loss"], numbers["parent_loss"],
                                                           numbers["merged_loss"]))
    values = [p["retention"] for p in measured["parents"]]
    assert measured["mean"] == pytest.approx(sum(values) / 2) and measured["min"] == min(values)

    # the merge's own report holds it too, and the merged version carries it as metrics
    assert reg.job(job.id).report["retention"] == measured
    metrics = {(x.name, x.dataset): x for x in reg.get("both:1").metrics}
    assert metrics[("retention", "reply-heldout:1")].value == pytest.approx(values[0])
    assert metrics[("retention_min", "")].value == pytest.approx(min(values))
    assert metrics[("retention_mean", "")].source == "validate"
    assert [v.ref for v in reg.search(where=f"retention_min >= {min(values) - 1e-6}")] == ["both:1"]


def test_validate_false_skips_it_and_validate_measures_it_later(trained) -> None:  # type: ignore[no-untyped-def]
    reg = trained
    job = reg.merge(["reply:2", "clause:2"], weights=[1.0, 1.0], method="linear", name="sum", validate=False)
    assert job.status == "succeeded" and reg.jobs(kind="validate", parent_job_id=job.id) == []
    assert "retention" not in job.report
    later = reg.validate("sum:1").wait(timeout=120)
    assert later.status == "succeeded", later.error
    assert {p["parent"] for p in later.report["retention"]["parents"]} == {"reply:2", "clause:2"}
    assert "retention" not in reg.job(job.id).report  # only a merge's own validation writes into its report


def test_parents_without_held_out_data_are_not_validated_by_default(registry, tiny) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="tone2")
    job = registry.merge(["tone:1", "tone2:1"], weights=[0.5, 0.5], method="cat", name="m")
    assert job.status == "succeeded" and job.spec["parent_evals"] == [] and not job.spec["validate_after"]
    check = registry.validate("m:1").wait(timeout=120)
    assert check.status == "succeeded" and "retention" not in check.report


def test_min_retention_gate(trained) -> None:  # type: ignore[no-untyped-def]
    def recipe(limit: float, name: str) -> dict:
        return {"name": f"gate-{name}", "steps": [
            {"name": "merged", "merge": {"sources": ["reply:2", "clause:2"], "weights": [0.5, 0.5], "method": "cat",
                                         "name": name}},
            {"name": "check", "validate": {"target": "@merged", "gates": {"min_retention": limit}}},
            {"name": "stage", "promote": {"target": "@merged", "alias": "staging"}}]}

    failed = trained.run_recipe(recipe(50.0, "strict"))
    assert failed.status == "failed", failed.message
    assert "gate min_retention of step check failed: strict:1 keeps" in failed.message and "< 50.0" in failed.message
    with pytest.raises(RegistryError):
        trained.get("strict@staging")
    # the merge step is not validated twice: the recipe's own validate step measures retention
    assert [j["kind"] for j in failed.jobs] == ["merge", "validate"]
    merge_job = next(j for j in failed.jobs if j["kind"] == "merge")
    assert trained.jobs(kind="validate", parent_job_id=merge_job["id"]) == []

    passed = trained.run_recipe(recipe(-50.0, "lenient"))
    assert passed.status == "succeeded", passed.message
    assert trained.get("lenient@staging").ref == "lenient:1"


def test_min_retention_gate_without_held_out_data_fails_and_says_why(registry, tiny) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="tone2")
    run = registry.run_recipe({"name": "r", "steps": [
        {"name": "merged", "merge": {"sources": ["tone:1", "tone2:1"], "weights": [0.5, 0.5], "method": "cat",
                                     "name": "m"}},
        {"name": "check", "validate": {"target": "@merged", "gates": {"min_retention": 0.5}}}]})
    assert run.status == "failed" and "no retention was measured for m:1" in run.message


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the page is the same on both databases
def test_the_merge_job_page_shows_retention_per_parent(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    from fastapi.testclient import TestClient

    from registry.api.app import create_app
    from registry.web import session as web_session

    reg = _train(registry, tiny, tmp_path)
    job = reg.merge(["reply:2", "clause:2"], weights=[0.5, 0.5], method="ties", density=0.5, name="page")
    check = reg.wait_job(reg.jobs(kind="validate", parent_job_id=job.id)[0].id, timeout=120)
    assert check.status == "succeeded", check.error
    reg.add_user("root", admin=True)
    client = TestClient(create_app(reg.service), follow_redirects=False)
    client.cookies.set(web_session.COOKIE, reg.create_token("root", scope="read")["token"])
    measured = reg.job(job.id).report["retention"]
    for page in (client.get(f"/jobs/{job.id}"), client.get(f"/jobs/{check.id}")):
        assert page.status_code == 200
        table = page.text.split('<table class="retention">', 1)[1].split("</table>", 1)[0]
        rows = re.findall(r'<tr><td><a href="/v/([^"]+)">[^<]*</a></td><td>([^<]*)</td>(?:<td>[^<]*</td>){3}'
                          r"<td>([^<]*)</td></tr>", table)
        assert [(ref, data) for ref, data, _ in rows] == [("reply:2", "reply-heldout:1"),
                                                          ("clause:2", "clause-heldout:1")]
        assert [float(r) for _, _, r in rows] == pytest.approx([p["retention"] for p in measured["parents"]],
                                                                rel=1e-3)
        assert f"<dt>minimum</dt><dd>{measured['min']:.4g}</dd>" in page.text


def test_cli_merge_prints_retention_per_parent(adreg, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    replies, clauses = _task_files(tmp_path)
    adreg("register", str(tiny["tone"]), "--name", "reply", "--base-path", str(tiny["llama"]))
    adreg("register", str(tiny["tone2"]), "--name", "clause")
    for name, data in (("reply", replies), ("clause", clauses)):
        adreg("train", f"{name}:1", "--data", str(data), "--steps", "25", "--lr", "1e-2", "--batch-size", "8",
              "--eval-rows", "6")
    out = adreg("merge", "reply:2", "clause:2", "--weights", "0.5", "0.5", "--method", "cat", "--name", "both")
    assert "retention: mean" in out.stdout and "merged loss" in out.stdout  # the table after the validation's
    chain = json.loads(adreg("merge", "reply:2", "clause:2", "--weights", "1", "1", "--method", "linear",
                             "--name", "sum", "--json").stdout)
    assert chain["kind"] == "merge" and [j["kind"] for j in chain["follow_ups"]] == ["validate"]
    assert {p["parent"] for p in chain["follow_ups"][0]["report"]["retention"]["parents"]} == {"reply:2", "clause:2"}
    skipped = json.loads(adreg("merge", "reply:2", "clause:2", "--weights", "1", "1", "--method", "linear",
                               "--name", "plain", "--no-validate", "--json").stdout)
    assert skipped["kind"] == "merge" and not skipped["spec"]["validate_after"] and "follow_ups" not in skipped


def test_a_merge_of_classifiers_reports_retention_on_their_held_out_rows(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SEQ_CLS parents on a Llama base: retention from the classifiers' cross-entropy, the losses equal to the eval
    jobs' (the base with the eval job's seeded head, each padded row read at its last real token)."""
    registry.add_base("llama-cls", path=tiny["llama"])
    words = [("good", 0), ("bad", 1), ("great day", 0), ("awful!", 1), ("fine", 0), ("so bad", 1)]
    tasks = {"polarity": [{"text": w, "label": y} for w, y in words] * 4,
             "length": [{"text": w, "label": int(len(w) > 4)} for w, _ in words] * 4}
    for name, rows in tasks.items():
        job = registry.train(new={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}, base="llama-cls",
                             task_type="SEQ_CLS", name=name, data=_jsonl(tmp_path / f"{name}.jsonl", rows), steps=15,
                             lr=1e-2, batch_size=8, eval_rows=6, seed=0)
        assert job.status == "succeeded", job.error
    job = registry.merge(["polarity:1", "length:1"], weights=[0.5, 0.5], method="cat", name="both")
    assert job.status == "succeeded", job.error
    measured = registry.job(job.id).report["retention"]
    assert measured["task_type"] == "SEQ_CLS" and [p["parent"] for p in measured["parents"]] == [
        "polarity:1", "length:1"]
    for parent in measured["parents"]:
        [numbers] = parent["datasets"]
        data = numbers["dataset"]
        alone = registry.evaluate(parent["parent"], data=[data]).wait(timeout=120).report["datasets"][data]
        merged = registry.evaluate("both:1", data=[data]).wait(timeout=120).report["datasets"][data]
        assert numbers["examples"] == alone["examples"] == 6
        assert numbers["base_loss"] == pytest.approx(alone["base"]["eval_loss"], rel=1e-4)
        assert numbers["parent_loss"] == pytest.approx(alone["adapter"]["eval_loss"], rel=1e-4)
        assert numbers["merged_loss"] == pytest.approx(merged["adapter"]["eval_loss"], rel=1e-4)
        assert parent["retention"] == pytest.approx(retention(numbers["base_loss"], numbers["parent_loss"],
                                                              numbers["merged_loss"]))
