"""The ``validate`` job: load a version on its real base model with PEFT and check what it does.

The base is loaded with the model class of the adapter's task type (``AutoModelFor...``; the base record's own
architecture when it already is one) and the adapter with ``PeftModel.from_pretrained``. Checks (all recorded
in the job's report; a ``validated`` compatibility record is written when all pass):

* ``get_layer_status()``: the adapter is present and enabled on exactly the modules it targets and the
  modules it trains in full (``modules_to_save``, trainable tokens), no LoRA layer sits inside another, and
  nothing is trainable after loading for inference;
* the loaded adapter weights (PEFT's own ``get_peft_model_state_dict``) equal the stored ones, tensor for
  tensor, ``modules_to_save`` included;
* the model's main output on fixed probe inputs (logits; the last hidden state for ``FEATURE_EXTRACTION``;
  seq2seq models get the probes shifted right as ``decoder_input_ids``) is finite and differs from the
  base's (the adapter is not a no-op);
* for merges: the probe logits' distance from each parent; and for exact methods (``cat``, or ``svd``
  with ``svd_rank`` at least the sum of the parents' ranks) equality, within ``atol``, with the base
  carrying every parent at its weight (PEFT with all parents active, each scaled by its weight).
"""

from __future__ import annotations

from typing import Any

from registry.errors import RegistryError
from registry.jobs import ValidateSpec
from registry.retention import RETAINED_TASKS
from registry.targets import head_labels
from registry.trainset import CLASSIFICATION_TASKS, VALIDATED_TASKS
from workers.base_model import device, load_base_model
from workers.context import JobContext
from workers.host import JobHost, Outcome
from workers.peft_checks import (
    adapter_modules,
    expected_saved_modules,
    is_saved_module,
    loaded_match_stored,
    nested_layers,
)
from workers.quiet import quiet_loading

CANDIDATE = "candidate"

class ValidationFailed(RegistryError):
    """One or more runtime checks failed; ``report`` holds every check's outcome."""

    def __init__(self, ref: str, failures: list[str], report: dict[str, Any]) -> None:
        self.report = report
        super().__init__(f"{ref} failed runtime validation: " + "; ".join(failures))


def probe_inputs(model: Any, task_type: str | None, count: int, length: int, vocab: int, dev: str) -> dict[str, Any]:
    """Fixed random token ids (seed 0); a seq2seq model also gets them shifted right as ``decoder_input_ids``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (count, length), generator=gen)
    inputs = {"input_ids": ids}
    if task_type == "SEQ_2_SEQ_LM" or getattr(model.config, "is_encoder_decoder", False):
        start = model.config.decoder_start_token_id
        start = start if isinstance(start, int) else (model.config.pad_token_id or 0)
        inputs["decoder_input_ids"] = torch.cat([torch.full((count, 1), start), ids[:, :-1]], dim=1)
    return {k: v.to(dev) for k, v in inputs.items()}


def main_output(outputs: Any, task_type: str | None) -> Any:
    """The output a probe compares: the logits, or the last hidden state of a FEATURE_EXTRACTION model."""
    if task_type == "FEATURE_EXTRACTION" or getattr(outputs, "logits", None) is None:
        return outputs.last_hidden_state
    return outputs.logits


def layer_checks(peft_model: Any, expected_modules: set[str]) -> tuple[dict[str, Any], list[str]]:
    """What ``get_layer_status`` / ``get_model_status`` say about the candidate adapter.

    ``expected_modules``: its LoRA modules and the modules it trains in full or per token.
    """
    failures: list[str] = []
    layers = [s for s in peft_model.get_layer_status() if CANDIDATE in s.available_adapters]
    found = adapter_modules(layers, CANDIDATE)
    saved = sorted(adapter_modules([s for s in layers if is_saved_module(s)], CANDIDATE))
    nested = nested_layers(found)
    disabled = sorted(s.name for s in layers if not s.enabled or CANDIDATE not in s.active_adapters)
    missing = sorted(expected_modules - found)
    unexpected = sorted(found - expected_modules)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if missing:
        failures.append(f"{len(missing)} targeted module(s) carry no adapter layer (first: {missing[0]})")
    if unexpected:
        failures.append(f"{len(unexpected)} unexpected adapter layer(s) (first: {unexpected[0]})")
    if nested:
        failures.append(f"nested LoRA layers: {nested[:3]}")
    if disabled:
        failures.append(f"adapter inactive on {len(disabled)} layer(s)")
    if trainable:
        failures.append(f"{trainable} parameters are trainable after loading for inference")
    status = peft_model.get_model_status()
    return {
        "layers": len(layers), "expected_layers": len(expected_modules), "modules_to_save": saved[:10],
        "missing": missing[:10],
        "unexpected": unexpected[:10], "nested": nested[:10], "disabled": disabled[:10],
        "trainable_params": trainable, "peft_types": status.peft_types, "enabled": status.enabled,
    }, failures


def run_validate(host: JobHost, ctx: JobContext, spec: ValidateSpec) -> None:
    with quiet_loading():  # library noise off (model loads) unless ADREG_VERBOSE=1
        _run_validate(host, ctx, spec)


def _run_validate(host: JobHost, ctx: JobContext, spec: ValidateSpec) -> None:
    import torch
    from peft import PeftModel

    inputs = host.load(spec)
    row, base = inputs.versions[spec.version_id], inputs.base
    assert base is not None  # load() refuses a version without a base
    parents = [(inputs.versions.get(pid), w) for pid, w in inputs.parents]
    edge_params = inputs.edge_params
    folder = host.folder(row, spec.ref)
    task = (row.task_type or "").upper() or None
    if task is not None and task not in VALIDATED_TASKS:
        raise RegistryError(f"{spec.ref} is a {task} adapter; runtime validation supports the task types "
                            f"{', '.join(VALIDATED_TASKS)}")
    expected = set((row.module_tensors or {}).keys()) | expected_saved_modules(row)
    dev = device()
    failures: list[str] = []
    report: dict[str, Any] = {"ref": spec.ref, "device": dev, "task_type": task}

    ctx.progress(0.05, "loading the base model", force=True)
    num_labels = head_labels(row.extra_tensors or {}) if task in CLASSIFICATION_TASKS else None
    if task in CLASSIFICATION_TASKS:
        import transformers

        transformers.set_seed(0)  # a head the base lacks is random: the eval job's, so base losses agree
    model = load_base_model(base, task_type=task, num_labels=num_labels).to(dev).eval()
    report["model_class"] = type(model).__name__
    vocab = int(getattr(model.config, "vocab_size", 0) or base.vocab_size or 2)
    probes = probe_inputs(model, task, spec.probe_count, spec.probe_length, vocab, dev)

    def logits(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return main_output(net(**probes), task).float()

    base_logits = logits(model)
    ctx.check_cancel()
    ctx.progress(0.3, "loading the adapter with PEFT", force=True)
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=CANDIDATE, is_trainable=False)
    peft_model.eval()
    report["layer_status"], layer_failures = layer_checks(peft_model, expected)
    failures += layer_failures
    report["loaded_weights_match_stored"] = loaded_match_stored(peft_model, [CANDIDATE], [folder])[CANDIDATE]
    if not report["loaded_weights_match_stored"]:
        failures.append("the adapter PEFT loaded differs from the stored weights (a tensor missing, extra or changed)")

    cand = logits(peft_model)
    finite = bool(torch.isfinite(cand).all())
    distance_from_base = float((cand - base_logits).abs().max())
    output = "last hidden state" if task == "FEATURE_EXTRACTION" else "logits"
    report["logits"] = {"output": output, "finite": finite, "max_abs_diff_from_base": distance_from_base}
    if not finite:
        failures.append(f"{output} contain NaN/Inf")
    if distance_from_base <= 1e-6:
        failures.append(f"the adapter does not change the base model's {output} (a no-op)")

    if parents and all(p is not None for p, _ in parents):
        ctx.progress(0.6, "comparing with the parents", force=True)
        names = []
        distances = {}
        refs = inputs.refs
        for i, (parent, _w) in enumerate(parents):
            name = f"parent{i}"
            peft_model.load_adapter(str(host.folder(parent, refs[parent.id])), adapter_name=name)
            peft_model.set_adapter(name)
            distances[refs[parent.id]] = float((logits(peft_model) - cand).abs().max())
            names.append(name)
        report["distance_from_parents"] = distances
        if spec.parent_evals and (task or "CAUSAL_LM") in RETAINED_TASKS:
            from workers.retention import measure_retention

            by_version = {parent.id: name for name, (parent, _w) in zip(names, parents, strict=True)}
            report["retention"] = measure_retention(host, ctx, spec, peft_model, task or "CAUSAL_LM", base,
                                                    CANDIDATE, by_version, dev)
        method = edge_params.get("method")
        rank_sum = sum(p.r for p, _ in parents)
        exact = method == "cat" or (method == "svd" and (edge_params.get("svd_rank") or 0) >= rank_sum)
        if exact:
            from peft.tuners.lora import LoraLayer
            from peft.utils.other import AuxiliaryTrainingWrapper

            saved = False
            for module in peft_model.modules():
                if isinstance(module, LoraLayer):
                    for name, (_parent, weight) in zip(names, parents, strict=True):
                        module.set_scale(name, float(weight if weight is not None else 1.0))
                    module.set_adapter(names)
                elif isinstance(module, AuxiliaryTrainingWrapper):
                    # a fully trained module (classifier head) has one active copy: the merge's own
                    module.set_adapter(CANDIDATE)
                    saved = True
            reference = logits(peft_model)
            err = float((reference - cand).abs().max())
            report["exact_check"] = {"method": method, "max_abs_diff": err, "atol": spec.atol}
            if saved:
                report["exact_check"]["saved_modules"] = "the merge's own copies (the LoRA layers are checked)"
            if err > spec.atol:
                failures.append(f"exact {method} merge differs from its parents' weighted sum by {err:.3g}")

    if failures:
        raise ValidationFailed(spec.ref, failures, report)
    ctx.progress(0.95, "recording", force=True)
    host.commit(ctx, spec, Outcome(report=report, message="validated", validated=(row.id, base.id),
                                   result_version_id=row.id))
