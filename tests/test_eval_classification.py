"""Evaluation jobs for classifiers (issue 17 item 2): SEQ_CLS and TOKEN_CLS adapters and their bare base measured on
catalog datasets (loss, accuracy, macro-F1), checked against the PEFT-loaded model's own logits, one row at a time;
the submission checks (columns for the task, labels within the head, unsupported task types)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from sqlalchemy import func, select
from transformers import AutoTokenizer

from registry import models as m
from registry.errors import RegistryError
from registry.trainset import InvalidDataset
from workers.evaluate import macro_f1
from workers.job_metrics import eval_metrics
from workers.tinymodels import BERT_TARGETS, T5_TARGETS, build_adapter, build_base, load_base

TEXTS = [("good day", 0), ("bad day", 1), ("so so", 2), ("great", 0), ("awful!", 1), ("meh", 2), ("fine", 0),
         ("a very long and rather bad afternoon", 1), ("ok", 2), ("lovely", 0)]
WORDS = [(["the", "cat", "sat"], [0, 1, 2]), (["a", "dog", "ran", "far"], [0, 1, -100, 2]),
         (["big", "red", "bus"], [2, 2, 1]), (["x"], [1])]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny BERT classifiers (3 classes) with PEFT adapters whose LoRA and head copies are random (not no-ops)."""
    root = tmp_path_factory.mktemp("cls-eval")
    seq = build_base(root / "bert-seq-cls", "bert-seq-cls")
    tok = build_base(root / "bert-token-cls", "bert-token-cls")
    t5 = build_base(root / "t5", "t5")
    return {"seq_base": seq, "tok_base": tok,
            "seq": build_adapter(seq, root / "seq", targets=BERT_TARGETS, task_type="SEQ_CLS", seed=3),
            "tok": build_adapter(tok, root / "tok", targets=BERT_TARGETS, task_type="TOKEN_CLS", seed=4),
            "t5_base": t5, "t5": build_adapter(t5, root / "t5-lora", targets=T5_TARGETS, task_type="SEQ_2_SEQ_LM")}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _f1_by_precision_recall(predicted: list[int], gold: list[int]) -> float:
    """Macro-F1 written the textbook way (2PR / (P + R) per class; 0 where P + R is 0), for comparison."""
    scores = []
    for cls in set(predicted) | set(gold):
        hits = sum(1 for p, y in zip(predicted, gold, strict=True) if p == y == cls)
        said, true = predicted.count(cls), gold.count(cls)
        precision, recall = (hits / said if said else 0.0), (hits / true if true else 0.0)
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def _reference(scored: list[tuple[torch.Tensor, int]]) -> dict[str, float]:
    """Loss, accuracy and macro-F1 from (logits of one example, its label) pairs."""
    logits = torch.stack([s for s, _ in scored])
    gold = [y for _, y in scored]
    predicted = logits.argmax(-1).tolist()
    loss = float(torch.nn.functional.cross_entropy(logits, torch.tensor(gold)))
    return {"eval_loss": loss, "accuracy": sum(p == y for p, y in zip(predicted, gold, strict=True)) / len(gold),
            "f1": _f1_by_precision_recall(predicted, gold)}


def _sequence_scores(model, tokenizer) -> list[tuple[torch.Tensor, int]]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return [(model(**tokenizer(text, return_tensors="pt")).logits[0].float(), label) for text, label in TEXTS]


def _token_scores(model, tokenizer) -> list[tuple[torch.Tensor, int]]:  # type: ignore[no-untyped-def]
    """Each labelled word's first sub-token's logits with the word's label, one row at a time."""
    out = []
    with torch.no_grad():
        for words, labels in WORDS:
            enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
            logits = model(**enc).logits[0].float()
            seen = set()
            for position, word in enumerate(enc.word_ids()):
                if word is not None and word not in seen:
                    seen.add(word)
                    if labels[word] != -100:
                        out.append((logits[position], labels[word]))
    return out


def _jobs(registry) -> int:  # type: ignore[no-untyped-def]
    with registry.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(m.Job))


def _assert_measured(result: dict, expected: dict, expected_base: dict) -> None:
    """An eval report's numbers for one dataset equal the references computed from PEFT's logits."""
    for name in ("eval_loss", "accuracy", "f1"):
        assert result["adapter"][name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
        assert result["base"][name] == pytest.approx(expected_base[name], rel=1e-5, abs=1e-7), name


def test_macro_f1_matches_a_hand_computed_example() -> None:
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 1, FP 0, FN 2 -> 1/2; class 2: TP 1, FP 2, FN 0 -> 1/2;
    # class 3 (only in the labels): TP 0 -> 0; the mean over the four classes present: (2/3 + 1/2 + 1/2 + 0) / 4
    assert macro_f1([0, 0, 1, 2, 2, 2], [0, 1, 1, 1, 2, 3]) == pytest.approx(5 / 12)
    assert macro_f1([1, 1], [1, 1]) == 1.0
    assert macro_f1([4, 4], [1, 1]) == 0.0  # a class only predicted counts too
    with pytest.raises(RegistryError, match="no labelled example"):
        macro_f1([], [])
    # an eval report's classifier numbers become metrics named like the causal-LM ones (base_ prefix)
    report = {"datasets": {"sst:1": {"adapter": {"eval_loss": 1.0, "accuracy": 0.5, "f1": 0.4},
                                     "base": {"eval_loss": 1.2, "accuracy": 0.3, "f1": float("nan")}}}}
    assert eval_metrics(report) == {"sst:1": {"eval_loss": 1.0, "accuracy": 0.5, "f1": 0.4, "base_eval_loss": 1.2,
                                              "base_accuracy": 0.3}}


def test_sequence_classification_eval_matches_peft_and_records_base_metrics(registry, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(models["seq"], name="cls", base_path=models["seq_base"])
    registry.register_dataset(_jsonl(tmp_path / "sst.jsonl", [{"text": t, "label": y} for t, y in TEXTS]),
                              name="sst", task_type="SEQ_CLS")
    job = registry.evaluate("cls:1", data=["sst"], batch_size=4).wait(timeout=120)  # padded batches of 4
    assert job.status == "succeeded", job.error
    assert job.report["task_type"] == "SEQ_CLS" and job.report["num_labels"] == 3
    result = job.report["datasets"]["sst:1"]
    assert result["rows"] == len(TEXTS) and result["examples"] == len(TEXTS)

    tokenizer = AutoTokenizer.from_pretrained(models["seq_base"])
    expected = _reference(_sequence_scores(PeftModel.from_pretrained(load_base(models["seq_base"]),
                                                                     str(models["seq"])).eval(), tokenizer))
    expected_base = _reference(_sequence_scores(load_base(models["seq_base"]).eval(), tokenizer))
    _assert_measured(result, expected, expected_base)
    assert result["adapter"]["eval_loss"] != pytest.approx(result["base"]["eval_loss"], rel=1e-4)

    metrics = {(x.name, x.dataset): x for x in registry.get("cls:1").metrics}
    assert {n for n, d in metrics if d == "sst:1"} == {"eval_loss", "accuracy", "f1", "base_eval_loss",
                                                       "base_accuracy", "base_f1"}
    assert {(x.source, x.job_id) for (_, d), x in metrics.items() if d == "sst:1"} == {("eval", job.id)}
    assert metrics[("f1", "sst:1")].value == pytest.approx(expected["f1"])
    assert metrics[("base_accuracy", "sst:1")].value == pytest.approx(expected_base["accuracy"])
    assert [v.ref for v in registry.search(where="accuracy[sst:1] >= 0")] == ["cls:1"]


def test_token_classification_eval_scores_labelled_words_only(registry, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(models["tok"], name="ner", base_path=models["tok_base"])
    rows = [{"tokens": w, "labels": y} if i % 2 else {"text": " ".join(w), "labels": y}
            for i, (w, y) in enumerate(WORDS)]  # both layouts: a word list, or text split on spaces
    registry.register_dataset(_jsonl(tmp_path / "ner.jsonl", rows), name="ner-set")
    job = registry.evaluate("ner:1", data=["ner-set"], batch_size=3).wait(timeout=120)
    assert job.status == "succeeded", job.error
    result = job.report["datasets"]["ner-set:1"]
    labelled = sum(1 for _, labels in WORDS for y in labels if y != -100)
    assert result["examples"] == labelled == 10  # one per labelled word, not per sub-token or padding

    tokenizer = AutoTokenizer.from_pretrained(models["tok_base"])
    expected = _reference(_token_scores(PeftModel.from_pretrained(load_base(models["tok_base"]),
                                                                  str(models["tok"])).eval(), tokenizer))
    expected_base = _reference(_token_scores(load_base(models["tok_base"]).eval(), tokenizer))
    _assert_measured(result, expected, expected_base)
    names = {x.name for x in registry.get("ner:1").metrics if x.dataset == "ner-set:1"}
    assert names == {"eval_loss", "accuracy", "f1", "base_eval_loss", "base_accuracy", "base_f1"}


def test_classification_eval_refusals(registry, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(models["seq"], name="cls", base_path=models["seq_base"])
    registry.register(models["tok"], name="ner", base_path=models["tok_base"])
    registry.register(models["t5"], name="t5x", base_path=models["t5_base"])
    registry.register_dataset(_jsonl(tmp_path / "lm.jsonl", [{"text": "hello"}]), name="wiki")
    registry.register_dataset(_jsonl(tmp_path / "big.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 5}]),
                              name="big")
    registry.register_dataset(_jsonl(tmp_path / "odd.jsonl", [{"text": "a b", "labels": [0]}]), name="odd")
    registry.register_dataset(_jsonl(tmp_path / "neg.jsonl", [{"text": "a", "label": -1}]), name="neg")
    before = _jobs(registry)
    with pytest.raises(InvalidDataset, match="SEQ_CLS expects 'text' and 'label'"):  # wrong columns
        registry.evaluate("cls:1", data=["wiki"])
    with pytest.raises(InvalidDataset, match="TOKEN_CLS expects 'labels'"):
        registry.evaluate("ner:1", data=["big"])
    with pytest.raises(InvalidDataset, match=r"dataset big:1 row 2 has label 5, but cls:1's classification head "
                                             r"has 3 class\(es\): 0\.\.2"):
        registry.evaluate("cls:1", data=["big"])
    with pytest.raises(InvalidDataset, match=r"dataset odd:1: .*row 1: 2 word\(s\) in 'text' but 1 label"):
        registry.evaluate("ner:1", data=["odd"])
    with pytest.raises(InvalidDataset, match=r"dataset neg:1: .*label -1 is not a class id"):
        registry.evaluate("cls:1", data=["neg"])
    with pytest.raises(RegistryError, match="t5x:1 is a SEQ_2_SEQ_LM adapter; evaluation measures CAUSAL_LM, "
                                            "SEQ_CLS, TOKEN_CLS"):
        registry.evaluate("t5x:1", data=["wiki"])
    assert _jobs(registry) == before  # nothing was queued


def _llama_classifier_adapter(base: Path, out: Path) -> Path:
    """A SEQ_CLS LoRA on a causal tiny Llama loaded as LlamaForSequenceClassification (4 classes): PEFT stores the
    new ``score`` head in modules_to_save."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(5)
    model = LlamaForSequenceClassification.from_pretrained(base, num_labels=4, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="SEQ_CLS"))
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out)
    return out


def test_decoder_classifier_on_a_causal_base_reads_each_rows_last_token(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Llama base switched to its SEQ_CLS class, the head from the adapter; rows of different lengths padded in one
    batch score as each row alone (the last real token, not padding); the bare base's fresh head is the same on
    every run."""
    from transformers import LlamaForSequenceClassification

    adapter = _llama_classifier_adapter(tiny["llama"], tmp_path / "llama-cls")
    registry.register(adapter, name="lcls", base_path=tiny["llama"])
    rows = [{"text": t, "label": y % 4} for t, y in TEXTS] + [{"text": "zz", "label": 3}]
    registry.register_dataset(_jsonl(tmp_path / "four.jsonl", rows), name="four")
    job = registry.evaluate("lcls:1", data=["four"], batch_size=8).wait(timeout=120)
    assert job.status == "succeeded", job.error
    assert job.report["num_labels"] == 4
    result = job.report["datasets"]["four:1"]

    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    model = LlamaForSequenceClassification.from_pretrained(tiny["llama"], num_labels=4, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad():
        scored = [(peft_model(**tokenizer(r["text"], return_tensors="pt")).logits[0].float(), r["label"])
                  for r in rows]
    expected = _reference(scored)
    for name in ("eval_loss", "accuracy", "f1"):
        assert result["adapter"][name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
    again = registry.evaluate("lcls:1", data=["four"], batch_size=3).wait(timeout=120)
    assert again.status == "succeeded", again.error
    assert again.report["datasets"]["four:1"]["base"] == pytest.approx(result["base"], rel=1e-5)
    assert {x.name for x in registry.get("lcls:1").metrics if x.dataset == "four:1"} >= {"base_accuracy", "base_f1"}


def test_cli_eval_shows_a_classifiers_accuracy_and_f1(adreg, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    adreg("register", str(models["seq"]), "--name", "cls", "--base-path", str(models["seq_base"]))
    adreg("data", "register", str(_jsonl(tmp_path / "sst.jsonl", [{"text": t, "label": y} for t, y in TEXTS])),
          "--name", "sst")
    job = json.loads(adreg("eval", "cls:1", "--data", "sst", "--json").stdout)
    assert job["status"] == "succeeded" and set(job["report"]["datasets"]["sst:1"]["adapter"]) == {
        "eval_loss", "accuracy", "f1"}
    human = adreg("job", str(job["id"])).stdout
    assert "evaluation of cls:1" in human and "macro F1" in human and "perplexity" not in human


def test_a_trained_classifier_evaluates_on_its_heldout_split_as_training_measured_it(registry, models,
                                                                                     tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No --data: the training's held-out split (recorded as a dataset); the numbers agree with the training job's own
    held-out evaluation (Trainer), the same rows through the same weights."""
    rows = [{"text": t, "label": y} for t, y in TEXTS] * 3
    registry.add_base("bert-cls", path=models["seq_base"])
    job = registry.train(new={"r": 4, "alpha": 8, "targets": BERT_TARGETS}, base="bert-cls",
                         name="sentiment", data=_jsonl(tmp_path / "train.jsonl", rows), steps=6, lr=1e-2,
                         batch_size=8, eval_rows=9)
    assert job.status == "succeeded", job.error
    evaluated = registry.evaluate("sentiment:1", batch_size=4).wait(timeout=120)
    assert evaluated.status == "succeeded", evaluated.error
    [(ref, result)] = evaluated.report["datasets"].items()
    assert ref == "sentiment-heldout:1" and result["examples"] == 9
    assert result["adapter"]["accuracy"] == pytest.approx(job.report["eval_accuracy_after"], abs=1e-9)
    assert result["adapter"]["eval_loss"] == pytest.approx(job.report["eval_loss_after"], rel=1e-4)


def test_a_decoder_classifier_trains_on_each_rows_last_real_token(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Training a SEQ_CLS adapter on a Llama base whose pad token (0) is not its EOS (2): the classifier must read
    the last real token of each padded row, so the training job's held-out loss equals the eval job's (which scores
    as each row alone, checked above). Before the fix training left pad_token_id at EOS and read padding."""
    rows = [{"text": t, "label": y % 3} for t, y in TEXTS] * 3 + [{"text": "a much longer sentence here", "label": 1}]
    registry.add_base("llama-cls", path=tiny["llama"])
    job = registry.train(new={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}, base="llama-cls",
                         task_type="SEQ_CLS", name="dcls", data=_jsonl(tmp_path / "train.jsonl", rows), steps=4,
                         lr=1e-2, batch_size=8, eval_rows=9, seed=0)
    assert job.status == "succeeded", job.error
    evaluated = registry.evaluate("dcls:1", batch_size=9).wait(timeout=120)
    assert evaluated.status == "succeeded", evaluated.error
    [(_ref, result)] = evaluated.report["datasets"].items()
    assert result["adapter"]["eval_loss"] == pytest.approx(job.report["eval_loss_after"], rel=1e-4)
    assert result["adapter"]["accuracy"] == pytest.approx(job.report["eval_accuracy_after"], abs=1e-9)
