"""The ``validate`` job: load a version on its real base model with PEFT and check what it does.

Checks (all recorded in the job's report; a ``validated`` compatibility record is written when all pass):

* ``get_layer_status()``: the adapter is present and enabled on exactly the modules it targets, no LoRA
  layer sits inside another, and nothing is trainable after loading for inference;
* logits on fixed probe inputs are finite and differ from the base's (the adapter is not a no-op);
* for merges: the probe logits' distance from each parent; and for exact methods (``cat``, or ``svd``
  with ``svd_rank`` at least the sum of the parents' ranks) equality, within ``atol``, with the base
  carrying every parent at its weight (PEFT with all parents active, each scaled by its weight).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from registry import catalog
from registry import models as m
from registry.db import transaction
from registry.errors import RegistryError
from registry.inspect import lora_internals
from registry.jobs import ValidateSpec
from workers.runners import JobContext, complete

if TYPE_CHECKING:
    from registry.sdk import Registry

CANDIDATE = "candidate"


class ValidationFailed(RegistryError):
    """One or more runtime checks failed; ``report`` holds every check's outcome."""

    def __init__(self, ref: str, failures: list[str], report: dict[str, Any]) -> None:
        self.report = report
        super().__init__(f"{ref} failed runtime validation: " + "; ".join(failures))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(base: m.BaseModelRecord, dtype: Any = None):  # type: ignore[no-untyped-def]
    """The base model's weights from its recorded local folder (safetensors only, no remote code by default)."""
    import torch
    import transformers

    path = base.local_path or _from_hub_cache(base)
    cls = getattr(transformers, base.architecture or "", None) or transformers.AutoModelForCausalLM
    try:
        return cls.from_pretrained(
            path, dtype=dtype or torch.float32, local_files_only=True, use_safetensors=True,
            trust_remote_code=bool(base.trust_remote_code),
        )
    except OSError as exc:
        raise RegistryError(f"cannot load base model {base.name!r} from {base.local_path}: {exc}") from None


def _from_hub_cache(base: m.BaseModelRecord) -> str:
    """A Hub base's snapshot from the local HF cache; downloaded only with ADREG_ALLOW_DOWNLOADS=1."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return snapshot_download(base.name, revision=base.revision, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("ADREG_ALLOW_DOWNLOADS", "").lower() not in ("1", "true", "yes"):
        raise RegistryError(
            f"base model {base.name!r} has no local weights: no local path is recorded and it is not in the HF cache",
            hint="register an adapter with --base-path DIR, or set ADREG_ALLOW_DOWNLOADS=1 to download it",
        )
    from workers.hub import endpoint, hub_call

    return hub_call(base.name, lambda: snapshot_download(
        base.name, revision=base.revision, allow_patterns=patterns, endpoint=endpoint()))


def adapter_modules(status: Iterable[Any], adapter: str) -> set[str]:
    """Base-model paths of the layers carrying ``adapter``, from ``get_layer_status()`` (which names each
    layer from the LoraModel: ``model.<path in the base>``)."""
    return {s.name.removeprefix("model.") for s in status if adapter in s.available_adapters}


def nested_layers(names: Iterable[str]) -> list[str]:
    """The layer names that show a LoRA layer inside another one (a LoRA-internal module in the path)."""
    return sorted(n for n in names if lora_internals(n))


def layer_checks(peft_model: Any, expected_modules: set[str]) -> tuple[dict[str, Any], list[str]]:
    """What ``get_layer_status`` / ``get_model_status`` say about the candidate adapter."""
    failures: list[str] = []
    layers = [s for s in peft_model.get_layer_status() if CANDIDATE in s.available_adapters]
    found = adapter_modules(layers, CANDIDATE)
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
        "layers": len(layers), "expected_layers": len(expected_modules), "missing": missing[:10],
        "unexpected": unexpected[:10], "nested": nested[:10], "disabled": disabled[:10],
        "trainable_params": trainable, "peft_types": status.peft_types, "enabled": status.enabled,
    }, failures


def run_validate(registry: Registry, ctx: JobContext, spec: ValidateSpec) -> None:
    import torch
    from peft import PeftModel

    from workers.merge_job import parent_versions

    with registry._sessions() as s:
        row = s.get(m.AdapterVersion, spec.version_id)
        if row is None:
            raise RegistryError(f"version {spec.ref} no longer exists")
        base = s.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
        if base is None:
            raise RegistryError(f"{spec.ref} has no base model recorded")
        parents = [(s.get(m.AdapterVersion, pid), w) for pid, w in parent_versions(s, row.id)]
        edge_params = s.scalars(
            select(m.LineageEdge.params).where(m.LineageEdge.child_id == row.id, m.LineageEdge.relation == "merge")
        ).first() or {}
    folder = registry.store.path(row.storage_path)
    expected = set((row.module_tensors or {}).keys())
    dev = device()
    failures: list[str] = []
    report: dict[str, Any] = {"ref": spec.ref, "device": dev}

    ctx.progress(0.05, "loading the base model", force=True)
    model = load_base_model(base).to(dev).eval()
    vocab = int(getattr(model.config, "vocab_size", 0) or base.vocab_size or 2)
    gen = torch.Generator().manual_seed(0)
    probes = torch.randint(0, vocab, (spec.probe_count, spec.probe_length), generator=gen).to(dev)

    def logits(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return net(input_ids=probes).logits.float()

    base_logits = logits(model)
    ctx.check_cancel()
    ctx.progress(0.3, "loading the adapter with PEFT", force=True)
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=CANDIDATE, is_trainable=False)
    peft_model.eval()
    report["layer_status"], layer_failures = layer_checks(peft_model, expected)
    failures += layer_failures

    cand = logits(peft_model)
    finite = bool(torch.isfinite(cand).all())
    distance_from_base = float((cand - base_logits).abs().max())
    report["logits"] = {"finite": finite, "max_abs_diff_from_base": distance_from_base}
    if not finite:
        failures.append("logits contain NaN/Inf")
    if distance_from_base <= 1e-6:
        failures.append("the adapter does not change the base model's logits (a no-op)")

    if parents and all(p is not None for p, _ in parents):
        ctx.progress(0.6, "comparing with the parents", force=True)
        names = []
        distances = {}
        with registry._sessions() as s:
            refs = {p.id: catalog.exact_ref(s, p) for p, _ in parents}
        for i, (parent, _w) in enumerate(parents):
            name = f"parent{i}"
            peft_model.load_adapter(str(registry.store.path(parent.storage_path)), adapter_name=name)
            peft_model.set_adapter(name)
            distances[refs[parent.id]] = float((logits(peft_model) - cand).abs().max())
            names.append(name)
        report["distance_from_parents"] = distances
        method = edge_params.get("method")
        rank_sum = sum(p.r for p, _ in parents)
        exact = method == "cat" or (method == "svd" and (edge_params.get("svd_rank") or 0) >= rank_sum)
        if exact:
            from peft.tuners.lora import LoraLayer

            for module in peft_model.modules():
                if isinstance(module, LoraLayer):
                    for name, (_parent, weight) in zip(names, parents, strict=True):
                        module.set_scale(name, float(weight if weight is not None else 1.0))
            peft_model.base_model.set_adapter(names)
            reference = logits(peft_model)
            err = float((reference - cand).abs().max())
            report["exact_check"] = {"method": method, "max_abs_diff": err, "atol": spec.atol}
            if err > spec.atol:
                failures.append(f"exact {method} merge differs from its parents' weighted sum by {err:.3g}")

    if failures:
        raise ValidationFailed(spec.ref, failures, report)
    ctx.progress(0.95, "recording", force=True)
    with transaction(registry._sessions) as s:
        s.execute(delete(m.Compatibility).where(
            m.Compatibility.version_id == row.id, m.Compatibility.base_model_id == base.id,
            m.Compatibility.level == "validated",
        ))
        s.add(m.Compatibility(version_id=row.id, base_model_id=base.id, level="validated", evidence=report))
        complete(registry, ctx, s, report=report, result_version_id=row.id, progress_message="validated")
    if spec.publish_after is not None:
        from registry.jobs import PublishSpec

        registry.submit(PublishSpec(version_id=row.id, ref=spec.ref, target=spec.publish_after),
                        parent_job_id=ctx.job_id)
