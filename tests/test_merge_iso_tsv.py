"""Merge methods from the papers (Iso-C, TSV-M) against plain dense implementations of the papers' equations.

Each dense reference below forms every task's ``out x in`` delta ``Delta_i = w_i s_i B_i A_i`` and calls
``torch.linalg.svd`` on dense matrices, exactly as the papers write the method; the engine computes the same
from the thin factors. Compared on Llama-, GPT-2- (Conv1D, fan_in_fan_out) and T5-shaped adapters made by PEFT:
the merged adapter's ``s B A`` per module (as PEFT loads it), never the singular vectors (their signs and order
are not unique). Every output loads in PEFT with exactly its tensors and changes the base's logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from merge_fixtures import (
    assert_loads_exactly,
    load_family_base,
    logits,
    lora_factors,
    merged_deltas,
    paper_method_inputs,
)
from peft import PeftModel

from registry.errors import IncompatibleAdapters
from registry.inspect import inspect_adapter
from registry.merge_rules import METHODS, check_merge
from workers.merge import merge_adapters

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::UserWarning",
                                                                                      "ignore::FutureWarning")]


def weighted_deltas(adapters: list[Path], weights: list[float]) -> dict[str, list[torch.Tensor]]:
    """module -> ``[w_i s_i B_i A_i]`` (float64, dense) over the inputs that have it, in input order."""
    out: dict[str, list[torch.Tensor]] = {}
    for path, w in zip(adapters, weights, strict=True):
        for module, (scaling, b, a) in lora_factors(path).items():
            out.setdefault(module, []).append(w * scaling * (b @ a))
    return out


def nonzero_count(s: torch.Tensor, shape: torch.Size) -> int:
    return int((s > s[0] * max(shape) * torch.finfo(s.dtype).eps * 10).sum()) if float(s[0]) > 0 else 0


def dense_iso_c(deltas: list[torch.Tensor], tasks: int, scale: float = 1.0) -> torch.Tensor:
    """Iso-C (Marczak et al. 2025, eq. for Delta_Iso-C): SVD of the task-arithmetic sum, every nonzero singular
    value replaced by their mean: ``alpha * mean(sigma) * U V^T``."""
    total = sum(deltas)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    k = nonzero_count(s, total.shape)
    return scale * s[:k].mean() * u[:, :k] @ vh[:k]


def dense_tsv_m(deltas: list[torch.Tensor], tasks: int, scale: float = 1.0,
                tsv_fraction: float | None = None) -> torch.Tensor:
    """TSV-M (Gargiulo et al. 2025, Algorithm 1): each task's SVD truncated to its top ``k_i`` (1/T of its rank by
    default), the concatenated U and V orthogonalised by their own SVDs (``U = P S Q^T -> P Q^T``), then
    ``alpha * U_perp diag(sigma) V_perp^T``. The task ranks are those of the adapters (the deltas' ranks)."""
    fraction = tsv_fraction if tsv_fraction is not None else 1 / tasks
    us, ss, vhs = [], [], []
    for delta, rank in zip(deltas, _RANKS, strict=False):
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = max(1, math.floor(rank * fraction + 1e-9))
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    u, s, vh = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vhs, dim=0)
    p, _, qt = torch.linalg.svd(u, full_matrices=False)
    u_perp = p @ qt
    p, _, qt = torch.linalg.svd(vh.T, full_matrices=False)
    v_perp = p @ qt
    return scale * u_perp @ torch.diag(s) @ v_perp.T


_RANKS: list[int] = []  # the current module's input ranks (set by the test; the dense deltas hide them)

DENSE = {"iso_c": dense_iso_c, "tsv_m": dense_tsv_m}
PARAMS = {"iso_c": [{}, {"scale": 0.5}], "tsv_m": [{}, {"tsv_fraction": 0.75, "scale": 1.5}]}


@pytest.fixture(scope="module")
def shaped(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    return paper_method_inputs(tiny, tmp_path_factory.mktemp("iso_tsv"))



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
    ranks: dict[str, list[int]] = {}
    for path in adapters:
        for module, info in inspect_adapter(path).modules.items():
            ranks.setdefault(module, []).append(info.rank)
    assert sorted(merged) == sorted(per_task)
    for module, deltas in per_task.items():
        _RANKS[:] = ranks[module]
        reference = DENSE[method](deltas, len(adapters), **params)
        error = float((merged[module] - reference).norm() / reference.norm())
        assert error < 1e-5, (module, error)
    assert report.method == method and all(m.rel_error is not None for m in report.modules)  # not exact: measured
    base_logits = logits(load_family_base(family, base))
    model = PeftModel.from_pretrained(load_family_base(family, base), str(out)).eval()
    assert_loads_exactly(model, out)
    merged_logits = logits(model)
    assert torch.isfinite(merged_logits).all() and not torch.allclose(merged_logits, base_logits)


def test_bad_parameters_refused_with_generated_messages(tiny):  # type: ignore[no-untyped-def]
    manifests = [inspect_adapter(tiny["tone"]), inspect_adapter(tiny["tone2"])]

    def problems(method: str, params: dict) -> list[str]:  # type: ignore[type-arg]
        with pytest.raises(IncompatibleAdapters) as err:
            check_merge(manifests, [0.5, 0.5], method, params)
        return err.value.problems

    for bad in (0, -1.0, math.nan, math.inf, "big", True):
        assert f"parameter scale must be a positive number (got {bad!r})" in problems("iso_c", {"scale": bad})
    assert any("parameter scale is not used by method svd" in p for p in problems("svd", {"scale": 2.0}))
    assert any("parameter svd_rank is not used by method iso_c" in p for p in problems("iso_c", {"svd_rank": 4}))
    plan = check_merge(manifests, [0.5, 0.5], "iso_c", {})
    assert plan.params == {"scale": 1.0} and plan.out_rank == 8 and METHODS["iso_c"].rank_rule == "thin_sum"
    for bad in (0, 1.5, -0.5, math.nan, "half"):
        assert f"parameter tsv_fraction must be a number in (0, 1] (got {bad!r})" in problems(
            "tsv_m", {"tsv_fraction": bad})
    assert any("parameter tsv_fraction is not used by method iso_c" in p
               for p in problems("iso_c", {"tsv_fraction": 0.5}))
    plan = check_merge(manifests, [0.5, 0.5], "tsv_m", {})  # two tasks of rank 4: 2 components each
    assert plan.params == {"scale": 1.0, "tsv_fraction": 0.5} and plan.out_rank == 4
    plan = check_merge(manifests * 3, [0.1] * 6, "tsv_m", {}, labels=[f"x{i}" for i in range(6)])
    assert plan.out_rank == 6  # floor(4 / 6) = 0 -> at least one component per task
    assert check_merge(manifests, [0.5, 0.5], "tsv_m", {"tsv_fraction": 1}).out_rank == 8

