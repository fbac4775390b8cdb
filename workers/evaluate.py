"""The ``eval`` job: a version and its bare base, measured on catalog datasets (causal LMs and classifiers).

For each dataset (pinned by sha256 at submission) the rows are tokenised as training tokenises them
(``workers.train.tokenize_rows``: ``text``, ``prompt`` + ``completion`` with the loss on the completion only, or chat
``messages``), then the base with the adapter and the bare base (the adapter disabled, same weights in memory) are
run over the same batches. Per dataset and model: the mean next-token cross-entropy over labelled tokens
(``eval_loss``), ``perplexity`` = exp(loss), and ``token_accuracy`` (the share of labelled tokens predicted by the
argmax). The report holds them; :mod:`workers.job_metrics` records them as the version's metrics, each with the
dataset's ``name:N``, source ``eval`` and the job id (the bare base's as ``base_eval_loss``, ...).

Classification adapters (``SEQ_CLS``: ``text`` + ``label``; ``TOKEN_CLS``: a label per word, -100 ignored) are run on
the base loaded as a model of their task with their head's number of classes (as validation loads it), tokenised and
batched as training does them; per dataset and model: the mean cross-entropy over labelled examples (sequences, or
tokens carrying a word's label) as ``eval_loss``, ``accuracy`` (share whose argmax class is the label) and ``f1``
(macro-F1 over the classes present in the labels or the predictions, :func:`macro_f1`). The bare base is the same
model with the adapter disabled, so its head is the base model's own (random when the base has no head of this task):
the honest baseline. Seq2seq and feature-extraction adapters are refused at submission.
"""

from __future__ import annotations

import math
import time
from typing import Any

from registry.errors import RegistryError
from registry.jobs import EvalData, EvalSpec
from registry.targets import head_labels
from registry.trainset import CLASSIFICATION_TASKS, IGNORED_LABEL, load_rows
from workers.base_model import device, load_base_model
from workers.context import JobContext
from workers.host import JobHost, Outcome
from workers.quiet import quiet_loading
from workers.train import collator, tokenize_rows, tokenizer_for


def run_eval(host: JobHost, ctx: JobContext, spec: EvalSpec) -> None:
    with quiet_loading():
        _run_eval(host, ctx, spec)


def labelled_loss(model: Any, batch: dict[str, Any], dev: str) -> tuple[Any, int, int]:
    """The summed next-token cross-entropy over ``batch``'s labelled tokens (a tensor: differentiable when grad is
    on), how many of them the argmax predicts, and how many there are."""
    import torch

    ids = batch["input_ids"].to(dev)
    mask = batch["attention_mask"].to(dev)
    labels = batch["labels"].to(dev)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    shifted, targets = logits[:, :-1, :], labels[:, 1:]
    keep = targets != -100
    if not bool(keep.any()):
        return logits.sum() * 0.0, 0, 0
    loss = torch.nn.functional.cross_entropy(shifted[keep], targets[keep], reduction="sum")
    return loss, int((shifted.argmax(-1)[keep] == targets[keep]).sum()), int(keep.sum())


def measure(model: Any, batches: list[dict[str, Any]], dev: str) -> dict[str, float]:
    """Mean next-token loss, perplexity and token accuracy of ``model`` over labelled tokens of ``batches``."""
    import torch

    total_loss, total_right, total_tokens = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            loss, right, tokens = labelled_loss(model, batch, dev)
            total_loss += float(loss)
            total_right += right
            total_tokens += tokens
    if total_tokens == 0:
        raise RegistryError("no labelled token to evaluate on (rows too short, or no completion within max_length)")
    mean = total_loss / total_tokens
    return {"eval_loss": mean, "perplexity": math.exp(mean) if mean < 700 else None,  # JSON has no infinity
            "token_accuracy": total_right / total_tokens, "tokens": total_tokens}


def eval_batches(path: Any, data: EvalData, tokenizer: Any, collate: Any,
                 spec: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A dataset file's rows (its first ``spec.max_rows``) and their batches of ``spec.batch_size``, tokenised as
    training tokenises them (up to ``spec.max_length`` tokens)."""
    rows = load_rows(str(path), data.format)
    if spec.max_rows and len(rows) > spec.max_rows:
        rows = rows.select(range(spec.max_rows))
    encoded = tokenize_rows(rows, tokenizer, data.fields, spec.max_length)
    examples = [encoded[j] for j in range(len(encoded))]
    return rows, [collate(examples[j:j + spec.batch_size]) for j in range(0, len(examples), spec.batch_size)]


def causal_lm(base: Any) -> tuple[Any, Any]:
    """The base record's causal LM in float32 and its tokenizer (padding with EOS when it has no pad token)."""
    import torch

    return load_base_model(base, dtype=torch.float32, task_type="CAUSAL_LM"), tokenizer_for(base)


def macro_f1(predicted: Any, labels: Any) -> float:
    """Macro-averaged F1 of ``predicted`` against ``labels`` (same-length sequences of class ids): the mean over every
    class present in either of per-class F1 = 2 TP / (2 TP + FP + FN)."""
    pairs = list(zip((int(p) for p in predicted), (int(y) for y in labels), strict=True))
    if not pairs:
        raise RegistryError("no labelled example to compute F1 on")
    scores = []
    for cls in sorted({p for p, _ in pairs} | {y for _, y in pairs}):
        true_pos = sum(1 for p, y in pairs if p == cls and y == cls)
        false_pos = sum(1 for p, y in pairs if p == cls and y != cls)
        false_neg = sum(1 for p, y in pairs if p != cls and y == cls)
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return sum(scores) / len(scores)


def classify(model: Any, batches: list[dict[str, Any]], dev: str) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro-F1 of a classifier over the labelled examples of ``batches``: one per
    sequence (``SEQ_CLS``: ``labels`` of shape (batch,)) or one per token not labelled -100 (``TOKEN_CLS``)."""
    import torch

    total_loss, predicted, gold = 0.0, [], []
    with torch.no_grad():
        for batch in batches:
            labels = batch["labels"].to(dev)
            logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)
                           ).logits.float()
            keep = labels != IGNORED_LABEL
            if not bool(keep.any()):
                continue
            scores, targets = logits[keep], labels[keep]  # (examples, classes), (examples,)
            if int(targets.max()) >= scores.shape[-1] or int(targets.min()) < 0:
                raise RegistryError(f"a label ({int(targets.max())}) is not one of the head's {scores.shape[-1]} "
                                    f"classes (0..{scores.shape[-1] - 1})")
            total_loss += float(torch.nn.functional.cross_entropy(scores, targets, reduction="sum"))
            predicted += scores.argmax(-1).tolist()
            gold += targets.tolist()
    if not gold:
        raise RegistryError("no labelled example to evaluate on (every word's label is -100 or past max_length)")
    right = sum(1 for p, y in zip(predicted, gold, strict=True) if p == y)
    return {"eval_loss": total_loss / len(gold), "accuracy": right / len(gold), "f1": macro_f1(predicted, gold),
            "examples": len(gold)}


def classifier(base: Any, task: str, num_labels: int | None) -> tuple[Any, Any]:
    """The base record's model of classification ``task`` in float32 (a head it lacks gets ``num_labels`` classes,
    initialised from a fixed seed) and its tokenizer, set up as training sets them up."""
    import torch
    import transformers

    transformers.set_seed(0)  # a head the base lacks is random: the same one on every run
    model = load_base_model(base, dtype=torch.float32, task_type=task, num_labels=num_labels)
    tokenizer = tokenizer_for(base, task)
    if task == "SEQ_CLS":
        # a decoder classifier reads each row's last token that is not the config's pad id: that must be the id the
        # collator pads with, or a row shorter than its batch is scored on padding (load_base_model fills a missing
        # pad id with EOS, which need not be the tokenizer's pad token)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


CLASSIFIER_METRICS = ("eval_loss", "accuracy", "f1")
CAUSAL_LM_METRICS = ("eval_loss", "perplexity", "token_accuracy")


def _run_eval(host: JobHost, ctx: JobContext, spec: EvalSpec) -> None:
    from peft import PeftModel

    started = time.monotonic()
    ctx.progress(0.0, "checking inputs", force=True)
    files = [host.data_file(data) for data in spec.datasets]
    inputs = host.load(spec)
    row, base = inputs.versions[spec.version_id], inputs.base
    if base is None:
        raise RegistryError(f"{spec.ref} has no base model recorded")
    folder = host.folder(row, spec.ref)
    task = (row.task_type or "CAUSAL_LM").upper()
    if task not in ("CAUSAL_LM", *CLASSIFICATION_TASKS):
        raise RegistryError(f"{spec.ref} is a {task} adapter; evaluation measures CAUSAL_LM, SEQ_CLS and TOKEN_CLS")
    dev = device()
    ctx.progress(0.05, "loading the base model", force=True)
    if task in CLASSIFICATION_TASKS:
        model, tokenizer = classifier(base, task, head_labels(row.extra_tensors or {}))
        run, names, counted = classify, CLASSIFIER_METRICS, "examples"
    else:
        model, tokenizer = causal_lm(base)
        run, names, counted = measure, CAUSAL_LM_METRICS, "tokens"
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name="candidate").to(dev).eval()
    collate = collator(task, tokenizer)
    report: dict[str, Any] = {"ref": spec.ref, "device": dev, "task_type": task, "max_length": spec.max_length,
                              "datasets": {}}
    if task in CLASSIFICATION_TASKS:
        report["num_labels"] = int(model.config.num_labels)
    for i, (data, path) in enumerate(zip(spec.datasets, files, strict=True)):
        ctx.check_cancel()
        ctx.progress(0.1 + 0.9 * i / len(spec.datasets), f"evaluating on {data.ref}", force=True)
        rows, batches = eval_batches(path, data, tokenizer, collate, spec)
        adapter = run(peft_model, batches, dev)
        with peft_model.disable_adapter():
            bare = run(peft_model, batches, dev)
        report["datasets"][data.ref] = {"sha256": data.sha256, "rows": len(rows), counted: adapter[counted],
                                        "adapter": {k: adapter[k] for k in names}, "base": {k: bare[k] for k in names}}
    report["seconds"] = round(time.monotonic() - started, 3)
    host.commit(ctx, spec, Outcome(report=report, message="evaluated", result_version_id=spec.version_id))
