"""Training data and task types: checked and fingerprinted before a job exists.

Data files are local JSONL / JSON, plain text (one example per line) or parquet, loaded with ``datasets``.
The columns a task needs (see docs/train.md):

* ``CAUSAL_LM``: ``text``, ``prompt`` + ``completion`` (loss on the completion only) or chat ``messages``;
* ``SEQ_CLS``: ``text`` and an integer class id in ``label`` (or ``labels``);
* ``TOKEN_CLS``: ``labels``, a list of integer class ids per row, one per *word*: the words are the row's
  ``tokens`` list, or its ``text`` split on whitespace (the label goes to each word's first sub-token; a
  label of -100 ignores the word);
* ``SEQ_2_SEQ_LM``: ``text`` (the input) and ``target`` (the output).

``FEATURE_EXTRACTION`` adapters are validated but not trained: there are no labels, hence no loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.inspect import sha256_file
from registry.jobs import DataSpec

FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".text": "text", ".parquet": "parquet"}

# The PEFT task types training supports, and those runtime validation supports.
TRAINABLE_TASKS = ("CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "SEQ_2_SEQ_LM")
VALIDATED_TASKS = (*TRAINABLE_TASKS, "FEATURE_EXTRACTION")
CLASSIFICATION_TASKS = ("SEQ_CLS", "TOKEN_CLS")
IGNORED_LABEL = -100  # a token-classification word label that is left out of the loss (transformers' rule)

# Encoder-decoder text families whose ``*ForConditionalGeneration`` is a seq2seq LM (other families use that
# suffix for vision-language models, which are causal).
_SEQ2SEQ_MODEL_TYPES = {
    "t5", "mt5", "umt5", "longt5", "t5gemma", "bart", "mbart", "plbart", "pegasus", "pegasus_x", "marian",
    "blenderbot", "blenderbot-small", "led", "m2m_100", "nllb-moe", "fsmt", "prophetnet", "bigbird_pegasus",
    "switch_transformers", "mvp",
}


class InvalidDataset(RegistryError):
    """The training data cannot be used."""


def task_for_architecture(architecture: str | None, model_type: str | None = None) -> str | None:
    """The PEFT task type a base of this architecture serves (``None`` when its name does not say)."""
    arch = architecture or ""
    if arch.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if arch.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if arch == "MarianMTModel" or (arch.endswith("ForConditionalGeneration") and (
            (model_type or "").lower() in _SEQ2SEQ_MODEL_TYPES
            or arch.removesuffix("ForConditionalGeneration").lower() in _SEQ2SEQ_MODEL_TYPES)):
        return "SEQ_2_SEQ_LM"
    if arch.endswith("Model") and "For" not in arch and "Head" not in arch:
        return "FEATURE_EXTRACTION"  # the bare encoder / decoder: BertModel, LlamaModel
    return None


def check_trainable_task(task_type: str | None, what: str = "training") -> str:
    """The task type in PEFT's spelling, or a refusal that lists the supported ones."""
    task = (task_type or "").strip().upper()
    supported = ", ".join(TRAINABLE_TASKS)
    if task == "FEATURE_EXTRACTION":
        raise RegistryError(
            f"{what}: task type FEATURE_EXTRACTION has no labels and so no loss to train on; "
            f"training supports {supported}",
            hint="validate FEATURE_EXTRACTION adapters with `adreg validate`; to train the encoder, train it "
                 "under the task it serves (e.g. --task-type SEQ_CLS on a classification base)")
    if task not in TRAINABLE_TASKS:
        raise RegistryError(f"{what}: task type {task_type!r} is not supported; supported task types: {supported}")
    return task


def load_rows(path: str | Path, fmt: str) -> Any:
    """The dataset as a ``datasets.Dataset`` (the ``train`` split of the single file)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise InvalidDataset(f"cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from None


def label_column(columns: list[str]) -> str | None:
    return "label" if "label" in columns else "labels" if "labels" in columns else None


def fields_of(columns: list[str], task_type: str = "CAUSAL_LM") -> str:
    """Which layout of the task's columns the file uses (refusing, with what is expected, when none)."""
    if task_type == "SEQ_CLS":
        if "text" in columns and label_column(columns):
            return "text_label"
        raise InvalidDataset(f"the dataset has columns {columns}; SEQ_CLS expects 'text' and 'label' (or 'labels')")
    if task_type == "TOKEN_CLS":
        if "labels" in columns and ("tokens" in columns or "text" in columns):
            return "token_labels"
        raise InvalidDataset(f"the dataset has columns {columns}; TOKEN_CLS expects 'labels' (one per word) with "
                             "'tokens' (a list of words) or 'text' (words separated by spaces)")
    if task_type == "SEQ_2_SEQ_LM":
        if "text" in columns and "target" in columns:
            return "text_target"
        raise InvalidDataset(f"the dataset has columns {columns}; SEQ_2_SEQ_LM expects 'text' and 'target'")
    if "messages" in columns:
        return "messages"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    raise InvalidDataset(
        f"the dataset has columns {columns}; expected 'text', 'prompt' and 'completion', or 'messages'"
    )


def words_of(row: dict[str, Any]) -> tuple[str, int]:
    """Where a token-classification row's words are (its ``tokens`` list, else its ``text``), and how many."""
    if row.get("tokens") is not None:
        return "tokens", len(row["tokens"])
    return "text", len(str(row.get("text") or "").split())


def _class_id(value: Any, where: str, allow_ignored: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and not (
            allow_ignored and value == IGNORED_LABEL)):
        raise InvalidDataset(f"{where}: label {value!r} is not a class id (an integer >= 0"
                             + (", or -100 to ignore the word)" if allow_ignored else ")"))
    return value


def count_labels(rows: Any, fields: str, file_name: str) -> int:
    """The number of classes the labels need (largest class id + 1), checking every label on the way."""
    biggest = -1
    if fields == "text_label":
        column = label_column(list(rows.column_names))
        for i, value in enumerate(rows[column]):
            biggest = max(biggest, _class_id(value, f"{file_name} row {i + 1}"))
    else:
        for i, row in enumerate(rows):
            where, labels = f"{file_name} row {i + 1}", row["labels"]
            if not isinstance(labels, list):
                raise InvalidDataset(f"{where}: 'labels' must be a list with one class id per word")
            column, count = words_of(row)
            if count != len(labels):
                raise InvalidDataset(f"{where}: {count} word(s) in {column!r} but {len(labels)} label(s)")
            for value in labels:
                biggest = max(biggest, _class_id(value, where, allow_ignored=True))
    if biggest < 0:
        raise InvalidDataset(f"{file_name} has no labels to learn from")
    return biggest + 1


def describe_dataset(path: str | Path, task_type: str = "CAUSAL_LM") -> DataSpec:
    """Check a local data file for ``task_type`` and return its spec (format, fields, rows, labels, sha256)."""
    task = check_trainable_task(task_type)
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidDataset(f"data file {file} does not exist")
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise InvalidDataset(f"{file.name}: unsupported extension; use one of {', '.join(sorted(FORMATS))}")
    if file.stat().st_size == 0:
        raise InvalidDataset(f"data file {file} is empty")
    rows = load_rows(file, fmt)
    fields = fields_of(list(rows.column_names), task)
    if len(rows) == 0:
        raise InvalidDataset(f"data file {file} has no rows")
    num_labels = count_labels(rows, fields, file.name) if task in CLASSIFICATION_TASKS else None
    return DataSpec(path=str(file.resolve()), sha256=sha256_file(file), format=fmt, fields=fields, rows=len(rows),
                    num_labels=num_labels)


def base_head_labels(base_path: str | Path) -> int:
    """The number of classes of the head a classification base ships (its config's ``id2label``)."""
    import json

    try:
        config = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 2
    return len(config.get("id2label") or {}) or int(config.get("num_labels") or 2)


def head_size(task: str, base_architecture: str | None, base_model_type: str | None, base_path: str | Path,
              sources_extra: list[dict[str, Any]], data: DataSpec) -> int | None:
    """The number of classes of the classification head the job trains, refusing labels it cannot hold.

    The head is the continued adapter's own (``modules_to_save``), else the base's when the base is already a
    model of this task, else a fresh one sized for the data (at least two classes).
    """
    from registry.targets import head_labels

    if task not in CLASSIFICATION_TASKS:
        return None
    wanted = data.num_labels or 2
    if sources_extra:
        sizes = [head_labels(extra) for extra in sources_extra]
        if None in sizes:
            raise RegistryError(f"a {task} adapter to continue stores no classification head (no 'classifier' or "
                                "'score' weights in its modules_to_save)")
        if len(set(sizes)) != 1:
            raise RegistryError(f"the adapters' classification heads have different sizes: {sizes}")
        size, owner = int(sizes[0]), "the adapter's classification head"
    elif task_for_architecture(base_architecture, base_model_type) == task:
        size, owner = base_head_labels(base_path), f"the base's classification head ({base_architecture})"
    else:
        return max(2, wanted)
    if wanted > size:
        raise InvalidDataset(f"{Path(data.path).name} has class ids up to {wanted - 1}, but {owner} has {size} "
                             f"class(es): 0..{size - 1}")
    return size
