"""Hostile adapter folders are refused cleanly and cheaply at registration (issue 13, items 1, 2, 6, 7, 8, 16).

Every refusal is a RegistryError with the rule in its message, and a refused or failed registration leaves
nothing in the artifact store (no blob, no ``.tmp-*`` file)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from registry import Registry
from registry.errors import IncompatibleBaseModel, InvalidAdapter, RegistryError
from registry.inspect import inspect_adapter

KEY = "base_model.model.model.layers.0.self_attn.q_proj"
BASE = "acme/tiny-base"  # a Hub id: recorded as declared, never looked up


def config(**changes: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": BASE, "r": 4,
        "lora_alpha": 8, "target_modules": ["q_proj"], "peft_version": "0.17.0",
    }
    cfg.update(changes)
    return cfg


def lora(r: int = 4, n: int = 16, dtype: type = np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{KEY}.lora_A.weight": rng.standard_normal((r, n)).astype(dtype),
            f"{KEY}.lora_B.weight": rng.standard_normal((n, r)).astype(dtype)}


def adapter(folder: Path, tensors: dict[str, np.ndarray] | None = None, cfg: dict[str, object] | None = None,
            metadata: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config() if cfg is None else cfg))
    save_file(lora() if tensors is None else tensors, str(folder / "adapter_model.safetensors"), metadata=metadata)
    return folder


@pytest.fixture
def reg(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Registry(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path / "home") as registry:
        yield registry


def store_files(registry: Registry) -> list[Path]:
    """Every file in the artifact store, temporary ones included."""
    root = registry.store.root
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def refused(registry: Registry, folder: Path, match: str, error: type[Exception] = InvalidAdapter,
            **kwargs: object) -> Exception:
    with pytest.raises(error, match=match) as info:
        registry.register(folder, name="hostile", **kwargs)  # type: ignore[arg-type]
    assert store_files(registry) == [], "a refused registration wrote to the store"
    return info.value


def test_a_valid_handmade_adapter_registers(reg, tmp_path):
    v = reg.register(adapter(tmp_path / "ok"), name="ok")
    assert (v.r, v.lora_alpha, v.dtypes, v.target_modules) == (4, 8.0, ["float32"], ["q_proj"])
    assert (Path(v.path) / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()


# -- 1. bounded, streamed, with a size limit ----------------------------------------------------------------


def test_weights_over_the_size_limit_are_refused_before_any_copy(tmp_path, monkeypatch):
    folder = adapter(tmp_path / "big", lora(r=4, n=256))  # 8 KiB of float32 per tensor
    monkeypatch.setenv("ADREG_MAX_ADAPTER_BYTES", "4KiB")
    with Registry(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path / "home") as registry:
        err = refused(registry, folder, "over the limit of 4.0 KiB")
        assert "ADREG_MAX_ADAPTER_BYTES" in (err.hint or "")
    monkeypatch.setenv("ADREG_MAX_ADAPTER_BYTES", "lots")
    with pytest.raises(RegistryError, match="ADREG_MAX_ADAPTER_BYTES='lots' is not a size"):
        Registry(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path / "home")


def test_a_20_gb_sparse_weights_file_is_refused_by_size_without_reading_it(reg, tmp_path):
    folder = adapter(tmp_path / "sparse")
    with (folder / "adapter_model.safetensors").open("r+b") as fh:
        fh.truncate(20 << 30)  # sparse: no disk used
    refused(reg, folder, r"20\.0 GiB .* over the limit of 8\.0 GiB")


def test_registration_memory_is_bounded_by_a_buffer_not_by_the_file(tmp_path):
    """Inspecting a 96 MB adapter (one tensor pair of 48 MB each) raises the peak RSS by far less than a tensor:
    nothing is mapped or loaded whole. Measured in a fresh process after the imports a scan needs, with the
    peak reset first (Linux: ``5`` to /proc/self/clear_refs)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    r, n = 4096, 3072  # 12M float32 = 48 MB per tensor
    adapter(tmp_path / "large", {f"{KEY}.lora_A.weight": np.ones((r, n), np.float32),
                                 f"{KEY}.lora_B.weight": np.ones((n, r), np.float32)}, config(r=r))
    script = textwrap.dedent(f"""
        import re, numpy, torch, safetensors.torch
        from registry.inspect import inspect_adapter

        def kb(field):
            return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

        open("/proc/self/clear_refs", "w").write("5")
        before = kb("VmRSS")
        m = inspect_adapter({str(tmp_path / 'large')!r})
        assert m.weights_sha256 and m.size_bytes > 96_000_000
        print((kb("VmHWM") - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grown_mb = int(out.stdout.split()[-1])
    assert grown_mb < 32, f"peak RSS grew by {grown_mb} MB while inspecting a 96 MB adapter"


def test_streamed_scan_still_finds_nan_and_inf_in_every_float_format(tmp_path):
    for dtype, name in ((np.float16, "f16"), (np.float32, "f32"), (np.float64, "f64")):
        tensors = lora(dtype=dtype)
        tensors[f"{KEY}.lora_B.weight"][3, 1] = np.inf if name != "f32" else np.nan
        with pytest.raises(InvalidAdapter, match="lora_B.weight' contains NaN or Inf"):
            inspect_adapter(adapter(tmp_path / name, tensors))
    # bfloat16, written by hand: 0x7FC0 is a NaN, 0x3F80 is 1.0
    folder = adapter(tmp_path / "bf16", lora())
    a = np.full((4, 16), 0x3F80, np.uint16)
    b = np.full((16, 4), 0x3F80, np.uint16)
    b[0, 0] = 0x7FC0
    header = {f"{KEY}.lora_A.weight": {"dtype": "BF16", "shape": [4, 16], "data_offsets": [0, 128]},
              f"{KEY}.lora_B.weight": {"dtype": "BF16", "shape": [16, 4], "data_offsets": [128, 256]}}
    blob = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + a.tobytes()
                                                       + b.tobytes())
    with pytest.raises(InvalidAdapter, match="lora_B.weight' contains NaN or Inf"):
        inspect_adapter(folder)
    b[0, 0] = 0x3F80
    (folder / "adapter_model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + a.tobytes()
                                                       + b.tobytes())
    assert inspect_adapter(folder).dtypes == ["bfloat16"]


# -- 2. bounded header, config and strings ------------------------------------------------------------------


def test_a_9_mib_safetensors_header_is_refused(reg, tmp_path):
    folder = adapter(tmp_path / "fat-header", metadata={"pad": "x" * (9 << 20)})
    refused(reg, folder, r"JSON header is \d+ bytes; at most 8388608 are accepted")


def test_a_2_mib_adapter_config_is_refused(reg, tmp_path):
    folder = adapter(tmp_path / "fat-config", cfg=config(notes="x" * (2 << 20)))
    refused(reg, folder, r"adapter_config.json is \d+ bytes; at most 1048576 are accepted")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("task_type", "C" * 65, "task_type is 65 characters long; at most 64"),
    ("revision", "r" * 256, "revision is 256 characters long; at most 255"),
    ("base_model_name_or_path", "acme/" + "b" * 1100, "base_model_name_or_path is 1105 characters long"),
    ("task_type", "CAUSAL\x00LM", "task_type contains a NUL character"),
    ("revision", "main\x1b[31m", "revision contains the control character '\\\\x1b'"),
    ("notes", "a\x00b", "notes contains a NUL character"),  # any string of the config: JSONB refuses NUL
])
def test_config_strings_are_bounded_and_free_of_control_characters(registry, tmp_path, field, value, match):
    folder = adapter(tmp_path / "strings", cfg=config(**{field: value}))
    refused(registry, folder, match)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"description": "polite\x00tone"}, "description contains the control character '\\\\x00'"),
    ({"description": "d" * 4097}, "description is 4097 characters long; at most 4096"),
    ({"revision": "v1\x00"}, "revision contains the control character"),
    ({"base": "org/" * 75}, "base model name is 300 characters long; at most 255"),
])
def test_user_strings_are_bounded_before_anything_is_written(registry, tmp_path, kwargs, match):
    refused(registry, adapter(tmp_path / "user"), match, RegistryError, **kwargs)
    assert registry.base_models() == []
    ok = registry.register(adapter(tmp_path / "user"), name="fine", description="two\nlines\tand a tab")
    assert ok.description == "two\nlines\tand a tab"


# -- 6. LoRA tensors are floating point ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.bool_])
def test_non_float_lora_tensors_are_refused(reg, tmp_path, dtype):
    tensors = {k: (v * 10).astype(dtype) for k, v in lora().items()}
    refused(reg, adapter(tmp_path / "ints", tensors),
            r"has dtype (I32|I8|U8|BOOL); LoRA weights must be floating point \(F16, BF16, F32, F64\)")


# -- 7. rank and alpha bounds -------------------------------------------------------------------------------


def test_a_rank_0_module_is_refused(reg, tmp_path):
    tensors = {f"{KEY}.lora_A.weight": np.zeros((0, 16), np.float32),
               f"{KEY}.lora_B.weight": np.zeros((16, 0), np.float32)}
    refused(reg, adapter(tmp_path / "r0", tensors, config(rank_pattern={"q_proj": 0})),
            r"rank_pattern\['q_proj'\] must be an integer from 1 to 65536, not 0")
    refused(reg, adapter(tmp_path / "r0b", tensors, config(r=4)), "no size-0 dimension")


@pytest.mark.parametrize(("changes", "match"), [
    ({"lora_alpha": 0}, r"lora_alpha must be a finite number with 0 < lora_alpha <= 1e\+06, not 0"),
    ({"lora_alpha": -8}, "lora_alpha must be a finite number with 0 < lora_alpha"),
    ({"lora_alpha": 1e308}, "lora_alpha must be a finite number with 0 < lora_alpha"),
    ({"alpha_pattern": {"q_proj": 0}}, r"alpha_pattern\['q_proj'\] must be a finite number"),
    ({"alpha_pattern": {"q_proj": 1e308}}, r"alpha_pattern\['q_proj'\] must be a finite number"),
    ({"alpha_pattern": {"q_proj": -1.5}}, r"alpha_pattern\['q_proj'\] must be a finite number"),
    ({"r": 70000}, "r must be an integer from 1 to 65536, not 70000"),
    ({"rank_pattern": {"q_proj": -4}}, r"rank_pattern\['q_proj'\] must be an integer from 1 to 65536"),
    ({"rank_pattern": {"(": 4}}, r"the key '\(' of rank_pattern is not a regular expression"),
    ({"r": "4"}, "Input should be a valid integer"),
    ({"use_rslora": "false"}, "Input should be a valid boolean"),
])
def test_ranks_and_alphas_out_of_bounds_are_refused_with_the_rule(reg, tmp_path, changes, match):
    refused(reg, adapter(tmp_path / "bounds", cfg=config(**changes)), match)


def test_non_standard_json_numbers_are_refused(reg, tmp_path):
    folder = adapter(tmp_path / "nan")
    (folder / "adapter_config.json").write_text(json.dumps(config()).replace('"lora_alpha": 8', '"lora_alpha": NaN'))
    refused(reg, folder, "adapter_config.json is not valid JSON: NaN is not a JSON value")
    (folder / "adapter_config.json").write_text(json.dumps(config()).replace('"lora_alpha": 8', '"lora_alpha": 1e999'))
    refused(reg, folder, "lora_alpha is not a finite number")


# -- 8. files of the folder: regular files inside it --------------------------------------------------------


def test_a_config_symlinked_outside_the_folder_is_refused(reg, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(config(description="the content of a file outside the folder")))
    folder = adapter(tmp_path / "linked")
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to(secret)
    refused(reg, folder, r"adapter_config.json is a symbolic link to .*secret.json, outside the adapter folder")


def test_weights_that_are_a_fifo_or_a_device_are_named_as_such(reg, tmp_path):
    folder = adapter(tmp_path / "fifo")
    weights = folder / "adapter_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    refused(reg, folder, "adapter_model.safetensors is a FIFO \\(named pipe\\), not a regular file")
    weights.unlink()
    inside = folder / "pipe"
    os.mkfifo(inside)
    weights.symlink_to(inside)
    refused(reg, folder, "adapter_model.safetensors \\(a symbolic link to .*pipe\\) is a FIFO")
    weights.unlink()
    weights.symlink_to("/dev/zero")
    refused(reg, folder, "adapter_model.safetensors is a symbolic link to /dev/zero, outside the adapter folder")
    weights.unlink()
    weights.symlink_to(folder / "nowhere")
    refused(reg, folder, "adapter_model.safetensors is a symbolic link to .*nowhere, which does not exist")


def test_symlinks_inside_the_folder_are_followed(reg, tmp_path):
    folder = adapter(tmp_path / "inside")
    (folder / "blobs").mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).rename(folder / "blobs" / name)
        (folder / name).symlink_to(Path("blobs") / name)
    assert reg.register(folder, name="inside").ref == "inside:1"


# -- 16. check first, copy last; a full disk is a clean error and leaves nothing ----------------------------


def test_a_shape_mismatch_is_refused_before_the_copy(reg, tiny):
    with pytest.raises(IncompatibleBaseModel, match="does not fit base model"):
        reg.register(tiny["gpt2_attn"], name="wrong-base", base_path=tiny["llama"])
    assert store_files(reg) == []


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_no_space_while_copying_the_weights_is_clean_and_leaves_nothing(reg, tmp_path, monkeypatch):
    monkeypatch.setattr("registry.store.os.fsync", _enospc)
    refused(reg, adapter(tmp_path / "a"), f"no space left on {reg.store.root}", RegistryError)


def test_no_space_while_writing_the_version_folder_is_clean_and_leaves_nothing(reg, tmp_path, monkeypatch):
    monkeypatch.setattr("registry.store.os.link", _enospc)
    with pytest.raises(RegistryError, match=f"no space left on {reg.store.root}"):
        reg.register(adapter(tmp_path / "a"), name="a")
    assert not [p for p in reg.store.root.rglob(".tmp-*")]
    # only the complete, content-addressed blob stays (unreferenced: `adreg gc` collects it)
    assert [p.parent.parent.name for p in store_files(reg)] == ["blobs"]


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs (needs root and a sandbox that allows mounts; skipped otherwise)."""
    where = tmp_path / "small-disk"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_is_refused_cleanly_by_the_sdk_and_the_cli(small_disk, tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ADREG_ARTIFACT_DIR", str(small_disk))
    db = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Registry(db, home=tmp_path / "home") as registry:
        refused(registry, tiny["legal"], f"no space left on {small_disk}", RegistryError)  # 69 KB > 64 KiB
        # the copy itself running out of space (as when the disk fills during the copy) cleans up too
        monkeypatch.setattr("registry.store.ArtifactStore._free_space_for", lambda *a: None)
        refused(registry, tiny["legal"], f"no space left on {small_disk}", RegistryError)
        assert list(small_disk.rglob("*.safetensors")) == [] and not list(small_disk.rglob(".tmp-*"))
        assert registry.register(tiny["tone"], name="small").ref == "small:1"  # 8 KB fits
    from typer.testing import CliRunner

    from registry.cli import app

    result = CliRunner().invoke(app, ["--db", db, "--home", str(tmp_path / "home"), "register", str(tiny["legal"]),
                                      "--name", "legal"])
    assert result.exit_code == 1 and f"no space left on {small_disk}" in result.stderr, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
