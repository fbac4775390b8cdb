"""Loading a base model for a job: the model class of the adapter's task type, the weights from the base record's
local folder or the HF cache (safetensors only, no remote code unless the record asks for it)."""

from __future__ import annotations

from typing import Any

from registry import models as m
from registry.errors import RegistryError
from registry.trainset import CLASSIFICATION_TASKS, VALIDATED_TASKS
from workers.quiet import quiet_loading

# The model class for each PEFT task type, and transformers' table of the architectures that already are one.
TASK_MODELS = {
    "CAUSAL_LM": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "SEQ_CLS": ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    "TOKEN_CLS": ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    "SEQ_2_SEQ_LM": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    "FEATURE_EXTRACTION": ("AutoModel", "MODEL_MAPPING_NAMES"),
}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_class(architecture: str | None, task_type: str | None) -> tuple[Any, bool]:
    """The class to load a base with for ``task_type``, and whether it differs from the base's own architecture.

    The base's architecture when it already is a model of that task (``BertForSequenceClassification`` for
    SEQ_CLS), else the task's ``AutoModelFor...`` class (a ``LlamaForCausalLM`` base for a SEQ_CLS adapter
    loads as ``LlamaForSequenceClassification``). Without a task type: the base's own architecture.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    own = getattr(transformers, architecture or "", None)
    if task_type is None:
        return own or transformers.AutoModelForCausalLM, False
    if task_type not in TASK_MODELS:
        raise RegistryError(f"task type {task_type!r} is not supported; supported task types: "
                            f"{', '.join(VALIDATED_TASKS)}")
    auto_name, table = TASK_MODELS[task_type]
    names: set[str] = set()
    for value in getattr(modeling_auto, table).values():
        names |= {value} if isinstance(value, str) else set(value)
    if own is not None and own.__name__ in names:
        return own, False
    return getattr(transformers, auto_name), True


def load_base_model(base: m.BaseModelRecord, dtype: Any = None, task_type: str | None = None,
                    num_labels: int | None = None):  # type: ignore[no-untyped-def]
    """The base model's weights from its recorded local folder (safetensors only, no remote code by default),
    as a model of ``task_type`` (see :func:`model_class`); a classification head the base does not have is
    created with ``num_labels`` classes. Library noise is silenced unless ``ADREG_VERBOSE=1``."""
    import torch

    path = base.local_path or _from_hub_cache(base)
    cls, switched = model_class(base.architecture, task_type)
    extra = {"num_labels": num_labels} if switched and num_labels and task_type in CLASSIFICATION_TASKS else {}
    try:
        with quiet_loading():
            model = cls.from_pretrained(
                path, dtype=dtype or torch.float32, local_files_only=True, use_safetensors=True,
                trust_remote_code=bool(base.trust_remote_code), **extra,
            )
    except OSError as exc:
        raise RegistryError(f"cannot load base model {base.name!r} from {base.local_path}: {exc}") from None
    if task_type == "SEQ_CLS" and getattr(model.config, "pad_token_id", None) is None:
        # decoder classifiers read the last non-padding token; without a pad id they refuse batches > 1
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    return model


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
    from registry.hub_client import endpoint, hub_call

    return hub_call(base.name, lambda: snapshot_download(
        base.name, revision=base.revision, allow_patterns=patterns, endpoint=endpoint()))
