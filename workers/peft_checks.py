"""What PEFT says about a loaded adapter: the layers carrying it, its parameters, its weights against the stored
file, and LoRA nested inside LoRA (used by the validate and train jobs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from registry import models as m
from registry.inspect import WEIGHTS_FILE, lora_internals
from registry.targets import saved_modules

# Parameter-name segments that mark an adapter's own parameters; the adapter's name is the next segment
# (``lora_A.<name>.weight``, ``modules_to_save.<name>.weight``, ``trainable_tokens_delta.<name>``).
ADAPTER_PARAM_MARKERS = {
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "modules_to_save",
    "trainable_tokens_delta",
}


def adapter_modules(status: Iterable[Any], adapter: str) -> set[str]:
    """Base-model paths of the layers carrying ``adapter``, from ``get_layer_status()`` (which names each
    layer from the LoraModel: ``model.<path in the base>``): its LoRA layers and the modules it trains in
    full (``ModulesToSaveWrapper``) or per token (``<module>.token_adapter``)."""
    return {s.name.removeprefix("model.") for s in status if adapter in s.available_adapters}


def is_saved_module(status: Any) -> bool:
    """A layer-status entry of a module trained in full or per token, rather than a LoRA layer."""
    return not status.module_type.startswith("lora.")


def adapter_param_owner(name: str) -> str | None:
    """The adapter a parameter belongs to (LoRA matrices, ``modules_to_save`` copies, trainable-token deltas),
    or None for a base-model parameter."""
    parts = name.split(".")
    return next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] in ADAPTER_PARAM_MARKERS), None)


def expected_saved_modules(row: m.AdapterVersion) -> set[str]:
    """The modules a stored version trains in full or per token, from its stored tensors' names."""
    return saved_modules(row.extra_tensors or {}, row.modules_to_save)[0]


def loaded_match_stored(peft_model: Any, names: list[str], folders: list[Any]) -> dict[str, bool]:
    """Each adapter as PEFT holds it (``get_peft_model_state_dict``: LoRA matrices, ``modules_to_save`` copies,
    trainable tokens) equals its stored file: the same tensor names and bit-identical values."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    result = {}
    for name, folder in zip(names, folders, strict=False):
        stored = load_file(str(folder / WEIGHTS_FILE))
        # Never "auto": for a base named by Hub id, PEFT would look its config up on the Hub to decide whether to
        # add embedding copies. The stored file says whether it holds them.
        loaded = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
        if stored.keys() != loaded.keys():
            loaded = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=True)
        result[name] = stored.keys() == loaded.keys() and all(
            torch.equal(stored[k].to(loaded[k].dtype), loaded[k].detach().cpu()) for k in stored
        )
    return result


def nested_layers(names: Iterable[str]) -> list[str]:
    """The layer names that show a LoRA layer inside another one (a LoRA-internal module in the path)."""
    return sorted(n for n in names if lora_internals(n))
