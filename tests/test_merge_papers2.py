"""More merge methods from the papers (Iso-CTS, KnOTS, Core Space) against dense implementations of their equations.

As in tests/test_merge_iso_tsv.py: each dense reference forms every task's ``out x in`` delta
``Delta_i = w_i s_i B_i A_i`` and calls ``torch.linalg.svd`` on dense matrices, as the papers (and their code) write
the method; the engine computes the same from the thin factors. Compared on Llama-, GPT-2- (Conv1D,
fan_in_fan_out) and T5-shaped adapters made by PEFT, on the merged adapter's ``s B A`` per module (as PEFT loads
it). Every output loads in PEFT with exactly its tensors and changes the base's logits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from merge_fixtures import (
    assert_loads_exactly,
    fake_adapter,
    load_family_base,
    logits,
    lora_factors,
    merged_deltas,
    paper_method_inputs,
)
from peft import PeftModel
from peft.utils.merge_utils import task_arithmetic, ties
from safetensors.torch import load_file
from test_merge_iso_tsv import dense_iso_c, nonzero_count, weighted_deltas

from registry.errors import IncompatibleAdapters
from registry.inspect import inspect_adapter
from registry.merge_rules import METHODS, check_merge
from workers.merge import merge_adapters

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::UserWarning",
                                                                                      "ignore::FutureWarning")]


def _polar(m: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns: ``M = P S Q^T -> P Q^T``."""
    p, _, qt = torch.linalg.svd(m, full_matrices=False)
    return p @ qt


def dense_iso_cts(deltas: list[torch.Tensor], scale: float = 1.0, common_fraction: float = 0.8) -> torch.Tensor:
    """Iso-CTS (Marczak et al. 2025, Algorithm 2 and the authors' code): the sum's top ``k`` singular directions
    (common subspace), each task's delta projected off it, ``Delta_t - U_k U_k^T Delta_t``, giving its top ``s``;
    ``k = floor(d * fraction)``, ``s = round((d - k) / T)``, then ``k = d - s T`` (d: the sum's rank); U and V
    concatenated and orthogonalised, every kept singular value replaced by their mean, times alpha. Directions
    with a zero singular value (beyond a LoRA delta's rank) are not kept."""
    total = sum(deltas)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    d, tasks = nonzero_count(s, total.shape), len(deltas)
    per_task = min(round((d - math.floor(d * common_fraction + 1e-9)) / tasks), d // tasks)
    k = d - per_task * tasks
    tol = float(s[0]) * max(total.shape) * torch.finfo(s.dtype).eps * 10
    us, ss, vhs = [u[:, :k]], [s[:k]], [vh[:k]]
    for delta in deltas:
        u_t, s_t, vh_t = torch.linalg.svd(delta - u[:, :k] @ u[:, :k].T @ delta, full_matrices=False)
        kept = min(per_task, int((s_t > tol).sum()))
        us.append(u_t[:, :kept])
        ss.append(s_t[:kept])
        vhs.append(vh_t[:kept])
    sigma = torch.cat(ss)
    return scale * sigma.mean() * _polar(torch.cat(us, dim=1)) @ _polar(torch.cat(vhs, dim=0).T).T


def dense_knots(deltas: list[torch.Tensor], weights: list[float], knots_inner: str = "ties", density: float = 1.0,
                majority_sign_method: str = "total") -> torch.Tensor:
    """KnOTS (Stoica et al. 2025, and the authors' code with ``s_on_V``): the SVD of the concatenated task updates
    ``[Delta_1 ... Delta_n] = U S [V_1^T ... V_n^T]`` (``out x n in``, nonzero singular values kept), the tasks'
    ``S V_i^T`` merged by PEFT's own ``ties`` or ``task_arithmetic`` with the weights, then ``U @ merged``."""
    fan_in = deltas[0].shape[1]
    cat = torch.cat(deltas, dim=1)
    u, s, vh = torch.linalg.svd(cat, full_matrices=False)
    k = nonzero_count(s, cat.shape)
    u, vh = u[:, :k], vh[:k]
    rows = u.abs().argmax(dim=0)  # the sign convention: each column of U has its largest entry positive
    flip = u[rows, torch.arange(k)].sign()
    u, vh = u * flip, vh * flip[:, None]
    svs = [s[:k, None] * vh[:k, i * fan_in:(i + 1) * fan_in] for i in range(len(deltas))]
    w = torch.tensor(weights, dtype=torch.float64)
    merged = ties(svs, w, density, majority_sign_method) if knots_inner == "ties" else task_arithmetic(svs, w)
    return u @ merged


def _flipped(u: torch.Tensor) -> torch.Tensor:
    """``u`` with each column's largest-magnitude entry positive (the engine's sign convention)."""
    rows = u.abs().argmax(dim=0)
    return u * u[rows, torch.arange(u.shape[1])].sign()


def dense_core(deltas: list[torch.Tensor], weights: list[float], factors: list[tuple[torch.Tensor, torch.Tensor]],
               core_inner: str = "ties", density: float = 1.0, majority_sign_method: str = "total") -> torch.Tensor:
    """Core Space merging (Panariello et al. 2025, and the authors' ``get_core_matrices``): ``U_ref`` from the SVD of
    ``[s_1 B_1 ... s_n B_n]``, ``V_ref^T`` from that of ``[A_1; ...; A_n]``; ``M_i = U_ref^T Delta_i V_ref`` from the
    dense deltas; merged by PEFT's ``ties`` or ``task_arithmetic`` with the weights; ``U_ref M V_ref^T``."""
    u_ref = _flipped(torch.linalg.svd(torch.cat([b for b, _ in factors], dim=1), full_matrices=False)[0])
    v_ref = _flipped(torch.linalg.svd(torch.cat([a for _, a in factors], dim=0), full_matrices=False)[2].T)
    cores = [u_ref.T @ delta @ v_ref for delta in deltas]
    w = torch.tensor(weights, dtype=torch.float64)
    merged = ties(cores, w, density, majority_sign_method) if core_inner == "ties" else task_arithmetic(cores, w)
    return u_ref @ merged @ v_ref.T


def _factors(adapters: list[Path]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """module -> ``[(s_i B_i, A_i)]`` (float64) over the inputs that have it."""
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for path in adapters:
        for module, (scaling, b, a) in lora_factors(path).items():
            out.setdefault(module, []).append((scaling * b, a))
    return out


DENSE = {"iso_cts": dense_iso_cts, "knots": dense_knots, "core": dense_core}
PARAMS = {"iso_cts": [{}, {"common_fraction": 0.5, "scale": 1.5}, {"common_fraction": 0.0}],
          "knots": [{}, {"knots_inner": "ties", "density": 0.5, "majority_sign_method": "frequency"},
                    {"knots_inner": "linear"}],
          "core": [{}, {"core_inner": "ties", "density": 0.5, "majority_sign_method": "frequency"},
                   {"core_inner": "linear"}]}


@pytest.fixture(scope="module")
def shaped(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    return paper_method_inputs(tiny, tmp_path_factory.mktemp("papers2"))


CASES = [(m, i) for m in DENSE for i in range(len(PARAMS[m]))]


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize(("method", "case"), CASES)
def test_matches_dense_reference(shaped, tmp_path, family, method, case):  # type: ignore[no-untyped-def]
    base, adapters, weights = shaped[family]
    params = PARAMS[method][case]
    out = tmp_path / "merged"
    report = merge_adapters(adapters, weights, method, out=out, **params)
    merged = merged_deltas(out)
    per_task = weighted_deltas(adapters, weights)
    unweighted = weighted_deltas(adapters, [1.0] * len(adapters))  # KnOTS weights the merge of the aligned parts
    having = {m: [w for path, w in zip(adapters, weights, strict=True) if m in inspect_adapter(path).modules]
              for m in per_task}
    factors = _factors(adapters)
    assert sorted(merged) == sorted(per_task)
    for module, deltas in per_task.items():
        if method == "knots":
            reference = dense_knots(unweighted[module], having[module], **params)
        elif method == "core":
            reference = dense_core(unweighted[module], having[module], factors[module], **params)
        else:
            reference = DENSE[method](deltas, **params)
        error = float((merged[module] - reference).norm() / reference.norm())
        assert error < 1e-5, (module, error)
    assert report.method == method and all(m.rel_error is not None for m in report.modules)  # not exact: measured
    base_logits = logits(load_family_base(family, base))
    model = PeftModel.from_pretrained(load_family_base(family, base), str(out)).eval()
    assert_loads_exactly(model, out)
    merged_logits = logits(model)
    assert torch.isfinite(merged_logits).all() and not torch.allclose(merged_logits, base_logits)


def test_iso_cts_with_the_whole_rank_common_is_iso_c(shaped, tmp_path):  # type: ignore[no-untyped-def]
    """common_fraction 1 leaves no task-specific directions: Iso-CTS is then Iso-C."""
    _, adapters, weights = shaped["llama"]
    merge_adapters(adapters, weights, "iso_cts", out=tmp_path / "cts", common_fraction=1.0)
    merged = merged_deltas(tmp_path / "cts")
    for module, deltas in weighted_deltas(adapters, weights).items():
        reference = dense_iso_c(deltas, len(deltas))
        assert float((merged[module] - reference).norm() / reference.norm()) < 1e-5, module


@pytest.mark.parametrize("method", ["knots", "core"])
def test_linear_inner_is_task_arithmetic(shaped, tmp_path, method):  # type: ignore[no-untyped-def]
    """With the weighted sum inside, U S sum_i w_i V_i^T = sum_i w_i Delta_i (KnOTS) and U_ref (sum_i w_i M_i) V_ref^T
    = sum_i w_i Delta_i (Core Space, lossless): both are then the exact merge."""
    _, adapters, weights = shaped["t5"]
    report = merge_adapters(adapters, weights, method, out=tmp_path / "k", **{f"{method}_inner": "linear"})
    merged = merged_deltas(tmp_path / "k")
    for module, deltas in weighted_deltas(adapters, weights).items():
        assert float((merged[module] - sum(deltas)).norm() / sum(deltas).norm()) < 1e-6, module
    assert report.overall["max_rel_error"] < 1e-6  # the report's own measure agrees


@pytest.mark.parametrize("method", ["iso_c", "tsv_m", "iso_cts", "knots", "core"])
def test_thin_on_a_16384_square_module(tmp_path, method):  # type: ignore[no-untyped-def]
    """out = in = 16384, r = 8, three inputs: thin factors only (a dense delta alone would be 2 GiB in float64)."""
    shapes = {"model.layers.0.self_attn.q_proj": (16384, 16384)}
    adapters = [fake_adapter(tmp_path / f"in{i}", shapes, r=8, seed=i) for i in range(3)]
    merge_adapters(adapters, [0.5, 0.3, 0.2], method, out=tmp_path / "warm")  # imports and first-call costs
    start = time.perf_counter()
    report = merge_adapters(adapters, [0.5, 0.3, 0.2], method, out=tmp_path / "merged")
    seconds = time.perf_counter() - start
    assert seconds < 1.5, seconds
    assert report.peak_module_bytes < 16384 * 16384  # far below one dense float32 delta (1 GiB)
    tensors = load_file(tmp_path / "merged" / "adapter_model.safetensors")
    assert max(t.shape[0] if t.shape[0] != 16384 else t.shape[1] for t in tensors.values()) <= 24


def test_bad_parameters_refused_with_generated_messages(tiny):  # type: ignore[no-untyped-def]
    manifests = [inspect_adapter(tiny["tone"]), inspect_adapter(tiny["tone2"])]

    def problems(method: str, params: dict) -> list[str]:  # type: ignore[type-arg]
        with pytest.raises(IncompatibleAdapters) as err:
            check_merge(manifests, [0.5, 0.5], method, params)
        return err.value.problems

    for bad in (-0.1, 1.5, math.nan, "most", True):
        assert f"parameter common_fraction must be a number in [0, 1] (got {bad!r})" in problems(
            "iso_cts", {"common_fraction": bad})
    assert any("parameter common_fraction is not used by method iso_c" in p
               for p in problems("iso_c", {"common_fraction": 0.5}))
    assert any("parameter tsv_fraction is not used by method iso_cts" in p
               for p in problems("iso_cts", {"tsv_fraction": 0.5}))
    plan = check_merge(manifests, [0.5, 0.5], "iso_cts", {})
    assert plan.params == {"common_fraction": 0.8, "scale": 1.0} and plan.out_rank == 8
    assert METHODS["iso_cts"].rank_rule == "thin_sum"

    assert "parameter knots_inner must be 'linear' or 'ties' (got 'dare')" in problems("knots", {"knots_inner": "dare"})
    assert "parameter density is not used by method knots with knots_inner 'linear' (TIES only)" in problems(
        "knots", {"knots_inner": "linear", "density": 0.5})
    assert "parameter majority_sign_method is not used by method knots with knots_inner 'linear' (TIES only)" in \
        problems("knots", {"knots_inner": "linear", "majority_sign_method": "frequency"})
    assert "parameter density must be a number in (0, 1] (got 0)" in problems("knots", {"density": 0})
    assert any("parameter knots_inner is not used by method ties" in p
               for p in problems("ties", {"density": 0.5, "knots_inner": "linear"}))
    plan = check_merge(manifests, [0.5, 0.5], "knots", {})
    assert plan.params == {"density": 1.0, "knots_inner": "ties", "majority_sign_method": "total"}
    assert plan.out_rank == 8
    plan = check_merge(manifests, [0.5, 0.5], "knots", {"knots_inner": "linear", "majority_sign_method": "total"})
    assert plan.params == {"density": None, "knots_inner": "linear"}
    assert "parameter density is not used by method core with core_inner 'linear' (TIES only)" in problems(
        "core", {"core_inner": "linear", "density": 0.5})
    assert any("parameter knots_inner is not used by method core" in p
               for p in problems("core", {"knots_inner": "linear"}))
    plan = check_merge(manifests, [0.5, 0.5], "core", {"density": 0.3})
    assert plan.params == {"core_inner": "ties", "density": 0.3, "majority_sign_method": "total"} and plan.out_rank == 8


# Every method from the papers (tests/test_merge_iso_tsv.py checks iso_c and tsv_m against their dense references).
LINEAGE = {"iso_c": ({"scale": 0.5}, {"scale": 0.5}),
           "tsv_m": ({"scale": 0.5}, {"scale": 0.5, "tsv_fraction": 0.5}),
           "iso_cts": ({"common_fraction": 0.5}, {"common_fraction": 0.5, "scale": 1.0}),
           "knots": ({"density": 0.7}, {"knots_inner": "ties", "density": 0.7, "majority_sign_method": "total"}),
           "core": ({"core_inner": "linear"}, {"core_inner": "linear"})}


@pytest.mark.parametrize("method", sorted(LINEAGE))
def test_catalog_merge_job_records_lineage(registry, tiny, method):  # type: ignore[no-untyped-def]
    """The job runs the method and every parent edge records its parameters as resolved (defaults included)."""
    given, resolved = LINEAGE[method]
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    job = registry.merge(["tone:1", "legal:1"], weights=[0.7, 0.3], method=method, name="merged", **given)
    assert job.status == "succeeded" and job.result_ref == "merged:1"
    parents = job.result.parents
    assert [(p.ref, p.relation, p.weight) for p in parents] == [("tone:1", "merge", 0.7), ("legal:1", "merge", 0.3)]
    assert all(p.params == {"method": method, **resolved} for p in parents)
    assert job.report["overall"]["modules"] == 4
