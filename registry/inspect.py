"""Read a PEFT adapter folder into an :class:`AdapterManifest`, refusing anything unsafe or inconsistent.

Only ``adapter_config.json`` and the safetensors header are parsed to build the manifest, both by this module
with bounded sizes (``registry.config``: 1 MiB of config, 8 MiB of header JSON, ``ADREG_MAX_ADAPTER_BYTES`` of
weights); the weights file is never memory-mapped. With ``scan=True`` the data section is then streamed once,
in fixed-size chunks, to hash the file and to reject NaN/Inf: memory stays bounded whatever the file's size.
Every file of the folder that is read is resolved first and must be a regular file inside the folder.
Pickled weights (``adapter_model.bin``) are never opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_SAFETENSORS_HEADER_BYTES, max_adapter_bytes
from registry.errors import InvalidAdapter, field_problems
from registry.manifest import (
    MAX_ALPHA,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_RANK,
    AdapterManifest,
    ModuleTensors,
    match_pattern,
    text_problem,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
KEY_PREFIX = "base_model.model."
CHUNK_BYTES = 4 << 20  # the streaming buffer: a multiple of every dtype's size, so chunks split no element

# Module-path segments that only exist inside a LoRA layer: seeing one in the module path of a LoRA
# tensor means a LoRA layer was wrapped by another (``target_modules='all-linear'`` applied twice).
_LORA_INTERNALS = {
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_layer", "lora_dropout",
    "lora_magnitude_vector",
}


def lora_internals(module_path: str) -> set[str]:
    """The LoRA-internal names in a module path: non-empty means a LoRA layer nested inside another."""
    return _LORA_INTERNALS.intersection(module_path.split("."))


_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?(?:\.(?P<leaf>weight|bias))?$"
)
CONVERT_HINT = (
    "Convert it once, in a trusted environment, with PEFT: "
    "`PeftModel.from_pretrained(base, path).save_pretrained(out, safe_serialization=True)`."
)

# safetensors dtypes the registry reads, with their size in bytes (sub-byte formats are refused).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
LORA_DTYPES = ("F16", "BF16", "F32", "F64")  # LoRA A/B (and DoRA magnitudes, lora_B biases) are floating point
MAX_TENSOR_DIMS = 16
MAX_DIM = 1 << 40


# -- files of the folder ------------------------------------------------------------------------------------


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _adapter_file(folder: Path, name: str, root: Path) -> Path | None:
    """``folder/name`` resolved, or None when there is no such entry. Refuses (saying which and why) an entry
    that resolves outside ``root`` (a symbolic link leaving the adapter folder), leads nowhere, or is not a
    regular file (a FIFO, a device, a directory)."""
    path = folder / name
    if not os.path.lexists(path):
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a dangling link, a link loop
        target = os.readlink(path) if path.is_symlink() else path
        raise InvalidAdapter(str(folder), [f"{name} is a symbolic link to {target}, which does not exist"]) from None
    if resolved != root and root not in resolved.parents:
        raise InvalidAdapter(
            str(folder), [f"{name} is a symbolic link to {resolved}, outside the adapter folder {root}"],
            hint="copy the file into the adapter folder: files of an adapter folder must lie inside it",
        )
    mode = resolved.stat().st_mode
    if not stat.S_ISREG(mode):
        shown = f" (a symbolic link to {resolved})" if path.is_symlink() else ""
        raise InvalidAdapter(str(folder), [f"{name}{shown} is {_kind_of(mode)}, not a regular file"])
    return resolved


def _open_regular(path: Path, folder: Path, name: str) -> tuple[BinaryIO, int]:
    """Open a resolved file for reading without following a link or blocking on a FIFO swapped in since it was
    checked; returns the file and its size."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidAdapter(str(folder), [f"{name} cannot be opened: {exc.strerror}"]) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidAdapter(str(folder), [f"{name} is {_kind_of(info.st_mode)}, not a regular file"])
    return os.fdopen(fd, "rb", buffering=0), info.st_size


def _root(folder: Path, root: str | Path | None) -> Path:
    return Path(root if root is not None else folder).expanduser().resolve()


# -- adapter_config.json ------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_problems(data: Any, max_depth: int) -> Iterator[str]:
    """What the catalog cannot store in a JSON document: nesting deeper than ``max_depth``, strings with NUL or
    invalid Unicode (lone surrogates), non-finite numbers. Iterative: no recursion on hostile depth."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                yield f"{where or 'the document'} is nested more than {max_depth} levels deep"
                return
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    problem = _string_problem(key)
                    if problem:
                        yield f"a key of {where or 'the top-level object'} {problem}"
                        return
                stack.append((item, depth + 1, f"{where}.{key}" if where else str(key)))
        elif isinstance(value, str):
            problem = _string_problem(value)
            if problem:
                yield f"{where} {problem}"
                return
        elif isinstance(value, float) and not math.isfinite(value):
            yield f"{where} is not a finite number"
            return


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


def parse_config(data: bytes, source: str = CONFIG_FILE) -> dict[str, Any]:
    """``adapter_config.json``'s bytes as a dict, refusing (InvalidAdapter) more than 1 MiB, non-UTF-8 text,
    invalid or non-standard JSON (NaN, Infinity, duplicate keys), nesting deeper than 32, NUL characters and
    lone surrogates in strings, and anything but an object at the top."""
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidAdapter(source, [f"{CONFIG_FILE} is {len(data)} bytes; at most {MAX_CONFIG_BYTES} are accepted"])
    try:
        config = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise InvalidAdapter(source, [f"{CONFIG_FILE} is not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is a 5000-digit integer
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidAdapter(source, [f"{CONFIG_FILE} is not valid JSON: {reason}"]) from None
    if not isinstance(config, dict):
        raise InvalidAdapter(source, [f"{CONFIG_FILE} must hold a JSON object"])
    problems = [f"{CONFIG_FILE}: {p}" for p in _json_problems(config, MAX_CONFIG_DEPTH)]
    if problems:
        raise InvalidAdapter(source, problems)
    return config


def read_config(folder: Path, *, root: str | Path | None = None) -> dict[str, Any]:
    """Parse ``adapter_config.json`` (raises InvalidAdapter when missing, malformed, too large, or not a regular
    file inside ``root``, by default the folder itself)."""
    path = _adapter_file(folder, CONFIG_FILE, _root(folder, root))
    if path is None:
        raise InvalidAdapter(str(folder), [f"{CONFIG_FILE} is missing"])
    fh, size = _open_regular(path, folder, CONFIG_FILE)
    with fh:
        if size > MAX_CONFIG_BYTES:
            raise InvalidAdapter(str(folder),
                                 [f"{CONFIG_FILE} is {size} bytes; at most {MAX_CONFIG_BYTES} are accepted"])
        data = fh.read(MAX_CONFIG_BYTES + 1)
    return parse_config(data, str(folder))


def _check_text(value: str | None, what: str) -> str | None:
    problem = text_problem(value, what) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


def _rank_rule(value: int, what: str) -> int:
    if not 1 <= value <= MAX_RANK:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_RANK}, not {value}")
    return value


def _alpha_rule(value: float, what: str) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_ALPHA):
        raise ValueError(f"{what} must be a finite number with 0 < {what} <= {MAX_ALPHA:g}, not {value!r}")
    return value


def _pattern_keys(patterns: dict[str, Any], what: str) -> None:
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"{what} has {len(patterns)} entries; at most {MAX_PATTERNS} are accepted")
    for key in patterns:
        if len(key) > MAX_PATTERN_CHARS:
            raise ValueError(f"a key of {what} is {len(key)} characters long; at most {MAX_PATTERN_CHARS}")
        try:
            re.compile(key)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"the key {key[:80]!r} of {what} is not a regular expression ({exc})") from None


class _LoraConfigFile(BaseModel):
    """The fields of adapter_config.json that the registry relies on; the rest is kept verbatim.

    Numbers and booleans are strict (``"r": "8"`` or ``"use_rslora": "false"`` would mean one thing here and
    another to PEFT); the bounds are ``registry.manifest``'s (rank 1..65536, 0 < alpha <= 1e6, text lengths).
    """

    model_config = ConfigDict(extra="allow")

    peft_type: str
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    r: int = Field(8, strict=True)
    lora_alpha: float = Field(8, strict=True)
    use_rslora: bool = Field(False, strict=True)
    use_dora: bool = Field(False, strict=True)
    lora_bias: bool = Field(False, strict=True)
    fan_in_fan_out: bool = Field(False, strict=True)
    rank_pattern: dict[str, int] | None = Field(None, strict=True)
    alpha_pattern: dict[str, float] | None = Field(None, strict=True)
    target_modules: list[str] | str | None = None
    target_parameters: list[str] | None = None
    modules_to_save: list[str] | None = None
    peft_version: str | None = None

    @field_validator("peft_type", "task_type", "base_model_name_or_path", "revision", "peft_version")
    @classmethod
    def _bounded_text(cls, v: str | None, info: Any) -> str | None:
        return _check_text(v, info.field_name)

    @field_validator("r")
    @classmethod
    def _rank(cls, v: int) -> int:
        return _rank_rule(v, "r")

    @field_validator("lora_alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _alpha_rule(v, "lora_alpha")

    @field_validator("rank_pattern")
    @classmethod
    def _ranks(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v:
            _pattern_keys(v, "rank_pattern")
            for key, rank in v.items():
                _rank_rule(rank, f"rank_pattern[{key[:80]!r}]")
        return v

    @field_validator("alpha_pattern")
    @classmethod
    def _alphas(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            _pattern_keys(v, "alpha_pattern")
            for key, alpha in v.items():
                _alpha_rule(alpha, f"alpha_pattern[{key[:80]!r}]")
        return v


def check_config(raw: dict[str, Any], source: str = CONFIG_FILE) -> _LoraConfigFile:
    """Validate a parsed ``adapter_config.json``: a LoRA config within the registry's bounds, or InvalidAdapter
    with one line per problem (the rule in each)."""
    try:
        cfg = _LoraConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidAdapter(source, [f"{CONFIG_FILE}: {p}" for p in field_problems(exc, "config")]) from None
    if cfg.peft_type.upper() != "LORA":
        raise InvalidAdapter(source, [f"peft_type is {cfg.peft_type!r}; only LoRA adapters are supported"])
    return cfg


# -- the safetensors header ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: ``begin``/``end`` are offsets into the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int  # the length of the JSON header (the file's first 8 bytes, little-endian)
    tensors: dict[str, TensorInfo]  # in the order of their data
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_bytes


def _exact_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(name: str, entry: Any) -> TensorInfo:
    problem = text_problem(name, "tensor name")
    if problem:
        raise ValueError(problem.replace("tensor name", f"the tensor name {name[:80]!r}", 1))
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r} is not described by exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {name!r} has dtype {str(dtype)[:20]!r}, which the registry does not read")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
            or not all(_exact_int(d) and 0 <= d <= MAX_DIM for d in shape)):
        raise ValueError(f"tensor {name!r} has a shape that is not a list of at most {MAX_TENSOR_DIMS} sizes "
                         f"from 0 to 2**40")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_exact_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has data_offsets that are not [begin, end] with 0 <= begin <= end")
    needed = math.prod(shape) * DTYPE_SIZES[dtype]
    if needed != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name!r} of shape {shape} and dtype {dtype} needs {needed} bytes, but its "
                         f"data_offsets span {offsets[1] - offsets[0]}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def parse_safetensors_header(
    prefix: bytes, file_size: int, source: str = WEIGHTS_FILE, *,
    max_header_bytes: int = MAX_SAFETENSORS_HEADER_BYTES,
) -> SafetensorsHeader:
    """The header of a safetensors file of ``file_size`` bytes whose first bytes are ``prefix`` (at least the 8
    length bytes and the JSON header). Refuses (InvalidAdapter) a header over ``max_header_bytes`` (8 MiB), one
    that is not UTF-8 JSON starting with ``{``, duplicate names, unknown dtypes or fields, and tensors whose
    byte ranges do not tile the data section exactly (no overlap, no gap, nothing after)."""
    def refuse(message: str) -> InvalidAdapter:
        return InvalidAdapter(source, [f"{WEIGHTS_FILE} is not a readable safetensors file: {message}"])

    if file_size < 8 or len(prefix) < 8:
        raise refuse(f"it is {file_size} bytes long, too short for a header")
    length = int.from_bytes(prefix[:8], "little")
    if length > max_header_bytes:
        raise InvalidAdapter(source, [f"{WEIGHTS_FILE}'s JSON header is {length} bytes; at most {max_header_bytes} "
                                      "are accepted"])
    if length < 2 or 8 + length > file_size:
        raise refuse(f"its header length ({length} bytes) does not fit in the file ({file_size} bytes)")
    if len(prefix) < 8 + length:
        raise refuse("the file ended inside its header")
    raw = prefix[8:8 + length]
    if raw[:1] != b"{":
        raise refuse("its header does not start with '{'")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise refuse(f"its header is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise refuse(f"its header is not valid JSON ({reason})") from None
    if not isinstance(doc, dict):
        raise refuse("its header is not a JSON object")
    metadata = doc.pop("__metadata__", {})
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse("its __metadata__ is not an object of strings")
    try:
        tensors = sorted(((name, _tensor_info(name, entry)) for name, entry in doc.items()),
                         key=lambda item: (item[1].begin, item[1].end))
    except ValueError as exc:
        raise refuse(str(exc)) from None
    data_size, covered = file_size - 8 - length, 0
    for name, info in tensors:
        if info.begin != covered:
            raise refuse(f"tensor {name!r} starts at byte {info.begin} of the data, expected {covered} "
                         "(tensors overlap or leave a gap)")
        covered = info.end
    if covered != data_size:
        raise refuse(f"its tensors cover {covered} bytes but the data section holds {data_size}")
    return SafetensorsHeader(length, dict(tensors), dict(metadata))


def read_safetensors_header(fh: BinaryIO, file_size: int, source: str) -> tuple[SafetensorsHeader, bytes]:
    """Read (only) the length and JSON header from an open file; returns the header and the bytes read."""
    head = fh.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if len(head) == 8 and length <= MAX_SAFETENSORS_HEADER_BYTES and 8 + length <= file_size:
        head += _read_exactly(fh, length)
    return parse_safetensors_header(head, file_size, source), head


def _read_exactly(fh: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left:
        block = fh.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


# -- the data section: one bounded streaming pass -----------------------------------------------------------

# How to find Inf/NaN in each floating-point format: a numpy float type, or (unsigned view, exponent mask):
# an all-ones exponent is Inf or NaN (F8_E4M3 has no Inf; its NaN is S.1111.111).
_FLOAT_CHECKS: dict[str, tuple[str, int | None]] = {
    "F16": ("<f2", None), "F32": ("<f4", None), "F64": ("<f8", None), "BF16": ("<u2", 0x7F80),
    "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F),
}


def _has_nonfinite(chunk: memoryview, dtype: str) -> bool:
    import numpy as np

    view, mask = _FLOAT_CHECKS[dtype]
    values = np.frombuffer(chunk, dtype=view)
    if mask is None:
        return not bool(np.isfinite(values).all())
    exponent = np.asarray(mask, dtype=view)
    return bool(((values & exponent) == exponent).any())


def stream_weights(
    fh: BinaryIO, header: SafetensorsHeader, head: bytes, source: str, *, scan: bool = True,
) -> tuple[str, list[str]]:
    """Read the data section after ``head`` (the bytes already read) once, ``CHUNK_BYTES`` at a time: the file's
    sha256, and (with ``scan``) the names of floating-point tensors holding NaN or Inf."""
    digest = hashlib.sha256(head)
    buffer = memoryview(bytearray(CHUNK_BYTES))
    bad: list[str] = []
    for name, info in header.tensors.items():
        left, found = info.end - info.begin, False
        check = scan and info.dtype in _FLOAT_CHECKS
        while left:
            want = min(left, CHUNK_BYTES)
            got = 0
            while got < want:
                n = fh.readinto(buffer[got:want])  # type: ignore[attr-defined]
                if not n:
                    raise InvalidAdapter(source, [f"{WEIGHTS_FILE} ended before its last tensor (was it being "
                                                  "written or truncated while it was read?)"])
                got += n
            digest.update(buffer[:want])
            if check and not found:
                found = _has_nonfinite(buffer[:want], info.dtype)
            left -= want
        if found:
            bad.append(name)
    if fh.read(1):
        raise InvalidAdapter(source, [f"{WEIGHTS_FILE} grew while it was read; register it once it is complete"])
    return digest.hexdigest(), bad


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- the adapter --------------------------------------------------------------------------------------------


def weights_path(folder: Path, *, root: str | Path | None = None) -> Path:
    """The safetensors weights of an adapter folder, resolved; refuses pickle-only folders with how to convert,
    and a weights file that is not a regular file inside ``root`` (by default the folder itself)."""
    path = _adapter_file(folder, WEIGHTS_FILE, _root(folder, root))
    if path is not None:
        return path
    pickles = [name for name in PICKLE_WEIGHTS if os.path.lexists(folder / name)]
    if pickles:
        raise InvalidAdapter(
            str(folder),
            [f"only pickle weights found ({', '.join(pickles)}); the registry accepts safetensors only, "
             "because loading a pickle can run arbitrary code"],
            hint=CONVERT_HINT,
        )
    raise InvalidAdapter(str(folder), [f"{WEIGHTS_FILE} is missing"])


def _dtype_name(st_dtype: str) -> str:
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(st_dtype, st_dtype)


def _collect_modules(
    shapes: dict[str, list[int]], dtypes: dict[str, str], cfg: _LoraConfigFile, problems: list[str]
) -> tuple[dict[str, ModuleTensors], dict[str, list[int]]]:
    parts: dict[str, dict[str, list[int]]] = {}
    extra: dict[str, list[int]] = {}
    module_dtype: dict[str, str] = {}
    for key, shape in shapes.items():
        if not key.startswith(KEY_PREFIX):
            problems.append(f"tensor {key!r} does not start with {KEY_PREFIX!r} (not a PEFT checkpoint)")
            continue
        m = _LORA_KEY.match(key[len(KEY_PREFIX):])
        if m is None:
            extra[key] = shape
            continue
        module = m.group("module")
        nested = lora_internals(module)
        if nested:
            problems.append(
                f"tensor {key!r} is a LoRA layer nested inside another LoRA layer ({sorted(nested)[0]} in "
                "its module path), as target_modules='all-linear' applied twice produces"
            )
            continue
        if dtypes[key] not in LORA_DTYPES:
            problems.append(f"tensor {key!r} has dtype {dtypes[key]}; LoRA weights must be floating point "
                            f"({', '.join(LORA_DTYPES)})")
            continue
        leaf = text_problem(module.rsplit(".", 1)[-1], "target module")
        if leaf:
            problems.append(f"tensor {key!r}: {leaf}")
            continue
        slot = m.group("part") + (".bias" if m.group("leaf") == "bias" else "")
        parts.setdefault(module, {})[slot] = shape
        module_dtype.setdefault(module, dtypes[key])

    modules: dict[str, ModuleTensors] = {}
    for module, got in sorted(parts.items()):
        kind = "embedding" if "lora_embedding_A" in got or "lora_embedding_B" in got else "linear"
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A", "lora_B")
        if a_key not in got or b_key not in got:
            missing = a_key if a_key not in got else b_key
            problems.append(f"module {module!r} has no {missing} tensor")
            continue
        a, b = got[a_key], got[b_key]
        if len(a) < 2 or len(b) < 2 or 0 in a or 0 in b:
            problems.append(f"module {module!r}: {a_key} has shape {a} and {b_key} {b}; LoRA tensors are at least "
                            f"2-D with no size-0 dimension (the rank is 1..{MAX_RANK})")
            continue
        if len(a) == 4:
            kind = "conv"
        expected_r = _rank_for(cfg, module)
        if kind == "embedding":  # PEFT stores embedding A as (r, num_embeddings), B as (dim, r)
            rank_a, rank_b, in_f, out_f = a[0], b[-1], a[1], b[0]
        elif kind == "conv":  # A: (r, in, k...), B: (out, r, 1...)
            rank_a, rank_b, in_f, out_f = a[0], b[1], a[1], b[0]
        else:
            if len(a) != 2 or len(b) != 2:
                problems.append(f"module {module!r} has LoRA tensors of rank {len(a)}/{len(b)}, expected 2-D")
                continue
            rank_a, rank_b, in_f, out_f = a[0], b[1], a[1], b[0]
        if rank_a != rank_b:
            problems.append(f"module {module!r}: lora_A has rank {rank_a} but lora_B has rank {rank_b}")
            continue
        if rank_a != expected_r:
            problems.append(
                f"module {module!r}: tensors have rank {rank_a} but the config says r={expected_r}"
            )
            continue
        modules[module] = ModuleTensors(
            kind=kind, rank=rank_a, in_features=in_f, out_features=out_f, a_shape=a, b_shape=b,
            dtype=_dtype_name(module_dtype[module]), has_bias="lora_B.bias" in got,
            has_magnitude="lora_magnitude_vector" in got,
        )
    if not modules and not problems:
        problems.append("the weights file holds no LoRA tensors")
    return modules, extra


def _rank_for(cfg: _LoraConfigFile, module: str) -> int:
    pattern = cfg.rank_pattern or {}
    key = match_pattern(pattern, module)
    return int(pattern[key]) if key is not None else cfg.r


def _catalog_peft_version(version: str | None) -> str | None:
    """What the catalog's 32-character column keeps of ``peft_version`` (the config keeps it all): a PEFT dev
    build writes ``0.18.0.dev0@<40-hex commit>``, whose version part is kept."""
    if version is None or len(version) <= 32:
        return version
    return version.split("@", 1)[0][:32]


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def inspect_adapter(
    path: str | Path, *, scan: bool = True, root: str | Path | None = None, max_bytes: int | None = None,
) -> AdapterManifest:
    """Validate the adapter folder at ``path`` and describe it.

    Raises :class:`InvalidAdapter` listing every problem: missing, malformed or oversized config, pickle-only
    weights, non-LoRA adapters, ranks and alphas out of bounds, a weights file over ``max_bytes`` (default
    ``ADREG_MAX_ADAPTER_BYTES``), a malformed or oversized safetensors header, LoRA tensors that are not
    floating point or inconsistent with the config, nested LoRA keys and (with ``scan``) NaN/Inf values; files
    that are not regular files inside ``root`` (by default the folder itself; the Hub cache passes the
    repository's cache folder, whose snapshots link to its blobs). ``scan=False`` reads only the header: no
    tensor data, no hash.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidAdapter(str(folder), ["not a folder (expected a PEFT adapter folder)"])
    raw = read_config(folder, root=root)
    wpath = weights_path(folder, root=root)
    cfg = check_config(raw, str(folder))
    limit = max_bytes if max_bytes is not None else max_adapter_bytes()

    fh, size = _open_regular(wpath, folder, WEIGHTS_FILE)
    with fh:
        if size > limit:
            raise InvalidAdapter(
                str(folder),
                [f"{WEIGHTS_FILE} is {_human(size)} ({size} bytes), over the limit of {_human(limit)} ({limit} bytes)"],
                hint="the limit is ADREG_MAX_ADAPTER_BYTES (e.g. ADREG_MAX_ADAPTER_BYTES=16GiB); raise it if "
                     "adapters this large are expected",
            )
        header, head = read_safetensors_header(fh, size, str(folder))
        shapes = {k: list(t.shape) for k, t in header.tensors.items()}
        dtypes = {k: t.dtype for k, t in header.tensors.items()}
        problems: list[str] = []
        modules, extra = _collect_modules(shapes, dtypes, cfg, problems)
        sha256 = ""
        if scan and not problems:
            sha256, bad = stream_weights(fh, header, head, str(folder))
            problems += [f"tensor {k!r} contains NaN or Inf values" for k in bad]
    if problems:
        raise InvalidAdapter(str(folder), problems)

    leaf_names = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return AdapterManifest(
        peft_type="LORA",
        task_type=cfg.task_type,
        base_model_name_or_path=cfg.base_model_name_or_path,
        revision=cfg.revision,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        lora_bias=cfg.lora_bias,
        fan_in_fan_out=cfg.fan_in_fan_out,
        rank_pattern=cfg.rank_pattern or {},
        alpha_pattern=cfg.alpha_pattern or {},
        target_modules=leaf_names,
        target_parameters=cfg.target_parameters,
        modules_to_save=list(cfg.modules_to_save or []),
        peft_version=_catalog_peft_version(cfg.peft_version),
        config=raw,
        modules=modules,
        extra_tensors=extra,
        weights_sha256=sha256,
        size_bytes=size,
        param_count=sum(math.prod(s) for s in shapes.values()),
        dtypes=sorted({_dtype_name(d) for d in dtypes.values()}),
    )
