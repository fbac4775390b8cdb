"""Datasets in the catalog: data files read with `datasets`, pinned by sha256, versioned by name, linked to versions
(training splits, eval sets), over the SDK, the CLI and a server; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry import Registry
from registry import models as m
from registry.errors import DatasetNotFound, InvalidName, InvalidReference, RegistryError
from registry.inspect import sha256_file
from registry.trainset import InvalidDataset


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "cls.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}), parquet)
    csv = tmp_path / "cls.csv"
    csv.write_text('text,label\n"good, really",1\nbad,0\n')
    return {"jsonl": _jsonl(tmp_path / "lm.jsonl", [{"text": f"row {i}"} for i in range(4)]),
            "jsonl2": _jsonl(tmp_path / "lm2.jsonl", [{"prompt": "a", "completion": "b"}]),
            "parquet": parquet, "csv": csv}


def test_register_jsonl_csv_parquet_idempotent_and_versioned(registry, files) -> None:  # type: ignore[no-untyped-def]
    first = registry.register_dataset(files["jsonl"], name="wiki", task_type="CAUSAL_LM")
    assert (first.ref, first.rows, first.columns, first.format, first.task_type) == (
        "wiki:1", 4, ["text"], "json", "CAUSAL_LM")
    assert first.sha256 == sha256_file(files["jsonl"]) and first.size_bytes == files["jsonl"].stat().st_size
    assert Path(first.path).read_bytes() == files["jsonl"].read_bytes()  # stored content-addressed
    assert Path(first.path).name == f"{first.sha256}.jsonl"
    again = registry.register_dataset(files["jsonl"], name="wiki")
    assert (again.ref, again.sha256) == ("wiki:1", first.sha256)  # same bytes, same name: the same version
    second = registry.register_dataset(files["jsonl2"], name="wiki")
    assert second.ref == "wiki:2" and second.columns == ["prompt", "completion"]
    other = registry.register_dataset(files["jsonl"], name="wiki-copy")  # same bytes, another name: its own :1
    assert other.ref == "wiki-copy:1"

    csv = registry.register_dataset(files["csv"], name="sentiment", task_type="SEQ_CLS")
    assert (csv.ref, csv.format, csv.rows, csv.columns) == ("sentiment:1", "csv", 2, ["text", "label"])
    parquet = registry.register_dataset(files["parquet"], name="sentiment", task_type="seq_cls")
    assert (parquet.ref, parquet.format, parquet.rows, parquet.task_type) == ("sentiment:2", "parquet", 3, "SEQ_CLS")

    assert [d.ref for d in registry.datasets()] == ["sentiment:1", "sentiment:2", "wiki:1", "wiki:2", "wiki-copy:1"]
    assert [d.ref for d in registry.datasets("wiki")] == ["wiki:1", "wiki:2"]
    shown = registry.dataset("wiki")
    assert shown.ref == "wiki:2" and shown.versions == ["wiki:1", "wiki:2"]
    assert registry.dataset("wiki:1").sha256 == first.sha256
    with pytest.raises(DatasetNotFound, match="no version 7"):
        registry.dataset("wiki:7")
    with pytest.raises(DatasetNotFound):
        registry.dataset("nothing")
    with pytest.raises(InvalidReference):
        registry.dataset("wiki:x")
    events = [e["action"] for e in registry.audit_events()]
    assert events.count("dataset.register") == 5


def test_bad_files_are_refused_with_typed_errors_and_nothing_is_recorded(registry, files, tmp_path,  # type: ignore[no-untyped-def]
                                                                         monkeypatch) -> None:
    with pytest.raises(InvalidDataset, match="SEQ_CLS expects 'text' and 'label'"):
        registry.register_dataset(files["jsonl"], name="bad", task_type="SEQ_CLS")  # missing columns for the task
    with pytest.raises(InvalidDataset, match="expected 'text', 'prompt' and 'completion', or 'messages'"):
        registry.register_dataset(_jsonl(tmp_path / "q.jsonl", [{"question": "?"}]), name="bad",
                                  task_type="CAUSAL_LM")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InvalidDataset, match="empty"):
        registry.register_dataset(tmp_path / "empty.jsonl", name="bad")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InvalidDataset, match="line 2 is not valid JSON"):
        registry.register_dataset(tmp_path / "broken.jsonl", name="bad")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidDataset, match="cannot read broken.parquet as parquet"):
        registry.register_dataset(tmp_path / "broken.parquet", name="bad")
    (tmp_path / "ragged.csv").write_text("text,label\na,1,extra\n")
    with pytest.raises(InvalidDataset, match="as CSV"):
        registry.register_dataset(tmp_path / "ragged.csv", name="bad")
    (tmp_path / "numbers.csv").write_text("text,label\n1,0\n2,1\n")
    with pytest.raises(InvalidDataset, match="number"):
        registry.register_dataset(tmp_path / "numbers.csv", name="bad", task_type="SEQ_CLS")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(InvalidDataset, match="unsupported extension"):
        registry.register_dataset(tmp_path / "data.xlsx", name="bad")
    with pytest.raises(InvalidDataset, match="does not exist"):
        registry.register_dataset(tmp_path / "absent.jsonl", name="bad")
    monkeypatch.setenv("ADREG_MAX_DATA_ROWS", "3")
    with pytest.raises(InvalidDataset, match="more than 3 rows"):
        registry.register_dataset(files["jsonl"], name="bad")  # too large: 4 rows over the limit
    monkeypatch.delenv("ADREG_MAX_DATA_ROWS")
    with pytest.raises(InvalidName):
        registry.register_dataset(files["jsonl"], name="Bad Name")
    with pytest.raises(RegistryError, match="FEATURE_EXTRACTION"):
        registry.register_dataset(files["jsonl"], name="bad", task_type="FEATURE_EXTRACTION")
    assert registry.datasets() == []


def test_eval_link_and_show(registry, tiny, files) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register_dataset(files["jsonl"], name="wiki")
    linked = registry.link_dataset("tone:1", "wiki")
    assert [(d.ref, d.role, d.rows) for d in linked.datasets] == [("wiki:1", "eval", 4)]
    assert registry.link_dataset("tone:1", "wiki:1").datasets == linked.datasets  # linking again: a no-op
    assert registry.get("tone").datasets == linked.datasets
    assert registry.dataset("wiki").linked == [{"ref": "tone:1", "role": "eval"}]
    with pytest.raises(RegistryError, match="role 'test' is not one of"):
        registry.link_dataset("tone:1", "wiki", role="test")
    with pytest.raises(DatasetNotFound):
        registry.link_dataset("tone:1", "absent")
    events = [e for e in registry.audit_events() if e["action"] == "dataset.link"]
    assert len(events) == 1 and events[0]["ref"] == "tone:1" and events[0]["after"]["dataset"] == "wiki:1"


def test_training_records_and_links_its_splits(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    data = _jsonl(tmp_path / "corpus.jsonl", [{"text": f"the cat sat on mat number {i}"} for i in range(20)])
    job = registry.train("tone:1", data=data, steps=2, seed=0, eval_rows=5)
    assert job.status == "succeeded", job.error
    version = registry.get("tone:2")
    roles = {d.role: d for d in version.datasets}
    assert set(roles) == {"train", "heldout"}
    assert (roles["train"].ref, roles["train"].rows) == ("tone-train:1", 15)
    assert (roles["heldout"].ref, roles["heldout"].rows) == ("tone-heldout:1", 5)
    held = registry.dataset("tone-heldout")
    assert held.source_uri == f"job:{job.id}" and held.task_type == "CAUSAL_LM" and held.columns == ["text"]
    assert sha256_file(Path(held.path)) == held.sha256 == roles["heldout"].sha256
    train_rows = [json.loads(x)["text"] for x in Path(registry.dataset("tone-train").path).read_text().splitlines()]
    held_rows = [json.loads(x)["text"] for x in Path(held.path).read_text().splitlines()]
    assert sorted(train_rows + held_rows) == sorted(f"the cat sat on mat number {i}" for i in range(20))
    assert job.report["dataset"]["split_datasets"]["heldout"]["sha256"] == held.sha256
    # the same split again (same data, seed, eval_rows): the same dataset versions, linked to the new version
    again = registry.train("tone:1", data=data, steps=3, seed=0, eval_rows=5)  # other weights: tone:3
    assert again.status == "succeeded", again.error
    assert [d.ref for d in registry.get("tone:3").datasets] == ["tone-heldout:1", "tone-train:1"]
    with registry.service.sessions() as s:
        assert s.scalar(select(func.count()).select_from(m.Dataset)) == 2


def test_cli_data_commands_and_register_eval_data(adreg, tiny, files) -> None:  # type: ignore[no-untyped-def]
    shown = json.loads(adreg("data", "register", str(files["csv"]), "--name", "sst", "--task-type", "SEQ_CLS",
                             "--json").stdout)
    assert shown["ref"] == "sst:1" and shown["rows"] == 2 and shown["format"] == "csv"
    assert "sst:1" in adreg("data", "list").stdout
    assert json.loads(adreg("data", "list", "--json").stdout)[0]["sha256"] == sha256_file(files["csv"])
    assert json.loads(adreg("data", "show", "sst", "--json").stdout)["versions"] == ["sst:1"]
    bad = adreg("data", "register", str(files["jsonl"]), "--name", "x", "--task-type", "SEQ_CLS", code=1)
    assert "SEQ_CLS expects" in bad.stderr
    adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]), "--eval-data", "nope",
          code=1)
    version = json.loads(adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]),
                               "--eval-data", "sst", "--json").stdout)
    assert version["datasets"] == [{"ref": "sst:1", "role": "eval", "sha256": shown["sha256"], "rows": 2}]
    assert "sst:1 (eval, 2 rows)" in adreg("show", "tone:1").stdout
    linked = json.loads(adreg("data", "link", "tone:1", "sst", "--role", "heldout", "--json").stdout)
    assert {d["role"] for d in linked["datasets"]} == {"eval", "heldout"}


def test_remote_register_and_link_through_a_server(server, tiny, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Registry(server.url, token=server.admin_token) as reg:
        info = reg.register_dataset(files["parquet"], name="sst", task_type="SEQ_CLS")
        assert (info.ref, info.rows, info.sha256) == ("sst:1", 3, sha256_file(files["parquet"]))
        assert info.source_uri == f"upload:{info.sha256}.parquet"
        assert reg.register_dataset(files["parquet"], name="sst").ref == "sst:1"
        assert reg.register_dataset(files["csv"], name="sst").ref == "sst:2"
        assert [d.ref for d in reg.datasets()] == ["sst:1", "sst:2"]
        with pytest.raises(InvalidDataset, match=r"lm\.jsonl.*SEQ_CLS expects|SEQ_CLS expects"):
            reg.register_dataset(files["jsonl"], name="bad", task_type="SEQ_CLS")
        (tmp_path / "empty.csv").write_text("")
        with pytest.raises(InvalidDataset, match="empty"):
            reg.register_dataset(tmp_path / "empty.csv", name="bad")
        with pytest.raises(DatasetNotFound):
            reg.dataset("absent")
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        assert [d.ref for d in reg.link_dataset("tone:1", "sst:1").datasets] == ["sst:1"]
        assert reg.dataset("sst:1").linked == [{"ref": "tone:1", "role": "eval"}]
        data = _jsonl(tmp_path / "corpus.jsonl", [{"text": f"the cat sat on mat number {i}"} for i in range(10)])
        job = reg.train("tone:1", data=data, steps=1, eval_rows=2).wait(timeout=120)
        assert job.status == "succeeded", job.error
        assert {d.role: d.rows for d in reg.get("tone:2").datasets} == {"train": 8, "heldout": 2}
        evaluated = reg.evaluate("tone:2", data=["tone-heldout"]).wait(timeout=120)  # over HTTP, item 2
        assert evaluated.status == "succeeded", evaluated.error
        assert {x.name for x in reg.get("tone:2").metrics if x.dataset == "tone-heldout:1"} >= {
            "eval_loss", "base_eval_loss", "perplexity", "token_accuracy"}


# -- evaluation jobs (issue 17 item 2) --

def _reference_metrics(model, tokenizer, texts: list[str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Loss, perplexity and token accuracy written out plainly, one row at a time (no padding, no batching)."""
    import math

    import torch

    loss_sum, right, count = 0.0, 0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text + tokenizer.eos_token)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            right += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
    return {"eval_loss": loss_sum / count, "perplexity": math.exp(loss_sum / count), "token_accuracy": right / count}


def test_eval_job_measures_the_version_and_its_base_as_metrics(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoTokenizer

    from workers.tinymodels import load_base

    texts = [f"the cat sat on mat number {i}" for i in range(6)]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register_dataset(_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in texts]), name="wiki")
    registry.register_dataset(_jsonl(tmp_path / "qa.jsonl", [{"prompt": "q: one", "completion": " a: two"}] * 3),
                              name="qa")
    with pytest.raises(RegistryError, match="no eval datasets or held-out split linked"):
        registry.evaluate("tone:1")
    registry.link_dataset("tone:1", "wiki")
    job = registry.evaluate("tone:1", batch_size=4).wait(timeout=120)  # the linked eval set
    assert job.status == "succeeded", job.error
    assert job.kind == "eval" and job.queue == "gpu"  # the GPU queue; the local executor runs it here, on the CPU
    result = job.report["datasets"]["wiki:1"]
    assert result["rows"] == 6 and result["sha256"] == registry.dataset("wiki").sha256

    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    base_model = load_base(tiny["llama"]).eval()
    expected_base = _reference_metrics(base_model, tokenizer, texts)
    expected = _reference_metrics(PeftModel.from_pretrained(load_base(tiny["llama"]), str(tiny["tone"])).eval(),
                                  tokenizer, texts)
    for name, value in expected.items():
        assert result["adapter"][name] == pytest.approx(value, rel=1e-4), name
        assert result["base"][name] == pytest.approx(expected_base[name], rel=1e-4), name
    assert result["adapter"]["eval_loss"] != pytest.approx(result["base"]["eval_loss"], rel=1e-6)

    metrics = {(x.name, x.dataset): x for x in registry.get("tone:1").metrics}
    assert {n for n, d in metrics if d == "wiki:1"} == {
        "eval_loss", "perplexity", "token_accuracy", "base_eval_loss", "base_perplexity", "base_token_accuracy"}
    assert metrics[("eval_loss", "wiki:1")].value == pytest.approx(expected["eval_loss"], rel=1e-4)
    assert {(x.source, x.job_id) for (_, d), x in metrics.items() if d == "wiki:1"} == {("eval", job.id)}
    found = registry.search(where="eval_loss[wiki:1] < 1000")
    assert [v.ref for v in found] == ["tone:1"]

    both = registry.evaluate("tone:1", data=["qa", "wiki:1"]).wait(timeout=120)
    assert both.status == "succeeded", both.error
    assert set(both.report["datasets"]) == {"qa:1", "wiki:1"}
    assert 0 <= both.report["datasets"]["qa:1"]["adapter"]["token_accuracy"] <= 1


def test_eval_refusals(registry, tiny, tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register_dataset(files["csv"], name="sst", task_type="SEQ_CLS")  # has 'text': usable by a causal LM
    registry.register_dataset(_jsonl(tmp_path / "q.jsonl", [{"question": "?", "answer": "!"}]), name="qa")
    with pytest.raises(InvalidDataset, match="expected 'text'"):
        registry.evaluate("tone:1", data=["qa"])
    with pytest.raises(DatasetNotFound):
        registry.evaluate("tone:1", data=["absent"])
    with pytest.raises(RegistryError, match="batch_size"):
        registry.evaluate("tone:1", data=["sst"], batch_size=0)


def test_cli_eval(adreg, tiny, files) -> None:  # type: ignore[no-untyped-def]
    adreg("data", "register", str(files["jsonl"]), "--name", "wiki")
    adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]))
    job = json.loads(adreg("eval", "tone:1", "--data", "wiki", "--json").stdout)
    assert job["status"] == "succeeded" and set(job["report"]["datasets"]) == {"wiki:1"}
    human = adreg("job", str(job["id"])).stdout
    assert "evaluation of tone:1" in human and "perplexity" in human
