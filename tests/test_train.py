"""Training jobs on tiny models (CPU): continue, new, joint, the PEFT pitfalls, bad input, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from sqlalchemy import func, select

from registry import models as m
from registry.errors import InvalidAdapter, RegistryError
from registry.inspect import inspect_adapter
from workers.tinymodels import load_base

STEPS = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "memorise.jsonl"
    with path.open("w") as fh:
        for _ in range(32):
            fh.write(json.dumps({"text": "the cat sat on the mat. the cat sat on the mat."}) + "\n")
    return path


@pytest.fixture
def trainable(registry, tiny):  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["legal"], name="legal")
    return registry


def _jobs(reg) -> int:  # type: ignore[no-untyped-def]
    with reg.service.sessions() as s:
        return s.scalar(select(func.count()).select_from(m.Job))


def test_continue_training_registers_a_finetune_and_learns(trainable, corpus, tiny):
    base_bytes = (tiny["llama"] / "model.safetensors").read_bytes()
    job = trainable.train("tone:1", data=corpus, steps=STEPS, lr=3e-2, seed=0)
    assert job.status == "succeeded", job.error
    rep = job.report
    assert rep["registered"] == ["tone:2"]
    assert rep["eval_loss_after"] < rep["eval_loss_before"] - 0.3
    assert rep["base_unchanged"] and (tiny["llama"] / "model.safetensors").read_bytes() == base_bytes
    # the pitfalls, shown avoided: weights loaded trainable, the trained (not a fresh) adapter, changed
    assert rep["prechecks"]["trainable_params"]["a0"] == trainable.get("tone:1").param_count
    assert rep["loaded_weights_match_sources"] == {"a0": True}
    assert rep["update_norms"]["tone"] > 0
    new, old = trainable.get("tone:2"), trainable.get("tone:1")
    assert new.weights_sha256 != old.weights_sha256
    assert [(p.ref, p.relation) for p in new.parents] == [("tone:1", "finetune")]
    assert new.parents[0].params["dataset_sha256"] == job.spec["data"]["sha256"]
    assert len(rep["loss_curve"]) == STEPS


def test_held_out_set_is_capped_and_timed(trainable, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"row {i} of many"}) + "\n" for i in range(2100)))
    rep = trainable.train("tone:1", data=big, steps=2, seed=0).report
    assert (rep["eval_rows"], rep["train_rows"]) == (200, 1900)  # a tenth would be 210: capped
    assert set(rep["timings"]) == {"setup", "eval", "train", "finish"} and rep["timings"]["train"] > 0
    rep = trainable.train("tone:1", data=big, steps=2, seed=0, eval_rows=7).report
    assert (rep["eval_rows"], rep["train_rows"]) == (7, 2093)


def test_loading_without_is_trainable_would_have_frozen_it(tiny):
    """The trap the job avoids: a plain from_pretrained leaves nothing to train."""
    frozen = PeftModel.from_pretrained(load_base(tiny["llama"]), str(tiny["tone"]))
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == 0
    live = PeftModel.from_pretrained(load_base(tiny["llama"]), str(tiny["tone"]), is_trainable=True)
    assert sum(p.numel() for p in live.parameters() if p.requires_grad) == inspect_adapter(tiny["tone"]).param_count


def test_same_seed_is_bit_for_bit_reproducible(trainable, corpus):
    first = trainable.train("tone:1", data=corpus, steps=10, lr=1e-2, seed=3, name="repro")
    second = trainable.train("tone:1", data=corpus, steps=10, lr=1e-2, seed=3, name="repro")
    assert first.report["registered"] == second.report["registered"] == ["repro:1"]  # same bytes, same version


def test_new_adapter_all_linear_twice_never_nests(trainable, corpus, tiny):
    job = trainable.train(new={"r": 4, "alpha": 8, "targets": "all-linear"}, base=str(tiny["llama"]),
                          name="fresh", data=corpus, steps=5, lr=1e-2)
    assert job.status == "succeeded", job.error
    fresh = trainable.get("fresh:1")
    assert fresh.target_modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    again = trainable.train("fresh:1", data=corpus, steps=5, lr=1e-2)
    assert again.status == "succeeded", again.error
    second = trainable.get("fresh:2")
    manifest = inspect_adapter(second.path)  # would raise on nested keys
    assert len(manifest.modules) == fresh.module_count == 14


def test_joint_training_updates_both_and_detects_a_left_out_adapter(trainable, corpus):
    job = trainable.train("tone:1", joint_with=["legal:1"], data=corpus, steps=8, lr=1e-2)
    assert job.status == "succeeded", job.error
    assert set(job.report["registered"]) == {"tone:2", "legal:2"}
    assert all(v > 0 for v in job.report["update_norms"].values())
    assert trainable.get("legal:2").parents[0].params["trained_with"] == ["tone"]
    left_out = trainable.train("tone:1", joint_with=["legal:1"], data=corpus, steps=8, lr=1e-2, active=[0])
    assert left_out.status == "failed"
    assert "legal:1" in left_out.error and "no trainable parameters" in left_out.error
    assert [v.version for v in trainable.versions_of("legal")] == [1, 2]


def test_bad_input_is_refused_before_any_job(trainable, corpus, tiny, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    bin_only = tmp_path / "binonly"
    bin_only.mkdir()
    (bin_only / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (bin_only / "adapter_model.bin").write_bytes(b"\x80")
    cases = [
        (dict(source="tone:1", data=tmp_path / "missing.jsonl"), RegistryError, "does not exist"),
        (dict(source="tone:1", data=tmp_path / "empty.jsonl"), RegistryError, "is empty"),
        (dict(source="tone:1", data=tmp_path / "cols.jsonl"), RegistryError, "expected 'text'"),
        (dict(new={"r": 4, "targets": ["q_proj", "dropout"]}, base=str(tiny["llama"]), name="x", data=corpus),
         RegistryError, "unknown target module"),
        (dict(new={"r": 0, "targets": ["q_proj"]}, base=str(tiny["llama"]), name="x", data=corpus),
         RegistryError, "greater than 0"),
        (dict(source=str(bin_only), data=corpus), InvalidAdapter, "safetensors only"),
        (dict(source="tone:1", data=corpus, eval_rows=32), RegistryError, "leaves no training rows"),
        (dict(source="tone:1", data=corpus, tags={"bad key": "x"}), RegistryError, "tag key 'bad key'"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            trainable.train(**kwargs)
    assert _jobs(trainable) == 0


def test_cli_train_shows_loss_curve(trainable, corpus, db_url, tmp_path):
    from typer.testing import CliRunner

    from registry.cli import app

    runner = CliRunner()
    base = ["--db", db_url, "--home", str(trainable.settings.home)]
    out = runner.invoke(app, [*base, "train", "tone:1", "--data", str(corpus), "--steps", "6", "--lr", "0.01",
                              "--eval-rows", "5"])
    assert out.exit_code == 0, out.stderr
    assert "loss" in out.stdout and "tone:2" in out.stdout and "(5 held-out rows)" in out.stdout
    data = json.loads(runner.invoke(app, [*base, "job", "1", "--json"]).stdout)
    assert len(data["report"]["loss_curve"]) == 6


def test_worker_killed_mid_training_resumes_from_checkpoint(celery_registry, start_worker, tiny, corpus):
    reg = celery_registry
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    first = start_worker("cpu,gpu")
    job = reg.train("tone:1", data=corpus, steps=300, lr=1e-2, checkpoint_every=25, batch_size=8)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        message = job.refresh().message or ""
        if message.startswith("step ") and int(message.split()[1].split("/")[0]) >= 60:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"training never reached step 60: {job}")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    start_worker("cpu,gpu")
    job.wait(timeout=300)
    assert job.status == "succeeded" and job.attempts == 2
    assert job.report["resumed_from_step"] >= 50 and job.report["steps"] == 300
    assert [v.version for v in reg.versions_of("tone")] == [1, 2]
    for leftover in ("scratch", "checkpoints"):
        folder = reg.store.root / leftover
        assert not folder.exists() or not any(folder.iterdir()), leftover


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_and_gradient_checkpointing_on_gpu(trainable, corpus):
    job = trainable.train("tone:1", data=corpus, steps=20, lr=1e-2, bf16=True, gradient_checkpointing=True)
    assert job.status == "succeeded", job.error
    assert job.report["device"] == "cuda" and job.report["eval_loss_after"] < job.report["eval_loss_before"]


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from workers.train import _last_complete_checkpoint

    for step, complete in ((25, True), (50, True), (75, False)):
        folder = tmp_path / f"checkpoint-{step}"
        (folder / "a0").mkdir(parents=True)
        if complete:
            (folder / "a0" / "adapter_model.safetensors").write_bytes(b"x")
            (folder / "trainer_state.json").write_text("{}")
    assert _last_complete_checkpoint(tmp_path, ["a0"]) == str(tmp_path / "checkpoint-50")
    assert not (tmp_path / "checkpoint-75").exists()
    assert _last_complete_checkpoint(tmp_path / "none", ["a0"]) is None
