"""Catalog behaviour, run against both SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select

from registry import models as m
from registry.catalog import ParentSpec
from registry.errors import (
    AdapterNotFound,
    IncompatibleBaseModel,
    InvalidAdapter,
    InvalidName,
    RegistryError,
)


def perturbed(src: Path, dst: Path, scale: float = 1.5) -> Path:
    """A copy of an adapter with different weights (so a different sha256)."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "adapter_model.safetensors")
    save_file({k: v * scale for k, v in tensors.items()}, dst / "adapter_model.safetensors")
    return dst


def count(reg, model) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def stored_files(reg) -> list[Path]:  # type: ignore[no-untyped-def]
    root = reg.store.root
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_register_reads_metadata_and_records_exact_compatibility(registry, tiny):
    v = registry.register(tiny["legal"], name="legal", tags={"team": "law"})
    assert (v.ref, v.version, v.r, v.lora_alpha) == ("legal:1", 1, 8, 16.0)
    assert v.target_modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert v.module_count == 14 and v.task_type == "CAUSAL_LM" and v.dtypes == ["float32"]
    assert v.base_model == str(tiny["llama"].resolve())
    assert [(c.level, c.evidence["shapes_checked"]) for c in v.compatible] == [("exact", True)]
    assert v.tags == {"team": "law"}
    # the stored folder is a PEFT adapter whose weights are byte-identical to the source
    stored = Path(v.path)
    source_bytes = (tiny["legal"] / "adapter_model.safetensors").read_bytes()
    assert (stored / "adapter_model.safetensors").read_bytes() == source_bytes
    assert json.loads((stored / "adapter_config.json").read_text())["r"] == 8


def test_same_bytes_same_version_new_bytes_next_version(registry, tiny, tmp_path):
    first = registry.register(tiny["tone"], name="tone")
    again = registry.register(tiny["tone"], name="tone", tags={"reviewed": "yes"})
    assert again.id == first.id and again.version == 1
    assert again.tags == {"reviewed": "yes"}
    second = registry.register(perturbed(tiny["tone"], tmp_path / "t2"), name="tone")
    assert second.version == 2
    assert count(registry, m.AdapterVersion) == 2
    # the same bytes under another name are another adapter's version 1, sharing one blob
    other = registry.register(tiny["tone"], name="tone-copy")
    assert other.ref == "tone-copy:1"
    assert len(list((registry.store.root / "blobs").rglob("*.safetensors"))) == 2


def test_search_filters_and_pagination(registry, tiny, tmp_path):
    registry.register(tiny["tone"], name="support-tone", tags={"team": "cx", "lang": "en"})
    registry.register(tiny["tone2"], name="support-tone-fr", tags={"team": "cx", "lang": "fr"})
    registry.register(tiny["legal"], name="legal", tags={"team": "law", "lang": "en"})
    registry.register(tiny["gpt2_attn"], name="gpt2-thing", tags={"team": "cx"})

    def refs(**kw):  # type: ignore[no-untyped-def]
        return sorted(v.ref for v in registry.search(**kw))

    assert refs(tags={"team": "cx"}) == ["gpt2-thing:1", "support-tone-fr:1", "support-tone:1"]
    assert refs(tags={"team": "cx", "lang": "en"}) == ["support-tone:1"]
    assert refs(base_model=str(tiny["llama"]), tags={"team": "cx"}) == ["support-tone-fr:1", "support-tone:1"]
    assert refs(min_rank=5) == ["legal:1"]
    assert refs(max_rank=4, name_like="tone") == ["support-tone-fr:1", "support-tone:1"]
    assert refs(target_module="down_proj") == ["legal:1"]
    assert refs(target_module="c_attn") == ["gpt2-thing:1"]
    assert refs(task_type="causal_lm", name_like="gpt") == ["gpt2-thing:1"]
    assert refs(name_like="%") == []  # LIKE wildcards in user input are literal
    page1 = registry.search(sort="name", descending=False, limit=2)
    page2 = registry.search(sort="name", descending=False, limit=2, offset=2)
    assert [v.name for v in page1 + page2] == ["gpt2-thing", "legal", "support-tone", "support-tone-fr"]


def test_aliases_move_and_resolve(registry, tiny, tmp_path):
    registry.register(tiny["tone"], name="tone")
    registry.register(perturbed(tiny["tone"], tmp_path / "t2"), name="tone")
    assert registry.get("tone").version == 2  # bare name: latest
    registry.set_alias("tone:1", "production")
    assert registry.get("tone@production").version == 1
    registry.set_alias("tone:2", "production")  # moving, not duplicating
    assert registry.get("tone@production").version == 2
    assert registry.get("tone:1").aliases == []
    with pytest.raises(AdapterNotFound, match="aliases: production"):
        registry.get("tone@staging")
    registry.remove_alias("tone", "production")
    with pytest.raises(AdapterNotFound):
        registry.get("tone@production")
    with pytest.raises(AdapterNotFound, match="no version 7"):
        registry.get("tone:7")
    with pytest.raises(InvalidName):
        registry.set_alias("tone:1", "Prod/../x")


def test_tags_set_overwrite_and_remove(registry, tiny):
    registry.register(tiny["tone"], name="tone", tags={"team": "cx"})
    assert registry.tag("tone:1", {"team": "support", "reviewed": "yes"}).tags == {"team": "support", "reviewed": "yes"}
    assert registry.untag("tone:1", ["team"]).tags == {"reviewed": "yes"}
    with pytest.raises(InvalidName):
        registry.tag("tone:1", {"bad key": "x"})


def test_lineage_graph_both_directions(registry, tiny, tmp_path):
    a = registry.register(tiny["tone"], name="a")
    b = registry.register(tiny["tone2"], name="b")
    merged = registry.register(
        perturbed(tiny["tone"], tmp_path / "m"), name="ab",
        parents=[ParentSpec(a.id, "merge", 0.7, 0, {"method": "svd"}), ParentSpec(b.id, "merge", 0.3, 1)],
    )
    tuned = registry.register(
        perturbed(tiny["tone"], tmp_path / "f", 2.0), name="ab", parents=[ParentSpec(merged.id, "finetune")]
    )
    g = registry.lineage("ab:1")
    assert sorted(n.ref for n in g.nodes) == ["a:1", "ab:1", "ab:2", "b:1"]
    assert sorted((e.child, e.parent, e.relation, e.weight) for e in g.edges) == [
        ("ab:1", "a:1", "merge", 0.7), ("ab:1", "b:1", "merge", 0.3), ("ab:2", "ab:1", "finetune", None)
    ]
    assert {n.ref for n in registry.lineage("a:1").nodes} == {"a:1", "ab:1", "ab:2"}  # b is a sibling, not kin
    shown = registry.get(tuned.ref)
    assert [(p.ref, p.relation) for p in shown.parents] == [("ab:1", "finetune")]
    assert [(p.ref, p.weight, p.params) for p in registry.get("ab:1").parents] == [
        ("a:1", 0.7, {"method": "svd"}), ("b:1", 0.3, {})
    ]


def test_lineage_of_long_chain_is_one_query(registry, tiny, tmp_path):
    prev = registry.register(tiny["tone"], name="chain")
    for i in range(1, 30):
        prev = registry.register(perturbed(tiny["tone"], tmp_path / f"c{i}", 1 + i / 10), name="chain",
                                 parents=[ParentSpec(prev.id, "finetune")])
    g = registry.lineage("chain:15")
    assert len(g.nodes) == 30 and len(g.edges) == 29


def test_shape_compatibility_and_mismatch(registry, tiny):
    # the twin has the same architecture and shapes: a `shape` record is made for it
    registry.register(tiny["tone2"], name="twin-seed", base=str(tiny["llama_twin"].resolve()),
                      base_path=tiny["llama_twin"])
    v = registry.register(tiny["tone"], name="tone")
    assert sorted(c.level for c in v.compatible) == ["exact", "shape"]
    # a GPT-2 adapter against the Llama base: refused with the mismatching modules listed, nothing written
    before = stored_files(registry)
    with pytest.raises(IncompatibleBaseModel, match="transformer.h.0.attn.c_attn: no such module"):
        registry.register(tiny["gpt2_attn"], name="wrong", base=str(tiny["llama"].resolve()))
    assert count(registry, m.Adapter) == 2
    assert [p for p in stored_files(registry) if "wrong" in str(p)] == []
    assert len(stored_files(registry)) >= len(before)


def _broken(tmp_path: Path, src: Path, how: str) -> Path:
    dst = tmp_path / how
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    cfg_path = dst / "adapter_config.json"
    tensors = load_file(weights)
    if how == "bin-only":
        weights.rename(dst / "adapter_model.bin")
    elif how == "no-config":
        cfg_path.unlink()
    elif how == "bad-json":
        cfg_path.write_text("{not json")
    elif how == "wrong-rank":
        cfg = json.loads(cfg_path.read_text())
        cfg["r"] = 16
        cfg_path.write_text(json.dumps(cfg))
    elif how == "missing-b":
        save_file({k: v for k, v in tensors.items() if "lora_B" not in k or "layers.1." not in k}, weights)
    elif how == "nested":
        save_file({k.replace(".q_proj.", ".q_proj.lora_A.default."): v for k, v in tensors.items()}, weights)
    elif how == "nan":
        key = next(iter(tensors))
        tensors[key][0, 0] = float("nan")
        save_file(tensors, weights)
    elif how == "not-lora":
        cfg = json.loads(cfg_path.read_text())
        cfg["peft_type"] = "IA3"
        cfg_path.write_text(json.dumps(cfg))
    elif how == "garbage-weights":
        weights.write_bytes(b"\x00" * 64)
    return dst


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("bin-only", "safetensors only"),
        ("no-config", "adapter_config.json is missing"),
        ("bad-json", "not valid JSON"),
        ("wrong-rank", "config says r=16"),
        ("missing-b", "has no lora_B tensor"),
        ("nested", "nested inside another LoRA layer"),
        ("nan", "NaN or Inf"),
        ("not-lora", "only LoRA adapters"),
        ("garbage-weights", "not a readable safetensors file"),
    ],
)
def test_refusals_write_nothing(registry, tiny, tmp_path, how, message):
    src = _broken(tmp_path, tiny["tone"], how)
    with pytest.raises(InvalidAdapter, match=message) as info:
        registry.register(src, name="broken")
    if how == "bin-only":
        assert "save_pretrained" in (info.value.hint or "")
    assert count(registry, m.AdapterVersion) == 0 and count(registry, m.Adapter) == 0
    assert stored_files(registry) == []


@pytest.mark.parametrize("name", ["../escape", "UPPER", "a/b", "", "x" * 65, "-lead", "trail-", "a..b"])
def test_unsafe_names_refused(registry, tiny, name):
    with pytest.raises(InvalidName):
        registry.register(tiny["tone"], name=name)
    assert stored_files(registry) == []


def test_missing_base_name_and_bad_source(registry, tiny, tmp_path):
    src = shutil.copytree(tiny["tone"], tmp_path / "nobase")
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidAdapter, match="no base_model_name_or_path"):
        registry.register(src, name="nobase")
    v = registry.register(src, name="nobase", base="org/some-base", revision="abc123")
    assert (v.base_model, v.base_revision) == ("org/some-base", "abc123")
    assert v.compatible[0].evidence["shapes_checked"] is False
    with pytest.raises(RegistryError):
        registry.register(tmp_path / "does-not-exist", name="x")


def test_base_models_listing(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["gpt2_attn"], name="g")
    bases = {b.architecture: b for b in registry.base_models()}
    assert set(bases) == {"LlamaForCausalLM", "GPT2LMHeadModel"}
    assert bases["LlamaForCausalLM"].module_count > 10 and bases["LlamaForCausalLM"].adapter_versions == 1
