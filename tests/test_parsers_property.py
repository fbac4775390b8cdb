"""Property-based tests of the two parsers an adapter folder goes through (issue 13): the safetensors header and
``adapter_config.json``. Garbage is refused with a RegistryError (never another exception); valid random inputs
round-trip; whatever the header parser accepts, safetensors itself loads the same way."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from registry.errors import RegistryError
from registry.inspect import (
    DTYPE_SIZES,
    check_config,
    inspect_adapter,
    parse_config,
    parse_safetensors_header,
    stream_weights,
)
from registry.manifest import MAX_ALPHA, MAX_RANK

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
storable_values = st.recursive(  # what the catalog can store: finite numbers, no NUL, no lone surrogates
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63) | st.floats(allow_nan=False, allow_infinity=False)
    | safe_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(safe_text, inner, max_size=4),
    max_leaves=24,
)


def header_bytes(doc: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    blob = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return (len(blob) if length is None else length).to_bytes(8, "little") + blob + data


def parses_or_refuses(data: bytes, size: int | None = None) -> Any:
    """The header parser's answer: the header, or None when it refused with a RegistryError."""
    try:
        return parse_safetensors_header(data, len(data) if size is None else size, "fuzz")
    except RegistryError:
        return None


# -- the safetensors header ---------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=256))
@example(b"")
@example(b"\xff" * 8)
@example(header_bytes(b"[" * 5000))
@example(header_bytes(b'{"a":' * 3000))
@example(header_bytes(b"{\xff}"))
@example(header_bytes({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, length=2 ** 64 - 1))
def test_garbage_bytes_are_refused_not_crashed_on(data):
    parses_or_refuses(data)


tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from([*DTYPE_SIZES, "F4", "Q8", ""]) | json_scalars,
    "shape": st.lists(st.integers(-2, 2 ** 41) | json_scalars, max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-4, 2 ** 70) | json_scalars, min_size=0, max_size=3) | json_values,
}, optional={"extra": json_values})


@FAST
@given(st.dictionaries(st.text(max_size=12), tensor_entries | json_values, max_size=4), st.binary(max_size=64),
       st.integers(-64, 64))
def test_structured_garbage_headers_are_refused_not_crashed_on(doc, data, size_delta):
    raw = header_bytes(doc, data)
    parsed = parses_or_refuses(raw, max(0, len(raw) + size_delta))
    if parsed is not None and size_delta == 0:  # what we accept, safetensors reads the same way
        loaded = st_load(raw)
        assert {k: list(v.shape) for k, v in loaded.items()} == {k: list(t.shape) for k, t in parsed.tensors.items()}


NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "U8": np.uint8,
                "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}
tensor_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=40)


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(tensor_names, min_size=0, max_size=6, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(sorted(NUMPY_DTYPES)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        out[name] = (np.arange(math.prod(shape)) % 7).astype(NUMPY_DTYPES[dtype]).reshape(shape)
    return out


@FAST
@given(tensor_dicts(), st.dictionaries(tensor_names, st.text(max_size=20), max_size=3))
def test_valid_files_round_trip(tensors, metadata):
    raw = st_save(tensors, metadata=metadata or None)
    header = parse_safetensors_header(raw, len(raw), "valid")
    assert {k: list(t.shape) for k, t in header.tensors.items()} == {k: list(v.shape) for k, v in tensors.items()}
    assert {k: t.dtype for k, t in header.tensors.items()} == {
        k: next(n for n, d in NUMPY_DTYPES.items() if np.dtype(d) == v.dtype) for k, v in tensors.items()}
    assert header.metadata == metadata
    fh = io.BytesIO(raw)
    head = fh.read(header.data_start)
    sha, bad = stream_weights(fh, header, head, "valid")  # type: ignore[arg-type]
    assert sha == hashlib.sha256(raw).hexdigest() and bad == []
    # any byte cut off the end, or added, is refused
    assert parses_or_refuses(raw, len(raw) - 1) is None and parses_or_refuses(raw + b"\0", len(raw) + 1) is None


@FAST
@given(st.sampled_from(["F16", "F32", "F64"]), st.lists(st.floats(width=16), min_size=1, max_size=40))
def test_the_stream_scan_flags_exactly_the_non_finite_tensors(dtype, values):
    array = np.array(values, dtype=NUMPY_DTYPES[dtype])
    raw = st_save({"t": array})
    header = parse_safetensors_header(raw, len(raw), "scan")
    fh = io.BytesIO(raw)
    _, bad = stream_weights(fh, header, fh.read(header.data_start), "scan")  # type: ignore[arg-type]
    assert bad == ([] if np.isfinite(array).all() else ["t"])


# -- adapter_config.json ------------------------------------------------------------------------------------


def config_answer(data: bytes) -> Any:
    """The parsed and checked config, or None when refused with a RegistryError."""
    try:
        return check_config(parse_config(data, "fuzz"), "fuzz")
    except RegistryError:
        return None


@FAST
@given(st.binary(max_size=256))
@example(b"[" * 100_000)
@example(b'{"a":' * 50 + b"1" + b"}" * 50)
@example(b'{"peft_type": "LORA", "r": ' + b"9" * 5000 + b"}")
@example(b'{"peft_type": "LORA", "lora_alpha": Infinity}')
@example(b'{"peft_type": "LORA", "r": 4, "r": 8}')
@example(b'\xef\xbb\xbf{"peft_type": "LORA"}')
@example(b'{"peft_type": "LORA", "x": "\\ud800"}')
@example(b'{"peft_type": "LORA", "rank_pattern": {"(a": 4}}')
def test_garbage_configs_are_refused_not_crashed_on(data):
    config_answer(data)


config_keys = st.sampled_from([
    "peft_type", "task_type", "base_model_name_or_path", "revision", "r", "lora_alpha", "use_rslora", "use_dora",
    "lora_bias", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "target_modules", "target_parameters",
    "modules_to_save", "peft_version",
]) | st.text(max_size=8)
hostile_values = json_values | st.sampled_from([0, -1, 2 ** 63, 1e308, -0.0, 65537, "\x00", "a" * 2000, "LORA"])


@FAST
@given(st.dictionaries(config_keys, hostile_values, max_size=8), st.booleans())
def test_random_configs_are_refused_or_within_bounds(doc, lora):
    if lora:
        doc["peft_type"] = "LORA"
    cfg = config_answer(json.dumps(doc).encode())
    if cfg is not None:
        assert 1 <= cfg.r <= MAX_RANK and 0 < cfg.lora_alpha <= MAX_ALPHA
        assert all(1 <= v <= MAX_RANK for v in (cfg.rank_pattern or {}).values())
        assert all(0 < v <= MAX_ALPHA for v in (cfg.alpha_pattern or {}).values())


module_names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
alphas = st.floats(min_value=0, max_value=MAX_ALPHA, exclude_min=True) | st.integers(1, int(MAX_ALPHA))
valid_configs = st.fixed_dictionaries({
    "peft_type": st.just("LORA"),
    "r": st.integers(1, MAX_RANK),
    "lora_alpha": alphas,
}, optional={
    "task_type": st.sampled_from(["CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"]),
    "base_model_name_or_path": st.from_regex(r"[a-z0-9]{1,12}/[a-z0-9._-]{1,20}", fullmatch=True),
    "revision": st.from_regex(r"[a-z0-9]{1,40}", fullmatch=True),
    "use_rslora": st.booleans(),
    "use_dora": st.booleans(),
    "rank_pattern": st.dictionaries(module_names, st.integers(1, MAX_RANK), max_size=4),
    "alpha_pattern": st.dictionaries(module_names, alphas, max_size=4),
    "target_modules": st.lists(module_names, max_size=6) | module_names,
    "modules_to_save": st.none() | st.lists(module_names, max_size=3),
    "peft_version": st.sampled_from(["0.17.0", "0.18.0.dev0@" + "a" * 40]),
    "extra": storable_values,
})


@FAST
@given(valid_configs)
def test_valid_configs_round_trip(doc):
    parsed = parse_config(json.dumps(doc).encode())
    assert parsed == doc
    cfg = check_config(parsed)
    assert (cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern) == (
        doc["r"], doc["lora_alpha"], doc.get("rank_pattern"), doc.get("alpha_pattern"))


@settings(max_examples=40, deadline=None)
@given(valid_configs, st.sampled_from(["F16", "F32", "BF16"]), st.integers(1, 6), st.integers(1, 6))
def test_valid_adapters_round_trip_through_inspect(doc, dtype, n_in, n_out):
    r = doc["r"] = min(doc["r"], 8)
    doc.pop("rank_pattern", None)
    key = "base_model.model.model.layers.0.mlp.up_proj"
    size = 2 if dtype != "F32" else 4
    a, b = bytes(size * r * n_in), bytes(size * n_out * r)
    header = {f"{key}.lora_A.weight": {"dtype": dtype, "shape": [r, n_in], "data_offsets": [0, len(a)]},
              f"{key}.lora_B.weight": {"dtype": dtype, "shape": [n_out, r], "data_offsets": [len(a), len(a + b)]}}
    raw = header_bytes(header, a + b)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "adapter_config.json").write_text(json.dumps(doc))
        (Path(tmp) / "adapter_model.safetensors").write_bytes(raw)
        manifest = inspect_adapter(tmp)
    module = manifest.modules["model.layers.0.mlp.up_proj"]
    assert (module.rank, module.in_features, module.out_features) == (r, n_in, n_out)
    assert manifest.weights_sha256 == hashlib.sha256(raw).hexdigest() and manifest.config == doc
    assert manifest.peft_version in (None, "0.17.0", "0.18.0.dev0")
