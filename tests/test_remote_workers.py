"""Workers on other hosts: a real server (PostgreSQL catalog, Redis broker) and a real ``adreg worker`` process that
has no database URL and an artifact directory of its own; jobs reach the server's store only through HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import WorkerProcess, wait_for_status


@pytest.fixture
def deployment(pg_schema_url, broker_url, tmp_path, start_server):  # type: ignore[no-untyped-def]
    """(server, remote worker, client Registry): three "hosts" sharing nothing but the server URL and the broker."""
    from registry.remote import RemoteRegistry

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    server = start_server({**clean, "ADREG_DATABASE_URL": pg_schema_url, "ADREG_BROKER_URL": broker_url,
                           "ADREG_HOME": str(tmp_path / "server"), "ADREG_JOB_LEASE_SECONDS": "6",
                           "ADREG_RECOVERY_INTERVAL": "1", "TOKENIZERS_PARALLELISM": "false"})
    worker_env = {**clean, "ADREG_URL": server.url, "ADREG_TOKEN": server.admin_token, "ADREG_BROKER_URL": broker_url,
                  "ADREG_HOME": str(tmp_path / "worker"), "TOKENIZERS_PARALLELISM": "false"}
    worker = WorkerProcess(worker_env, tmp_path / "remote-worker.log", "cpu,gpu", []).wait_ready()
    client = RemoteRegistry(server.url, token=server.admin_token)
    yield server, worker, client, tmp_path
    client.close()
    worker.stop()


def wait_for_children(client, job_id: int, timeout: float = 30.0) -> list:  # type: ignore[no-untyped-def]
    """The jobs ``job_id`` queued (its follow-ups are submitted right after it is marked succeeded)."""
    import time

    deadline = time.monotonic() + timeout
    while not (children := client.jobs(parent_job_id=job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return children


def test_merge_and_training_on_a_worker_without_the_catalog(deployment, tiny):
    server, worker, client, root = deployment
    client.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    client.register(tiny["tone2"], name="style")

    merged = client.merge(["tone:1", "style:1"], weights=[0.7, 0.3], method="linear", name="mixed").wait(120)
    assert merged.status == "succeeded" and merged.result_ref == "mixed:1"
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"the adapter registry, line {i}"}) for i in range(24)))
    trained = client.train("tone:1", data=data, steps=2, lr=1e-3, batch_size=4).wait(300)
    assert trained.status == "succeeded" and trained.result_ref == "tone:2"
    # its train / held-out splits were uploaded by the worker and recorded on the server (issue 17)
    splits = {d.role: d for d in client.get("tone:2").datasets}
    assert set(splits) == {"train", "heldout"} and client.dataset("tone-heldout").sha256 == splits["heldout"].sha256
    # a merge with a parent that has held-out data is validated on the worker, which measures that parent's
    # retention on the data it fetches (nothing cached yet); the server copies it into the merge's report (issue 17)
    kept = client.merge(["tone:2", "style:1"], weights=[0.5, 0.5], method="cat", name="kept").wait(120)
    assert kept.status == "succeeded", kept.error
    follow_ups = wait_for_children(client, kept.id)
    check = follow_ups[0].wait(300)
    assert check.status == "succeeded", check.error
    assert [p["parent"] for p in check.report["retention"]["parents"]] == ["tone:2"]  # style:1 has no held-out data
    assert client.job(kept.id).report["retention"] == check.report["retention"]
    assert ("retention", "tone-heldout:1") in {(x.name, x.dataset) for x in client.get("kept:1").metrics}

    # an eval job on the worker fetches its dataset by sha256 (issue 17)
    evaluated = client.evaluate("tone:2", data=["tone-heldout"]).wait(300)
    assert evaluated.status == "succeeded", evaluated.error
    assert {(x.name, x.job_id) for x in client.get("tone:2").metrics if x.dataset == "tone-heldout:1"} >= {
        ("eval_loss", evaluated.id), ("base_eval_loss", evaluated.id)}

    # The versions live in the server's store, with their lineage and the submitting user.
    server_store = root / "server" / "artifacts"
    for ref in ("mixed:1", "tone:2"):
        version = client.get(ref)
        assert Path(version.path).is_relative_to(server_store) and Path(version.path).is_dir(), version.path
        assert version.created_by == "admin"
    # metrics (issue 15): the server's commit recorded each job's metrics from the report the worker sent
    assert {(x.name, x.source, x.job_id) for x in client.get("tone:2").metrics if x.source != "eval"} == {
        (name, "train", trained.id) for name in ("eval_loss", "eval_loss_before", "train_loss")}
    assert {x.name for x in client.get("mixed:1").metrics if x.job_id == merged.id} >= {"merge_max_rel_error"}
    edges = {(e.parent, e.relation, e.weight) for e in client.lineage("mixed:1").edges}
    assert edges == {("tone:1", "merge", 0.7), ("style:1", "merge", 0.3)}
    assert [(e.parent, e.relation) for e in client.lineage("tone:2").edges if e.child == "tone:2"] == [
        ("tone:1", "finetune")]
    # The worker read its inputs from its own content-addressed cache (never the server's folders)...
    cache = root / "worker" / "worker" / "cache" / "blobs"
    cached = {p.name for p in cache.glob("*/*") if len(p.name) == 64}
    assert client.get("tone:1").weights_sha256 in cached and client.get("style:1").weights_sha256 in cached
    assert not (root / "worker" / "artifacts").exists()
    # ... ran the jobs itself (its host:pid is on the job rows) and left no scratch behind.
    assert "Task adreg.run_job" in worker.log.read_text()
    assert not any((root / "worker" / "worker" / "scratch").glob("*"))
    # The merged weights equal a local merge of the same inputs (the server re-hashed what the worker sent).
    from registry import Registry

    with Registry(home=root / "local") as local:
        local.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        local.register(tiny["tone2"], name="style")
        expected = local.merge(["tone:1", "style:1"], weights=[0.7, 0.3], method="linear", name="mixed").result
    assert client.get("mixed:1").weights_sha256 == expected.weights_sha256


def test_cancelling_a_job_running_on_a_remote_worker(deployment, tiny):
    server, worker, client, root = deployment
    client.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"line {i} " * 8}) for i in range(64)))
    job = client.train("tone:1", data=data, steps=100_000, lr=1e-4, batch_size=2)
    wait_for_status(job, "running", timeout=120)
    assert client.cancel(job.id) == "cancelling"
    wait_for_status(job, "cancelled", timeout=60)
    assert [v.ref for v in client.versions_of("tone")] == ["tone:1"]  # nothing registered


def test_learning_merge_on_a_remote_worker(deployment, tiny):
    """A merge that learns its weights (issue 17 item 4) on a worker without the catalog: it fetches the parents'
    held-out data by sha256, and the server records the learned weights on the edges."""
    server, worker, client, root = deployment
    client.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    client.register(tiny["tone2"], name="style")
    data = root / "rev.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"rev {w}=", "completion": w[::-1]})
                              for w in ("abc", "hello", "adapter", "merge", "weights", "lora")))
    client.register_dataset(data, name="rev")
    for ref in ("tone:1", "style:1"):
        client.link_dataset(ref, "rev")
    job = client.merge(["tone:1", "style:1"], method="cat", name="learned", learn_weights=True, learn_examples=4,
                       learn_budget=3).wait(300)
    assert job.status == "succeeded", job.error
    assert job.queue == "gpu" and "Task adreg.run_job" in worker.log.read_text()
    learned = job.report["learned_weights"]
    assert [d["rows"] for d in learned["data"]] == [4, 4] and len(learned["trace"]) == 4
    edges = {e.parent: e.weight for e in client.lineage("learned:1").edges}
    assert [edges["tone:1"], edges["style:1"]] == pytest.approx(learned["weights"])
