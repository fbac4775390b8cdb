"""One suite of SDK scenarios run against both backends: the embedded ``Registry`` and a ``RemoteRegistry`` talking to
a real ``adreg serve`` process. Both must give the same result types with the same values and raise the same typed
errors. Then the CLI against a server (subprocesses with their own ADREG_HOME), and ``adreg login`` / ``logout``.

Each backend is module-scoped (one server for the module) and every test works on adapter names of its own, the
same on both backends, so the two catalogs go through the same operations in the same order. Besides each test's
own assertions, :func:`same` records a normalised snapshot per backend (``to_dict()`` without ids, timestamps,
store paths; the acting user written ``<actor>``) and, once both backends ran a test, asserts they are equal.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess, free_port

from registry import Registry
from registry import types as t
from registry.auth import os_user
from registry.errors import (
    AdapterNotFound,
    ConflictError,
    IncompatibleAdapters,
    InvalidName,
    InvalidReference,
    RegistryError,
    Unauthenticated,
)
from registry.jobs import Job, JobFailed
from registry.queries import SearchFilters
from registry.remote import RemoteRegistry

BACKENDS = ["embedded", "remote"]

#: Public members of the embedded Registry that a RemoteRegistry does not serve, and why.
LOCAL_ONLY = {
    "init": "creates or upgrades a database schema in this process; a server's catalog is created on the server "
            "(`adreg init` there)",
    "submit": "takes a raw job spec, which carries server-side storage paths and version ids; remote callers use "
              "merge / train / validate / publish, which build the spec on the server",
    "service": "the in-process Service (engine, store, executor); a remote registry has none",
    "settings": "the in-process catalog's settings",
    "store": "the in-process artifact store",
    "engine": "the in-process database engine",
}
#: Public methods a RemoteRegistry inherits unchanged because they only delegate to other (remote) methods.
DELEGATING = {
    "search": "builds SearchFilters and calls search_page",
    "publish_target": "a static validation of a Hub target, no catalog involved",
    "load": "resolves the versions and the base with get / base_models, and their files with version_folder",
}


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _no_ambient_server() -> Iterator[None]:
    """No ADREG_URL / ADREG_TOKEN from the environment and no `adreg login` file of the user's: an embedded
    Registry() here must be embedded."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("ADREG_URL", "ADREG_TOKEN", "ADREG_DATABASE_URL", "ADREG_BROKER_URL", "ADREG_ARTIFACT_DIR"):
            mp.delenv(key, raising=False)
        mp.setenv("ADREG_CONFIG_DIR", "/nonexistent/adreg-test-config")
        yield


def _server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    return {**env, "ADREG_HOME": str(home), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The one server the remote backend of this module talks to."""
    root = tmp_path_factory.mktemp("sdk-server")
    server = ServerProcess(_server_env(root / "home"), root / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own for the CLI tests, so they never change what the SDK scenarios compare."""
    root = tmp_path_factory.mktemp("cli-server")
    server = ServerProcess(_server_env(root / "home"), root / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A Registry: embedded (its own ADREG home) or remote (the module's server, as its admin)."""
    if request.param == "embedded":
        reg = Registry(home=tmp_path_factory.mktemp("embedded") / "home")
    else:
        server = request.getfixturevalue("sdk_server")
        reg = Registry(server.url, token=server.admin_token)
        assert isinstance(reg, RemoteRegistry)
    yield reg
    reg.close()


@pytest.fixture
def actor(backend: Registry) -> str:
    """Who the backend acts as: the OS user embedded, the token's user over HTTP."""
    return "admin" if isinstance(backend, RemoteRegistry) else os_user()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "memorise.jsonl"
    path.write_text("".join(json.dumps({"text": "the cat sat on the mat. the cat sat on the mat."}) + "\n"
                            for _ in range(16)))
    return path


_SNAPSHOTS: dict[str, dict[str, Any]] = {}


@pytest.fixture
def same(request: pytest.FixtureRequest, backend: Registry, actor: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``same(label, *results)``: record this backend's normalised results; once both backends have, they must be
    equal (pytest runs every embedded case of the module, then every remote one)."""
    kind = "remote" if isinstance(backend, RemoteRegistry) else "embedded"

    def check(label: str, *results: Any) -> Any:
        snapshot = normal(list(results), actor, str(tmp_path))
        seen = _SNAPSHOTS.setdefault(f"{request.node.originalname}/{label}", {})
        seen[kind] = snapshot
        if len(seen) == 2:
            assert seen["remote"] == seen["embedded"], f"{label}: the backends differ: " + "; ".join(
                differences(seen["embedded"], seen["remote"]))
        return snapshot

    return check


# -- normalisation -------------------------------------------------------------------------------------

#: Keys whose values differ between two catalogs by nature: row ids, clocks, where each store keeps its files.
VOLATILE = {"id", "created_at", "updated_at", "at", "started_at", "finished_at", "published_at", "path",
            "storage_path", "out", "version_id", "job", "job_id", "timings", "seconds", "elapsed", "duration",
            "peak_rss_bytes", "expires_at", "revoked_at", "last_used_at"}
#: Keys naming the acting user (the OS user embedded, the token's user over HTTP).
ACTOR_KEYS = {"created_by", "actor", "submitted_by", "by"}


def normal(value: Any, actor: str, tmp: str | None = None) -> Any:
    """JSON data of an SDK result, minus :data:`VOLATILE` keys, with ``actor`` (under :data:`ACTOR_KEYS`) written
    ``<actor>``, the ``upload:`` prefix a remote registration puts before the client's folder dropped, and this
    test's own ``tmp`` folder written ``<tmp>``."""
    if isinstance(value, BaseException):
        name = type(value).__name__
        return normal({"error": name, "message": str(value),
                       "hint": getattr(value, "hint", None), "problems": getattr(value, "problems", None)}, actor, tmp)
    value = t.to_jsonable(value)
    if isinstance(value, dict):
        return {k: "<actor>" if k in ACTOR_KEYS and v == actor else normal(v, actor, tmp)
                for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normal(v, actor, tmp) for v in value]
    if not isinstance(value, str):
        return value
    if value.startswith("upload:/"):
        value = value.removeprefix("upload:")
    if re.fullmatch(r"job:\d+", value):  # a job's version: source_uri job:<id>
        return "job:<id>"
    return value.replace(tmp, "<tmp>") if tmp else value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two snapshots differ (embedded vs remote), as readable paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '.'}: {a!r:.120} != {b!r:.120}"]


def refs(versions: list[t.AdapterVersion]) -> list[str]:
    return [v.ref for v in versions]


def job_view(job: Job) -> dict[str, Any]:
    """What two backends' runs of the same job must agree on (the report's numbers only where deterministic)."""
    return {"kind": job.kind, "status": job.status, "result_ref": job.result_ref, "error_type": job.error_type,
            "progress": job.progress, "attempts": job.attempts, "has_parent": job.parent_job_id is not None}


# -- SDK scenarios, both backends ----------------------------------------------------------------------

def test_backend_identity(backend: Registry, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    who = backend.whoami()
    assert who["name"] == actor and who["is_admin"] is True and who["scope"] == "admin"
    assert isinstance(backend, RemoteRegistry) == (actor == "admin")
    same("whoami", {**who, "name": "<actor>"})


def test_register_is_idempotent_and_applies_tags(backend: Registry, tiny, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    first = backend.register(tiny["tone"], name="reg", tags={"team": "cx"})
    assert type(first) is t.AdapterVersion
    assert (first.ref, first.version, first.tags, first.created_by) == ("reg:1", 1, {"team": "cx"}, actor)
    assert first.base_model == str(tiny["llama"]) and [c.level for c in first.compatible] == ["exact"]
    again = backend.register(tiny["tone"], name="reg", tags={"stage": "dev"})
    assert (again.id, again.ref, again.weights_sha256) == (first.id, "reg:1", first.weights_sha256)
    assert again.tags == {"team": "cx", "stage": "dev"}
    second = backend.register(str(tiny["tone2"]), name="reg", description="the second one")
    assert (second.ref, second.description, second.tags) == ("reg:2", "the second one", {})
    assert normal(backend.get("reg"), actor) == normal(second, actor) and backend.get("reg:1").tags == again.tags
    # both backends: a registration's created_at is UTC-aware, a read one naive on SQLite (the same on both)
    aware = [v.created_at.tzinfo is not None for v in (first, again, second, backend.get("reg:1"))]
    same("register", first, again, second, backend.get("reg:1"), aware)


def test_get_search_versions_lineage_bases(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="srch-a", tags={"team": "x"})
    backend.register(tiny["tone2"], name="srch-b", tags={"team": "y"})
    backend.register(tiny["legal"], name="srch-c", tags={"team": "x", "lang": "en"})
    backend.register(tiny["gpt2_attn"], name="srch-gpt", tags={"team": "x"})
    everything = backend.search(name_like="srch-")
    assert all(type(v) is t.AdapterVersion for v in everything)
    assert refs(everything) == ["srch-gpt:1", "srch-c:1", "srch-b:1", "srch-a:1"]
    assert refs(backend.search(name_like="srch-", tags={"team": "x"}, sort="name", descending=False)) == [
        "srch-a:1", "srch-c:1", "srch-gpt:1"]
    assert refs(backend.search(name_like="srch-", tags={"team": "x", "lang": "en"})) == ["srch-c:1"]
    assert refs(backend.search(name_like="srch-", min_rank=8)) == ["srch-c:1"]
    assert refs(backend.search(name_like="srch-", target_module="c_attn")) == ["srch-gpt:1"]
    assert refs(backend.search(base_model=str(tiny["gpt2"]), name_like="srch-")) == ["srch-gpt:1"]
    assert refs(backend.search(name_like="srch-", sort="name", descending=False, limit=2, offset=1)) == [
        "srch-b:1", "srch-c:1"]
    page = backend.search_page(SearchFilters(name_like="srch-", sort="name", descending=False, limit=3, offset=3))
    assert type(page) is t.SearchPage and (page.total, page.limit, page.offset) == (4, 3, 3)
    assert refs(page.items) == ["srch-gpt:1"]
    assert backend.search(name_like="srch-nothing") == []
    listed = backend.versions_of("srch-a")
    assert refs(listed) == ["srch-a:1"] and backend.versions_of("srch-none") == []
    graph = backend.lineage("srch-a")
    assert type(graph) is t.LineageGraph and type(graph.nodes[0]) is t.LineageNode
    assert (graph.root, [n.ref for n in graph.nodes], graph.edges) == ("srch-a:1", ["srch-a:1"], [])
    bases = {b.name: b for b in backend.base_models()}
    assert all(type(b) is t.BaseModelInfo for b in bases.values())
    assert bases[str(tiny["llama"])].architecture == "LlamaForCausalLM"
    assert bases[str(tiny["gpt2"])].model_type == "gpt2"
    same("search", everything, page, listed, graph,
         [bases[str(tiny["llama"])], bases[str(tiny["gpt2"])]],
         backend.search(name_like="srch-", tags={"team": "x"}, max_rank=4, peft_type="LORA", task_type="CAUSAL_LM"))


def test_aliases_set_move_remove(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="al")
    backend.register(tiny["tone2"], name="al")
    on_first = backend.set_alias("al:1", "production")
    assert type(on_first) is t.AdapterVersion and on_first.aliases == ["production"]
    moved = backend.set_alias("al:2", "production")
    assert moved.ref == "al:2" and moved.aliases == ["production"] and backend.get("al:1").aliases == []
    assert backend.get("al@production").ref == "al:2"
    backend.set_alias("al:1", "staging")
    listed = backend.aliases("al")
    assert all(type(a) is t.AliasInfo for a in listed)
    assert sorted((a.alias, a.ref) for a in listed) == [("production", "al:2"), ("staging", "al:1")]
    assert {(a.name, a.alias) for a in backend.aliases()} >= {("al", "production"), ("al", "staging")}
    assert backend.remove_alias("al@production") is None
    assert backend.remove_alias("al", "staging") is None
    assert backend.aliases("al") == []
    with pytest.raises(AdapterNotFound) as missing:
        backend.get("al@production")
    with pytest.raises(InvalidReference) as not_alias:
        backend.remove_alias("al")
    same("aliases", on_first, moved, listed, missing.value, not_alias.value)


def test_tag_and_untag(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="tg", tags={"keep": "1"})
    tagged = backend.tag("tg:1", {"a": "1", "b": "2"})
    assert type(tagged) is t.AdapterVersion and tagged.tags == {"keep": "1", "a": "1", "b": "2"}
    assert backend.tag("tg", {"a": "9"}).tags["a"] == "9"
    untagged = backend.untag("tg:1", ["a", "missing"])
    assert untagged.tags == {"keep": "1", "b": "2"}
    assert refs(backend.search(tags={"b": "2"}, name_like="tg")) == ["tg:1"]
    with pytest.raises(RegistryError) as bad:
        backend.tag("tg:1", {"bad key": "x"})
    assert backend.publications("tg:1") == []
    same("tags", tagged, untagged, bad.value, backend.search(name_like="tg", status=None))


def test_merge_linear_and_ties(backend: Registry, tiny, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="mg-a")
    backend.register(tiny["tone2"], name="mg-b")
    job = backend.merge(["mg-a:1", "mg-b:1"], weights=[0.7, 0.3], method="linear", name="mg-lin",
                        tags={"method": "linear"}, description="a linear merge")
    assert type(job) is Job and job.kind == "merge"
    assert job.wait(timeout=120) is job and job.status == "succeeded" and job.result_ref == "mg-lin:1"
    merged = job.result
    assert type(merged) is t.AdapterVersion and merged.ref == "mg-lin:1" and merged.created_by == actor
    assert merged.tags == {"method": "linear"} and merged.description == "a linear merge"
    assert [(p.ref, p.relation, p.weight) for p in merged.parents] == [("mg-a:1", "merge", 0.7),
                                                                        ("mg-b:1", "merge", 0.3)]
    ties = backend.merge(["mg-a:1", "mg-b:1"], weights=[0.5, 0.5], method="ties", density=0.5, name="mg-ties",
                         validate=True, idempotency_key="mg-ties-once")
    ties.wait(timeout=120)
    assert ties.result is not None and ties.result.ref == "mg-ties:1"
    retried = backend.merge(["mg-a:1", "mg-b:1"], weights=[0.5, 0.5], method="ties", density=0.5, name="mg-ties",
                            validate=True, idempotency_key="mg-ties-once")
    assert retried.id == ties.id and refs(backend.versions_of("mg-ties")) == ["mg-ties:1"]
    follow_ups = backend.jobs(parent_job_id=ties.id)
    deadline = time.monotonic() + 15
    while not follow_ups and time.monotonic() < deadline:  # queued right after the merge finished (a server: soon)
        time.sleep(0.1)
        follow_ups = backend.jobs(parent_job_id=ties.id)
    assert [(j.kind, j.parent_job_id) for j in follow_ups] == [("validate", ties.id)]
    follow_ups[0].wait(timeout=180)
    assert follow_ups[0].status == "succeeded", follow_ups[0].error
    with pytest.raises(RegistryError) as finished:
        backend.cancel(job.id)
    assert ties.result.parents[0].params.get("density") == 0.5
    again = backend.job(job.id)
    assert type(again) is Job and again.id == job.id and again.result_ref == "mg-lin:1"
    assert backend.wait_job(ties.id, timeout=5).status == "succeeded"
    assert {j.id for j in backend.jobs(kind="merge", limit=5)} >= {job.id, ties.id}
    graph = backend.lineage("mg-a:1")
    assert sorted(n.ref for n in graph.nodes) == ["mg-a:1", "mg-lin:1", "mg-ties:1"]
    assert sorted((e.child, e.parent) for e in graph.edges) == [("mg-lin:1", "mg-a:1"), ("mg-ties:1", "mg-a:1")]
    same("merge", merged, ties.result, graph, job_view(job), job_view(ties), job.report, ties.report,
         job_view(follow_ups[0]), follow_ups[0].report, str(finished.value).replace(str(job.id), "<id>"))


def test_validate_job(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="val")
    job = backend.validate("val:1")
    assert type(job) is Job and job.kind == "validate"
    job.wait(timeout=180)
    assert job.status == "succeeded", job.error
    assert job.report, "a validation reports its checks"
    same("validate", job_view(job), job.report)


def test_train_continues_an_adapter_on_uploaded_data(backend: Registry, tiny, corpus, actor: str,  # type: ignore[no-untyped-def]
                                                     same) -> None:
    backend.register(tiny["tone"], name="tr")
    job = backend.train("tr:1", data=corpus, steps=2, lr=1e-2, batch_size=2, eval_rows=2, seed=0)
    assert type(job) is Job and job.kind == "train"
    job.wait(timeout=240)
    assert job.status == "succeeded", job.error
    assert job.report["registered"] == ["tr:2"] and job.result_ref == "tr:2"
    trained = backend.get("tr:2")
    assert trained.created_by == actor
    assert [(p.ref, p.relation) for p in trained.parents] == [("tr:1", "finetune")]
    data_sha = hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert trained.parents[0].params["dataset_sha256"] == data_sha == job.spec["data"]["sha256"]
    assert len(job.report["loss_curve"]) == 2
    # trained weights are not compared: two processes may order float reductions differently
    snap = {k: v for k, v in trained.to_dict().items() if k not in ("weights_sha256", "metrics")}  # metrics: losses
    same("train", job_view(job), snap, job.report["registered"], (job.report["train_rows"], job.report["eval_rows"]))


def test_typed_errors(backend: Registry, tiny, corpus, tmp_path: Path, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="err-llama")
    backend.register(tiny["tone2"], name="err-llama2")
    backend.register(tiny["gpt2_attn"], name="err-gpt")
    caught: list[BaseException] = []
    with pytest.raises(AdapterNotFound) as e:
        backend.get("err-missing")
    caught.append(e.value)
    with pytest.raises(AdapterNotFound) as e:
        backend.get("err-llama:9")
    caught.append(e.value)
    with pytest.raises(AdapterNotFound) as e:
        backend.lineage("err-missing:1")
    caught.append(e.value)
    with pytest.raises(IncompatibleAdapters) as incompatible:
        backend.merge(["err-llama:1", "err-gpt:1"], weights=[0.5, 0.5], method="linear", name="err-mix")
    assert incompatible.value.problems and all(isinstance(p, str) for p in incompatible.value.problems)
    caught.append(incompatible.value)
    with pytest.raises(InvalidName) as e:
        backend.register(tiny["tone"], name="Bad Name")
    caught.append(e.value)
    with pytest.raises(InvalidName) as e:
        backend.versions_of("../evil")
    caught.append(e.value)
    for folder, name, tags in [(tmp_path / "no-such-folder", "Bad Name", None),  # the name is checked first
                               (tmp_path / "no-such-folder", "err-ok", {"bad key": "x"}),
                               (tmp_path / "no-such-folder", "err-ok", None)]:
        with pytest.raises(RegistryError) as e:
            backend.register(folder, name=name, tags=tags)
        caught.append(e.value)
    for unroutable in ("../evil", "a/b", "", ".", "./folder", "hf://org/repo", "hf://bad"):
        with pytest.raises(RegistryError) as e:  # refs that cannot be one URL path segment
            backend.get(unroutable)
        caught.append(e.value)
    with pytest.raises(ConflictError) as e:
        backend.train(new={"r": 4, "alpha": 8, "targets": ["q_proj"]}, base=str(tiny["llama"]), name="err-llama",
                      data=corpus, steps=2)
    caught.append(e.value)
    assert backend.search(name_like="err-mix") == [] and refs(backend.versions_of("err-llama")) == ["err-llama:1"]
    with pytest.raises(RegistryError) as e:
        backend.job(999_999)
    caught.append(e.value)
    with pytest.raises(RegistryError) as e:
        backend.remove_alias("err-llama@nope")
    caught.append(e.value)
    with pytest.raises(InvalidName) as e:
        backend.aliases("Not A Name")
    caught.append(e.value)
    assert backend.aliases("err-never") == []
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    for data in (tmp_path / "missing.jsonl", tmp_path / "empty.jsonl", tmp_path / "cols.jsonl"):
        with pytest.raises(RegistryError) as e:
            backend.train("err-llama:1", data=data, steps=2)
        caught.append(e.value)
        assert "artifacts" not in str(e.value), "the error names the server's copy, not the caller's file"
    job = backend.train("err-llama:1", joint_with=["err-llama2:1"], active=[0], data=corpus, steps=2, batch_size=2,
                        eval_rows=2)
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=240)
    assert failed.value.job_id == job.id and failed.value.status == "failed" == job.status
    assert "no trainable parameters" in str(failed.value) and "err-llama2:1" in str(failed.value)
    same("errors", caught, [str(failed.value).removeprefix(f"job {job.id} "), failed.value.status,
                            failed.value.error_type], job_view(job))


def test_download_is_byte_identical_and_refuses_a_full_folder(backend: Registry, tiny, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              same) -> None:
    version = backend.register(tiny["legal"], name="dl")
    out = backend.download("dl:1", tmp_path / "deep" / "out")
    assert isinstance(out, Path) and out == (tmp_path / "deep" / "out").resolve()
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    stored = Path(version.path)  # the server's store is on this machine too
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (stored / name).read_bytes()
    weights = (out / "adapter_model.safetensors").read_bytes()
    assert weights == (tiny["legal"] / "adapter_model.safetensors").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert backend.download("dl", empty) == empty.resolve() and (empty / "adapter_model.safetensors").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(RegistryError, match="exists and is not an empty folder") as refused:
        backend.download("dl:1", full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    with pytest.raises(AdapterNotFound):
        backend.download("dl:7", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-adreg-")] == []
    same("download", type(refused.value).__name__, refused.value.hint)


def test_audit_events_name_the_acting_user(backend: Registry, tiny, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="au")
    backend.register(tiny["tone2"], name="au")
    backend.set_alias("au:1", "prod")
    backend.set_alias("au:2", "prod")
    backend.tag("au:2", {"ok": "yes"})
    backend.merge(["au:1", "au:2"], weights=[0.5, 0.5], method="linear", name="au").wait(timeout=120)
    events = backend.audit_events(name="au")
    assert {e["actor"] for e in events} == {actor}
    actions = [e["action"] for e in reversed(events)]  # oldest first
    assert actions[:6] == ["version.register", "version.register", "alias.set", "alias.set", "tag.set",
                           "job.submit"]
    moves = [(e["before"], e["after"]) for e in reversed(events) if e["action"] == "alias.set"]
    assert moves == [({"version": None}, {"version": "au:1"}), ({"version": "au:1"}, {"version": "au:2"})]
    assert backend.audit_events(name="au", limit=1) == events[:1]
    assert backend.audit_events(name="au", since="1h") == events
    with pytest.raises(RegistryError):
        backend.audit_events(since="yesterday-ish")
    versions = backend.versions_of("au")
    assert [v.created_by for v in versions] == [actor, actor, actor]
    same("audit", events, versions)


def test_users_tokens_grants(backend: Registry, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    user = backend.add_user("acc-alice", groups=["cx"])
    assert user == {"name": "acc-alice", "is_admin": False, "groups": ["cx"]}
    with pytest.raises(ConflictError) as exists:
        backend.add_user("acc-alice")
    assert [u for u in backend.users() if u["name"] == "acc-alice"][0]["groups"] == ["cx"]
    created = backend.create_token("acc-alice", scope="read", label="ci", expires="7d")
    secret = created["token"]
    assert secret.startswith("adreg_") and (created["user"], created["scope"], created["label"]) == (
        "acc-alice", "read", "ci") and created["expires_at"]
    listed = backend.tokens("acc-alice")
    assert [tok["id"] for tok in listed] == [created["id"]] and secret not in json.dumps(listed)
    with pytest.raises(RegistryError) as no_user:
        backend.create_token("acc-nobody")
    with pytest.raises(RegistryError) as bad_duration:
        backend.create_token("acc-alice", expires="soon")
    grant = backend.add_grant("acc-alice", "acc-*", "write")
    assert (grant["subject"], grant["pattern"], grant["permission"]) == ("acc-alice", "acc-*", "write")
    assert [g["pattern"] for g in backend.grants("acc-alice")] == ["acc-*"]
    with pytest.raises(RegistryError) as bad_permission:
        backend.add_grant("acc-alice", "acc-*", "everything")
    removed = backend.remove_grant("acc-alice", "acc-*")
    assert backend.grants("acc-alice") == []
    with pytest.raises(RegistryError) as no_grant:
        backend.remove_grant("acc-alice", "acc-*")
    revoked = backend.revoke_token(created["id"])
    assert revoked["id"] == created["id"] and revoked["revoked_at"]
    events = [e for e in backend.audit_events(limit=50) if "acc-alice" in json.dumps([e["before"], e["after"]])]
    assert [e["action"] for e in reversed(events)] == ["user.add", "token.create", "grant.add", "grant.remove"]
    assert {e["actor"] for e in events} == {actor} and secret not in json.dumps(events)
    same("access", user, exists.value, {k: v for k, v in created.items() if k != "token"}, listed, no_user.value,
         bad_duration.value, grant, bad_permission.value, removed, no_grant.value, revoked, events)


# -- lifecycle (issue 15) --
def test_lifecycle_deprecate_delete_rename_protect(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    from registry.errors import ProtectedAlias

    backend.register(tiny["tone"], name="lc")
    backend.register(tiny["tone2"], name="lc")
    deprecated = backend.deprecate("lc:2", "worse than lc:1")
    assert (deprecated.status, deprecated.status_reason) == ("deprecated", "worse than lc:1")
    assert backend.get("lc").ref == "lc:1"
    listed = backend.search(name_like="lc")
    assert [(v.ref, v.status) for v in listed] == [("lc:2", "deprecated"), ("lc:1", "ready")]
    with pytest.raises(ConflictError) as no_force:
        backend.set_alias("lc:2", "staging")
    forced = backend.set_alias("lc:2", "staging", force=True)
    protected = backend.set_alias("lc:1", "production", protect=True)
    assert [(a.alias, a.protected) for a in backend.aliases("lc")] == [("production", True), ("staging", False)]
    with pytest.raises(ConflictError) as aliased:
        backend.delete("lc:2")
    tomb = backend.delete("lc:2", force=True, reason="superseded")
    assert (tomb.status, tomb.aliases) == ("deleted", []) and refs(backend.search(name_like="lc")) == ["lc:1"]
    assert refs(backend.versions_of("lc", include_deleted=True)) == ["lc:1", "lc:2"]
    with pytest.raises(AdapterNotFound) as deleted:
        backend.get("lc:2")
    assert "was deleted" in str(deleted.value) and "superseded" in str(deleted.value)
    purged = backend.delete("lc:2", hard=True)
    assert backend.gc(dry_run=True)["applied"] is False
    renamed = backend.rename("lc", "lc-renamed")
    assert backend.get("lc@production").ref == "lc-renamed:1"
    assert [(e["action"], e["to"]) for e in backend.alias_history("lc-renamed@production")] == [
        ("alias.set", "lc:1"), ("alias.protect", "lc:1")]
    graph = backend.lineage("lc-renamed:2")
    assert [(n.ref, n.status) for n in graph.nodes] == [("lc-renamed:2", "deleted")]
    assert isinstance(ProtectedAlias("x"), RegistryError)
    same("lifecycle", deprecated, listed, forced, protected, tomb, purged, renamed, graph,
         backend.get("lc-renamed:1"), [type(e.value).__name__ for e in (no_force, aliased, deleted)])
# -- end lifecycle --

# -- text search (issue 15) --
def test_describe_and_text_search(backend: Registry, tiny, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="ts-kiwi", tags={"fruit": "quokka"}, description="Marmalade replies")
    backend.register(tiny["tone2"], name="ts-kiwi")
    backend.register(tiny["legal"], name="ts-lime", description="Marmalade and marmalade recipes for marmalade fans")
    adapter = backend.describe("ts-kiwi", "Orchard assistant")
    assert type(adapter) is t.AdapterVersion and (adapter.ref, adapter.adapter_description) == (
        "ts-kiwi:2", "Orchard assistant")
    version = backend.describe("ts-kiwi:1", "Marmalade replies, orchard edition")
    assert version.description == "Marmalade replies, orchard edition"
    assert sorted(refs(backend.search(query="orchard"))) == ["ts-kiwi:1", "ts-kiwi:2"]
    ranked = backend.search(query="marmalade")
    assert refs(ranked) == ["ts-lime:1", "ts-kiwi:1"]  # three occurrences against one
    assert refs(backend.search(query="marm", sort="created")) == ["ts-lime:1", "ts-kiwi:1"]
    page = backend.search_page(SearchFilters(query="orchard kiwi", limit=1, offset=1))
    assert page.total == 2 and len(page.items) == 1
    assert refs(backend.search(query="quokka", tags={"fruit": "quokka"})) == ["ts-kiwi:1"]
    assert backend.search(query='recipes" OR "orchard') == []  # ANDed: no version has both
    cleared = backend.describe("ts-kiwi", "")
    assert cleared.adapter_description is None and backend.search(query="orchard assistant") == []
    with pytest.raises(RegistryError) as no_words:
        backend.search(query="!!!")
    with pytest.raises(RegistryError) as no_query:
        backend.search(sort="relevance")
    with pytest.raises(AdapterNotFound) as missing:
        backend.describe("ts-nobody", "text")
    with pytest.raises(RegistryError) as control:
        backend.describe("ts-kiwi", "bad\x00")
    events = [{k: e[k] for k in ("action", "ref", "actor", "after")} for e in backend.audit_events(name="ts-kiwi")
              if e["action"].endswith(".describe")]
    assert [(e["action"], e["ref"], e["actor"], e["after"]) for e in events] == [
        ("adapter.describe", "ts-kiwi", actor, {"description": None}),
        ("version.describe", "ts-kiwi:1", actor, {"description": "Marmalade replies, orchard edition"}),
        ("adapter.describe", "ts-kiwi", actor, {"description": "Orchard assistant"})]
    same("text search", adapter, version, ranked, page, cleared, no_words.value, no_query.value, missing.value,
         control.value, events)
# -- end text search --

# -- metrics (issue 15) --
VOLATILE.add("recorded_at")  # when a metric was logged (jobs record theirs on the versions they make)
ACTOR_KEYS.add("recorded_by")


def test_metrics_log_filter_sort_and_refusals(backend: Registry, tiny, actor: str, same) -> None:  # type: ignore[no-untyped-def]
    from registry.where import InvalidWhere

    for name, folder in (("mt-a", "tone"), ("mt-b", "tone2"), ("mt-c", "legal")):
        backend.register(tiny[folder], name=name)
    one = backend.log_metric("mt-a:1", "eval_loss", 1.5)
    assert type(one) is t.AdapterVersion and type(one.metrics[0]) is t.MetricInfo
    assert [(x.name, x.value, x.dataset, x.source, x.recorded_by) for x in one.metrics] == [
        ("eval_loss", 1.5, "", "user", actor)]
    many = backend.log_metrics("mt-b", {"eval_loss": 2.5, "accuracy": 0.75}, dataset="wiki")
    backend.log_metric("mt-b:1", "eval_loss", 0.5)
    again = backend.log_metric("mt-a:1", "eval_loss", 3.0)  # replaces
    assert [(x.name, x.value) for x in again.metrics] == [("eval_loss", 3.0)]
    up = backend.search(name_like="mt-", sort="metric:eval_loss", descending=False)
    assert refs(up) == ["mt-b:1", "mt-a:1", "mt-c:1"]
    assert refs(backend.search(name_like="mt-", sort="metric:eval_loss[wiki]")) == ["mt-b:1", "mt-c:1", "mt-a:1"]
    filtered = backend.search(name_like="mt-", where="eval_loss>=1 , accuracy[wiki]<1 AND eval_loss[wiki]=2.5")
    assert refs(filtered) == []
    assert refs(backend.search(name_like="mt-", where="eval_loss>=1")) == ["mt-a:1"]
    page = backend.search_page(SearchFilters(name_like="mt-", where="accuracy[wiki] > 0.5", sort="metric:eval_loss"))
    assert (refs(page.items), page.total) == (["mt-b:1"], 1)
    caught: list[BaseException] = []
    for where in ("eval_loss<<1", "a<1 or b<2", "Eval<1"):
        with pytest.raises(InvalidWhere) as e:
            backend.search(where=where)
        caught.append(e.value)
    with pytest.raises(InvalidWhere) as e:
        backend.search(sort="metric:a b")
    caught.append(e.value)
    for name, value, dataset in (("Bad", 1.0, None), ("ok", float("inf"), None), ("ok", 1.0, "no spaces")):
        with pytest.raises(RegistryError) as e:
            backend.log_metric("mt-c:1", name, value, dataset=dataset)
        caught.append(e.value)
    with pytest.raises(AdapterNotFound) as e:
        backend.log_metric("mt-none:1", "x", 1.0)
    caught.append(e.value)
    assert backend.get("mt-c:1").metrics == []
    events = [e for e in backend.audit_events(name="mt-a") if e["action"] == "metric.log"]
    assert [ev["after"]["metrics"] for ev in events] == [[{"name": "eval_loss", "value": 3.0}],
                                                        [{"name": "eval_loss", "value": 1.5}]]
    same("metrics", one, many, again, up, page, caught, events)


def test_metric_logging_needs_write_on_the_adapter(sdk_server: ServerProcess, tiny) -> None:  # type: ignore[no-untyped-def]
    from registry.errors import Forbidden

    with Registry(sdk_server.url, token=sdk_server.admin_token) as admin:
        admin.register(tiny["tone"], name="mtp-a")
        admin.add_user("mtp-reader")
        reader = admin.create_token("mtp-reader", scope="write")["token"]
    with Registry(sdk_server.url, token=reader) as reg:
        with pytest.raises(Forbidden, match="mtp-a"):
            reg.log_metric("mtp-a:1", "eval_loss", 1.0)
        assert refs(reg.search(name_like="mtp-", where="eval_loss<2")) == []  # reading needs no grant
        with Registry(sdk_server.url, token=sdk_server.admin_token) as admin:
            admin.add_grant("mtp-reader", "mtp-*", "write")
        assert [x.recorded_by for x in reg.log_metric("mtp-a:1", "eval_loss", 1.0).metrics] == ["mtp-reader"]
        assert refs(reg.search(name_like="mtp-", where="eval_loss<2")) == ["mtp-a:1"]
# -- end metrics --

# -- diff (issue 15) --
def _rounded(value: Any) -> Any:
    """Floats to 10 significant digits: the server runs with one torch thread, this process with more."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_diff_of_two_versions(backend: Registry, tiny, same) -> None:  # type: ignore[no-untyped-def]
    backend.register(tiny["tone"], name="df")
    backend.register(tiny["legal"], name="df")
    backend.set_alias("df:1", "production")
    diff = backend.diff("df@production", "df:2")
    assert type(diff) is t.VersionDiff and type(diff.modules[0]) is t.ModuleDistance
    assert all(type(c) is t.ConfigChange for c in diff.rank_changes + diff.config_changes)
    assert (diff.a, diff.b, len(diff.modules), len(diff.modules_added)) == ("df:1", "df:2", 4, 10)
    assert {(c.key, c.old, c.new) for c in diff.rank_changes} == {("r", 4, 8), ("lora_alpha", 8, 16)}
    assert all(m.distance is not None and m.distance > 0 for m in diff.modules)
    itself = backend.diff("df:2", "df")
    assert itself.same_weights and {m.method for m in itself.modules} == {"identical"}
    with pytest.raises(AdapterNotFound) as missing:
        backend.diff("df:1", "df:9")
    if isinstance(backend, RemoteRegistry):  # a read-only token reads both versions
        backend.add_user("df-reader")
        token = backend.create_token("df-reader", scope="read")["token"]
        with Registry(backend.url, token=token) as reader:
            assert _rounded(reader.diff("df:1", "df:2").to_dict()) | {"seconds": 0} == _rounded(
                diff.to_dict()) | {"seconds": 0}
    same("diff", _rounded(diff.to_dict()), _rounded(itself.to_dict()), missing.value)
# -- end diff --

# -- named bases (issue 15) --
def _nb_adapter(tiny: dict[str, Path], dest: Path, base: str) -> Path:
    import shutil

    folder = shutil.copytree(tiny["tone"], dest)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    return folder


def test_named_bases(backend: Registry, tiny, tmp_path: Path, request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
                     same) -> None:
    import shutil

    from registry.errors import BaseModelNotFound, Forbidden

    folder = shutil.copytree(tiny["llama"], tmp_path / "nb-llama")
    copy = shutil.copytree(tiny["llama"], tmp_path / "elsewhere" / "nb-llama")  # the same model at another path
    info = backend.add_base("nb-llama", path=str(folder))
    assert type(info) is t.BaseModelInfo and (info.short_name, info.name) == ("nb-llama", str(folder))
    assert backend.add_base("nb-llama", path=str(folder)) == info
    with pytest.raises(ConflictError) as taken:
        backend.add_base("nb-llama", path=str(tiny["gpt2"]))
    with pytest.raises(BaseModelNotFound) as not_a_model:
        backend.add_base("nb-nothing", path=str(tmp_path))
    on_folder = backend.register(_nb_adapter(tiny, tmp_path / "nb-a", str(folder)), name="nb-a")
    on_copy = backend.register(_nb_adapter(tiny, tmp_path / "nb-b", str(copy)), name="nb-b")
    assert on_folder.base_model == on_copy.base_model == str(folder)
    declared = backend.register(_nb_adapter(tiny, tmp_path / "nb-c", "acme/nb-unread"), name="nb-c")
    detail = backend.base("nb-llama")
    assert type(detail) is t.BaseModelDetail and detail.versions == 2
    assert backend.base(str(folder)) == detail  # a folder path, slashes and all, is one route
    unread = backend.base("acme/nb-unread")  # so is a Hub id
    assert unread.info.name == "acme/nb-unread" and unread.compatible_total == 0 and unread.versions == 1
    with pytest.raises(BaseModelNotFound) as unknown:
        backend.base("acme/nb-nope")
    compatible = backend.search(compatible_with="nb-llama", name_like="nb-")
    assert refs(compatible) == ["nb-c:1", "nb-b:1", "nb-a:1"]  # nb-c's Hub base was never read: shapes fit this one
    assert refs(backend.search(base_model="nb-llama", name_like="nb-")) == ["nb-b:1", "nb-a:1"]
    if isinstance(backend, RemoteRegistry):  # naming a base is an admin's act over HTTP
        backend.add_user("nb-writer")
        backend.add_grant("nb-writer", "*", "write")
        token = backend.create_token("nb-writer", scope="write")["token"]
        with Registry(request.getfixturevalue("sdk_server").url, token=token) as writer, \
                pytest.raises(Forbidden, match="not an admin"):
            writer.add_base("nb-other", path=str(tiny["gpt2"]))
    same("named bases", info, on_folder, on_copy, declared, detail.info, detail.module_shapes,
         [c for c in detail.compatible if c.ref.startswith("nb-")], unread.info, compatible,
         taken.value, not_a_model.value, unknown.value)
# -- end named bases --

def test_dataset_errors_keep_their_type_over_http(sdk_server: ServerProcess, tmp_path: Path, tiny) -> None:
    """The server's own data checks (an empty file passes the client's) come back as InvalidDataset."""
    from registry.trainset import InvalidDataset

    (tmp_path / "empty.jsonl").write_text("")
    with Registry(sdk_server.url, token=sdk_server.admin_token) as reg:
        reg.register(tiny["tone"], name="typed-data", base_path=tiny["llama"])
        with pytest.raises(InvalidDataset, match="empty"):
            reg.train("typed-data:1", data=tmp_path / "empty.jsonl", steps=1)


# -- the surface: every public method of the embedded Registry, on RemoteRegistry -----------------------

def _public(cls: type) -> dict[str, Any]:
    return {name: inspect.getattr_static(cls, name) for name in dir(cls) if not name.startswith("_")}


def test_remote_registry_offers_every_public_method_with_the_same_signature(tmp_path: Path) -> None:
    embedded, remote = _public(Registry), _public(RemoteRegistry)
    with Registry(home=tmp_path / "home") as instance:  # attributes __init__ sets (service, settings, store)
        attributes = {name for name in vars(instance) if not name.startswith("_")}
    assert attributes <= set(LOCAL_ONLY), f"new public attributes {attributes - set(LOCAL_ONLY)}: local or served?"
    missing = sorted(set(embedded) - set(remote))
    assert missing == [], f"RemoteRegistry lacks {missing}"
    checked = []
    for name, member in embedded.items():
        if name in LOCAL_ONLY or name == "transports":
            continue
        assert callable(getattr(Registry, name)), name
        mine = inspect.getattr_static(RemoteRegistry, name)
        if name not in DELEGATING:
            assert name in RemoteRegistry.__dict__, f"RemoteRegistry.{name} is inherited from the embedded Registry"
        assert type(mine) is type(member), f"{name}: {type(mine).__name__} vs {type(member).__name__}"
        assert inspect.signature(getattr(RemoteRegistry, name)) == inspect.signature(getattr(Registry, name)), name
        checked.append(name)
    assert {"register", "get", "search", "merge", "train", "download", "audit_events", "whoami"} <= set(checked)
    assert set(LOCAL_ONLY) <= set(embedded) | attributes and set(DELEGATING) <= set(embedded)


def test_local_only_members_refuse_clearly_on_a_remote_registry(sdk_server: ServerProcess) -> None:
    with pytest.raises(Unauthenticated, match="no API token"):
        Registry(sdk_server.url)  # no token=, no ADREG_TOKEN, no saved login
    with pytest.raises(Unauthenticated):
        Registry(sdk_server.url, token="adreg_1_wrong").whoami()
    with Registry(sdk_server.url, token=sdk_server.admin_token) as reg:
        for name in ("service", "settings", "store", "engine"):
            with pytest.raises(RegistryError, match="talks to the server at"):
                getattr(reg, name)
        with pytest.raises(RegistryError, match="talks to the server at"):
            reg.submit(None)  # type: ignore[arg-type]
        with pytest.raises(RegistryError, match="parents= is not available over HTTP"):
            reg.register(Path("."), name="x", parents=[object()])  # type: ignore[list-item]
        # bookkeeping parameters of the embedded signature that the server sets itself: refused, not ignored
        with pytest.raises(RegistryError, match="run_id= is not available over HTTP"):
            reg.merge(["a:1", "b:1"], weights=[0.5, 0.5], name="c", run_id=3)
        with pytest.raises(RegistryError, match="now= is not available over HTTP"):
            reg.tick(now=datetime.now(timezone.utc))
        assert reg.validate.__doc__ == Registry.validate.__doc__


# -- the CLI against a server -------------------------------------------------------------------------

def adreg(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "registry.cli", *args], env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def adreg_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(adreg(env, *args, "--json").stdout)


def test_cli_catalog_commands_against_a_server(cli_server: ServerProcess, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = cli_server.client_env(tmp_path / "client")
    added = adreg_json(env, "register", str(tiny["tone"]), "--name", "cli-a", "--tag", "team=cx")
    assert (added["ref"], added["tags"], added["created_by"]) == ("cli-a:1", {"team": "cx"}, "admin")
    adreg_json(env, "register", str(tiny["tone2"]), "--name", "cli-b")
    listed = adreg_json(env, "list", "--name", "cli-", "--sort", "name", "--asc")
    assert [v["ref"] for v in listed["items"]] == ["cli-a:1", "cli-b:1"] and listed["total"] == 2
    shown = adreg_json(env, "show", "cli-a")
    assert shown["weights_sha256"] == added["weights_sha256"] and shown["tags"] == {"team": "cx"}
    assert adreg_json(env, "alias", "set", "cli-a:1", "prod")["aliases"] == ["prod"]
    assert "cli-a:1" in adreg(env, "show", "cli-a@prod").stdout
    merged = adreg_json(env, "merge", "cli-a@prod", "cli-b:1", "--weights", "0.5,0.5", "--method", "linear",
                        "--name", "cli-m", "--wait")
    assert (merged["kind"], merged["status"], merged["result_ref"]) == ("merge", "succeeded", "cli-m:1")
    result = adreg_json(env, "show", "cli-m:1")
    pulled = adreg_json(env, "pull", "cli-m:1", str(tmp_path / "pulled"))
    assert pulled["ref"] == "cli-m:1" and pulled["weights_sha256"] == result["weights_sha256"]
    weights = (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == result["weights_sha256"]
    assert weights == (Path(result["path"]) / "adapter_model.safetensors").read_bytes()
    refused = adreg(env, "pull", "cli-m:1", str(tmp_path / "pulled"), code=1)
    assert refused.stderr.startswith("error:") and "not an empty folder" in refused.stderr
    events = adreg_json(env, "audit")
    catalog_events = [e for e in events if e["action"] in ("version.register", "alias.set", "job.submit")]
    assert {e["action"] for e in catalog_events} == {"version.register", "alias.set", "job.submit"}
    assert {e["actor"] for e in catalog_events} == {"admin"}
    # `adreg init --admin` ran on the server host, as its OS user
    assert {(e["action"], e["actor"]) for e in events if e not in catalog_events} == {
        ("user.add", os_user()), ("token.create", os_user())}
    assert [e["ref"] for e in adreg_json(env, "audit", "--name", "cli-a") if e["action"] == "alias.set"] == [
        "cli-a@prod"]
    who = adreg_json(env, "whoami")
    assert (who["name"], who["is_admin"], who["scope"]) == ("admin", True, "admin")
    missing = adreg(env, "show", "cli-nope", code=1)
    assert missing.stderr.startswith("error:") and "cli-nope" in missing.stderr
    incompatible = adreg(env, "register", str(tiny["tone"]), "--name", "Bad Name", code=1)
    assert incompatible.stderr.startswith("error:")
    assert not (tmp_path / "client").exists() or not any((tmp_path / "client").rglob("*.db")), \
        "a client opened an embedded catalog of its own"


def test_cli_users_tokens_and_grants(cli_server: ServerProcess, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = cli_server.client_env(tmp_path / "client")
    assert adreg_json(env, "user", "add", "alice", "--group", "cx") == {"name": "alice", "is_admin": False,
                                                                         "groups": ["cx"]}
    created = adreg_json(env, "token", "create", "--user", "alice", "--label", "laptop", "--expires", "30d")
    secret = created["token"]
    assert secret.startswith("adreg_") and created["user"] == "alice" and created["scope"] == "write"
    listed = adreg(env, "token", "list", "--json").stdout
    assert secret not in listed and secret.split("_")[-1] not in listed
    rows = json.loads(listed)
    mine = [r for r in rows if r["id"] == created["id"]]
    assert len(mine) == 1 and mine[0]["user"] == "alice" and mine[0]["label"] == "laptop"
    assert all("token" not in r and "secret" not in r for r in rows)
    table_out = adreg(env, "token", "list")
    assert secret not in table_out.stdout + table_out.stderr and "alice" in table_out.stdout
    granted = adreg_json(env, "grant", "add", "alice", "cx-*")
    assert granted == {"subject": "alice", "pattern": "cx-*", "permission": "write"} or (
        granted["subject"], granted["pattern"], granted["permission"]) == ("alice", "cx-*", "write")
    assert any(g["subject"] == "alice" and g["pattern"] == "cx-*" for g in adreg_json(env, "grant", "list"))
    alice = cli_server.client_env(tmp_path / "alice", token=secret)
    who = adreg_json(alice, "whoami")
    assert (who["name"], who["is_admin"], who["scope"]) == ("alice", False, "write")
    assert {"pattern": "cx-*", "permission": "write"} in who["grants"]
    assert adreg_json(alice, "register", str(tiny["tone"]), "--name", "cx-tone")["created_by"] == "alice"
    assert [r["id"] for r in adreg_json(alice, "token", "list")] == [created["id"]]  # a user's own tokens
    denied = adreg(alice, "register", str(tiny["tone"]), "--name", "other-tone", code=1)
    assert denied.stderr.startswith("error:")
    assert adreg(alice, "user", "add", "mallory", code=1).stderr.startswith("error:")
    assert adreg_json(env, "audit", "--name", "cx-tone")[0]["actor"] == "alice"
    adreg_json(env, "token", "revoke", str(created["id"]))
    revoked = adreg(alice, "whoami", code=1)
    assert revoked.stderr.startswith("error:")


def test_cli_login_and_logout(cli_server: ServerProcess, tmp_path: Path) -> None:
    home = tmp_path / "client"
    env = {k: v for k, v in cli_server.client_env(home).items() if k not in ("ADREG_URL", "ADREG_TOKEN")}
    login_file = home / "config" / "login.json"
    wrong = adreg(env, "login", cli_server.url, "--token", "adreg_1_notthesecret", code=1)
    assert wrong.stderr.startswith("error:") and not login_file.exists()
    unreachable = adreg(env, "login", f"http://127.0.0.1:{free_port()}", "--token", cli_server.admin_token, code=1)
    assert unreachable.stderr.startswith("error:") and not login_file.exists()
    done = adreg_json(env, "login", cli_server.url + "/", "--token", cli_server.admin_token)
    assert (done["url"], done["name"], done["scope"]) == (cli_server.url, "admin", "admin")
    assert Path(done["file"]) == login_file
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    assert json.loads(login_file.read_text()) == {"url": cli_server.url, "token": cli_server.admin_token}
    assert adreg_json(env, "whoami")["name"] == "admin"  # no ADREG_URL, no ADREG_TOKEN: the saved login
    assert adreg_json({**env, "ADREG_URL": cli_server.url}, "whoami")["name"] == "admin"  # its token, same URL
    assert isinstance(adreg_json(env, "list")["items"], list)
    assert adreg_json(env, "logout") == {"removed": True} and not login_file.exists()
    assert adreg_json(env, "logout") == {"removed": False}
    assert adreg_json(env, "whoami")["name"] == os_user()  # embedded again, on the client's own home
