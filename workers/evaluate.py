"""The ``eval`` job: a version and its bare base, measured on catalog datasets (causal LMs).

For each dataset (pinned by sha256 at submission) the rows are tokenised as training tokenises them
(``workers.train.tokenize_rows``: ``text``, ``prompt`` + ``completion`` with the loss on the completion only, or chat
``messages``), then the base with the adapter and the bare base (the adapter disabled, same weights in memory) are
run over the same batches. Per dataset and model: the mean next-token cross-entropy over labelled tokens
(``eval_loss``), ``perplexity`` = exp(loss), and ``token_accuracy`` (the share of labelled tokens predicted by the
argmax). The report holds them; :mod:`workers.job_metrics` records them as the version's metrics, each with the
dataset's ``name:N``, source ``eval`` and the job id (the bare base's as ``base_eval_loss``, ...).
"""

from __future__ import annotations

import math
import time
from typing import Any

from registry.errors import RegistryError
from registry.jobs import EvalData, EvalSpec
from registry.trainset import load_rows
from workers.context import JobContext
from workers.host import JobHost, Outcome
from workers.quiet import quiet_loading
from workers.train import collator, tokenize_rows
from workers.validate import device, load_base_model


def run_eval(host: JobHost, ctx: JobContext, spec: EvalSpec) -> None:
    with quiet_loading():
        _run_eval(host, ctx, spec)


def measure(model: Any, batches: list[dict[str, Any]], dev: str) -> dict[str, float]:
    """Mean next-token loss, perplexity and token accuracy of ``model`` over labelled tokens of ``batches``."""
    import torch

    total_loss, total_right, total_tokens = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            ids = batch["input_ids"].to(dev)
            mask = batch["attention_mask"].to(dev)
            labels = batch["labels"].to(dev)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shifted, targets = logits[:, :-1, :], labels[:, 1:]
            keep = targets != -100
            if not bool(keep.any()):
                continue
            loss = torch.nn.functional.cross_entropy(shifted[keep], targets[keep], reduction="sum")
            total_loss += float(loss)
            total_right += int((shifted.argmax(-1)[keep] == targets[keep]).sum())
            total_tokens += int(keep.sum())
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

    return load_base_model(base, dtype=torch.float32, task_type="CAUSAL_LM"), causal_tokenizer(base)


def causal_tokenizer(base: Any) -> Any:
    """The base record's tokenizer, padding with EOS when it has no pad token (as training pads)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.local_path, local_files_only=True,
                                              trust_remote_code=bool(base.trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    dev = device()
    ctx.progress(0.05, "loading the base model", force=True)
    model, tokenizer = causal_lm(base)
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name="candidate").to(dev).eval()
    collate = collator("CAUSAL_LM", tokenizer)
    report: dict[str, Any] = {"ref": spec.ref, "device": dev, "max_length": spec.max_length, "datasets": {}}
    for i, (data, path) in enumerate(zip(spec.datasets, files, strict=True)):
        ctx.check_cancel()
        ctx.progress(0.1 + 0.9 * i / len(spec.datasets), f"evaluating on {data.ref}", force=True)
        rows, batches = eval_batches(path, data, tokenizer, collate, spec)
        adapter = measure(peft_model, batches, dev)
        with peft_model.disable_adapter():
            bare = measure(peft_model, batches, dev)
        names = ("eval_loss", "perplexity", "token_accuracy")
        report["datasets"][data.ref] = {"sha256": data.sha256, "rows": len(rows), "tokens": adapter["tokens"],
                                        "adapter": {k: adapter[k] for k in names}, "base": {k: bare[k] for k in names}}
    report["seconds"] = round(time.monotonic() - started, 3)
    host.commit(ctx, spec, Outcome(report=report, message="evaluated", result_version_id=spec.version_id))
