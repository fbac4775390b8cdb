"""The ``train`` job: continue an adapter, create one, or train several jointly, the way PEFT intends.

* Continue: ``PeftModel.from_pretrained(base, path, is_trainable=True)`` (never ``get_peft_model`` on an
  adapted model, never a frozen load); more adapters for joint training with
  ``load_adapter(..., is_trainable=True)`` (trained weights, not ``add_adapter``'s fresh ones), all
  activated together with ``base_model.set_adapter([...])``.
* New: ``get_peft_model`` on the bare base with explicit target module names.
* Before the first step: only the chosen adapters' LoRA parameters require grad, their counts match
  the catalog, and ``get_layer_status()`` shows each adapter on exactly its modules with no nesting.
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
from typing import TYPE_CHECKING, Any

from registry import catalog
from registry import models as m
from registry.db import transaction
from registry.errors import RegistryError
from registry.inspect import inspect_adapter, sha256_file, weights_path
from registry.jobs import TrainSpec, ValidateSpec
from registry.trainset import load_rows
from workers.merge_job import InputChanged, verified_folders
from workers.runners import JobCancelled, JobContext, complete
from workers.validate import adapter_modules, load_base_model, nested_layers

if TYPE_CHECKING:
    from registry.sdk import Registry


# The held-out set is a tenth of the rows, at most this many: evaluated twice, it must stay small next to training.
DEFAULT_MAX_EVAL_ROWS = 200


class TrainingCheckFailed(RegistryError):
    """A pre- or post-training check failed; ``report`` holds what was measured."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        self.report = report
        super().__init__(message)


def _tensor_digest(model: Any) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tokenize(rows: Any, tokenizer: Any, fields: str, max_length: int) -> Any:
    eos = tokenizer.eos_token or ""

    def encode(example: dict[str, Any]) -> dict[str, list[int]]:
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
    return encoded.filter(lambda ex: len(ex["input_ids"]) > 1)


def _expected_modules(spec: TrainSpec, base: m.BaseModelRecord, sources: list[m.AdapterVersion]) -> list[set[str]]:
    if spec.new is not None:
        targets = set(spec.new.targets)
        return [{name for name in base.module_shapes if name.rsplit(".", 1)[-1] in targets}]
    return [set((row.module_tensors or {}).keys()) for row in sources]


def _expected_params(spec: TrainSpec, base: m.BaseModelRecord, sources: list[m.AdapterVersion],
                     modules: list[set[str]]) -> list[int]:
    if spec.new is not None:
        shapes = base.module_shapes
        return [sum(spec.new.r * (shapes[n]["in"] + shapes[n]["out"]) for n in modules[0])]
    return [int(row.param_count) for row in sources]


def prechecks(peft_model: Any, names: list[str], expected_modules: list[set[str]],
              expected_params: list[int], labels: list[str]) -> dict[str, Any]:
    """Trainable parameters and layer status before the first step; raises naming what is wrong.

    ``names`` are the adapters' names inside the PeftModel, ``labels`` what the user calls them.
    """
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    strays = sorted(n for n in trainable if ".lora_" not in n or not any(f".{a}." in n for a in names))
    counts = {a: sum(c for n, c in trainable.items() if f".{a}." in n) for a in names}
    status = peft_model.get_layer_status()
    layers = {a: adapter_modules(status, a) for a in names}
    nested = nested_layers(s.name for s in status)
    report = {"trainable_params": counts, "expected_params": dict(zip(names, expected_params, strict=True)),
              "layers": {a: len(v) for a, v in layers.items()}, "nested": nested[:5], "strays": strays[:5]}
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


def _loaded_match_sources(peft_model: Any, names: list[str], folders: list[Path]) -> dict[str, bool]:
    """Each continued adapter starts from its trained weights (not from a fresh ``add_adapter`` init)."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    result = {}
    for name, folder in zip(names, folders, strict=False):
        stored = load_file(str(folder / "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(peft_model, adapter_name=name)
        result[name] = stored.keys() == loaded.keys() and all(
            torch.equal(stored[k].to(loaded[k].dtype), loaded[k].detach().cpu()) for k in stored
        )
    return result


def run_train(registry: Registry, ctx: JobContext, spec: TrainSpec) -> None:
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    started = time.monotonic()
    ctx.progress(0.0, "checking inputs", force=True)
    if sha256_file(Path(spec.data.path)) != spec.data.sha256:
        raise InputChanged(f"data file {spec.data.path} changed since the job was submitted")
    with registry._sessions() as s:
        base = s.get(m.BaseModelRecord, spec.base_model_id)
        sources = [s.get(m.AdapterVersion, src.version_id) for src in spec.sources]
    if base is None or any(r is None for r in sources):
        raise InputChanged("an input of this job was deleted from the catalog")
    folders = verified_folders(registry, spec.sources)

    names = [f"a{i}" for i in range(len(spec.names))]
    cuda = torch.cuda.is_available()
    transformers.set_seed(spec.seed)
    ctx.progress(0.02, "loading the base model", force=True)
    model = load_base_model(base, dtype=torch.bfloat16 if spec.bf16 and cuda else torch.float32)
    if isinstance(model, PeftModel) or getattr(model, "peft_config", None):
        raise RegistryError(f"the base model at {base.local_path} already carries an adapter; refusing to stack")
    tokenizer = AutoTokenizer.from_pretrained(base.local_path, local_files_only=True,
                                              trust_remote_code=bool(base.trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_digest = _tensor_digest(model)

    if spec.new is not None:
        config = LoraConfig(r=spec.new.r, lora_alpha=spec.new.alpha, target_modules=spec.new.targets,
                            lora_dropout=spec.new.dropout, use_rslora=spec.new.use_rslora, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config, adapter_name=names[0])
    else:
        peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0], is_trainable=True)
        for name, folder in zip(names[1:], folders[1:], strict=True):
            peft_model.load_adapter(str(folder), adapter_name=name, is_trainable=True)
    active = [names[i] for i in (spec.active if spec.active is not None else range(len(names)))]
    peft_model.base_model.set_adapter(active)
    expected_modules = _expected_modules(spec, base, sources)
    report: dict[str, Any] = {"adapters": dict(zip(names, spec.names, strict=True)), "active": active}
    labels = [src.ref for src in spec.sources] or spec.names
    report["prechecks"] = prechecks(peft_model, names, expected_modules,
                                    _expected_params(spec, base, sources, expected_modules), labels)
    initial = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    report["loaded_weights_match_sources"] = _loaded_match_sources(peft_model, names, folders)
    if not all(report["loaded_weights_match_sources"].values()):
        raise TrainingCheckFailed("the loaded adapter weights differ from the stored ones", report)

    rows = load_rows(spec.data.path, spec.data.format)
    n_rows = len(rows)
    n_eval = spec.eval_rows or (min(max(1, n_rows // 10), DEFAULT_MAX_EVAL_ROWS) if n_rows >= 2 else 0)
    if n_eval and n_eval < n_rows:
        split = rows.train_test_split(test_size=n_eval, seed=spec.seed, shuffle=True)
        train_rows, eval_rows = split["train"], split["test"]
    else:
        train_rows, eval_rows = rows, rows
    train_set = _tokenize(train_rows, tokenizer, spec.data.fields, spec.max_length)
    eval_set = _tokenize(eval_rows, tokenizer, spec.data.fields, spec.max_length)
    if len(train_set) == 0:
        raise RegistryError("no training example is longer than one token after tokenisation")
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
        remove_unused_columns=False, disable_tqdm=True, bf16=spec.bf16 and cuda,
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if spec.gradient_checkpointing and cuda else {}),
    )
    # Trainer's own optimizer choice (fused AdamW where torch has it), with one parameter group per adapter
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, peft_model)
    lrs = spec.lrs or [spec.lr] * len(names)
    groups = [{"params": [p for n, p in peft_model.named_parameters() if p.requires_grad and f".{a}." in n], "lr": lr}
              for a, lr in zip(names, lrs, strict=True)]
    optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
    trainer = AdapterTrainer(
        model=peft_model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
        optimizers=(optimizer, None), callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the job row, not to stdout
    before_file = ckpt_dir / "eval_before.json"
    if before_file.exists():  # a resumed attempt: the first attempt measured the untrained adapter
        eval_before = json.loads(before_file.read_text())["eval_loss"]
    else:
        eval_before = float(trainer.evaluate()["eval_loss"])
        before_file.write_text(json.dumps({"eval_loss": eval_before}))
    train_start = time.monotonic()
    resume = _last_complete_checkpoint(ckpt_dir, names)
    report["resumed_from_step"] = int(resume.rsplit("-", 1)[-1]) if resume else 0
    ctx.progress(0.05, f"training ({spec.steps} steps)", force=True)
    result = trainer.train(resume_from_checkpoint=resume)
    if callback.cancelled:
        raise JobCancelled(f"job {ctx.job_id} was cancelled")
    train_end = time.monotonic()
    eval_after = float(trainer.evaluate()["eval_loss"])
    eval_end = time.monotonic()

    norms = {}
    for a in names:
        sq = sum(float((p.detach() - initial[n]).float().pow(2).sum())
                 for n, p in peft_model.named_parameters() if n in initial and f".{a}." in n)
        norms[a] = math.sqrt(sq)
    report.update({
        "eval_loss_before": eval_before, "eval_loss_after": eval_after, "loss_curve": losses,
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
    peft_model.base_model.set_adapter(names)
    base_after = _tensor_digest(peft_model.unload())
    report["base_unchanged"] = base_after == base_digest
    # where the job's time went: the training loop vs the job's own work around it (load, checks, evals, save)
    evals = (train_start - setup_end) + (eval_end - train_end)
    report["timings"] = {"setup": round(setup_end - started, 3), "eval": round(evals, 3),
                         "train": round(train_end - train_start, 3), "finish": round(time.monotonic() - eval_end, 3)}
    if base_after != base_digest:
        raise TrainingCheckFailed("the base model's weights changed during training", report)

    stored = []
    for i, a in enumerate(names):
        folder = out / a
        cfg_file = folder / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.update(base_model_name_or_path=base.name, revision=base.revision)
        cfg_file.write_text(json.dumps(cfg, indent=2))
        manifest = inspect_adapter(folder)
        stored.append((spec.names[i], manifest, registry.store.put_adapter(weights_path(folder),
                                                                           manifest.weights_sha256, manifest.config)))
    params = {"steps": spec.steps, "lr": spec.lr, "batch_size": spec.batch_size, "seed": spec.seed,
              "dataset_sha256": spec.data.sha256, "dataset_rows": spec.data.rows,
              "split": report["dataset"]["split"], "job": ctx.job_id}
    with transaction(registry._sessions) as s:
        results = []
        for i, (name, manifest, storage) in enumerate(stored):
            edge = {**params, "trained_with": [n for j, n in enumerate(spec.names) if j != i]}
            parents = ([catalog.ParentSpec(spec.sources[i].version_id, "finetune", None, 0, edge)]
                       if spec.sources else [])
            row, _ = catalog.register_version(s, name, manifest, storage, base, tags=spec.tags,
                                              source_uri=f"job:{ctx.job_id}", parents=parents)
            results.append((row.id, f"{name}:{row.version}"))
        report["registered"] = [ref for _, ref in results]
        complete(registry, ctx, s, result_version_id=results[0][0], report=report, progress_message="trained")
    if spec.validate_after:
        for version_id, ref in results:
            registry.submit(ValidateSpec(version_id=version_id, ref=ref), parent_job_id=ctx.job_id)
