"""Named base models (issue 15, item 7): `adreg base add` / `base show`, short names wherever a base is named,
registrations that find their named base by identity, and "every adapter compatible with base X" as one query."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SENTINEL
from sqlalchemy import func, select

from registry import models as m
from registry.auth import Principal
from registry.endpoints import BY_NAME
from registry.errors import BaseModelNotFound, ConflictError, Forbidden, InvalidName, InvalidReference, RegistryError

Q_PROJ = "model.layers.0.self_attn.q_proj"


def _rebased(adapter: Path, dest: Path, base: str) -> Path:
    """A copy of an adapter folder whose config names ``base`` as its base model."""
    folder = shutil.copytree(adapter, dest)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _events(registry, action: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in registry.audit_events() if e["action"] == action]


def _base_rows(registry) -> int:  # type: ignore[no-untyped-def]
    with registry.service.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(m.BaseModelRecord)))


def test_add_by_path_reads_the_shapes_once_and_is_idempotent(registry, tiny):
    tone = registry.register(tiny["tone"], name="tone")  # registered first: the named base is the same record
    info = registry.add_base("llama-tiny", path=tiny["llama"])
    assert (info.short_name, info.name, info.local_path) == ("llama-tiny", str(tiny["llama"].resolve()),
                                                            str(tiny["llama"].resolve()))
    assert (info.architecture, info.model_type, info.vocab_size, info.revision) == ("LlamaForCausalLM", "llama", 128,
                                                                                    None)
    assert info.module_count == 16 and info.adapter_versions == 1 and tone.base_model == info.name
    assert registry.add_base("llama-tiny", path=str(tiny["llama"]) + "/") == info  # the same base again: no change
    assert _base_rows(registry) == 1
    detail = registry.base("llama-tiny")
    assert detail.info == info and detail.module_shapes[Q_PROJ] == {"kind": "linear", "in": 64, "out": 64}
    assert detail.module_shapes["model.embed_tokens"] == {"kind": "embedding", "in": 128, "out": 64}
    assert (detail.versions, detail.compatible_total) == (1, 1)
    assert detail.compatible_by_level == {"exact": 1, "shape": 0, "validated": 0}
    assert [(c.ref, c.levels, c.registered_base) for c in detail.compatible] == [("tone:1", ["exact"], info.name)]
    events = _events(registry, "base.add")
    assert len(events) == 1 and events[0]["ref"] == "llama-tiny" and events[0]["after"]["name"] == info.name
    assert events[0]["after"]["modules"] == 16
    assert [b.short_name for b in registry.base_models()] == ["llama-tiny"]


def test_a_short_name_works_wherever_a_base_is_named(registry, tiny, tmp_path, monkeypatch):
    registry.add_base("llama-tiny", path=tiny["llama"])
    registry.register(tiny["tone"], name="tone")
    monkeypatch.chdir(tmp_path)
    via_short = registry.register(tiny["tone2"], name="tone2", base="llama-tiny")  # --base SHORT
    assert via_short.base_model == str(tiny["llama"].resolve())
    assert [c.level for c in via_short.compatible] == ["exact"]
    assert [v.ref for v in registry.search(base_model="llama-tiny")] == ["tone2:1", "tone:1"]
    assert registry.base(str(tiny["llama"])).info.short_name == "llama-tiny"  # by folder, too
    with pytest.raises(BaseModelNotFound, match="no base model 'nope'"):
        registry.base("nope")
    with pytest.raises(BaseModelNotFound):
        registry.search(base_model="nope")
    # A config given with --base-path must be the named base's.
    with pytest.raises(ConflictError, match="differs from base model 'llama-tiny'"):
        registry.register(tiny["tone"], name="odd", base="llama-tiny", base_path=tiny["gpt2"])


def test_refusals_write_nothing(registry, tiny, tmp_path):
    registry.add_base("llama-tiny", path=tiny["llama"])
    registry.register(_rebased(tiny["tone"], tmp_path / "declared", "plainname"), name="declared", base="plainname")
    rows, events = _base_rows(registry), len(registry.audit_events())
    with pytest.raises(ConflictError, match="'llama-tiny' already names"):
        registry.add_base("llama-tiny", path=tiny["gpt2"])  # another base
    with pytest.raises(ConflictError, match="already named 'llama-tiny'"):
        registry.add_base("second", path=tiny["llama"])  # one base, one short name
    with pytest.raises(ConflictError, match="same model as base 'llama-tiny'"):
        registry.add_base("copy", path=shutil.copytree(tiny["llama"], tmp_path / "copy"))
    with pytest.raises(ConflictError, match="'plainname' is already the name of a base model"):
        registry.add_base("plainname", path=tiny["gpt2"])
    with pytest.raises(InvalidName, match="short name 'Llama/Tiny' is not allowed"):
        registry.add_base("Llama/Tiny", path=tiny["gpt2"])
    with pytest.raises(InvalidName):
        registry.add_base("./llama", path=tiny["gpt2"])
    with pytest.raises(RegistryError, match="exactly one of hub= .* or path="):
        registry.add_base("gpt", hub="openai/gpt2", path=tiny["gpt2"])
    with pytest.raises(RegistryError, match="exactly one of"):
        registry.add_base("gpt")
    with pytest.raises(RegistryError, match="a local folder has none"):
        registry.add_base("gpt", path=tiny["gpt2"], revision="main")
    with pytest.raises(InvalidReference, match="not a Hub repository id"):
        registry.add_base("gpt", hub="not a/repo id")
    with pytest.raises(BaseModelNotFound, match="not a model folder"):
        registry.add_base("gpt", path=tmp_path)
    assert (_base_rows(registry), len(registry.audit_events())) == (rows, events)
    assert [b.short_name for b in registry.base_models() if b.short_name] == ["llama-tiny"]


def test_registrations_find_the_named_base_by_folder_identity(registry, tiny, tmp_path):
    """A copy of the base folder (another path, same config and weights) is the named base; a twin with the same
    config but other weights is not (validation and load use the recorded base's weights), though it is compatible
    by shape."""
    base = registry.add_base("llama-tiny", path=tiny["llama"])
    copy = shutil.copytree(tiny["llama"], tmp_path / "elsewhere" / "llama-copy")
    linked = registry.register(_rebased(tiny["tone"], tmp_path / "on-copy", str(copy)), name="on-copy")
    assert linked.base_model == base.name and [c.level for c in linked.compatible] == ["exact"]
    twin = registry.register(_rebased(tiny["tone2"], tmp_path / "on-twin", str(tiny["llama_twin"])), name="on-twin")
    assert twin.base_model == str(tiny["llama_twin"].resolve())
    assert {(c.base_model, c.level) for c in twin.compatible} == {(twin.base_model, "exact"), (base.name, "shape")}
    assert _base_rows(registry) == 2  # the named base and the twin: no record for the copy
    assert [v.ref for v in registry.search(base_model="llama-tiny")] == ["on-copy:1"]
    assert registry.base("llama-tiny").compatible_by_level == {"exact": 1, "shape": 1, "validated": 0}


def test_compatible_with_is_one_filter_and_counts_a_base_added_later(registry, tiny, tmp_path):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["legal"], name="legal")
    registry.register(tiny["gpt2_attn"], name="gpt2-attn")
    hub_only = registry.register(_rebased(tiny["tone2"], tmp_path / "hub", "org/unread"), name="unread")
    # Its Hub base was never read (declared), but its modules fit the recorded Llama: shape evidence for that one.
    assert [(c.base_model, c.level) for c in hub_only.compatible] == [("org/unread", "declared"),
                                                                     (str(tiny["llama"]), "shape")]
    # Added after the adapters: the twin gets 'shape' evidence for every adapter whose modules fit it, at once.
    twin = registry.add_base("twin", path=tiny["llama_twin"])
    assert twin.adapter_versions == 0
    assert [v.ref for v in registry.search(compatible_with="twin")] == ["unread:1", "legal:1", "tone:1"]
    assert _events(registry, "base.add")[0]["after"]["compatibility_recorded"] == {"shape": 3, "exact": 0,
                                                                                   "not_fitting": 0}
    detail = registry.base("twin", limit=2)
    assert (detail.versions, detail.compatible_total, len(detail.compatible)) == (0, 3, 2)
    assert detail.compatible_by_level == {"exact": 0, "shape": 3, "validated": 0}
    assert [(c.ref, c.levels) for c in detail.compatible] == [("unread:1", ["shape"]), ("legal:1", ["shape"])]
    # Registered later: evidence at registration, same filter.
    later = registry.register(tiny["tone2"], name="later")
    assert "later:1" in [v.ref for v in registry.search(compatible_with="twin")]
    assert [c.level for c in later.compatible if c.base_model == twin.name] == ["shape"]
    unread_later = registry.register(_rebased(tiny["tone"], tmp_path / "hub2", "org/unread2"), name="unread2")
    assert {c.level for c in unread_later.compatible if c.base_model == twin.name} == {"shape"}
    # 'declared' is a claim, not evidence: the unread Hub base has a registered version but no compatible one.
    assert [v.ref for v in registry.search(base_model="org/unread")] == ["unread:1"]
    assert registry.search(compatible_with="org/unread") == []
    # Other filters still AND with it; the GPT-2 adapter fits only the GPT-2 base.
    assert [v.ref for v in registry.search(compatible_with="twin", min_rank=8)] == ["legal:1"]
    assert registry.base("twin").compatible_total == 5
    assert [v.ref for v in registry.search(compatible_with=str(tiny["gpt2"]))] == ["gpt2-attn:1"]
    with pytest.raises(BaseModelNotFound):
        registry.search(compatible_with="nope")
    with pytest.raises(RegistryError, match="at most 256 printable"):
        registry.search(compatible_with="x\x00y")


@pytest.fixture
def hub_base(hub, tiny):  # type: ignore[no-untyped-def]
    """``acme/llama-tiny`` on the fake Hub: the tiny Llama's config and weights; returns its commit sha."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub.url, token=SENTINEL)
    api.create_repo("acme/llama-tiny")
    commit = api.create_commit("acme/llama-tiny", operations=[
        CommitOperationAdd(name, (tiny["llama"] / name).read_bytes()) for name in ("config.json", "model.safetensors")
    ], commit_message="tiny llama")
    return commit.oid


def test_add_by_hub_pins_the_revision_and_reads_only_the_config(registry, hub, hub_base, tiny, tmp_path):
    # An adapter declared against the Hub id at that commit before the base was named: its evidence becomes exact.
    early = registry.register(_rebased(tiny["tone"], tmp_path / "early", "acme/llama-tiny"), name="early",
                              revision=hub_base)
    assert [c.level for c in early.compatible] == ["declared"]
    unpinned = registry.register(_rebased(tiny["tone2"], tmp_path / "unpinned", "acme/llama-tiny"), name="unpinned")
    assert unpinned.base_revision is None
    before = len(hub.requests)
    info = registry.add_base("hub-llama", hub="acme/llama-tiny")
    fetched = [r["path"] for r in hub.requests[before:] if "/resolve/" in r["path"]]
    assert fetched and all(p.endswith("/config.json") for p in fetched)  # never the weights
    assert (info.name, info.revision, info.local_path) == ("acme/llama-tiny", hub_base, None)
    assert info.architecture == "LlamaForCausalLM" and info.adapter_versions == 1
    # The version recorded against the unpinned id keeps its record, with shape evidence for the named base.
    assert [(c.revision, c.level) for c in registry.get("unpinned:1").compatible] == [(None, "declared"),
                                                                                     (hub_base, "shape")]
    path_shapes = registry.add_base("local-llama", path=tiny["llama"])
    assert registry.base("hub-llama").module_shapes == registry.base("local-llama").module_shapes
    assert path_shapes.config_hash == info.config_hash
    assert [c.level for c in registry.get("early:1").compatible if c.base_model == info.name] == ["exact"]
    assert registry.add_base("hub-llama", hub="acme/llama-tiny", revision=hub_base) == info  # idempotent
    # From now on an adapter naming the Hub id without a revision is recorded against the named (pinned) base.
    linked = registry.register(_rebased(tiny["tone2"], tmp_path / "linked", "acme/llama-tiny"), name="linked")
    assert (linked.base_model, linked.base_revision) == ("acme/llama-tiny", hub_base)
    assert [c.level for c in linked.compatible if c.base_model == info.name] == ["exact"]
    # Another revision is another base (its shapes were not read: declared).
    other = registry.register(_rebased(tiny["tone2"], tmp_path / "other", "acme/llama-tiny"), name="other",
                              revision="0" * 40)
    assert other.base_revision == "0" * 40 and other.compatible[0].level == "declared"
    assert [v.ref for v in registry.search(base_model="hub-llama")] == ["linked:1", "early:1"]
    # A folder that is the Hub cache's snapshot of that repository at that commit is that base, too.
    snapshot = tmp_path / "hf-cache" / "models--acme--llama-tiny" / "snapshots" / hub_base
    assert (snapshot / "config.json").is_file()  # what add_base downloaded, and nothing else
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json"]
    cached = registry.register(_rebased(tiny["tone"], tmp_path / "cached", str(snapshot)), name="cached")
    assert (cached.base_model, cached.base_revision) == ("acme/llama-tiny", hub_base)
    with pytest.raises(ConflictError, match="at revision 0000.* is not base model 'hub-llama'"):
        registry.register(tiny["tone"], name="x", base="hub-llama", revision="0" * 40)


def test_an_unknown_hub_model_is_a_typed_refusal(registry, hub, hub_base):
    rows = _base_rows(registry)
    with pytest.raises(BaseModelNotFound, match="repository not found") as err:
        registry.add_base("ghost", hub="acme/ghost")
    assert "HF_TOKEN" in (err.value.hint or "")
    with pytest.raises(BaseModelNotFound, match="revision not found"):
        registry.add_base("ghost", hub="acme/llama-tiny", revision="no-such-branch")
    assert _base_rows(registry) == rows and _events(registry, "base.add") == []


def test_only_admins_name_bases_over_http():
    writer = Principal(name="bob", is_admin=False, groups=(), scope="write", grants=(("*", "manage"),))
    admin = Principal(name="root", is_admin=True, groups=(), scope="admin")
    with pytest.raises(Forbidden, match="bob is not an admin"):
        BY_NAME["add_base"].rule(writer, {"short_name": "x"}, None)  # type: ignore[arg-type]
    BY_NAME["add_base"].rule(admin, {"short_name": "x"}, None)  # type: ignore[arg-type]
    BY_NAME["base"].rule(writer, {"name": "org/model"}, None)  # type: ignore[arg-type]
    assert BY_NAME["base"].path == "/v1/bases/{name:path}" and BY_NAME["base"].path_fields == ["name"]


def test_cli_base_add_show_and_list(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "tone")
    adreg("register", str(tiny["gpt2_attn"]), "--name", "gpt2-attn")
    added = json.loads(adreg("base", "add", "twin", "--path", str(tiny["llama_twin"]), "--json").stdout)
    assert added["short_name"] == "twin" and added["name"] == str(tiny["llama_twin"].resolve())
    assert "twin" in adreg("base", "list").stdout
    human = adreg("base", "show", "twin").stdout
    assert "model.layers.*.self_attn.q_proj" in human and "64x64" in human and "x2" in human
    assert "LlamaForCausalLM" in human and "tone:1" in human and "shape" in human and "gpt2-attn" not in human
    shown = json.loads(adreg("base", "show", "twin", "--json").stdout)
    assert shown["info"]["short_name"] == "twin" and shown["module_shapes"][Q_PROJ]["out"] == 64
    assert shown["compatible"] == [{"ref": "tone:1", "levels": ["shape"], "registered_base": str(tiny["llama"]),
                                    "status": "ready"}]
    assert shown["compatible_by_level"] == {"exact": 0, "shape": 1, "validated": 0}
    compatible = json.loads(adreg("list", "--compatible-with", "twin", "--json").stdout)
    assert [v["ref"] for v in compatible["items"]] == ["tone:1"]
    adreg("base", "add", "llama-tiny", "--path", str(tiny["llama"]))
    for spelling in ("--base", "--base-model", "-b"):
        listed = json.loads(adreg("list", spelling, "llama-tiny", "--json").stdout)
        assert [v["ref"] for v in listed["items"]] == ["tone:1"]
    refused = adreg("base", "add", "twin", "--path", str(tiny["gpt2"]), code=1)
    assert "already names" in refused.stderr and "hint:" in refused.stderr and "Traceback" not in refused.stderr
    missing = adreg("base", "show", "nope", code=1)
    assert "no base model 'nope'" in missing.stderr
