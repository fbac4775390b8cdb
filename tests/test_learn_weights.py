"""Learned merge weights (issue 17 item 4): LoraHub-style search of the mixture coefficients on the parents' held-out
data, its gradient, the merge job that uses it, the lineage and report it leaves, and its refusals; SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import jobs
from registry.errors import RegistryError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task_rows(kind: str, count: int) -> list[dict]:
    letters = "abcdefghij"
    out = []
    for i in range(count):
        word = "".join(letters[(i * 7 + k * 3) % 10] for k in range(3 + i % 3))
        answer = word[::-1] if kind == "rev" else word.upper()
        out.append({"prompt": f"{kind} {word}=", "completion": answer})
    return out


def _trained_pair(registry, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """rev:1 and up:1: tone:1 trained a few steps on two different tasks; each has its held-out split linked."""
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    for kind in ("rev", "up"):
        data = _jsonl(tmp_path / f"{kind}.jsonl", _task_rows(kind, 24))
        job = registry.train("tone:1", data=data, steps=3, lr=1e-2, name=kind, eval_rows=12, batch_size=4)
        assert job.status == "succeeded", job.error


def _batches(count: int, seed: int):  # type: ignore[no-untyped-def]
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, 100, (3, 10), generator=gen)
        labels = ids.clone()
        labels[:, :4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def test_gradient_matches_finite_difference_and_the_cat_merge(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from peft import PeftModel

    from workers.learn_weights import answer_loss_sum, fit_weights, load_parents, lora_layers, objective
    from workers.merge import merge_adapters
    from workers.tinymodels import load_base

    folders = [tiny["tone"], tiny["tone2"]]
    model, names = load_parents(load_base(tiny["llama"]), folders)
    batches = [_batches(2, 0), _batches(1, 1)]
    layers = lora_layers(model)
    w = torch.tensor([0.3, 0.7], requires_grad=True)
    value, _ = objective(model, layers, names, w, batches, 0.05, "cpu", grad=True)
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    for i in range(2):
        eps = 1e-3
        up, down = w.detach().clone(), w.detach().clone()
        up[i] += eps
        down[i] -= eps
        f_up, _ = objective(model, layers, names, up, batches, 0.05, "cpu", grad=False)
        f_down, _ = objective(model, layers, names, down, batches, 0.05, "cpu", grad=False)
        assert float(w.grad[i]) == pytest.approx((f_up - f_down) / (2 * eps), rel=2e-2, abs=1e-4)
    # with the mixture at 0 the model is the bare base: PEFT's disable_adapter gives the same loss
    zero, losses = objective(model, layers, names, torch.zeros(2), batches, 0.0, "cpu", grad=False)
    with model.disable_adapter(), torch.no_grad():
        bare = [answer_loss_sum(model, b, "cpu") for b in batches[0]]
    assert losses[0] == pytest.approx(sum(float(x) for x, _ in bare) / sum(n for _, n in bare), rel=1e-5)

    result = fit_weights(model, names, batches, initial=[0.5, 0.5], budget=15, l1=0.05, lr=0.05)
    assert result["objective_final"] < result["objective_initial"]
    assert len(result["trace"]) == 16 and result["trace"][0]["weights"] == [0.5, 0.5]
    assert fit_weights(model, names, batches, initial=[0.5, 0.5], budget=15, l1=0.05, lr=0.05)["weights"] \
        == result["weights"]  # deterministic
    # the mixture is exactly what `cat` merges at those weights: PEFT on the merged folder gives the same losses
    merge_adapters(folders, result["weights"], "cat", out=tmp_path / "cat")
    merged = PeftModel.from_pretrained(load_base(tiny["llama"]), str(tmp_path / "cat")).eval()
    with torch.no_grad():
        for parent_batches, expected in zip(batches, result["losses_final"], strict=True):
            sums = [answer_loss_sum(merged, b, "cpu") for b in parent_batches]
            assert sum(float(x) for x, _ in sums) / sum(n for _, n in sums) == pytest.approx(expected, rel=1e-5)


def test_merge_learns_weights_records_them_and_reproduces(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _trained_pair(registry, tiny, tmp_path)
    job = registry.merge(["rev:1", "up:1"], method="cat", name="both", learn_weights=True, learn_examples=6,
                         learn_budget=8).wait(timeout=300)
    assert job.status == "succeeded", job.error
    assert job.queue == "gpu" and job.spec["learn"]["seed"] == 0 and job.spec["weights"] == [0.5, 0.5]
    learned = job.report["learned_weights"]
    assert learned["initial"] == [0.5, 0.5] and (learned["examples"], learned["budget"]) == (6, 8)
    assert learned["optimizer"] == "adam on the exact weighted sum" and learned["l1"] == 0.05
    assert [t["step"] for t in learned["trace"]] == list(range(9))
    assert learned["objective_final"] < learned["objective_initial"]
    assert learned["objective_final"] == min(t["objective"] for t in learned["trace"])
    assert [d["rows"] for d in learned["data"]] == [6, 6]
    assert [d["datasets"] for d in learned["data"]] == [["rev-heldout:1"], ["up-heldout:1"]]
    assert job.report["weights"] == learned["weights"] != [0.5, 0.5]  # the merge used the learned weights
    merged = registry.get("both:1")
    assert [(p.ref, p.weight) for p in merged.parents] == [
        ("rev:1", pytest.approx(learned["weights"][0])), ("up:1", pytest.approx(learned["weights"][1]))]
    edges = registry.lineage("both:1").edges
    assert {e.params.get("weights") for e in edges if e.relation == "merge"} == {"learned"}
    chained = registry.jobs(parent_job_id=job.id)  # parents with held-out data: a validation always follows
    assert [j.kind for j in chained] == ["validate"] and chained[0].status == "succeeded", chained[0].error
    assert chained[0].report["exact_check"]["max_abs_diff"] < 1e-4  # the edges' weights are the merged ones

    again = registry.merge(["rev:1", "up:1"], method="cat", name="both", learn_weights=True, learn_examples=6,
                           learn_budget=8).wait(timeout=300)
    assert again.report["learned_weights"]["weights"] == learned["weights"]  # the same seed: the same weights
    other = registry.merge(["rev:1", "up:1"], weights=[1.0, 0.2], method="svd", name="both", seed=3,
                           learn_weights=True, learn_examples=6, learn_budget=8).wait(timeout=300)
    searched = other.report["learned_weights"]
    assert searched["initial"] == [1.0, 0.2] and searched["seed"] == 3
    assert searched["weights"] != learned["weights"]
    assert "seed" not in other.spec["params"] or other.spec["params"]["seed"] is None  # svd takes no seed


def test_refusals_queue_nothing(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="tone2", base_path=tiny["llama"])
    registry.register(tiny["legal"], name="legal", base_path=tiny["llama"])
    registry.register_dataset(_jsonl(tmp_path / "rev.jsonl", _task_rows("rev", 4)), name="rev")
    registry.link_dataset("tone:1", "rev")
    with pytest.raises(RegistryError) as info:
        registry.merge(["tone:1", "tone2:1", "legal:1"], method="cat", name="m", learn_weights=True)
    text = str(info.value)
    assert "no held-out data for tone2:1, legal:1" in text and "adreg data link REF NAME" in text
    with pytest.raises(RegistryError, match="give one weight per source"):
        registry.merge(["tone:1", "tone2:1"], method="cat", name="m")
    with pytest.raises(RegistryError, match="no adapters to merge"):  # was a ZeroDivisionError (schemathesis)
        registry.merge([], method="cat", name="m", learn_weights=True)
    registry.link_dataset("tone2:1", "rev")
    with pytest.raises(RegistryError, match="invalid learned weights.*examples"):
        registry.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True, learn_examples=0)
    with pytest.raises(RegistryError, match="1 weight"):
        registry.merge(["tone:1", "tone2:1"], weights=[1.0], method="cat", name="m", learn_weights=True)
    from workers.tinymodels import build_adapter

    head = build_adapter(tiny["llama"], tmp_path / "head", modules_to_save=["lm_head"], seed=5)
    registry.register(head, name="head", base_path=tiny["llama"])
    registry.link_dataset("head:1", "rev")
    with pytest.raises(RegistryError, match="head:1 has fully trained modules"):
        registry.merge(["tone:1", "head:1"], weights=[0.5, 0.5], method="cat", name="m", learn_weights=True)
    assert registry.jobs() == []


def test_gpu_fallback_runs_a_learning_merge_on_the_cpu_queue(registry, db_url, tiny, tmp_path,  # type: ignore[no-untyped-def]
                                                            monkeypatch) -> None:
    from registry import Registry

    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="tone2", base_path=tiny["llama"])
    registry.register_dataset(_jsonl(tmp_path / "rev.jsonl", _task_rows("rev", 4)), name="rev")
    for ref in ("tone:1", "tone2:1"):
        registry.link_dataset(ref, "rev")
    monkeypatch.setenv("ADREG_GPU_FALLBACK_TO_CPU", "1")
    with Registry(db_url, home=tmp_path / "home") as fallback:
        job = fallback.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True, learn_examples=2,
                             learn_budget=1).wait(timeout=120)
    assert job.status == "succeeded", job.error
    assert job.queue == "cpu" and job.message == "merged with learned weights"
    assert len(job.report["learned_weights"]["trace"]) == 2


def test_queue_for_a_learning_merge() -> None:
    spec = jobs.MergeSpec(sources=[jobs.SourceRef(ref="a:1", version_id=1, weights_sha256="0" * 64,
                                                  storage_path="x")], weights=[1.0], method="cat", name="m")
    assert jobs.queue_for(spec) == "cpu"
    assert jobs.queue_for(spec.model_copy(update={"learn": jobs.LearnWeights()})) == "gpu"


def test_cli_learn_weights_json(adreg, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]))
    adreg("register", str(tiny["tone2"]), "--name", "tone2", "--base-path", str(tiny["llama"]))
    adreg("data", "register", str(_jsonl(tmp_path / "rev.jsonl", _task_rows("rev", 8))), "--name", "rev")
    adreg("data", "register", str(_jsonl(tmp_path / "up.jsonl", _task_rows("up", 8))), "--name", "up")
    bad = adreg("merge", "tone:1", "tone2:1", "--method", "cat", "--name", "m", code=1)
    assert "--learn-weights" in bad.stderr
    refused = adreg("merge", "tone:1", "tone2:1", "--learn-weights", "--method", "cat", "--name", "m", code=1)
    assert "no held-out data for tone:1, tone2:1" in refused.stderr
    adreg("data", "link", "tone:1", "rev")
    adreg("data", "link", "tone2:1", "up")
    out = adreg("merge", "tone:1", "tone2:1", "--learn-weights", "--examples", "4", "--budget", "3", "--seed", "1",
                "--method", "cat", "--name", "m", "--json").stdout
    data = json.loads(out)
    merge = data["jobs"][0] if "jobs" in data else data
    learned = merge["report"]["learned_weights"]
    assert (learned["examples"], learned["budget"], learned["seed"]) == (4, 3, 1) and len(learned["trace"]) == 4
    shown = json.loads(adreg("show", "m:1", "--json").stdout)
    assert [p["weight"] for p in shown["parents"]] == pytest.approx(learned["weights"])
    human = adreg("job", str(merge["id"])).stdout
    assert "learned weights" in human and "objective" in human


def test_remote_merge_learns_weights_through_a_server(server, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from registry import Registry

    with Registry(server.url, token=server.admin_token) as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["tone2"], name="tone2", base_path=tiny["llama"])
        with pytest.raises(RegistryError, match="no held-out data for tone:1, tone2:1"):
            reg.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True)
        reg.register_dataset(_jsonl(tmp_path / "rev.jsonl", _task_rows("rev", 6)), name="rev")
        reg.link_dataset("tone:1", "rev")
        reg.link_dataset("tone2:1", "rev")
        with pytest.raises(RegistryError, match="unknown learn objective 'best'"):  # the server reads the field
            reg.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True, learn_objective="best")
        job = reg.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True, learn_examples=4,
                        learn_budget=2).wait(timeout=120)
        assert job.spec["learn"]["objective"] == "mean" and job.report["learned_weights"]["objective"] == "mean"
        assert job.status == "succeeded", job.error
        learned = job.report["learned_weights"]
        assert len(learned["trace"]) == 3 and job.spec["learn"]["examples"] == 4
        assert [p.weight for p in reg.get("m:1").parents] == pytest.approx(learned["weights"])


def _signed_in_site(registry, tiny, tmp_path):  # type: ignore[no-untyped-def]
    """The pages over a catalog with the trained pair and an admin's browser session: (TestClient, its token)."""
    from fastapi.testclient import TestClient

    from registry.api.app import create_app
    from registry.web import session as web_session

    _trained_pair(registry, tiny, tmp_path)
    registry.add_user("root", admin=True)
    token = registry.create_token("root", scope="admin")["token"]
    client = TestClient(create_app(registry.service), base_url="http://testserver")
    client.cookies.set(web_session.COOKIE, token)
    return client, token


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the pages are the same on both databases
def test_learn_weights_from_the_merge_form_and_see_them_on_the_job_page(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    from registry.web import session as web_session

    client, token = _signed_in_site(registry, tiny, tmp_path)
    form = {"source": ["rev:1", "up:1"], "weight": ["", ""], "method": "cat", "name": "web-learned",
            "learn_weights": "1", "learn_examples": "6", "learn_budget": "x", web_session.CSRF_FIELD:
            web_session.csrf_token(token)}
    headers = {"Origin": "http://testserver"}
    page = client.post("/merge", data=form, headers=headers, follow_redirects=False)
    assert page.status_code == 200 and "learn budget must be a whole number" in page.text  # nothing queued
    assert registry.jobs(kind="merge") == []
    page = client.post("/merge", data={**form, "weight": ["0.5", ""], "learn_budget": "5"}, headers=headers,
                       follow_redirects=False)
    assert "give every parent a starting weight, or none" in page.text
    answer = client.post("/merge", data={**form, "learn_budget": "5"}, headers=headers, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    job_id = int(re.fullmatch(r"/jobs/(\d+)", answer.headers["location"]).group(1))
    job = registry.job(job_id).wait(timeout=300)
    assert job.status == "succeeded", job.error
    learned = job.report["learned_weights"]
    assert job.spec["learn"]["examples"] == 6 and learned["budget"] == 5 and learned["initial"] == [0.5, 0.5]

    html = client.get(f"/jobs/{job_id}").text
    table = html.split('<table class="learned-weights">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", table)
    assert [(ref, float(start)) for ref, start, _ in rows] == [("rev:1", 0.5), ("up:1", 0.5)]
    assert [float(w) for _, _, w in rows] == pytest.approx(learned["weights"], rel=1e-3)
    assert 'aria-label="objective,' in html and "objective at the learned weights" in html
    assert '<table class="retention">' in html  # the parents have held-out data: the validation measured it


# --- the worst objective (issue 17 items 4 and 6): the worst-off parent's normalised loss, smoothly maximised ---

def _fitted(tiny, folder: Path, out: Path, batches) -> Path:  # type: ignore[no-untyped-def]
    """``folder``'s adapter after a few Adam steps on ``batches`` (PEFT), saved at ``out``: a parent that does
    better than the base on those rows."""
    import torch
    from peft import PeftModel

    from workers.tinymodels import load_base

    model = PeftModel.from_pretrained(load_base(tiny["llama"]), str(folder), is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-2)
    for _ in range(6):
        for b in batches:
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(out)
    return out


def _zeroed(tiny, folder: Path, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """``folder``'s adapter with every ``lora_B`` zero: it changes nothing, so its loss is the base's (B <= P)."""
    import torch
    from peft import PeftModel

    from workers.tinymodels import load_base

    model = PeftModel.from_pretrained(load_base(tiny["llama"]), str(folder))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    model.save_pretrained(out)
    return out


def _peft_loss(model, parent_batches) -> float:  # type: ignore[no-untyped-def]
    import torch

    from workers.learn_weights import answer_loss_sum

    with torch.no_grad():
        sums = [answer_loss_sum(model, b, "cpu") for b in parent_batches]
    return sum(float(x) for x, _ in sums) / sum(n for _, n in sums)


@pytest.fixture(scope="module")
def worst_parents(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two parents fitted to their own random-token batches and a third that learned nothing (lora_B zero)."""
    root = tmp_path_factory.mktemp("worst")
    batches = [_batches(2, 10), _batches(2, 11), _batches(1, 12)]
    import torch

    torch.manual_seed(0)
    folders = [_fitted(tiny, tiny["tone"], root / "a", batches[0]),
               _fitted(tiny, tiny["tone2"], root / "b", batches[1]), _zeroed(tiny, tiny["tone"], root / "none")]
    return folders, batches


def test_worst_objective_is_the_lse_of_normalised_losses_peft_measures(tiny, tmp_path, worst_parents) -> None:  # type: ignore[no-untyped-def]
    import math

    import torch
    from peft import PeftModel

    from workers.learn_weights import TAU, load_parents, lora_layers, references, worst_objective
    from workers.merge import merge_adapters
    from workers.tinymodels import load_base

    folders, batches = worst_parents
    model, names = load_parents(load_base(tiny["llama"]), folders)
    layers = lora_layers(model)
    refs = references(model, layers, names, batches, "cpu")
    # independently, with PEFT: B_i on the bare base, P_i with parent i loaded alone, L_i on the `cat` merge at w
    base = load_base(tiny["llama"]).eval()
    bare = [_peft_loss(base, b) for b in batches]
    alone = [_peft_loss(PeftModel.from_pretrained(load_base(tiny["llama"]), str(f)).eval(), b)
             for f, b in zip(folders, batches, strict=True)]
    assert [r["base"] for r in refs] == pytest.approx(bare, rel=1e-5)
    assert [r["parent"] for r in refs] == pytest.approx(alone, rel=1e-5)
    assert [r["included"] for r in refs] == [True, True, False]  # the zeroed parent learned nothing: left out
    assert alone[0] < bare[0] - 0.1 and alone[1] < bare[1] - 0.1

    weights, l1 = [0.3, 0.6, 0.2], 0.05
    w = torch.tensor(weights, requires_grad=True)
    value, losses = worst_objective(model, layers, names, w, batches, refs, l1, "cpu", grad=True)
    merge_adapters(folders, weights, "cat", out=tmp_path / "cat")
    merged = PeftModel.from_pretrained(load_base(tiny["llama"]), str(tmp_path / "cat")).eval()
    merged_losses = [_peft_loss(merged, b) for b in batches]
    assert losses == pytest.approx(merged_losses, rel=1e-5)
    n = [(merged_losses[i] - alone[i]) / (bare[i] - alone[i]) for i in (0, 1)]
    expected = math.log(sum(math.exp(TAU * x) for x in n)) / TAU + l1 * sum(abs(x) for x in weights)
    assert value == pytest.approx(expected, rel=1e-5)
    assert TAU == 20.0
    # its gradient (per-parent dL_i/dw combined by the softmax) against finite differences of the same objective
    assert w.grad is not None and float(w.grad[:2].abs().sum()) > 0
    for i in range(3):
        eps = 1e-3
        up, down = w.detach().clone(), w.detach().clone()
        up[i] += eps
        down[i] -= eps
        f_up, _ = worst_objective(model, layers, names, up, batches, refs, l1, "cpu", grad=False)
        f_down, _ = worst_objective(model, layers, names, down, batches, refs, l1, "cpu", grad=False)
        assert float(w.grad[i]) == pytest.approx((f_up - f_down) / (2 * eps), rel=3e-2, abs=2e-3)


def test_worst_search_lowers_the_largest_normalised_loss(tiny, worst_parents) -> None:  # type: ignore[no-untyped-def]
    from workers.learn_weights import fit_weights, load_parents
    from workers.tinymodels import load_base

    folders, batches = worst_parents
    model, names = load_parents(load_base(tiny["llama"]), folders)
    result = fit_weights(model, names, batches, initial=[1 / 3] * 3, budget=12, l1=0.05, lr=0.05, kind="worst")
    assert result["objective"] == "worst" and result["tau"] == 20.0
    start, end = result["normalised_initial"], result["normalised_final"]
    assert start[2] is None and end[2] is None  # left out of the maximum, and said so
    assert max(end[:2]) <= max(start[:2])
    assert result["objective_final"] < result["objective_initial"]
    assert [r["included"] for r in result["reference"]] == [True, True, False]
    # the mean objective is as before: the same search as a call without ``kind``, and its report says which
    mean = fit_weights(model, names, batches, initial=[1 / 3] * 3, budget=3, l1=0.05, lr=0.05)
    assert mean["objective"] == "mean" and "tau" not in mean
    assert fit_weights(model, names, batches, initial=[1 / 3] * 3, budget=3, l1=0.05, lr=0.05,
                       kind="mean")["weights"] == mean["weights"]
    with pytest.raises(RegistryError, match="unknown objective 'best'"):
        fit_weights(model, names, batches, initial=[1 / 3] * 3, budget=1, l1=0.0, lr=0.05, kind="best")
    # every parent left out: nothing to normalise, a clear error
    nothing, _ = load_parents(load_base(tiny["llama"]), [folders[2]])
    with pytest.raises(RegistryError, match="no parent does better than the base"):
        fit_weights(nothing, ["p0"], [batches[2]], initial=[1.0], budget=1, l1=0.0, lr=0.05, kind="worst")


def test_unknown_learn_objective_is_refused_before_any_job(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="tone2", base_path=tiny["llama"])
    registry.register_dataset(_jsonl(tmp_path / "rev.jsonl", _task_rows("rev", 4)), name="rev")
    for ref in ("tone:1", "tone2:1"):
        registry.link_dataset(ref, "rev")
    with pytest.raises(RegistryError, match="unknown learn objective 'best': choose mean .* or worst"):
        registry.merge(["tone:1", "tone2:1"], method="cat", name="m", learn_weights=True, learn_objective="best")
    with pytest.raises(RegistryError, match="needs learned weights"):
        registry.merge(["tone:1", "tone2:1"], weights=[0.5, 0.5], method="cat", name="m", learn_objective="worst")
    assert registry.jobs() == []


def test_cli_objective_worst_json(adreg, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]))
    for kind in ("rev", "up"):
        data = _jsonl(tmp_path / f"{kind}.jsonl", _task_rows(kind, 24))
        adreg("train", "tone:1", "--data", str(data), "--steps", "3", "--lr", "1e-2", "--name", kind,
              "--eval-rows", "12", "--batch-size", "4")
    bad = adreg("merge", "rev:1", "up:1", "--learn-weights", "--objective", "best", "--method", "cat", "--name", "m",
                code=1)
    assert "unknown learn objective 'best'" in bad.stderr
    alone = adreg("merge", "rev:1", "up:1", "--weights", "0.5", "0.5", "--objective", "worst", "--method", "cat",
                  "--name", "m", code=1)
    assert "give --learn-weights too" in alone.stderr
    out = adreg("merge", "rev:1", "up:1", "--learn-weights", "--objective", "worst", "--examples", "6", "--budget", "4",
                "--method", "cat", "--name", "m", "--json").stdout
    data = json.loads(out)
    merge = data["jobs"][0] if "jobs" in data else data
    assert merge["status"] == "succeeded" and merge["spec"]["learn"]["objective"] == "worst"
    learned = merge["report"]["learned_weights"]
    assert learned["objective"] == "worst" and learned["tau"] == 20.0 and len(learned["trace"]) == 5
    refs = learned["reference"]
    assert [r["included"] for r in refs] == [r["base"] > r["parent"] for r in refs] == [True, True]
    assert max(learned["normalised_final"]) <= max(learned["normalised_initial"])
    for i, r in enumerate(refs):
        if r["included"]:
            n = (learned["losses_final"][i] - r["parent"]) / (r["base"] - r["parent"])
            assert learned["normalised_final"][i] == pytest.approx(n)
    human = adreg("job", str(merge["id"])).stdout
    assert "worst" in human and "normalised loss" in human


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the pages are the same on both databases
def test_merge_form_chooses_the_worst_objective(registry, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    from registry.web import session as web_session

    client, token = _signed_in_site(registry, tiny, tmp_path)
    assert '<select name="learn_objective">' in client.get("/merge").text
    form = {"source": ["rev:1", "up:1"], "weight": ["", ""], "method": "cat", "name": "web-worst",
            "learn_weights": "1", "learn_examples": "6", "learn_budget": "4", "learn_objective": "best",
            web_session.CSRF_FIELD: web_session.csrf_token(token)}
    headers = {"Origin": "http://testserver"}
    page = client.post("/merge", data=form, headers=headers, follow_redirects=False)
    assert page.status_code == 200 and "the learn objective must be one of mean, worst" in page.text
    assert registry.jobs(kind="merge") == []
    answer = client.post("/merge", data={**form, "learn_objective": "worst"}, headers=headers,
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    job = registry.job(int(re.fullmatch(r"/jobs/(\d+)", answer.headers["location"]).group(1))).wait(timeout=300)
    assert job.status == "succeeded", job.error
    assert job.spec["learn"]["objective"] == "worst" and job.report["learned_weights"]["objective"] == "worst"
    html = client.get(f"/jobs/{job.id}").text
    assert "the worst-off parent first" in html and "<th>normalised after</th>" in html
    table = html.split('<table class="learned-weights">', 1)[1].split("</table>", 1)[0]
    after = [float(x) for x in re.findall(r"<td>([-0-9.e]+)</td></tr>", table)]
    assert after == pytest.approx(job.report["learned_weights"]["normalised_final"], rel=1e-3)
