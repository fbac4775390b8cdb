"""``Registry.load``: catalog versions as a ``PeftModel`` on their recorded base, the way PEFT means it.

The first version is loaded with ``PeftModel.from_pretrained`` and every further one with ``load_adapter`` (trained
weights, never ``add_adapter``, which makes a fresh untrained adapter); ``is_trainable`` is passed through, so
the adapters stay frozen unless training is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry import types as t
from registry.errors import RegistryError


def adapter_names(versions: list[t.AdapterVersion]) -> list[str]:
    """PEFT adapter names for the versions: the adapter's name (``.`` made ``_``, PEFT splits module paths on
    dots), with ``_v<version>`` added where one adapter appears in several versions."""
    names = [v.name.replace(".", "_") for v in versions]
    return [f"{n}_v{v.version}" if names.count(n) > 1 else n for n, v in zip(names, versions, strict=True)]


def load_versions(versions: list[t.AdapterVersion], folders: list[Path], base: t.BaseModelInfo | None,
                  base_model: Any = None, is_trainable: bool = False) -> Any:
    """A ``PeftModel`` over ``base_model`` (or the recorded base's weights) with every version loaded by name; the
    first one active. Switch with ``model.set_adapter(name, inference_mode=not training)``: PEFT's
    ``set_adapter`` alone makes the adapter it activates trainable."""
    from peft import PeftModel

    if not versions:
        raise RegistryError("nothing to load: give at least one reference")
    bases = {v.base_model for v in versions}
    if base_model is None and len(bases) > 1:
        raise RegistryError(f"the versions were made for different base models ({', '.join(map(str, bases))}): "
                            "load them separately, or pass base_model=")
    if base_model is None:
        base_model = _recorded_base(versions[0], base)
    names = adapter_names(versions)
    model = PeftModel.from_pretrained(base_model, str(folders[0]), adapter_name=names[0], is_trainable=is_trainable)
    for name, folder in zip(names[1:], folders[1:], strict=True):
        model.load_adapter(str(folder), adapter_name=name, is_trainable=is_trainable)  # the first stays active
    if not is_trainable:
        model.eval()
    return model


def _recorded_base(version: t.AdapterVersion, base: t.BaseModelInfo | None) -> Any:
    from registry import models as m
    from workers.base_model import load_base_model

    if base is None:
        raise RegistryError(f"{version.ref} has no base model recorded: pass base_model=")
    record = m.BaseModelRecord(name=base.name, revision=base.revision, local_path=base.local_path,
                               architecture=base.architecture, model_type=base.model_type, trust_remote_code=False)
    if version.task_type in ("SEQ_CLS", "TOKEN_CLS"):
        raise RegistryError(f"{version.ref} is a {version.task_type} adapter whose head size the base does not "
                            "tell: load the base with its head and pass base_model=")
    return load_base_model(record, task_type=version.task_type)
