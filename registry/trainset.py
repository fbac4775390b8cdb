"""Training data: local JSONL / JSON (``text``, ``prompt``+``completion`` or chat ``messages``), plain text
(one example per line) or parquet, loaded with ``datasets``; checked and fingerprinted before a job exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.inspect import sha256_file
from registry.jobs import DataSpec

FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".text": "text", ".parquet": "parquet"}


class InvalidDataset(RegistryError):
    """The training data cannot be used."""


def load_rows(path: str | Path, fmt: str) -> Any:
    """The dataset as a ``datasets.Dataset`` (the ``train`` split of the single file)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise InvalidDataset(f"cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from None


def fields_of(columns: list[str]) -> str:
    if "messages" in columns:
        return "messages"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    raise InvalidDataset(
        f"the dataset has columns {columns}; expected 'text', 'prompt' and 'completion', or 'messages'"
    )


def describe_dataset(path: str | Path) -> DataSpec:
    """Check a local data file and return its spec (format, fields, rows, sha256)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidDataset(f"data file {file} does not exist")
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise InvalidDataset(f"{file.name}: unsupported extension; use one of {', '.join(sorted(FORMATS))}")
    if file.stat().st_size == 0:
        raise InvalidDataset(f"data file {file} is empty")
    rows = load_rows(file, fmt)
    fields = fields_of(list(rows.column_names))
    if len(rows) == 0:
        raise InvalidDataset(f"data file {file} has no rows")
    return DataSpec(path=str(file.resolve()), sha256=sha256_file(file), format=fmt, fields=fields, rows=len(rows))
