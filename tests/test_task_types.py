"""Every PEFT task type a user registers validates, and trains where it has labels; ``modules_to_save`` adapters
count as adapters in every check; model loads are quiet unless ADREG_VERBOSE=1.

Tiny bases built from configs (BERT bare / sequence / token classification, T5, Llama), adapters made by PEFT
itself, numbers compared with PEFT's own ``PeftModel.from_pretrained``. SQLite only: nothing here depends on
the catalog's database.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import func, select

from registry import models as m
from registry.errors import RegistryError
from workers.tinymodels import BERT_TARGETS, T5_TARGETS, build_adapter, build_base, load_base

PROBES = (4, 16)  # ValidateSpec's default probe_count, probe_length


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task-bases")
    return {arch: build_base(root / arch, arch) for arch in ("bert-seq-cls", "bert-token-cls", "bert", "t5")}


@pytest.fixture(scope="module")
def adapters(bases, tiny, tmp_path_factory) -> dict[str, Path]:
    """One PEFT adapter per task type (the classifiers carry their head in modules_to_save, PEFT's default)."""
    root = tmp_path_factory.mktemp("task-adapters")
    return {
        "seq_cls": build_adapter(bases["bert-seq-cls"], root / "seq-cls", targets=BERT_TARGETS, task_type="SEQ_CLS"),
        "token_cls": build_adapter(bases["bert-token-cls"], root / "token-cls", targets=BERT_TARGETS,
                                   task_type="TOKEN_CLS"),
        "feature": build_adapter(bases["bert"], root / "feature", targets=BERT_TARGETS,
                                 task_type="FEATURE_EXTRACTION"),
        "seq2seq": build_adapter(bases["t5"], root / "seq2seq", targets=T5_TARGETS, task_type="SEQ_2_SEQ_LM"),
        "lm_head": build_adapter(tiny["llama"], root / "lm-head", modules_to_save=["lm_head"]),
    }


@pytest.fixture
def reg(tmp_path):  # type: ignore[no-untyped-def]
    from registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path / "home")
    yield registry
    registry.close()


def _jobs(reg) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(m.Job))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _peft_distance(base_path: Path, adapter_path: Path, *, seq2seq: bool = False, hidden: bool = False) -> float:
    """What PEFT itself says the adapter changes: max |output with the adapter - base output| on the probes."""
    model = load_base(base_path).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, PROBES, generator=gen)
    inputs = {"input_ids": ids}
    if seq2seq:  # the probes shifted right behind the decoder start token
        start = torch.full((PROBES[0], 1), model.config.decoder_start_token_id)
        inputs["decoder_input_ids"] = torch.cat([start, ids[:, :-1]], dim=1)

    def output(net) -> torch.Tensor:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            out = net(**inputs)
        return out.last_hidden_state if hidden else out.logits

    before = output(model)
    after = output(PeftModel.from_pretrained(model, str(adapter_path)).eval())
    return float((after - before).abs().max())


def _validated(reg, ref: str) -> dict:  # type: ignore[no-untyped-def]
    job = reg.validate(ref)
    assert job.status == "succeeded", job.error
    status = job.report["layer_status"]
    assert not status["missing"] and not status["unexpected"] and status["trainable_params"] == 0
    assert job.report["loaded_weights_match_stored"] is True
    return job.report


def test_modules_to_save_adapter_validates_and_trains(reg, adapters, tiny, tmp_path):
    """An lm_head in modules_to_save is part of the adapter: layer status, counts, loaded weights, update, base."""
    reg.register(adapters["lm_head"], name="head", base_path=tiny["llama"])
    report = _validated(reg, "head:1")
    assert report["layer_status"]["modules_to_save"] == ["lm_head"]
    assert report["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(tiny["llama"], adapters["lm_head"]), abs=1e-5)

    data = _jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat on the mat."}] * 16)
    job = reg.train("head:1", data=data, steps=4, lr=1e-2)
    assert job.status == "succeeded", job.error
    rep = job.report
    source = reg.get("head:1")
    assert rep["prechecks"]["trainable_params"]["a0"] == source.param_count  # LoRA + the lm_head copy
    assert rep["prechecks"]["modules_to_save"] == {"a0": ["lm_head"]} and rep["prechecks"]["strays"] == []
    assert rep["loaded_weights_match_sources"] == {"a0": True}
    assert rep["update_norms"]["head"] > 0 and rep["base_unchanged"] is True
    before = load_file(str(Path(source.path) / "adapter_model.safetensors"))
    after = load_file(str(Path(reg.get("head:2").path) / "adapter_model.safetensors"))
    assert not torch.equal(before["base_model.model.lm_head.weight"], after["base_model.model.lm_head.weight"])
    base_head = load_file(str(tiny["llama"] / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(load_base(tiny["llama"]).lm_head.weight, base_head)  # the base folder is untouched


def test_trainable_tokens_count_as_the_adapter(reg, tiny, tmp_path):
    folder = build_adapter(tiny["llama"], tmp_path / "tokens", trainable_token_indices={"embed_tokens": [5, 6, 7]})
    reg.register(folder, name="tokens", base_path=tiny["llama"])
    report = _validated(reg, "tokens:1")
    assert report["layer_status"]["modules_to_save"] == ["model.embed_tokens.token_adapter"]
    data = _jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat"}] * 8)
    job = reg.train("tokens:1", data=data, steps=2, lr=1e-2)
    assert job.status == "succeeded", job.error
    assert job.report["prechecks"]["trainable_params"]["a0"] == reg.get("tokens:1").param_count  # LoRA + 3 rows
    assert job.report["loaded_weights_match_sources"] == {"a0": True} and job.report["base_unchanged"] is True


def test_sequence_classification_new_trains_validates_and_continues(reg, bases, adapters, tmp_path):
    base = bases["bert-seq-cls"]
    reg.register(adapters["seq_cls"], name="peft-cls", base_path=base)
    report = _validated(reg, "peft-cls:1")
    assert report["model_class"] == "BertForSequenceClassification"
    assert report["layer_status"]["modules_to_save"] == ["classifier"]
    assert report["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(base, adapters["seq_cls"]), abs=1e-5)

    rows = [{"text": text, "label": label} for text, label in (("good day", 0), ("bad day", 1), ("so so", 2))] * 8
    random.Random(0).shuffle(rows)
    data = _jsonl(tmp_path / "cls.jsonl", rows)
    # the task type comes from the base's architecture (BertForSequenceClassification -> SEQ_CLS)
    job = reg.train(new={"r": 4, "alpha": 8, "targets": "all-linear"}, base=str(base), name="sentiment", data=data,
                    steps=10, lr=1e-2, batch_size=8, eval_rows=6)
    assert job.status == "succeeded", job.error
    rep = job.report
    assert rep["task_type"] == "SEQ_CLS" and job.spec["task_type"] == "SEQ_CLS"
    assert rep["eval_loss_after"] < rep["eval_loss_before"]
    assert 0 <= rep["eval_accuracy_before"] <= 1 and 0 <= rep["eval_accuracy_after"] <= 1
    assert rep["prechecks"]["modules_to_save"] == {"a0": ["classifier"]} and rep["base_unchanged"] is True
    fresh = reg.get("sentiment:1")
    config = json.loads((Path(fresh.path) / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert "base_model.model.classifier.weight" in load_file(str(Path(fresh.path) / "adapter_model.safetensors"))
    assert _validated(reg, "sentiment:1")["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(base, Path(fresh.path)), abs=1e-5)

    again = reg.train("sentiment:1", data=data, steps=2, lr=1e-2, batch_size=8)  # is_trainable=True, head included
    assert again.status == "succeeded", again.error
    assert again.report["loaded_weights_match_sources"] == {"a0": True}
    assert again.report["prechecks"]["trainable_params"]["a0"] == fresh.param_count


def test_token_classification_aligns_word_labels(reg, bases, adapters, tmp_path):
    from transformers import AutoTokenizer

    from workers.train import _word_labels

    base = bases["bert-token-cls"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoding = tokenizer(["ab", "c"], is_split_into_words=True)
    assert _word_labels(["ab", "c"], [1, 2], encoding) == [1, -100, 2]  # a word's label on its first sub-token

    reg.register(adapters["token_cls"], name="peft-ner", base_path=base)
    report = _validated(reg, "peft-ner:1")
    assert report["model_class"] == "BertForTokenClassification"
    assert report["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(base, adapters["token_cls"]), abs=1e-5)

    rows = [{"tokens": ["the", "cat", "sat"], "labels": [0, 1, 2]}, {"text": "a dog ran", "labels": [0, 1, -100]}]
    data = _jsonl(tmp_path / "ner.jsonl", rows * 6)
    job = reg.train(new={"r": 4, "alpha": 8, "targets": BERT_TARGETS}, base=str(base), name="ner", data=data,
                    steps=4, lr=1e-2, eval_rows=4)
    assert job.status == "succeeded", job.error
    assert job.report["task_type"] == "TOKEN_CLS" and "eval_accuracy_after" in job.report
    assert reg.get("ner:1").task_type == "TOKEN_CLS"


def test_seq2seq_trains_and_validates_with_decoder_inputs(reg, bases, adapters, tmp_path):
    base = bases["t5"]
    reg.register(adapters["seq2seq"], name="peft-t5", base_path=base)
    report = _validated(reg, "peft-t5:1")
    assert report["model_class"] == "T5ForConditionalGeneration"
    assert report["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(base, adapters["seq2seq"], seq2seq=True), abs=1e-5)

    data = _jsonl(tmp_path / "s2s.jsonl", [{"text": "hello", "target": "world"}] * 12)
    job = reg.train("peft-t5:1", data=data, steps=4, lr=1e-2)
    assert job.status == "succeeded", job.error
    rep = job.report
    assert rep["task_type"] == "SEQ_2_SEQ_LM" and rep["eval_loss_after"] < rep["eval_loss_before"]
    assert "eval_accuracy_after" not in rep and rep["base_unchanged"] is True


def test_feature_extraction_validates_and_is_not_trained(reg, bases, adapters, tmp_path):
    base = bases["bert"]
    reg.register(adapters["feature"], name="embed", base_path=base)
    report = _validated(reg, "embed:1")
    assert report["model_class"] == "BertModel" and report["logits"]["output"] == "last hidden state"
    assert report["logits"]["max_abs_diff_from_base"] == pytest.approx(
        _peft_distance(base, adapters["feature"], hidden=True), abs=1e-5)

    data = _jsonl(tmp_path / "t.jsonl", [{"text": "x y", "label": 0}] * 4)
    with pytest.raises(RegistryError, match="FEATURE_EXTRACTION has no labels"):
        reg.train("embed:1", data=data)
    with pytest.raises(RegistryError, match="training supports CAUSAL_LM, SEQ_CLS, TOKEN_CLS, SEQ_2_SEQ_LM"):
        reg.train(new={"r": 4, "targets": BERT_TARGETS}, base=str(base), name="embed2", data=data)  # BertModel
    with pytest.raises(RegistryError, match="bare BertModel: a SEQ_CLS model wraps it"):
        reg.train(new={"r": 4, "targets": BERT_TARGETS}, base=str(base), name="embed2", data=data, task_type="SEQ_CLS")
    assert _jobs(reg) == 1  # the validation only


def test_unsupported_tasks_and_bad_labels_are_refused_before_a_job(reg, bases, adapters, tiny, tmp_path):
    reg.register(adapters["seq_cls"], name="peft-cls", base_path=bases["bert-seq-cls"])
    reg.register(adapters["token_cls"], name="peft-ner", base_path=bases["bert-token-cls"])
    reg.register(adapters["lm_head"], name="head", base_path=tiny["llama"])
    reg.register(adapters["lm_head"], name="head-twin", base_path=tiny["llama"])
    cls = str(bases["bert-seq-cls"])
    new = {"r": 4, "targets": BERT_TARGETS}
    text = _jsonl(tmp_path / "text.jsonl", [{"text": "a b"}] * 4)
    big = _jsonl(tmp_path / "big.jsonl", [{"text": "a", "label": 5}] * 4)
    words = _jsonl(tmp_path / "words.jsonl", [{"tokens": ["a", "b"], "labels": [1]}] * 4)
    named = _jsonl(tmp_path / "named.jsonl", [{"text": "a", "label": "positive"}] * 4)
    cases = [
        (dict(new=new, base=cls, name="x", data=text, task_type="QUESTION_ANS"),
         "'QUESTION_ANS' is not supported; supported task types: CAUSAL_LM, SEQ_CLS, TOKEN_CLS, SEQ_2_SEQ_LM"),
        (dict(new=new, base=cls, name="x", data=text), "SEQ_CLS expects 'text' and 'label'"),
        (dict(new=new, base=cls, name="x", data=big),
         r"class ids up to 5, but the base's classification head \(BertForSequenceClassification\) has 3"),
        (dict(new=new, base=cls, name="x", data=named), "label 'positive' is not a class id"),
        (dict(new={"r": 4, "targets": ["query", "classifier"]}, base=cls, name="x", data=big),
         r"\['classifier'\] are trained in full"),
        (dict(source="peft-ner:1", data=words), "2 word\\(s\\) in 'tokens' but 1 label"),
        (dict(source="peft-cls:1", data=text, task_type="CAUSAL_LM"), "keeps its task type"),
        (dict(source="head:1", joint_with=["head-twin:1"], data=text), "cannot be trained jointly"),
        (dict(new={"r": 4, "targets": ["q_proj"]}, base=str(tiny["llama"]), name="x", data=text,
              task_type="SEQ_2_SEQ_LM"), "SEQ_2_SEQ_LM expects 'text' and 'target'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RegistryError, match=message):
            reg.train(**kwargs)
    assert _jobs(reg) == 0


def test_cli_train_new_on_a_classification_base(reg, bases, adapters, tmp_path):
    from typer.testing import CliRunner

    from registry.cli import app

    base = bases["bert-seq-cls"]
    reg.register(adapters["seq_cls"], name="peft-cls", base_path=base)
    data = _jsonl(tmp_path / "cls.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}] * 4)
    db = f"sqlite:///{tmp_path / 'catalog.db'}"
    cli = ["--db", db, "--home", str(reg.settings.home), "train", "--data", str(data)]
    runner = CliRunner()
    out = runner.invoke(app, [*cli, "--new", "cls", "--base", str(base), "--steps", "2", "--r", "4", "--json"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["report"]["task_type"] == "SEQ_CLS"
    out = runner.invoke(app, [*cli, "--new", "qa", "--base", str(base), "--task-type", "QUESTION_ANS"])
    assert out.exit_code == 1 and "supported task types: CAUSAL_LM, SEQ_CLS" in out.stderr
    assert "Traceback" not in out.stderr


def test_model_loads_are_quiet_unless_verbose(reg, tiny, capfd, monkeypatch):
    from transformers.utils import logging as hf_logging

    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)  # another test (the demo) may have silenced them for good
    level = hf_logging.get_verbosity()
    for verbose in (False, True):
        monkeypatch.setenv("ADREG_VERBOSE", "1" if verbose else "0")
        capfd.readouterr()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert reg.validate("tone:1").status == "succeeded"
        err = capfd.readouterr().err
        future = [w for w in seen if issubclass(w.category, FutureWarning)]
        assert ("Loading weights" in err) is verbose, err
        assert bool(future) is verbose, [str(w.message) for w in future]
        assert hf_logging.get_verbosity() == level  # the caller's logging settings are restored
