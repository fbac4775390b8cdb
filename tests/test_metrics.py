"""Metrics on versions (issue 15): log and replace, refusals, audit, ``where`` filters, ``metric:`` sorting, the CLI,
and the metrics jobs record themselves (training, merge, validation), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math

import pytest

from registry.errors import AdapterNotFound, InvalidName, RegistryError
from registry.jobs import MergeSpec, PublishSpec, TrainSpec, ValidateSpec
from registry.where import InvalidWhere
from workers.job_metrics import metrics_of


def metrics(version) -> dict[tuple[str, str], float]:  # type: ignore[no-untyped-def]
    return {(x.name, x.dataset): x.value for x in version.metrics}


def refs(versions) -> list[str]:  # type: ignore[no-untyped-def]
    return [v.ref for v in versions]


@pytest.fixture
def scored(registry, tiny):  # type: ignore[no-untyped-def]
    """Four versions: a (eval_loss 1, accuracy[wiki] .9), b (eval_loss 2), c (eval_loss 3, accuracy[wiki] .5,
    accuracy .7 on no dataset), d (no metrics)."""
    for name, folder in (("m-a", "tone"), ("m-b", "tone2"), ("m-c", "legal"), ("m-d", "gpt2_attn")):
        registry.register(tiny[folder], name=name)
    registry.log_metrics("m-a:1", {"eval_loss": 1.0})
    registry.log_metric("m-a:1", "accuracy", 0.9, dataset="wiki")
    registry.log_metric("m-b:1", "eval_loss", 2.0)
    registry.log_metrics("m-c:1", {"eval_loss": 3.0, "accuracy": 0.7})
    registry.log_metrics("m-c:1", {"accuracy": 0.5}, dataset="wiki")
    return registry


def test_log_replace_show_and_audit(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    first = registry.log_metric("tone", "eval_loss", 2.5)
    assert first.ref == "tone:1" and metrics(first) == {("eval_loss", ""): 2.5}
    info = first.metrics[0]
    assert (info.source, info.job_id, info.recorded_by) == ("user", None, registry.whoami()["name"])
    assert info.recorded_at is not None
    # several at once, on a dataset; the same name on another dataset is another metric
    both = registry.log_metrics("tone:1", {"eval_loss": 1.5, "rouge-l": 0.25}, dataset="wiki")
    assert metrics(both) == {("eval_loss", ""): 2.5, ("eval_loss", "wiki"): 1.5, ("rouge-l", "wiki"): 0.25}
    replaced = registry.log_metric("tone:1", "eval_loss", 2.0)  # logging again replaces
    assert metrics(replaced)[("eval_loss", "")] == 2.0 and len(replaced.metrics) == 3
    assert metrics(registry.get("tone:1")) == metrics(replaced)
    events = [e for e in registry.audit_events(name="tone") if e["action"] == "metric.log"]
    assert [e["ref"] for e in events] == ["tone:1"] * 3
    assert events[0]["before"] == {"dataset": "", "metrics": [{"name": "eval_loss", "value": 2.5}]}
    assert events[0]["after"] == {"dataset": "", "metrics": [{"name": "eval_loss", "value": 2.0}]}
    assert events[1]["before"]["metrics"] == [{"name": "eval_loss", "value": None}, {"name": "rouge-l", "value": None}]
    assert events[1]["after"] == {"dataset": "wiki", "metrics": [{"name": "eval_loss", "value": 1.5},
                                                                  {"name": "rouge-l", "value": 0.25}]}
    # a metric named like a secret is still a metric (the audit log stores names as values, not keys)
    assert metrics(registry.log_metric("tone:1", "tokens_per_second", 1e3))[("tokens_per_second", "")] == 1000.0


@pytest.mark.parametrize("name", ["Eval_loss", "1loss", "eval loss", "", "a" * 65, "loss!", "_x", "ünï"])
def test_bad_metric_names_refused(registry, tiny, name):
    registry.register(tiny["tone"], name="tone")
    with pytest.raises(InvalidName, match="metric name"):
        registry.log_metric("tone:1", name, 1.0)
    assert registry.get("tone:1").metrics == []


def test_bad_values_datasets_and_refs_write_nothing(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    for value in (math.nan, math.inf, -math.inf, "1.0", True, None):
        with pytest.raises(RegistryError, match="eval_loss"):
            registry.log_metric("tone:1", "eval_loss", value)  # type: ignore[arg-type]
    for dataset in ("has space", "../x", "-x", "x" * 256, "a\nb", "wiki]"):
        with pytest.raises(InvalidName, match="dataset name"):
            registry.log_metric("tone:1", "eval_loss", 1.0, dataset=dataset)
    with pytest.raises(RegistryError, match="at least one"):
        registry.log_metrics("tone:1", {})
    with pytest.raises(AdapterNotFound):
        registry.log_metric("nope:1", "eval_loss", 1.0)
    with pytest.raises(RegistryError):  # one bad value refuses the whole call
        registry.log_metrics("tone:1", {"ok": 1.0, "bad": math.nan})
    assert registry.get("tone:1").metrics == []
    assert [e for e in registry.audit_events(name="tone") if e["action"] == "metric.log"] == []


def test_where_filters_each_operator_dataset_and_and(scored):
    def where(text: str) -> list[str]:
        return sorted(refs(scored.search(name_like="m-", where=text)))

    assert where("eval_loss<2") == ["m-a:1"]
    assert where("eval_loss<=2") == ["m-a:1", "m-b:1"]
    assert where("eval_loss>2") == ["m-c:1"]
    assert where("eval_loss>=2") == ["m-b:1", "m-c:1"]
    assert where("eval_loss=2") == where("eval_loss == 2.0") == where("eval_loss=2e0") == ["m-b:1"]
    assert where("eval_loss!=2") == ["m-a:1", "m-c:1"]  # m-d has no eval_loss: it matches no condition on it
    assert where("eval_loss>-1e9") == ["m-a:1", "m-b:1", "m-c:1"]
    assert where("accuracy[wiki]>0.6") == ["m-a:1"]
    assert where("accuracy>0.6") == ["m-c:1"]  # no dataset is not "any dataset"
    assert where("accuracy[other]>0") == []
    assert where("eval_loss>=2 and accuracy[wiki]<0.6") == where("eval_loss>=2, accuracy[ wiki ] < .6") == ["m-c:1"]
    assert where("eval_loss<2 AND accuracy[wiki]<0.6") == []
    assert where("missing<1e300") == []
    page = scored.search_page(__import__("registry.queries", fromlist=["SearchFilters"]).SearchFilters(
        name_like="m-", where="eval_loss<=2", sort="name", descending=False))
    assert (refs(page.items), page.total) == (["m-a:1", "m-b:1"], 2)


def test_sort_by_metric_missing_last_both_ways_with_pages(scored):
    up = scored.search(name_like="m-", sort="metric:eval_loss", descending=False)
    down = scored.search(name_like="m-", sort="metric:eval_loss")
    assert refs(up) == ["m-a:1", "m-b:1", "m-c:1", "m-d:1"]
    assert refs(down) == ["m-c:1", "m-b:1", "m-a:1", "m-d:1"]
    assert refs(scored.search(name_like="m-", sort="metric:accuracy[wiki]")) == ["m-a:1", "m-c:1", "m-d:1", "m-b:1"]
    assert refs(scored.search(name_like="m-", sort="metric:accuracy[wiki]", descending=False)) == [
        "m-c:1", "m-a:1", "m-d:1", "m-b:1"]  # the two lacking it last, ties newest (highest id) first
    pages = [refs(scored.search(name_like="m-", sort="metric:eval_loss", descending=False, limit=2, offset=o))
             for o in (0, 2, 4)]
    assert pages == [["m-a:1", "m-b:1"], ["m-c:1", "m-d:1"], []]
    singles = [refs(scored.search(name_like="m-", sort="metric:accuracy[wiki]", limit=1, offset=o)) for o in range(5)]
    assert singles == [["m-a:1"], ["m-c:1"], ["m-d:1"], ["m-b:1"], []]  # pages past the last one with the metric
    assert refs(scored.search(name_like="m-", sort="metric:eval_loss", where="eval_loss>1")) == ["m-c:1", "m-b:1"]


@pytest.mark.parametrize(("where", "sort", "message"), [
    ("eval_loss<<2", "created", "expected a number after '<'"),
    ("eval_loss<2 or accuracy>1", "created", "'or' is not supported"),
    ("(eval_loss<2)", "created", "parentheses are not supported"),
    ("eval_loss<nan", "created", "NaN and infinity are not allowed"),
    ("Eval_loss<1", "created", "metric names are lowercase"),
    ("eval_loss[wiki<1", "created", "expected ']'"),
    ("", "created", "empty"),
    (None, "metric:Eval", "metric names are lowercase"),
    (None, "metric:", "expected a metric name"),
    (None, "metric:a[b] c", "unexpected text after the metric"),
])
def test_grammar_errors_are_typed(registry, where, sort, message):
    with pytest.raises(InvalidWhere, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        registry.search(where=where, sort=sort)
    assert isinstance(caught.value, RegistryError) and caught.value.hint


def test_error_names_the_position_with_a_caret(registry):
    with pytest.raises(InvalidWhere) as caught:
        registry.search(where="eval_loss < 2 and accuracy >> 1")
    text = "eval_loss < 2 and accuracy >> 1"
    assert caught.value.position == text.index(">>") + 1 == 28
    lines = str(caught.value).splitlines()
    assert "at character 29" in lines[0] and "expected a number after '>'" in lines[0]
    assert lines[1] == "  " + text and lines[2] == "  " + " " * 28 + "^"
    with pytest.raises(InvalidWhere, match="at most 256 characters"):
        registry.search(where="a<1 and " * 40)
    with pytest.raises(InvalidWhere, match="at most 8 conditions"):
        registry.search(where=" and ".join(f"m{i}<1" for i in range(9)))


def test_jobs_metrics_from_reports_skip_what_is_not_a_finite_number():
    train = TrainSpec.model_construct(submitted_by="u")
    source, found = metrics_of(train, {"eval_loss_before": 3.0, "eval_loss_after": 1.5, "eval_accuracy_after": "x",
                                       "loss_curve": [[1, 2.5], [2, 2.0]]})
    assert (source, found) == ("train", {"eval_loss": 1.5, "eval_loss_before": 3.0, "train_loss": 2.0})
    merge = MergeSpec.model_construct()
    assert metrics_of(merge, {"overall": {"rel_error": None, "max_rel_error": 0.25}}) == (
        "merge", {"merge_max_rel_error": 0.25})
    validate = ValidateSpec.model_construct()
    assert metrics_of(validate, {"logits": {"max_abs_diff_from_base": math.inf},
                                 "distance_from_parents": {"a:1": 0.5, "b:1": 0.25, "c:1": True},
                                 "exact_check": {"max_abs_diff": 1e-6}}) == (
        "validate", {"validate_parent_distance": 0.25, "validate_exact_error": 1e-6})
    assert metrics_of(validate, {"logits": [1, 2], "distance_from_parents": "far"}) == ("validate", {})
    assert metrics_of(PublishSpec.model_construct(), {"anything": 1.0}) == ("", {})


def test_merge_and_its_validation_record_their_metrics(registry, tiny):
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    job = registry.merge(["tone:1", "legal:1"], weights=[0.6, 0.4], method="cat", name="exact", validate=True)
    assert job.status == "succeeded"
    check = [j for j in registry.jobs(kind="validate") if j.parent_job_id == job.id][0]
    assert check.status == "succeeded", check.error
    by_name = {x.name: x for x in registry.get("exact:1").metrics}
    assert {n: (x.source, x.job_id) for n, x in by_name.items()} == {
        "merge_rel_error": ("merge", job.id), "merge_max_rel_error": ("merge", job.id),
        "validate_base_distance": ("validate", check.id), "validate_parent_distance": ("validate", check.id),
        "validate_exact_error": ("validate", check.id)}
    assert by_name["merge_rel_error"].value == job.report["overall"]["rel_error"]
    assert by_name["validate_exact_error"].value == check.report["exact_check"]["max_abs_diff"] < 1e-4
    assert by_name["validate_base_distance"].value == check.report["logits"]["max_abs_diff_from_base"] > 0
    assert by_name["merge_rel_error"].recorded_by == registry.whoami()["name"]
    assert refs(registry.search(where="validate_exact_error<1e-4")) == ["exact:1"]


def test_training_records_eval_loss_before_and_after(registry, tiny, tmp_path, one_torch_thread):
    data = tmp_path / "memorise.jsonl"
    data.write_text("".join(json.dumps({"text": "the cat sat on the mat."}) + "\n" for _ in range(8)))
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    job = registry.train("tone:1", data=data, steps=2, lr=1e-2, batch_size=2, eval_rows=2, seed=0)
    assert job.status == "succeeded", job.error
    trained = {x.name: x for x in registry.get("tone:2").metrics}
    assert set(trained) == {"eval_loss", "eval_loss_before", "train_loss"}
    assert {(x.source, x.job_id, x.dataset) for x in trained.values()} == {("train", job.id, "")}
    assert trained["eval_loss"].value == job.report["eval_loss_after"]
    assert trained["eval_loss_before"].value == job.report["eval_loss_before"]
    assert trained["train_loss"].value == job.report["loss_curve"][-1][1]
    assert registry.get("tone:1").metrics == []  # the source version keeps its own (none)
    assert refs(registry.search(sort="metric:eval_loss", limit=1)) == ["tone:2"]


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_metric_and_list_by_metrics(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "c-a")
    adreg("register", str(tiny["tone2"]), "--name", "c-b")
    logged = json.loads(adreg("metric", "c-a:1", "eval_loss=1.25", "accuracy=0.5", "--json").stdout)
    assert {(x["name"], x["value"], x["dataset"], x["source"]) for x in logged["metrics"]} == {
        ("eval_loss", 1.25, "", "user"), ("accuracy", 0.5, "", "user")}
    human = adreg("metric", "c-b", "eval_loss=2.5e0", "--data", "wiki").stdout
    assert "c-b:1" in human and "eval_loss" in human and "wiki" in human and "2.5" in human
    adreg("metric", "c-b:1", "eval_loss=3")
    shown = adreg("show", "c-b:1").stdout
    assert "eval_loss=3" in shown and "eval_loss=2.5 [wiki]" in shown
    listed = json.loads(adreg("list", "--where", "eval_loss<3", "--sort", "metric:eval_loss", "--asc",
                              "--json").stdout)
    assert [v["ref"] for v in listed["items"]] == ["c-a:1"] and listed["total"] == 1
    listed = json.loads(adreg("list", "--sort", "metric:eval_loss[wiki]", "--json").stdout)
    assert [v["ref"] for v in listed["items"]] == ["c-b:1", "c-a:1"]
    table = adreg("list", "--where", "eval_loss[wiki]>1", "--sort", "metric:eval_loss").stdout
    header = table.splitlines()[1]
    assert "eval_loss[wiki]" in header and "targets" not in header
    assert "2.5" in table and "c-b:1" in table and "c-a:1" not in table
    plain = adreg("list").stdout
    assert "eval_loss" not in plain and "targets" in plain  # no metric columns unless asked


def test_cli_refusals_exit_1_with_the_message_on_stderr(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "c-a")
    for args, message in [
        (("metric", "c-a:1", "eval_loss"), "is not name=value"),
        (("metric", "c-a:1", "eval_loss=abc"), "is not a number"),
        (("metric", "c-a:1", "eval_loss=nan"), "must be finite"),
        (("metric", "c-a:1", "a=1", "a=2"), "given twice"),
        (("metric", "c-a:1", "Bad=1"), "metric name"),
        (("metric", "c-a:1", "a=1", "--data", "no spaces"), "dataset name"),
        (("metric", "nope:1", "a=1"), "no adapter named"),
        (("list", "--where", "eval_loss<<1"), "expected a number"),
        (("list", "--where", "a<1 or b<2"), "'or' is not supported"),
        (("list", "--sort", "metric:A"), "metric names are lowercase"),
    ]:
        result = adreg(*args, code=1)
        assert result.stderr.startswith("error:") and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    caret = adreg("list", "--where", "eval_loss<<1", code=1).stderr.splitlines()
    assert caret[1:3] == ["  eval_loss<<1", "            ^"]
    assert json.loads(adreg("show", "c-a:1", "--json").stdout)["metrics"] == []
