"""The ``train`` job: continue an adapter, create one, or train several jointly, the way PEFT intends.

* Continue: ``PeftModel.from_pretrained(base, path, is_trainable=True)`` (never ``get_peft_model`` on an
  adapted model, never a frozen load); more adapters for joint training with
  ``load_adapter(..., is_trainable=True)`` (trained weights, not ``add_adapter``'s fresh ones), all
  activated together with ``base_model.set_adapter([...])``.
* New: ``get_peft_model`` on the bare base with explicit target module names and the job's task type
  (a classification head is trained in full through ``modules_to_save``, as PEFT does by default).
* The base is loaded with the task's model class (``AutoModelFor...``; see ``workers.base_model.model_class``):
  CAUSAL_LM, SEQ_CLS, TOKEN_CLS and SEQ_2_SEQ_LM train; FEATURE_EXTRACTION is refused before a job exists.
* Before the first step: only the chosen adapters' parameters (LoRA matrices, ``modules_to_save`` copies,
  trainable tokens) require grad, their counts match the catalog, and ``get_layer_status()`` shows each
  adapter on exactly its modules with no nesting.
* After the last step: base weights bit-identical; every adapter's update norm > 0 (else the job fails
  naming it). Each adapter is registered as a new version in the transaction that ends the job.
* ``transformers.Trainer`` runs the loop; checkpoints go to ``checkpoints/job-N`` every N steps and a
  redelivered job resumes from the latest one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from registry import catalog
from registry import models as m
from registry.errors import RegistryError
from registry.inspect import sha256_file
from registry.jobs import TrainSpec
from registry.trainset import CLASSIFICATION_TASKS, IGNORED_LABEL, load_rows
from workers.base_model import load_base_model
from workers.context import JobCancelled, JobContext
from workers.host import DatasetOutput, JobHost, Outcome, Output
from workers.peft_checks import (
    ADAPTER_PARAM_MARKERS,
    adapter_modules,
    adapter_param_owner,
    expected_saved_modules,
    is_saved_module,
    loaded_match_stored,
    nested_layers,
)
from workers.quiet import quiet_loading

# The held-out set is a tenth of the rows, at most this many: evaluated twice, it must stay small next to training.
DEFAULT_MAX_EVAL_ROWS = 200
# The classification heads PEFT trains in full for SEQ_CLS / TOKEN_CLS (its own default ``modules_to_save``).
HEAD_MODULES = ["classifier", "score"]
# Module-path segments PEFT inserts around a base module: dropped to name the base's own weights.
_WRAPPERS = {"base_layer", "original_module", "token_adapter"}


class TrainingCheckFailed(RegistryError):
    """A pre- or post-training check failed; ``report`` holds what was measured."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        self.report = report
        super().__init__(message)


def base_weights(model: Any) -> dict[str, Any]:
    """The base model's own tensors under their names in the base, whether or not adapters are attached.

    Adapter tensors (LoRA matrices, ``modules_to_save`` copies, trainable-token deltas) are left out, and
    PEFT's wrappers are seen through (``q_proj.base_layer.weight`` is ``q_proj.weight``, a
    ``modules_to_save`` module's ``original_module`` is the module): ``unload()`` cannot be used, since it
    puts the *trained* copy of a ``modules_to_save`` module in place of the base's.
    """
    weights = {}
    for key, tensor in model.state_dict().items():
        parts = key.removeprefix("base_model.model.").split(".")
        if ADAPTER_PARAM_MARKERS.intersection(parts):
            continue
        weights[".".join(p for p in parts if p not in _WRAPPERS)] = tensor
    return weights


def _tensor_digest(model: Any) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(base_weights(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _word_labels(words: list[str], labels: list[int], encoding: Any) -> list[int]:
    """Token labels from word labels: each word's label on its first sub-token; -100 on its other sub-tokens and
    on special tokens (transformers' token-classification recipe)."""
    out, previous = [], None
    for word in encoding.word_ids():
        out.append(IGNORED_LABEL if word is None or word == previous else int(labels[word]))
        previous = word
    return out


def tokenizer_for(base: Any, task: str = "CAUSAL_LM") -> Any:
    """The base record's tokenizer as training sets it up: padding with EOS when it has no pad token; a fast one for
    token classification (word labels are aligned with ``word_ids()``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.local_path, local_files_only=True,
                                              trust_remote_code=bool(base.trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if task == "TOKEN_CLS" and not tokenizer.is_fast:
        raise RegistryError("token classification aligns word labels to tokens with a fast tokenizer's word_ids(); "
                            f"the tokenizer of {base.name!r} is not a fast one")
    return tokenizer


def tokenize_rows(rows: Any, tokenizer: Any, fields: str, max_length: int) -> Any:
    """Rows as model inputs and labels for the task layout ``fields`` (the training job's and the eval job's)."""
    eos = tokenizer.eos_token or ""

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        if fields == "text_label":
            ids = tokenizer(example["text"], truncation=True, max_length=max_length)["input_ids"]
            label = example["label"] if "label" in example else example["labels"]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(label)}
        if fields == "token_labels":
            words = example["tokens"] if example.get("tokens") is not None else str(example["text"]).split()
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
            ids = enc["input_ids"]
            return {"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": _word_labels(words, example["labels"], enc)}
        if fields == "text_target":
            ids = tokenizer(example["text"], truncation=True, max_length=max_length)["input_ids"]
            target = tokenizer(text_target=example["target"], truncation=True, max_length=max_length)["input_ids"]
            if tokenizer.eos_token_id is not None and (not target or target[-1] != tokenizer.eos_token_id):
                target = target[:max_length - 1] + [tokenizer.eos_token_id]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": target}
        if fields == "prompt_completion":
            prompt = tokenizer(example["prompt"], add_special_tokens=True)["input_ids"]
            completion = tokenizer(example["completion"] + eos, add_special_tokens=False)["input_ids"]
            ids = (prompt + completion)[:max_length]
            labels = ([-100] * len(prompt) + completion)[:max_length]
        else:
            text = (tokenizer.apply_chat_template(example["messages"], tokenize=False)
                    if fields == "messages" else example["text"])
            ids = tokenizer(text + eos, truncation=True, max_length=max_length)["input_ids"]
            labels = list(ids)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    encoded = rows.map(encode, remove_columns=rows.column_names)
    if fields == "token_labels":  # rows whose words all fell past max_length teach nothing
        return encoded.filter(lambda ex: any(label != IGNORED_LABEL for label in ex["labels"]))
    shortest = 2 if fields in ("text", "prompt_completion", "messages") else 1  # a causal LM predicts the next token
    return encoded.filter(lambda ex: len(ex["input_ids"]) >= shortest and ex["labels"] != [])


def _expectations(spec: TrainSpec, model: Any, modules_to_save: list[str],
                  sources: list[m.AdapterVersion]) -> tuple[list[set[str]], list[int]]:
    """Each adapter's expected modules (LoRA layers and modules trained in full) and trainable parameter count.

    Continuing: the catalog's (its LoRA modules and stored ``modules_to_save`` tensors; its parameter count,
    which counts every stored tensor). New: the targets' modules in the base (the catalog's shape rule),
    ``r * (in + out)`` parameters each, plus every module PEFT's ``modules_to_save`` rule (a module path
    ending with a listed name) matches, in full.
    """
    from registry.basemodel import module_shapes

    if spec.new is None:
        return ([set((row.module_tensors or {}).keys()) | expected_saved_modules(row) for row in sources],
                [int(row.param_count) for row in sources])
    shapes = module_shapes(model)
    targets = set(spec.new.targets)
    lora = {name for name in shapes if name.rsplit(".", 1)[-1] in targets}
    saved = {name for name, _ in model.named_modules() if name and any(name.endswith(t) for t in modules_to_save)}
    params = (sum(spec.new.r * (shapes[n]["in"] + shapes[n]["out"]) for n in lora)
              + sum(p.numel() for n in saved for p in model.get_submodule(n).parameters()))
    return [lora | saved], [params]


def prechecks(peft_model: Any, names: list[str], expected_modules: list[set[str]],
              expected_params: list[int], labels: list[str]) -> dict[str, Any]:
    """Trainable parameters and layer status before the first step; raises naming what is wrong.

    ``names`` are the adapters' names inside the PeftModel, ``labels`` what the user calls them. An adapter's
    parameters are its LoRA matrices, its ``modules_to_save`` copies and its trainable-token deltas.
    """
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    owners = {n: adapter_param_owner(n) for n in trainable}
    strays = sorted(n for n in trainable if owners[n] not in names)
    counts = {a: sum(c for n, c in trainable.items() if owners[n] == a) for a in names}
    status = peft_model.get_layer_status()
    layers = {a: adapter_modules(status, a) for a in names}
    nested = nested_layers(s.name for s in status)
    saved = {a: sorted(adapter_modules([s for s in status if is_saved_module(s)], a)) for a in names}
    report = {"trainable_params": counts, "expected_params": dict(zip(names, expected_params, strict=True)),
              "layers": {a: len(v) for a, v in layers.items()}, "modules_to_save": saved, "nested": nested[:5],
              "strays": strays[:5]}
    problems = []
    if strays:
        problems.append(f"parameters outside the chosen adapters require grad: {strays[:3]}")
    if nested:
        problems.append(f"nested LoRA layers: {nested[:3]}")
    for a, label, want_params, want_modules in zip(names, labels, expected_params, expected_modules, strict=True):
        if counts[a] == 0:
            problems.append(f"adapter {label} has no trainable parameters: it is not in the active set or was loaded "
                            "frozen, so it would never receive a gradient")
        elif counts[a] != want_params:
            problems.append(f"adapter {label} has {counts[a]} trainable parameters, the catalog says {want_params}")
        if layers[a] != want_modules:
            missing = sorted(want_modules - layers[a])
            extra = sorted(layers[a] - want_modules)
            problems.append(
                f"adapter {label} sits on the wrong modules (missing {missing[:2]}, unexpected {extra[:2]})"
            )
    if problems:
        raise TrainingCheckFailed("pre-training checks failed: " + "; ".join(problems), {"prechecks": report})
    return report


def _last_complete_checkpoint(folder: Path, names: list[str]) -> str | None:
    """The newest checkpoint that was fully written (a worker killed mid-save leaves a partial one).

    ``trainer_state.json`` is written after the weights and the optimizer state, so its presence and every
    adapter's weights mark a complete checkpoint; partial ones are removed.
    """
    import shutil

    found = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        complete = (path / "trainer_state.json").is_file() and all(
            (path / name / "adapter_model.safetensors").is_file() for name in names)
        if complete:
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def collator(task: str, tokenizer: Any) -> Any:
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == "SEQ_CLS":
        return DataCollatorWithPadding(tokenizer)
    if task == "TOKEN_CLS":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORED_LABEL)
    # causal LM labels, and seq2seq targets (the model shifts them right into its decoder inputs)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORED_LABEL, padding=True)


def _predicted_classes(logits: Any, labels: Any) -> Any:
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _accuracy(prediction: Any) -> dict[str, float]:
    """Share of labelled positions (sequences, or tokens not labelled -100) whose class is predicted."""
    predicted, labels = prediction.predictions, prediction.label_ids
    mask = labels != IGNORED_LABEL
    return {"accuracy": float((predicted[mask] == labels[mask]).mean()) if mask.any() else 0.0}


def run_train(host: JobHost, ctx: JobContext, spec: TrainSpec) -> None:
    with quiet_loading():  # library noise off (model loads, Trainer) unless ADREG_VERBOSE=1
        _run_train(host, ctx, spec)


def _run_train(host: JobHost, ctx: JobContext, spec: TrainSpec) -> None:
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    started = time.monotonic()
    ctx.progress(0.0, "checking inputs", force=True)
    data_path = host.data_file(spec.data)
    inputs = host.load(spec)
    base = inputs.base
    sources = [inputs.versions[src.version_id] for src in spec.sources]
    folders = [host.folder(row, src.ref) for row, src in zip(sources, spec.sources, strict=True)]

    names = [f"a{i}" for i in range(len(spec.names))]
    task = spec.task_type
    cuda = torch.cuda.is_available()
    transformers.set_seed(spec.seed)  # also seeds a classification head the base lacks
    ctx.progress(0.02, "loading the base model", force=True)
    model = load_base_model(base, dtype=torch.bfloat16 if spec.bf16 and cuda else torch.float32, task_type=task,
                            num_labels=spec.num_labels)
    if isinstance(model, PeftModel) or getattr(model, "peft_config", None):
        raise RegistryError(f"the base model at {base.local_path} already carries an adapter; refusing to stack")
    tokenizer = tokenizer_for(base, task)
    if task == "SEQ_CLS":
        # A decoder classifier reads each row's last non-pad token: the pad id must be the one the collator pads
        # with (load_base_model may have set EOS, which differs from the tokenizer's pad on e.g. Llama).
        model.config.pad_token_id = tokenizer.pad_token_id
    if task in CLASSIFICATION_TASKS and spec.data.num_labels and spec.data.num_labels > model.config.num_labels:
        raise RegistryError(f"the data has class ids up to {spec.data.num_labels - 1} but the model's head has "
                            f"{model.config.num_labels} classes")
    base_digest = _tensor_digest(model)
    modules_to_save = HEAD_MODULES if task in CLASSIFICATION_TASKS else []
    expected_modules, expected_params = _expectations(spec, model, modules_to_save, sources)

    if spec.new is not None:
        config = LoraConfig(r=spec.new.r, lora_alpha=spec.new.alpha, target_modules=spec.new.targets,
                            lora_dropout=spec.new.dropout, use_rslora=spec.new.use_rslora, task_type=task,
                            modules_to_save=modules_to_save or None)
        peft_model = get_peft_model(model, config, adapter_name=names[0])
    else:
        peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0], is_trainable=True)
        for name, folder in zip(names[1:], folders[1:], strict=True):
            peft_model.load_adapter(str(folder), adapter_name=name, is_trainable=True)
    active = [names[i] for i in (spec.active if spec.active is not None else range(len(names)))]
    peft_model.base_model.set_adapter(active)
    report: dict[str, Any] = {"adapters": dict(zip(names, spec.names, strict=True)), "active": active,
                              "task_type": task, "model_class": type(model).__name__}
    labels = [src.ref for src in spec.sources] or spec.names
    report["prechecks"] = prechecks(peft_model, names, expected_modules, expected_params, labels)
    initial = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    report["loaded_weights_match_sources"] = loaded_match_stored(peft_model, names, folders)
    if not all(report["loaded_weights_match_sources"].values()):
        raise TrainingCheckFailed("the loaded adapter weights differ from the stored ones", report)

    rows = load_rows(str(data_path), spec.data.format)
    n_rows = len(rows)
    n_eval = spec.eval_rows or (min(max(1, n_rows // 10), DEFAULT_MAX_EVAL_ROWS) if n_rows >= 2 else 0)
    if n_eval and n_eval < n_rows:
        split = rows.train_test_split(test_size=n_eval, seed=spec.seed, shuffle=True)
        train_rows, eval_rows = split["train"], split["test"]
    else:
        train_rows, eval_rows = rows, rows
    train_set = tokenize_rows(train_rows, tokenizer, spec.data.fields, spec.max_length)
    eval_set = tokenize_rows(eval_rows, tokenizer, spec.data.fields, spec.max_length)
    if len(train_set) == 0:
        raise RegistryError("no training example is left after tokenisation (too short, or no label within "
                            f"max_length={spec.max_length})")
    mean_tokens = sum(len(x) for x in train_set["input_ids"]) / len(train_set)

    ckpt_dir = ctx.checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    losses: list[tuple[int, float]] = []
    setup_end = time.monotonic()
    tokens_per_step = spec.batch_size * spec.grad_accum * mean_tokens  # estimated: rows x mean row length

    class JobCallback(TrainerCallback):
        cancelled = False
        begin = (0, setup_end)  # (global step, time) when this attempt's training loop started

        def on_train_begin(self, args, tstate, control, **kw):  # type: ignore[no-untyped-def]
            self.begin = (tstate.global_step, time.monotonic())  # a resumed run starts past step 0

        def on_log(self, args, tstate, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append((tstate.global_step, float(logs["loss"])))
                step0, t0 = self.begin
                rate = (tstate.global_step - step0) * tokens_per_step / max(time.monotonic() - t0, 1e-6)
                ctx.progress(0.05 + 0.85 * tstate.global_step / spec.steps,
                             f"step {tstate.global_step}/{spec.steps} loss {logs['loss']:.4f} {rate:,.0f} tokens/s")

        def on_step_end(self, args, tstate, control, **kw):  # type: ignore[no-untyped-def]
            if ctx.should_cancel():
                self.cancelled = True
                control.should_training_stop = True

    callback = JobCallback()

    class AdapterTrainer(Trainer):
        """Resumes every adapter from the checkpoint, keeping all of them active and trainable.

        (Trainer's own PEFT resume re-activates only the first adapter, breaking joint training.)
        """

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):  # type: ignore[no-untyped-def]
            for name in names:
                sub = Path(resume_from_checkpoint) / name / "adapter_model.safetensors"
                set_peft_model_state_dict(peft_model, load_file(str(sub)), adapter_name=name)
            peft_model.base_model.set_adapter(active)

    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=spec.steps, per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size, gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="steps", save_steps=spec.checkpoint_every, save_total_limit=2,
        report_to=[], seed=spec.seed, data_seed=spec.seed, use_cpu=not cuda, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, bf16=spec.bf16 and cuda, label_names=["labels"],
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if spec.gradient_checkpointing and cuda else {}),
    )
    # Trainer's own optimizer choice (fused AdamW where torch has it), with one parameter group per adapter
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, peft_model)
    lrs = spec.lrs or [spec.lr] * len(names)
    groups = [{"params": [p for n, p in peft_model.named_parameters()
                          if p.requires_grad and adapter_param_owner(n) == a], "lr": lr}
              for a, lr in zip(names, lrs, strict=True)]
    optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
    classify = task in CLASSIFICATION_TASKS
    trainer = AdapterTrainer(
        model=peft_model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=collator(task, tokenizer), optimizers=(optimizer, None), callbacks=[callback],
        compute_metrics=_accuracy if classify else None,
        preprocess_logits_for_metrics=_predicted_classes if classify else None,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the job row, not to stdout

    def evaluate() -> dict[str, float]:
        """Eval loss, and for classification the accuracy, on the held-out rows."""
        metrics = trainer.evaluate()
        return {k: float(metrics[f"eval_{k}"]) for k in ("loss", "accuracy") if f"eval_{k}" in metrics}

    before_file = ckpt_dir / "eval_before.json"
    if before_file.exists():  # a resumed attempt: the first attempt measured the untrained adapter
        before = json.loads(before_file.read_text())
    else:
        before = evaluate()
        before_file.write_text(json.dumps(before))
    train_start = time.monotonic()
    resume = _last_complete_checkpoint(ckpt_dir, names)
    report["resumed_from_step"] = int(resume.rsplit("-", 1)[-1]) if resume else 0
    ctx.progress(0.05, f"training ({spec.steps} steps)", force=True)
    result = trainer.train(resume_from_checkpoint=resume)
    if callback.cancelled:
        raise JobCancelled(f"job {ctx.job_id} was cancelled")
    train_end = time.monotonic()
    after = evaluate()
    eval_end = time.monotonic()

    norms = {}
    for a in names:
        # ``initial`` was copied before the trainer moved the model to its device (CUDA on a GPU worker).
        sq = sum(float((p.detach().float() - initial[n].to(p.device).float()).pow(2).sum())
                 for n, p in peft_model.named_parameters() if n in initial and adapter_param_owner(n) == a)
        norms[a] = math.sqrt(sq)
    for metric in ("loss", "accuracy"):
        if metric in after:
            report[f"eval_{metric}_before"], report[f"eval_{metric}_after"] = before.get(metric), after[metric]
    report.update({
        "loss_curve": losses,
        "update_norms": {spec.names[i]: norms[a] for i, a in enumerate(names)},
        "steps": int(result.global_step), "train_rows": len(train_set), "eval_rows": len(eval_set),
        "tokens_per_second": round(result.metrics.get("train_samples_per_second", 0.0) * mean_tokens, 1),
        "seconds": round(eval_end - setup_end, 2), "device": "cuda" if cuda else "cpu",
        "dataset": {"sha256": spec.data.sha256, "rows": spec.data.rows, "path": spec.data.path,
                    "format": spec.data.format, "fields": spec.data.fields,
                    "split": {"train": len(train_set), "eval": len(eval_set), "seed": spec.seed}},
    })
    frozen = [spec.names[i] for i, a in enumerate(names) if norms[a] <= 1e-12]
    if frozen:
        raise TrainingCheckFailed(f"adapter(s) {', '.join(frozen)} did not change during training", report)

    out = ctx.scratch / "trained"
    for a in names:
        peft_model.save_pretrained(str(out), selected_adapters=[a])
    base_after = _tensor_digest(peft_model)  # the base's own weights, seen through PEFT's wrappers
    report["base_unchanged"] = base_after == base_digest
    # where the job's time went: the training loop vs the job's own work around it (load, checks, evals, save)
    evals = (train_start - setup_end) + (eval_end - train_end)
    report["timings"] = {"setup": round(setup_end - started, 3), "eval": round(evals, 3),
                         "train": round(train_end - train_start, 3), "finish": round(time.monotonic() - eval_end, 3)}
    if base_after != base_digest:
        raise TrainingCheckFailed("the base model's weights changed during training", report)

    outputs = []
    params = {"steps": spec.steps, "lr": spec.lr, "batch_size": spec.batch_size, "seed": spec.seed,
              "dataset_sha256": spec.data.sha256, "dataset_rows": spec.data.rows,
              "split": report["dataset"]["split"], "job": ctx.job_id}
    for i, a in enumerate(names):
        folder = out / a
        cfg_file = folder / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.update(base_model_name_or_path=base.name, revision=base.revision)
        cfg_file.write_text(json.dumps(cfg, indent=2))
        edge = {**params, "trained_with": [n for j, n in enumerate(spec.names) if j != i]}
        parents = ([catalog.ParentSpec(spec.sources[i].version_id, "finetune", None, 0, edge)]
                   if spec.sources else [])
        outputs.append(Output(spec.names[i], folder, spec.base_model_id, parents=parents))
    splits = _split_datasets(ctx.scratch / "splits", spec, train_rows, eval_rows)
    report["dataset"]["split_datasets"] = {d.role: {"name": d.name, "sha256": d.sha256, "rows": d.rows}
                                           for d in splits}
    host.commit(ctx, spec, Outcome(report=report, message="trained", outputs=outputs, datasets=splits))


def split_name(adapter: str, role: str) -> str:
    """The catalog name of a training split: ``<adapter>-train`` / ``<adapter>-heldout`` (within 64 characters)."""
    suffix = f"-{role}"
    return adapter[: 64 - len(suffix)].rstrip("-._") + suffix


def _split_datasets(folder: Path, spec: TrainSpec, train_rows: Any, eval_rows: Any) -> list[DatasetOutput]:
    """The train and held-out rows as JSON Lines files, to record as datasets linked to the trained versions."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for role, rows in (("train", train_rows), ("heldout", eval_rows)):
        file = folder / f"{role}.jsonl"
        rows.to_json(str(file), lines=True)
        out.append(DatasetOutput(name=split_name(spec.names[0], role), role=role, file=file, sha256=sha256_file(file),
                                 format="json", rows=len(rows), columns=list(rows.column_names),
                                 task_type=spec.task_type))
    return out
