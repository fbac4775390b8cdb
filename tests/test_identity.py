"""Catalog identity: a version is its weights and its config; a base model has one identity; a merge names
each input once. (Issue 12, items 1-3.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry import models as m
from registry.errors import BaseModelNotFound, IncompatibleAdapters, RegistryError


def _with_config(src: Path, dest: Path, **changes: object) -> Path:
    folder = shutil.copytree(src, dest)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _job_count(registry) -> int:  # type: ignore[no-untyped-def]
    with registry.service.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(m.Job)))


def test_same_weights_other_config_is_a_new_version(registry, tiny, tmp_path):
    first = registry.register(tiny["tone"], name="tone")
    halved = _with_config(tiny["tone"], tmp_path / "alpha4", lora_alpha=4)
    second = registry.register(halved, name="tone")
    assert second.ref == "tone:2" and second.lora_alpha == 4 and first.lora_alpha == 8
    assert second.weights_sha256 == first.weights_sha256 and second.path != first.path
    assert json.loads((Path(second.path) / "adapter_config.json").read_text())["lora_alpha"] == 4
    # Identical bytes and identical config stay idempotent, for both versions.
    assert registry.register(tiny["tone"], name="tone").ref == "tone:1"
    assert registry.register(halved, name="tone").ref == "tone:2"
    assert [v.ref for v in registry.versions_of("tone")] == ["tone:1", "tone:2"]


def _project(tiny: dict[str, Path], root: Path) -> Path:
    """A training folder as PEFT leaves it: the base beside the adapters, configs naming it relatively."""
    root.mkdir()
    shutil.copytree(tiny["llama"], root / "llama-base")
    _with_config(tiny["tone"], root / "tone", base_model_name_or_path="llama-base")
    _with_config(tiny["tone2"], root / "tone-child", base_model_name_or_path=str((root / "llama-base").resolve()))
    return root


def test_relative_base_resolves_to_one_identity_from_any_directory(registry, tiny, tmp_path, monkeypatch):
    project = _project(tiny, tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # 'llama-base' is not in the working directory: found beside the adapter
    relative = registry.register(project / "tone", name="tone")
    absolute = registry.register(project / "tone-child", name="tone")
    base = str((project / "llama-base").resolve())
    assert relative.base_model == absolute.base_model == base
    assert [(c.base_model, c.level) for c in relative.compatible] == [(base, "exact")]
    assert len(registry.base_models()) == 1 and registry.base_models()[0].module_count > 0

    job = registry.merge(["tone:1", "tone:2"], weights=[0.5, 0.5], method="linear", name="both")
    assert job.wait().status == "succeeded"
    merged = registry.get("both:1")
    assert merged.base_model == base
    assert json.loads((Path(merged.path) / "adapter_config.json").read_text())["base_model_name_or_path"] == base


def test_relative_base_found_nowhere_is_refused_with_a_hint(registry, tiny, tmp_path, monkeypatch):
    lost = _with_config(tiny["tone"], tmp_path / "lost", base_model_name_or_path="llama-base")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BaseModelNotFound, match="'llama-base'.*not a model folder") as err:
        registry.register(lost, name="lost")
    assert "--base-path" in (err.value.hint or "")
    assert registry.base_models() == []  # no phantom base record
    # The user can point at the folder, which then is the identity.
    v = registry.register(lost, name="lost", base_path=tiny["llama"])
    assert v.base_model == str(tiny["llama"].resolve()) and v.compatible[0].level == "exact"


def test_unchecked_base_is_declared_never_exact(registry, tiny, tmp_path):
    hub = _with_config(tiny["tone"], tmp_path / "hub", base_model_name_or_path="org/llama-7b")
    v = registry.register(hub, name="hub")
    assert v.base_model == "org/llama-7b"
    assert [(c.level, c.evidence["shapes_checked"]) for c in v.compatible] == [("declared", False)]


def test_merge_refuses_a_version_given_twice_before_any_job(registry, tiny):
    registry.register(tiny["tone"], name="a")
    with pytest.raises(IncompatibleAdapters, match="a:1 is given more than once"):
        registry.merge(["a:1", "a"], weights=[0.5, 0.5], method="linear", name="aa")
    assert _job_count(registry) == 0


def test_merge_job_checks_what_the_static_check_checked(registry, tiny, tmp_path, monkeypatch):
    """A merge that passed before the job exists cannot fail in the job for the same reason: both use the
    catalog's base identity, and the job's errors name inputs by their references."""
    project = _project(tiny, tmp_path / "p")
    monkeypatch.chdir(project)
    registry.register("./tone", name="x")
    registry.register("./tone-child", name="y")
    job = registry.merge(["x:1", "y:1"], weights=[1.0, 1.0], method="cat", name="xy").wait()
    assert job.status == "succeeded" and job.result.parents[0].ref == "x:1"


def test_an_absurd_base_name_is_a_message(registry, tiny):
    with pytest.raises(BaseModelNotFound, match="not a model folder"):
        registry.register(tiny["tone"], name="x", base="./" + "a" * 300)  # longer than a file name may be
    with pytest.raises(RegistryError, match="at most 255"):
        registry.register(tiny["tone"], name="x", base="a" * 300)


def test_a_base_that_is_not_a_model_folder_is_refused(registry, tiny):
    """Issue 13, item 9: a file such as /etc/passwd is neither a model folder nor a Hub id."""
    with pytest.raises(BaseModelNotFound, match="not a model folder"):
        registry.register(tiny["tone"], name="x", base_path="/etc/passwd")
    with pytest.raises(BaseModelNotFound, match="'/etc/passwd'.*not a model folder"):
        registry.register(tiny["tone"], name="x", base="/etc/passwd")
    assert registry.base_models() == []
