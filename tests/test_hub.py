"""Publishing to and registering from a Hub: the real huggingface_hub client against tests/fake_hub.py."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import yaml
from conftest import READ_ONLY, SENTINEL
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from sqlalchemy import text
from typer.testing import CliRunner

from registry import models as m
from registry.cli import app
from registry.errors import InvalidAdapter

BASE_ID = "acme/tiny-llama"


@pytest.fixture
def merged(registry, tiny):  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base=BASE_ID, base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal", base=BASE_ID)
    job = registry.merge(["tone:1", "legal:1"], weights=[0.6, 0.4], method="cat", name="tone-legal", validate=True)
    assert job.status == "succeeded", job.error
    return registry


def test_publish_round_trip_card_and_lineage(merged, hub):
    job = merged.publish("tone-legal:1", "acme/tone-legal")
    assert job.status == "succeeded", job.error
    assert job.report["noop"] is False and len(job.report["commit"]) == 40
    assert merged.publications("tone-legal:1")[0]["commit"] == job.report["commit"]
    files = hub.repos["acme/tone-legal"].commits[job.report["commit"]]
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID

    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == BASE_ID
    assert data["base_model_relation"] == "adapter" and {"lora", "peft", "merge"} <= set(data["tags"])
    recipe = yaml.safe_load(re.search(r"```yaml\n(.*?)```", card.text, re.S).group(1))
    assert recipe["steps"][0]["merge"]["sources"] == ["tone:1", "legal:1"]
    assert recipe["steps"][0]["merge"]["method"] == "cat"
    assert "```mermaid" in card.text and "## Validation" in card.text and "| tone:1 |" in card.text

    # register it back from the Hub under another name: same bytes, pinned to the commit
    back = merged.register(f"hf://acme/tone-legal@{job.report['commit'][:40]}", name="from-hub")
    assert back.weights_sha256 == merged.get("tone-legal:1").weights_sha256
    assert back.source_uri == f"hf://acme/tone-legal@{job.report['commit']}"


def test_publish_twice_is_one_commit(merged, hub):
    first = merged.publish("tone-legal:1", "acme/tone-legal")
    second = merged.publish("tone-legal:1", "acme/tone-legal")
    assert second.status == "succeeded" and second.report["noop"] is True
    assert hub.commit_count("acme/tone-legal") == 1 and second.report["commit"] == first.report["commit"]
    other = merged.publish("tone:1", "acme/tone-legal")  # another version to the same repo: a new commit
    assert other.report["noop"] is False and hub.commit_count("acme/tone-legal") == 2


def test_register_from_tag_resolves_to_commit(merged, hub):
    job = merged.publish("tone:1", "acme/support-tone")
    HfApi(endpoint=hub.url, token=SENTINEL).create_tag("acme/support-tone", tag="v2")
    v = merged.register("hf://acme/support-tone@v2", name="support-tone")
    assert v.source_uri == f"hf://acme/support-tone@{job.report['commit']}"


def test_pickle_only_repo_refused_without_download(registry, hub, tiny):
    api = HfApi(endpoint=hub.url, token=SENTINEL)
    api.create_repo("acme/pickled")
    api.create_commit("acme/pickled", operations=[
        CommitOperationAdd("adapter_config.json", (tiny["tone"] / "adapter_config.json").read_bytes()),
        CommitOperationAdd("adapter_model.bin", io.BytesIO(b"\x80\x04not really a pickle")),
    ], commit_message="pickles")
    before = len(hub.requests)
    with pytest.raises(InvalidAdapter, match="safetensors only"):
        registry.register("hf://acme/pickled", name="pickled")
    assert not [r for r in hub.requests[before:] if "/resolve/" in r["path"]]


def test_forbidden_publish_is_a_clear_error_and_changes_nothing(merged, hub, monkeypatch, db_url):
    monkeypatch.setenv("HF_TOKEN", READ_ONLY)
    result = CliRunner().invoke(app, ["--db", db_url, "--home", str(merged.settings.home),
                                      "publish", "tone-legal:1", "--repo", "acme/tone-legal"])
    assert result.exit_code == 1 and "lacks write access" in result.stderr and "Traceback" not in result.stderr
    assert merged.publications("tone-legal:1") == []


def test_transient_errors_are_retried(merged, hub):
    hub.fail_next("POST", r"/commit/", 503, times=2)
    job = merged.publish("tone-legal:1", "acme/tone-legal")
    assert job.status == "succeeded" and hub.commit_count("acme/tone-legal") == 1


def test_token_is_never_stored_or_logged(merged, hub, caplog):
    caplog.set_level(logging.DEBUG)
    hub.fail_next("POST", r"acme/broken/commit/", 500, times=99)  # a failure too: its message must not carry the token
    failed = merged.publish("tone-legal:1", "acme/broken")
    ok = merged.publish("tone-legal:1", "acme/tone-legal")
    assert failed.status == "failed" and ok.status == "succeeded"
    sent = [v for r in hub.requests for k, v in r["headers"].items() if k.lower() == "authorization"]
    assert f"Bearer {SENTINEL}" in sent  # it was used
    dump = []
    with merged.engine.connect() as conn:
        for table in m.Base.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table.name}"))]
    haystack = "\n".join(dump) + caplog.text + (failed.error or "")
    assert SENTINEL not in haystack and len(dump) > 10


def test_lineage_mermaid_structure(merged, db_url):
    out = CliRunner().invoke(app, ["--db", db_url, "--home", str(merged.settings.home),
                                   "lineage", "tone-legal:1", "--format", "mermaid"])
    assert out.exit_code == 0
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "graph TD"
    nodes = dict(re.findall(r'^\s+(n\d+)\["([^"]+)"\]$', out.stdout, re.M))
    edges = re.findall(r"^\s+(n\d+) -->\|([^|]+)\| (n\d+)$", out.stdout, re.M)
    assert set(nodes.values()) == {"tone:1", "legal:1", "tone-legal:1"}
    assert sorted((nodes[a], label, nodes[b]) for a, label, b in edges) == [
        ("legal:1", "merge 0.4", "tone-legal:1"), ("tone:1", "merge 0.6", "tone-legal:1")]
    dot = CliRunner().invoke(app, ["--db", db_url, "--home", str(merged.settings.home),
                                   "lineage", "tone-legal:1", "--format", "dot"]).stdout
    assert dot.startswith("digraph lineage {") and dot.count("->") == 2


def test_publish_of_a_local_base_is_checked_before_any_job(registry, hub, tiny):
    """A version whose base is a local folder: refused before a job exists, unless the card's base_model is named."""
    local = registry.register(tiny["tone"], name="tone")
    assert local.base_model == str(tiny["llama"].resolve())
    with pytest.raises(Exception, match="not a Hub id") as err:
        registry.publish("tone:1", "acme/tone")
    assert "--base-model-id" in (err.value.hint or "") and registry.jobs() == []
    job = registry.publish("tone:1", "acme/tone", base_model_id=BASE_ID)
    assert job.status == "succeeded", job.error
    files = hub.repos["acme/tone"].commits[job.report["commit"]]
    assert ModelCard(files["README.md"].decode()).data.to_dict()["base_model"] == BASE_ID
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    result = CliRunner().invoke(app, ["--db", str(registry.engine.url), "publish", "tone:1", "--repo", "acme/t2"])
    assert result.exit_code == 1 and "--base-model-id" in result.stderr and "Traceback" not in result.output


def test_a_hub_adapter_over_the_size_limit_is_refused_before_download(merged, hub, monkeypatch):
    published = merged.publish("tone-legal:1", "acme/tone-legal")
    assert published.status == "succeeded"
    monkeypatch.setenv("ADREG_MAX_ADAPTER_BYTES", "1024")
    before = len(hub.requests)
    with pytest.raises(InvalidAdapter, match="more than ADREG_MAX_ADAPTER_BYTES"):
        merged.register("hf://acme/tone-legal", name="too-big")
    downloads = [r for r in hub.requests[before:] if "/resolve/" in r["path"]]
    assert downloads == []


def test_merge_publish_checks_the_card_base_before_any_job(registry, hub, tiny, tmp_path):
    registry.register(tiny["tone"], name="a")
    registry.register(tiny["tone2"], name="b")
    cli = ["--db", registry.engine.url.render_as_string(hide_password=False), "--home", str(tmp_path / "home"),
           "merge", "a:1", "b:1", "--weights", "0.5", "0.5", "--method", "cat", "--name", "ab", "--validate",
           "--publish", "acme/ab"]
    refused = CliRunner().invoke(app, cli)
    assert refused.exit_code == 1 and "--base-model-id" in refused.stderr and registry.jobs() == []
    done = CliRunner().invoke(app, [*cli, "--base-model-id", BASE_ID, "--json"])
    assert done.exit_code == 0, done.stderr
    follow_ups = json.loads(done.stdout)["follow_ups"]
    assert [j["kind"] for j in follow_ups] == ["validate", "publish"]
    files = hub.repos["acme/ab"].commits[follow_ups[-1]["report"]["commit"]]
    assert ModelCard(files["README.md"].decode()).data.to_dict()["base_model"] == BASE_ID
