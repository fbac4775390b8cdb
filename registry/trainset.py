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

Before ``datasets`` reads a file, :func:`scan_rows` streams it once with bounded memory (docs/train.md, "Limits"):
every line (one JSON Lines row or one text example) is at most ``ADREG_MAX_DATA_LINE_BYTES`` (1 MiB) of UTF-8, a
file has at most ``ADREG_MAX_DATA_ROWS`` (1,000,000) rows, a ``.json`` file written as one JSON array is at most
``MAX_JSON_ARRAY_BYTES`` (32 MiB), a row nests at most ``MAX_ROW_DEPTH`` (32) levels and the rows use at most
``MAX_COLUMNS`` (256) distinct fields; and every row has the fields its task reads with the right types (a string
``text``, a list of ``{role, content}`` string pairs in ``messages``, ...). A refusal names the line (or row) and
the field, before any job exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.inspect import sha256_file
from registry.jobs import DataSpec

FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".text": "text", ".parquet": "parquet",
           ".csv": "csv"}

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


DEFAULT_MAX_LINE_BYTES = 1 << 20  # one JSON Lines row or text line; ~250k tokens, far above any max_length
DEFAULT_MAX_ROWS = 1_000_000
MAX_JSON_ARRAY_BYTES = 32 << 20  # a .json file holding one JSON array is parsed whole (datasets does too)
MAX_ROW_DEPTH = 32  # nesting of a row's objects and lists (a chat row is 3 deep)
MAX_COLUMNS = 256  # distinct top-level fields over all rows (each becomes a column)
_PARQUET_BATCH = 256


class InvalidDataset(RegistryError):
    """The training data cannot be used."""


def _env_limit(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15 or int(raw) < 1:
        raise RegistryError(f"{variable}={raw!r} must be a positive whole number")
    return int(raw)


def data_limits() -> tuple[int, int]:
    """(bytes per line, rows per file): ``ADREG_MAX_DATA_LINE_BYTES`` and ``ADREG_MAX_DATA_ROWS``, or defaults."""
    return (_env_limit("ADREG_MAX_DATA_LINE_BYTES", DEFAULT_MAX_LINE_BYTES),
            _env_limit("ADREG_MAX_DATA_ROWS", DEFAULT_MAX_ROWS))


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


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", bytes: "bytes"}.get(type(value), type(value).__name__)


def _need_str(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return f"field {key!r} is missing"
    if not isinstance(value, str):
        return f"field {key!r} must be a string, not {_kind(value)}"
    return None


def _messages(row: dict[str, Any]) -> str | None:
    value = row.get("messages")
    if value is None:
        return "field 'messages' is missing"
    if not isinstance(value, list) or not value:
        return (f"field 'messages' must be a non-empty list of {{\"role\": ..., \"content\": ...}} messages, "
                f"not {_kind(value) if value != [] else 'an empty list'}")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            return f"field 'messages' item {i}: a message is an object with 'role' and 'content', not {_kind(message)}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if message.get(key) is None else _kind(message[key])
                return f"field 'messages' item {i}: {key!r} must be a string ({got})"
    return None


def _token_words(row: dict[str, Any]) -> str | None:
    tokens = row.get("tokens")
    if tokens is None:
        return _need_str(row, "text")
    if not isinstance(tokens, list):
        return f"field 'tokens' must be a list of words (strings), not {_kind(tokens)}"
    bad = next((i for i, t in enumerate(tokens) if not isinstance(t, str)), None)
    if bad is not None:
        return f"field 'tokens' item {bad} must be a string (a word), not {_kind(tokens[bad])}"
    return None


# What each layout (fields_of) needs of every row; labels are checked by count_labels.
_ROW_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "text": lambda r: _need_str(r, "text"),
    "prompt_completion": lambda r: _need_str(r, "prompt") or _need_str(r, "completion"),
    "messages": _messages,
    "text_label": lambda r: _need_str(r, "text"),
    "token_labels": _token_words,
    "text_target": lambda r: _need_str(r, "text") or _need_str(r, "target"),
}


def _shape_problem(row: Any) -> str | None:
    """A row nested too deep, or holding a string that is not valid Unicode (a lone surrogate, e.g. from a
    ``\\udc80`` escape): the first such field, by name. Iterative, linear in the row's size."""
    for key, value in row.items():
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return f"field {key!r} is not valid Unicode text (a lone surrogate such as \\udc80)"
            elif isinstance(item, (list, dict)):
                if depth >= MAX_ROW_DEPTH:
                    return f"field {key!r} is nested more than {MAX_ROW_DEPTH} levels deep"
                stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
                if isinstance(item, dict) and not all(isinstance(k, str) for k in item):
                    return f"field {key!r} has keys that are not strings"
    return None


def _utf8_problem(content: bytes, error: UnicodeDecodeError) -> str:
    """Which field of a JSON line holds the bytes that are not UTF-8 (when the line parses at all)."""
    where = f"byte {error.start + 1} of the line (0x{content[error.start]:02x}) is not UTF-8"
    try:
        row = json.loads(content.decode("utf-8", errors="surrogateescape"))
    except (ValueError, RecursionError):
        return where
    if isinstance(row, dict):
        for key, value in row.items():
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except (UnicodeEncodeError, ValueError, RecursionError):
                return f"field {key!r} is not valid UTF-8 text ({where})"
    return where


def _lines(file: Path, max_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its line break), reading at most ``max_line`` + 2 bytes at a time: a longer
    line is refused without being read."""
    with file.open("rb") as fh:
        number = 0
        while True:
            raw = fh.readline(max_line + 2)
            if not raw:
                return
            number += 1
            content = raw[:-1] if raw.endswith(b"\n") else raw
            content = content[:-1] if content.endswith(b"\r") else content
            if len(content) > max_line or (not raw.endswith(b"\n") and len(raw) == max_line + 2):
                raise InvalidDataset(f"{file.name} line {number} is longer than {max_line} bytes (the limit per line, "
                                     "ADREG_MAX_DATA_LINE_BYTES)")
            if number == 1 and content.startswith(b"\xef\xbb\xbf"):
                content = content[3:]  # a UTF-8 byte order mark (datasets drops it too)
            yield number, content


def _decode(file: Path, where: str, content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{file.name} {where}: {_utf8_problem(content, exc)}") from None


def _json_value(file: Path, where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidDataset(f"{file.name} {where} is nested more than {MAX_ROW_DEPTH} levels deep") from None
    except ValueError as exc:
        raise InvalidDataset(f"{file.name} {where} is not valid JSON: {exc}") from None


def _starts_with_array(file: Path) -> bool:
    with file.open("rb") as fh:
        head = fh.read(4)
    return head.removeprefix(b"\xef\xbb\xbf").startswith(b"[")


def _json_rows(file: Path, max_line: int, max_rows: int) -> Iterator[tuple[str, Any]]:
    if _starts_with_array(file):  # one JSON array (what datasets does with a file that starts with '[')
        size = file.stat().st_size
        if size > MAX_JSON_ARRAY_BYTES:
            raise InvalidDataset(f"{file.name} is one JSON array of {size} bytes, more than {MAX_JSON_ARRAY_BYTES} "
                                 "(the limit for a file read whole): write it as JSON Lines, one row per line")
        raw = file.read_bytes().removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise InvalidDataset(f"{file.name} line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8") from None
        items = _json_value(file, "(one JSON array)", text)
        if not isinstance(items, list):
            raise InvalidDataset(f"{file.name} is not one JSON array of rows")
        if len(items) > max_rows:
            raise InvalidDataset(f"{file.name} has more than {max_rows} rows (ADREG_MAX_DATA_ROWS)")
        objects = bool(items) and isinstance(items[0], dict)  # else a list of strings: the 'text' column
        for i, item in enumerate(items):
            if objects != isinstance(item, dict):
                raise InvalidDataset(f"{file.name} row {i + 1}: a JSON array of rows holds only objects or only "
                                     f"strings, not {_kind(item)} after {_kind(items[0])}")
            yield f"row {i + 1}", item if objects else {"text": item}
        return
    rows = 0
    for number, content in _lines(file, max_line):
        text = _decode(file, f"line {number}", content)
        if not text.strip():
            continue  # blank lines are not rows
        row = _json_value(file, f"line {number}", text)
        if not isinstance(row, dict):
            raise InvalidDataset(f"{file.name} line {number}: a JSON Lines row is an object ({{...}}), "
                                 f"not {_kind(row)}")
        rows += 1
        if rows > max_rows:
            raise InvalidDataset(f"{file.name} has more than {max_rows} rows (ADREG_MAX_DATA_ROWS)")
        yield f"line {number}", row


def _text_rows(file: Path, max_line: int, max_rows: int) -> Iterator[tuple[str, Any]]:
    rows = 0
    for number, content in _lines(file, max_line):
        text = _decode(file, f"line {number}", content)
        rows += 1 + text.count("\r")  # datasets reads text with universal newlines
        if rows > max_rows:
            raise InvalidDataset(f"{file.name} has more than {max_rows} rows (ADREG_MAX_DATA_ROWS)")
        yield f"line {number}", {"text": text}


def _parquet_rows(file: Path, max_line: int, max_rows: int) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        if parquet.metadata.num_rows > max_rows:
            raise InvalidDataset(f"{file.name} has {parquet.metadata.num_rows} rows, more than {max_rows} "
                                 "(ADREG_MAX_DATA_ROWS)")
        yield from _arrow_rows(file, parquet.iter_batches(batch_size=_PARQUET_BATCH), max_line, max_rows)
    except InvalidDataset:
        raise
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise InvalidDataset(f"cannot read {file.name} as parquet: {type(exc).__name__}: {exc}") from None


def _arrow_rows(file: Path, batches: Iterable[Any], max_line: int, max_rows: int) -> Iterator[tuple[str, Any]]:
    """The rows of pyarrow record batches, numbered from 1, each bounded in text and in count."""
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            index += 1
            if index > max_rows:
                raise InvalidDataset(f"{file.name} has more than {max_rows} rows (ADREG_MAX_DATA_ROWS)")
            _check_row_size(file, index, row, max_line)
            yield f"row {index}", row


def _check_row_size(file: Path, index: int, row: Any, max_line: int) -> None:
    """Refuse a parquet or CSV row holding more text than a JSONL line may."""
    if sum(len(v) for v in _strings(row)) > max_line:
        raise InvalidDataset(f"{file.name} row {index} holds more than {max_line} bytes of text (the limit per row, "
                             "ADREG_MAX_DATA_LINE_BYTES)")


def _strings(value: Any) -> Iterator[str | bytes]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _csv_rows(file: Path, max_line: int, max_rows: int) -> Iterator[tuple[str, Any]]:
    """CSV with a header row, streamed by pyarrow in blocks (a row longer than a block is refused by it)."""
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(file, read_options=pcsv.ReadOptions(block_size=max(2 * max_line, 1 << 20)))
        yield from _arrow_rows(file, reader, max_line, max_rows)
    except InvalidDataset:
        raise
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise InvalidDataset(f"cannot read {file.name} as CSV: {type(exc).__name__}: {exc}") from None


_READERS = {"json": _json_rows, "text": _text_rows, "parquet": _parquet_rows, "csv": _csv_rows}


def scan_rows(file: Path, fmt: str, task: str | None = "CAUSAL_LM") -> tuple[str | None, int]:
    """Stream the file once with bounded memory (see the module's limits), then return ``(fields, rows)``: the
    task's column layout (``fields_of``) and the number of rows. Refuses, naming the line or row and the field,
    a line too long, too many rows, bytes that are not UTF-8, a row that is not an object, and a row without
    the fields its task reads or with a field of the wrong type. With no ``task`` (a dataset registered without a
    task type) the rows are checked but not their columns, and the layout is ``None``."""
    max_line, max_rows = data_limits()
    columns: dict[str, None] = {}
    first_problem: dict[str, str] = {}  # layout -> the first row it cannot use
    rows = 0
    for where, row in _READERS[fmt](file, max_line, max_rows):
        rows += 1
        problem = _shape_problem(row)
        if problem:
            raise InvalidDataset(f"{file.name} {where}: {problem}")
        for key in row:
            if key not in columns:
                columns[key] = None
                if len(columns) > MAX_COLUMNS:
                    raise InvalidDataset(f"{file.name}: the rows use more than {MAX_COLUMNS} different fields")
        for layout, check in _ROW_CHECKS.items():
            if layout not in first_problem:
                problem = check(row)
                if problem:
                    first_problem[layout] = f"{file.name} {where}: {problem}"
    if rows == 0:
        raise InvalidDataset(f"data file {file} has no rows")
    if task is None:
        return None, rows
    fields = fields_of(list(columns), task)
    if fields in first_problem:
        raise InvalidDataset(first_problem[fields])
    return fields, rows


_TEXT_COLUMNS = {"text": ("text",), "prompt_completion": ("prompt", "completion"), "messages": ("messages",),
                 "text_label": ("text",), "token_labels": ("tokens", "text"), "text_target": ("text", "target")}


def _check_read_as_text(rows: Any, fields: str, file_name: str) -> None:
    """Refuse text that ``datasets`` would not hand the job as text. Its JSON reader (pyarrow) turns a column whose
    every value looks like an ISO date or time into timestamps, so the job would get datetimes, not strings."""
    import pyarrow as pa

    schema = rows.data.schema
    for column in _TEXT_COLUMNS[fields]:
        if column not in schema.names:
            continue
        if pa.types.is_integer(schema.field(column).type) or pa.types.is_floating(schema.field(column).type) \
                or pa.types.is_boolean(schema.field(column).type):
            raise InvalidDataset(f"{file_name}: every {column!r} value is a number or a boolean "
                                 f"({schema.field(column).type}), which the reader does not hand over as text")
        types, temporal = [schema.field(column).type], False
        while types and not temporal:
            kind = types.pop()
            temporal = pa.types.is_temporal(kind)
            if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
                types.append(kind.value_type)
            elif pa.types.is_struct(kind):
                types.extend(kind.field(i).type for i in range(kind.num_fields))
        if temporal:
            raise InvalidDataset(
                f"{file_name}: every {column!r} value looks like a date or time, and datasets' JSON reader turns such "
                f"a column into timestamps ({schema.field(column).type}), not text; add a row of ordinary text, or "
                "use a .txt or parquet file")


def _checked_file(path: str | Path) -> tuple[Path, str]:
    """The file and its ``datasets`` format, refusing a missing, empty or unknown-extension file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidDataset(f"data file {file} does not exist")
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise InvalidDataset(f"{file.name}: unsupported extension; use one of {', '.join(sorted(FORMATS))}")
    if file.stat().st_size == 0:
        raise InvalidDataset(f"data file {file} is empty")
    return file, fmt


@dataclass(frozen=True)
class CheckedData:
    """A data file read and checked: what a job spec and a catalog dataset record of it."""

    path: str
    sha256: str
    format: str
    fields: str | None  # the task's column layout (None: read without a task)
    rows: int
    columns: list[str]
    num_labels: int | None
    size: int


def read_checked(path: str | Path, task: str | None) -> CheckedData:
    """Scan (bounded, streamed: :func:`scan_rows`), then read with ``datasets`` a data file whose every row the
    task can use (any rows when ``task`` is None). One reader and one set of checks for training data and for
    catalog datasets."""
    file, fmt = _checked_file(path)
    try:
        fields, _ = scan_rows(file, fmt, task)
    except OSError as exc:
        raise InvalidDataset(f"cannot read {file}: {exc.strerror or exc}") from None
    rows = load_rows(file, fmt)
    if len(rows) == 0:
        raise InvalidDataset(f"data file {file} has no rows")
    if fields is not None:
        _check_read_as_text(rows, fields, file.name)
    num_labels = count_labels(rows, fields, file.name) if task in CLASSIFICATION_TASKS and fields else None
    return CheckedData(path=str(file.resolve()), sha256=sha256_file(file), format=fmt, fields=fields,
                       rows=len(rows), columns=list(rows.column_names), num_labels=num_labels,
                       size=file.stat().st_size)


def describe_dataset(path: str | Path, task_type: str = "CAUSAL_LM") -> DataSpec:
    """Check a local data file for ``task_type`` and return its spec (format, fields, rows, labels, sha256).

    The file is scanned first (bounded, streamed: :func:`scan_rows`), so ``datasets`` only ever reads a file
    whose every row the job can use.
    """
    data = read_checked(path, check_trainable_task(task_type))
    return DataSpec(path=data.path, sha256=data.sha256, format=data.format, fields=data.fields,  # type: ignore[arg-type]
                    rows=data.rows, num_labels=data.num_labels)


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
