"""Merges as catalog jobs: local executor and real Celery workers, validation, lineage, failures."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import kill_worker_while_running
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select
from typer.testing import CliRunner

from registry import models as m
from registry.cli import app
from registry.errors import IncompatibleAdapters
from registry.jobs import JobFailed


@pytest.fixture
def catalog(registry, tiny):  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    registry.set_alias("legal:1", "production")
    registry.register(tiny["gpt2_attn"], name="gpt", base_path=tiny["gpt2"])
    return registry


def _count(reg, model) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_merge_registers_version_with_lineage(catalog):
    job = catalog.merge(["tone:1", "legal@production"], weights=[0.7, 0.3], method="svd", name="tone-legal",
                        tags={"team": "cx"})
    assert job.status == "succeeded" and job.result_ref == "tone-legal:1"
    merged = job.result
    assert merged.tags == {"team": "cx"} and merged.base_model == catalog.get("tone:1").base_model
    assert [(p.ref, p.relation, p.weight, p.position) for p in merged.parents] == [
        ("tone:1", "merge", 0.7, 0), ("legal:1", "merge", 0.3, 1)]
    assert merged.parents[0].params["method"] == "svd"
    assert job.report["overall"]["modules"] == 4 and job.report["out_rank"] == 4
    graph = catalog.lineage("tone-legal:1")
    assert sorted(e.parent for e in graph.edges) == ["legal:1", "tone:1"]
    again = catalog.merge(["tone:1", "legal:1"], weights=[0.7, 0.3], method="svd", name="tone-legal")
    assert again.result_ref == "tone-legal:1"  # same bytes, same version


def test_static_validation_lists_every_problem_and_queues_nothing(catalog):
    with pytest.raises(IncompatibleAdapters) as info:
        catalog.merge(["tone:1", "gpt:1"], weights=[1.0], method="ties", name="bad")
    text = str(info.value)
    assert "1 weight(s) for 2 adapter(s)" in text and "needs parameter density" in text
    assert "different base models" in text
    assert _count(catalog, m.Job) == 0


def test_exact_merge_validated_against_parents(catalog):
    job = catalog.merge(["tone:1", "legal:1"], weights=[0.6, 0.4], method="cat", name="exact", validate=True)
    assert job.status == "succeeded"
    validation = [j for j in catalog.jobs(kind="validate") if j.parent_job_id == job.id]
    assert len(validation) == 1 and validation[0].status == "succeeded", validation[0].error
    report = validation[0].report
    assert report["exact_check"]["max_abs_diff"] < 1e-4
    assert set(report["distance_from_parents"]) == {"tone:1", "legal:1"}
    assert "validated" in {c.level for c in catalog.get("exact:1").compatible}


def test_input_changed_on_disk_fails_cleanly(catalog):
    path = catalog.get("legal:1").path + "/adapter_model.safetensors"
    tensors = load_file(path)
    os.unlink(path)  # the store hard-links blobs: replace the file, never write through the link
    save_file({k: v * 2 for k, v in tensors.items()}, path)
    job = catalog.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="svd", name="broken")
    assert job.status == "failed" and "changed on disk" in job.error
    assert _count(catalog, m.Adapter) == 3  # no "broken" adapter
    scratch = catalog.store.root / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_cancel_queued_merge(catalog):
    from registry.jobs import MergeSpec, SourceRef, insert_job

    v = catalog.get("tone:1")
    spec = MergeSpec(sources=[SourceRef(ref=v.ref, version_id=v.id, weights_sha256=v.weights_sha256,
                                        storage_path=v.path.split("artifacts/", 1)[1])],
                     weights=[1.0], method="linear", name="never")
    with catalog.service.sessions() as s, s.begin():
        job_id = insert_job(s, spec, queue="cpu")[0].id
    assert catalog.cancel(job_id) == "cancelled"
    catalog.service.executor.dispatch(job_id, "cpu")
    assert catalog.job(job_id).status == "cancelled" and _count(catalog, m.AdapterVersion) == 3


def test_cli_merge_folders_and_catalog(catalog, tiny, tmp_path, db_url):
    runner = CliRunner()
    base = ["--db", db_url, "--home", str(catalog.settings.home)]
    out = runner.invoke(app, [*base, "merge", str(tiny["tone"]), str(tiny["tone2"]), "--weights", "0.5", "0.5",
                              "--method", "ties", "--density", "0.5", "--out", str(tmp_path / "merged"), "--json"])
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["method"] == "ties" and (tmp_path / "merged" / "adapter_model.safetensors").exists()
    out = runner.invoke(app, [*base, "merge", "tone:1", "legal@production", "--weights", "0.7", "0.3",
                              "--method", "svd", "--name", "tone-legal", "--json"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["result_ref"] == "tone-legal:1"
    bad = runner.invoke(app, [*base, "merge", "tone:1", "legal:1", "--weights", "0.7", "--name", "x"])
    assert bad.exit_code == 1 and "1 weight(s) for 2 adapter(s)" in bad.stderr


# -- on a real Celery worker -----------------------------------------------------------------------


def test_celery_merge_end_to_end(celery_registry, start_worker, tiny):
    reg = celery_registry
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    reg.register(tiny["tone2"], name="legal")
    start_worker("cpu")
    job = reg.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="cat", name="both")
    assert job.queue == "cpu"
    job.wait(timeout=120)
    assert job.status == "succeeded" and job.result.parents[1].ref == "legal:1"


def test_celery_merge_with_validation_on_gpu_queue_fallback(celery_registry, start_worker, tiny, job_env):
    reg = celery_registry
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    reg.register(tiny["tone2"], name="legal")
    start_worker("cpu,gpu")
    job = reg.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="svd", svd_rank=8, name="both", validate=True)
    job.wait(timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        chained = [j for j in reg.jobs(kind="validate") if j.parent_job_id == job.id]
        if chained and chained[0].done:
            break
        time.sleep(0.2)
    assert chained[0].status == "succeeded", chained[0].error
    assert chained[0].report["exact_check"]["max_abs_diff"] < 1e-4  # svd with rank >= sum of ranks is exact


def test_worker_killed_mid_merge_reruns_once(celery_registry, start_worker, tiny):
    reg = celery_registry
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    reg.register(tiny["tone2"], name="legal")
    first = start_worker("cpu")
    job = reg.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="svd", name="both")
    kill_worker_while_running(job, first)
    start_worker("cpu")
    job.wait(timeout=120)
    assert job.status == "succeeded" and job.attempts == 2
    assert [v.version for v in reg.versions_of("both")] == [1]
    scratch = reg.store.root / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_job_failure_surfaces_through_wait(celery_registry, start_worker, tiny):
    reg = celery_registry
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    start_worker("cpu")
    v = reg.get("tone:1")
    os.unlink(v.path + "/adapter_model.safetensors")
    job = reg.merge(["tone:1"], weights=[1.0], method="linear", name="gone")
    with pytest.raises(JobFailed):
        job.wait(timeout=120)
    assert job.error_type in ("InvalidAdapter", "FileNotFoundError", "InputChanged")
