"""``adreg diff A B``: what differs between two versions, from their catalog records and their stored weights.

The catalog side (both references resolved in one read transaction; configs, base identities, ranks and the
module lists compared from stored metadata) is here; the weights are then compared by :mod:`registry.deltas`,
outside the transaction, one module at a time from the store's safetensors files.
"""

from __future__ import annotations

import time
from typing import Any

from registry import catalog
from registry import models as m
from registry import types as t
from registry.deltas import Side, compare_weights, natural_key
from registry.inspect import WEIGHTS_FILE
from registry.manifest import AdapterManifest
from registry.refs import parse_ref
from registry.service import Service

#: adapter_config.json keys never reported: ``inference_mode`` is PEFT's training switch (save_pretrained writes
#: True whatever the adapter); ``base_model_name_or_path`` and ``revision`` are reported as ``base_changes``, the
#: base identity registration resolved them to (a relative path and its absolute form name the same base).
IGNORED_KEYS = frozenset({"inference_mode", "base_model_name_or_path", "revision"})
#: Config lists whose order means nothing (PEFT writes sets as lists in any order).
UNORDERED_KEYS = frozenset({"target_modules", "modules_to_save", "exclude_modules", "layers_to_transform",
                            "target_parameters"})
#: The global rank and alpha settings, reported together in ``rank_changes``.
RANK_KEYS = ("r", "lora_alpha", "use_rslora", "use_dora")


def diff(svc: Service, a: str, b: str) -> t.VersionDiff:
    """What differs from version ``a`` to version ``b``: base, config keys, targets, ranks and alphas, and each
    module's delta distance ``||dA - dB|| / ||dB||`` (computed from the LoRA factors, never forming the deltas)."""
    start = time.perf_counter()
    with svc.transaction() as session:
        rows = [catalog.resolve(session, parse_ref(ref)) for ref in (a, b)]
        refs = [f"{session.get(m.Adapter, row.adapter_id).name}:{row.version}" for row in rows]  # type: ignore[union-attr]
        manifests = [catalog.manifest_of(session, row) for row in rows]
        files = [svc.store.path(row.storage_path) / WEIGHTS_FILE for row in rows]
    ma, mb = manifests
    only_b = sorted(mb.modules.keys() - ma.modules.keys(), key=natural_key)
    only_a = sorted(ma.modules.keys() - mb.modules.keys(), key=natural_key)
    weights = compare_weights(Side(files[0], ma, refs[0]), Side(files[1], mb, refs[1]))
    abs_total = sum(x.abs_distance**2 for x in weights.modules) ** 0.5
    reference = sum(x.norm_b**2 for x in weights.modules) ** 0.5
    return t.VersionDiff(
        a=refs[0], b=refs[1], same_weights=ma.weights_sha256 == mb.weights_sha256,
        base_changes=_changes({"base_model": ma.base_model_name_or_path, "base_revision": ma.revision},
                              {"base_model": mb.base_model_name_or_path, "base_revision": mb.revision}),
        config_changes=config_changes(ma.config, mb.config),
        rank_changes=_changes({k: getattr(ma, k) for k in RANK_KEYS}, {k: getattr(mb, k) for k in RANK_KEYS}),
        module_ranks=_module_ranks(ma, mb),
        modules_added=only_b, modules_removed=only_a,
        target_modules_added=sorted(set(mb.target_modules) - set(ma.target_modules)),
        target_modules_removed=sorted(set(ma.target_modules) - set(mb.target_modules)),
        modules=weights.modules,
        overall_distance=abs_total / reference if reference > 0 else None, overall_abs_distance=abs_total,
        tensors=weights.tensors, tensors_added=weights.tensors_added, tensors_removed=weights.tensors_removed,
        not_compared=weights.not_compared, notes=_notes(ma, mb, weights.modules),
        seconds=time.perf_counter() - start,
    )


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[t.ConfigChange]:
    """Every key of two adapter_config.json dicts whose value differs (an absent key is None), but
    :data:`IGNORED_KEYS`; lists in :data:`UNORDERED_KEYS` compare as sets."""
    keys = sorted((old.keys() | new.keys()) - IGNORED_KEYS)
    return [t.ConfigChange(k, old.get(k), new.get(k)) for k in keys
            if _canonical(k, old.get(k)) != _canonical(k, new.get(k))]


def _canonical(key: str, value: Any) -> Any:
    if key in UNORDERED_KEYS and isinstance(value, list):
        return sorted(value, key=repr)
    return value


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[t.ConfigChange]:
    return [t.ConfigChange(k, old[k], new[k]) for k in old if old[k] != new[k]]


def _module_ranks(ma: AdapterManifest, mb: AdapterManifest) -> list[t.ModuleRankChange]:
    out = []
    for module in sorted(ma.modules.keys() & mb.modules.keys(), key=natural_key):
        change = t.ModuleRankChange(module, ma.rank_of(module), mb.rank_of(module), ma.alpha_of(module),
                                    mb.alpha_of(module), ma.scaling(module), mb.scaling(module))
        if (change.rank_a, change.alpha_a, change.scaling_a) != (change.rank_b, change.alpha_b, change.scaling_b):
            out.append(change)
    return out


def _notes(ma: AdapterManifest, mb: AdapterManifest, modules: list[t.ModuleDistance]) -> list[str]:
    notes = []
    zero = [x for x in modules if x.distance is None]
    if zero:
        notes.append(f"{len(zero)} module(s) have a zero delta in B (an untrained adapter's lora_B is 0): their "
                     "distance is the absolute ||dA - dB||, not relative")
    refined = sum(x.method == "qr" for x in modules)
    if refined:
        notes.append(f"{refined} module(s) are nearly identical: their distance was computed from QR factors "
                     "(the Gram expansion would cancel)")
    if ma.use_dora or mb.use_dora:
        notes.append("DoRA: module distances compare the low-rank updates s*B*A; the magnitude vectors are "
                     "compared value by value (tensors of kind 'magnitude')")
    return notes
