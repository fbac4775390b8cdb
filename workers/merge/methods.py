"""Per-module arithmetic of the merge methods, on one module's LoRA factors at a time.

Inputs are ``A_i`` (r_i x in), ``B_i`` (out x r_i), the scaling ``s_i`` PEFT applies to ``B_i A_i`` and
the user's weight ``w_i``, for the inputs that have the module. Every function returns ``(A, B)`` with
scaling 1: the merged config sets ``lora_alpha = r`` (and ``alpha_pattern = rank_pattern``).

The arithmetic is PEFT's (``peft.utils.merge_utils``, restated here so the engine does not import
peft and transformers), with two replacements: DARE's random masks are
drawn from an explicit ``torch.Generator`` (:func:`dare_mask`), so a seed reproduces a merge, and
magnitude pruning finds its threshold by selection instead of a full ``topk`` (:func:`magnitude_mask`),
with the same result. The tests compare every method with PEFT's own ``add_weighted_adapter``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from registry.merge_rules import tsv_components


@dataclass
class ModuleInputs:
    """One module's factors across the inputs that have it (float32, on the CPU)."""

    a: list[torch.Tensor]  # (r_i, in)
    b: list[torch.Tensor]  # (out, r_i)
    scalings: list[float]
    weights: list[float]

    @property
    def coefficients(self) -> list[float]:
        """``w_i * s_i``: what multiplies ``B_i A_i`` in the exact weighted sum."""
        return [w * s for w, s in zip(self.weights, self.scalings, strict=True)]

    def thin_factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_cat, A_cat) with ``B_cat @ A_cat = sum_i w_i s_i B_i A_i`` (inner size sum r_i)."""
        a_cat = torch.cat([a.to(dtype) * c for a, c in zip(self.a, self.coefficients, strict=True)], dim=0)
        return torch.cat([b.to(dtype) for b in self.b], dim=1), a_cat


def dare_mask(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's Bernoulli(density) keep-mask for ``tensor``, as PEFT's ``random_pruning`` draws it.

    PEFT draws ``torch.bernoulli(torch.full_like(tensor, density))`` from the global RNG; this draws
    the same distribution from ``generator`` (the global RNG when None), on the CPU so that a seed
    gives the same masks on every device.
    """
    probs = torch.full(tensor.shape, density, dtype=torch.float32)
    return torch.bernoulli(probs, generator=generator).to(tensor.device, tensor.dtype)


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """The keep-mask of PEFT's ``magnitude_based_pruning``: the ``int(density * numel)`` largest ``|x|``.

    PEFT takes ``torch.topk`` of all entries, which is slow for large k; a selection (``np.partition``,
    or ``kthvalue`` off the CPU) finds the same threshold in linear time. Entries equal to the threshold
    are kept in index order until k are kept (topk's choice among equal values is unspecified).
    """
    flat = tensor.abs().reshape(-1)
    n, k = flat.numel(), int(density * tensor.numel())
    if k >= n:
        return torch.ones_like(tensor)
    if k <= 0:
        return torch.zeros_like(tensor)
    if flat.device.type == "cpu":
        threshold = torch.tensor(np.partition(flat.numpy(), n - k)[n - k], dtype=flat.dtype)
    else:
        threshold = torch.kthvalue(flat, n - k + 1).values
    keep = flat > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[torch.nonzero(flat == threshold).flatten()[:missing]] = True
    return keep.reshape(tensor.shape).to(tensor.dtype)


def _dare_prune(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """PEFT's ``prune(method="random", rescale=True)``: density 1 keeps everything and draws nothing."""
    if density >= 1:
        return tensor
    return tensor * dare_mask(tensor, density, generator) / density


_PRUNING = {"linear": None, "magnitude_prune": "magnitude", "ties": "magnitude", "dare_linear": "random",
            "dare_ties": "random"}
_SIGN_ELECTION = {"ties", "dare_ties"}


def combine(tensors: list[torch.Tensor], weights: torch.Tensor, op: str, density: float | None,
            sign_method: str, generator: torch.Generator | None) -> torch.Tensor:
    """One weighted combination of same-shaped task tensors, as ``peft.utils.merge_utils``'s functions.

    Prune each tensor (by magnitude, or DARE's random rescaled drop), weight, then sum, or for TIES
    elect a sign per entry on the pruned tensors and average the agreeing weighted entries (PEFT's
    ``calculate_majority_sign_mask`` and ``disjoint_merge``).
    """
    pruning = _PRUNING[op]
    if pruning == "magnitude":
        assert density is not None
        tensors = [t * magnitude_mask(t, density) for t in tensors]
    elif pruning == "random":
        assert density is not None
        tensors = [_dare_prune(t, density, generator) for t in tensors]
    stacked = torch.stack(tensors, dim=0)
    weighted = stacked * weights.view(-1, *([1] * (stacked.dim() - 1))).to(stacked)
    if op in _SIGN_ELECTION:
        return _disjoint_merge(weighted, _majority_sign_mask(stacked, sign_method))
    return weighted.sum(dim=0)


# PEFT's calculate_majority_sign_mask and disjoint_merge (peft.utils.merge_utils), restated so that the
# engine does not import peft, which pulls in transformers (~120 MB of RSS and seconds of start-up).
def _majority_sign_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    sign = stacked.sign()
    magnitude = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(magnitude >= 0, 1, -1)


def _disjoint_merge(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (weighted * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)


def merge_cat(x: ModuleInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """cat: ``A = [w_1 s_1 A_1; ...]``, ``B = [B_1 ... B_n]`` (the weight and scaling on A, as PEFT)."""
    b, a = x.thin_factors()
    return a, b


def merge_factors(x: ModuleInputs, op: str, density: float | None, sign_method: str,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear / ties / dare_* / magnitude_prune: the A's and the B's combined separately.

    As PEFT 0.21: with ``c_i = w_i s_i``, A_i is weighted by ``sign(c_i) sqrt(|c_i|)`` and B_i by
    ``sqrt(|c_i|)`` (the sign goes on A only, so that a negative weight subtracts), A's first.
    """
    coefficients = x.coefficients
    wa = torch.tensor([math.sqrt(abs(c)) * (1 if c >= 0 else -1) for c in coefficients])
    wb = torch.tensor([math.sqrt(abs(c)) for c in coefficients])
    return (combine(x.a, wa, op, density, sign_method, generator),
            combine(x.b, wb, op, density, sign_method, generator))


def _clamp(u: torch.Tensor, vh: torch.Tensor, clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's svd_clamp: both factors clamped to +-(the ``clamp`` quantile of all their entries)."""
    if clamp is None:
        return u, vh
    dist = torch.cat([u.flatten(), vh.flatten()])
    if dist.numel() <= 16_000_000:  # torch.quantile's input size limit
        hi = torch.quantile(dist, clamp)
    else:
        hi = torch.tensor(float(np.quantile(dist.cpu().numpy(), clamp)), dtype=dist.dtype, device=dist.device)
    return u.clamp(-hi, hi), vh.clamp(-hi, hi)


def merge_exact_svd(x: ModuleInputs, rank: int, clamp: float | None, device: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``sum_i w_i s_i B_i A_i`` without forming it, in float64.

    With ``B_cat = Qb Rb`` and ``A_cat^T = Qa Ra`` (thin QR), the sum is ``Qb (Rb Ra^T) Qa^T``: the SVD
    of the small R x R core gives the exact SVD, at O((out + in) R^2) instead of O(out in min(out, in)).
    Returns (A, B, singular values of the whole sum); S is folded into B, as PEFT does.
    """
    b_cat, a_cat = x.thin_factors(torch.float64)
    qb, rb = torch.linalg.qr(b_cat.to(device))  # out x R, R x R
    qa, ra = torch.linalg.qr(a_cat.to(device).T)  # in x R, R x R
    core_u, s, core_vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.numel())
    u = (qb @ core_u[:, :k]) * s[:k]  # out x k
    vh = core_vh[:k, :] @ qa.T  # k x in
    u, vh = _clamp(u, vh, clamp)
    return vh.float().cpu(), u.float().cpu(), s.cpu()


def merge_dense_svd(x: ModuleInputs, op: str, rank: int, density: float | None, sign_method: str,
                    clamp: float | None, generator: torch.Generator | None, device: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ties_svd / dare_*_svd / magnitude_prune_svd: the dense deltas ``s_i B_i A_i`` combined element-wise
    with the weights (PEFT's arithmetic), then a reduced SVD truncated to ``rank`` (float32, as PEFT)."""
    deltas = [(b.to(device) @ a.to(device)) * s for a, b, s in zip(x.a, x.b, x.scalings, strict=True)]
    delta = combine(deltas, torch.tensor(x.weights, device=device), op, density, sign_method, generator)
    del deltas
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    u, vh = _clamp(u[:, :k] * s[:k], vh[:k, :], clamp)
    return vh.cpu(), u.cpu()


def _thin_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD ``U diag(s) Vh`` of ``b @ a`` (out x R times R x in) from the factors: QR of ``b`` and of ``a^T``,
    then the SVD of the R x R core, at O((out + in) R^2); never forms the product."""
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    core_u, s, core_vh = torch.linalg.svd(rb @ ra.T)
    return qb @ core_u, s, core_vh @ qa.T


def numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values (descending) are nonzero: above ``s_max * max(out, in, R) * eps`` (LAPACK's rule)."""
    if s.numel() == 0 or float(s[0]) == 0:
        return 0
    tol = float(s[0]) * max(*shape, s.numel()) * torch.finfo(s.dtype).eps
    return int((s > tol).sum())


def _fit(u: torch.Tensor, values: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of ``u diag(values) vh`` with inner size ``rank``: ``B = u sqrt(values)``, ``A = sqrt(values) vh``
    (values >= 0), zero-padded when fewer components than ``rank`` are nonzero, float32 on the CPU."""
    root = values.sqrt()
    b, a = u * root, root[:, None] * vh
    k = b.shape[1]
    if k < rank:
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
    return a.float().cpu(), b.float().cpu()


def merge_iso_c(x: ModuleInputs, rank: int, scale: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum ``Delta = sum_i w_i s_i B_i A_i = U S V^T`` with
    its spectrum made isotropic, ``scale * mean(S) * U V^T`` over the nonzero singular values, in float64 from the
    thin factors. ``rank`` is at least the sum's numerical rank (``min(sum r_i, out, in)``)."""
    b_cat, a_cat = x.thin_factors(torch.float64)
    u, s, vh = _thin_svd(b_cat.to(device), a_cat.to(device))
    k = numerical_rank(s, (b_cat.shape[0], a_cat.shape[1]))
    level = scale * float(s[:k].mean()) if k else 0.0
    return _fit(u[:, :k], s.new_full((k,), level), vh[:k], rank)



def merge_tsv_m(x: ModuleInputs, rank: int, fraction: float, scale: float, device: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """TSV-M (Gargiulo et al., CVPR 2025): each task's ``Delta_i = w_i s_i B_i A_i`` truncated to its top
    ``k_i = max(1, floor(r_i * fraction))`` singular components, the concatenated singular vectors ``U = [U_1 ...]``
    and ``V = [V_1 ...]`` replaced by their nearest orthogonal matrices (``U = P S Q^T -> P Q^T``), then
    ``scale * U_perp diag(sigma) V_perp^T``. Thin throughout (U is out x K, K = sum k_i), in float64."""
    us, ss, vhs = [], [], []
    for a, b, c in zip(x.a, x.b, x.coefficients, strict=True):
        u, s, vh = _thin_svd(b.to(device, torch.float64) * c, a.to(device, torch.float64))
        k = tsv_components(a.shape[0], fraction)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    u_cat, s_cat, vh_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vhs, dim=0)
    p, _, qt = torch.linalg.svd(u_cat, full_matrices=False)
    u_perp = p @ qt  # out x K
    p, _, qt = torch.linalg.svd(vh_cat.T, full_matrices=False)
    vh_perp = (p @ qt).T  # K x in
    values = scale * s_cat
    if values.numel() > rank:  # K exceeds min(out, in): an exact re-factorisation to the planned rank
        u2, s2, vh2 = _thin_svd(u_perp * values, vh_perp)
        k = min(rank, numerical_rank(s2, (u_perp.shape[0], vh_perp.shape[1])))
        return _fit(u2[:, :k], s2[:k], vh2[:k], rank)
    return _fit(u_perp, values, vh_perp, rank)


def iso_cts_sizes(total: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(common directions k, directions per task s) of Iso-CTS for a sum of rank ``total`` and ``tasks`` tasks, as
    the paper's code divides them: ``k = floor(total * fraction)``, ``s = round((total - k) / tasks)`` (at most
    ``total // tasks``), then ``k = total - s * tasks`` so that the task-specific part divides evenly."""
    per_task = min(round((total - math.floor(total * fraction + 1e-9)) / tasks), total // tasks)
    return total - per_task * tasks, per_task


def merge_iso_cts(x: ModuleInputs, rank: int, fraction: float, scale: float, device: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Iso-CTS (Marczak et al., ICML 2025): the top ``k`` singular directions of the task-arithmetic sum (the
    common subspace) plus, per task, the top ``s`` directions of its delta projected off that subspace; the
    concatenated singular vectors replaced by their nearest orthogonal matrices, the spectrum set to the mean of
    the kept singular values, times ``scale``. In float64 from the thin factors; ``k`` and ``s`` divide the sum's
    numerical rank (:func:`iso_cts_sizes`); directions with a zero singular value are dropped."""
    b_cat, a_cat = x.thin_factors(torch.float64)
    u, s, vh = _thin_svd(b_cat.to(device), a_cat.to(device))
    shape = (b_cat.shape[0], a_cat.shape[1])
    total = numerical_rank(s, shape)
    if total == 0:
        return _fit(u[:, :0], s[:0], vh[:0], rank)
    k, per_task = iso_cts_sizes(total, len(x.a), fraction)
    tol = float(s[0]) * max(*shape, s.numel()) * torch.finfo(s.dtype).eps
    us, ss, vhs = [u[:, :k]], [s[:k]], [vh[:k]]
    for a, b, c in zip(x.a, x.b, x.coefficients, strict=True):
        b = b.to(device, torch.float64) * c
        u_t, s_t, vh_t = _thin_svd(b - u[:, :k] @ (u[:, :k].T @ b), a.to(device, torch.float64))
        kept = min(per_task, int((s_t > tol).sum()))
        us.append(u_t[:, :kept])
        ss.append(s_t[:kept])
        vhs.append(vh_t[:kept])
    u_cat, s_cat, vh_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vhs, dim=0)
    p, _, qt = torch.linalg.svd(u_cat, full_matrices=False)
    u_perp = p @ qt
    p, _, qt = torch.linalg.svd(vh_cat.T, full_matrices=False)
    level = scale * float(s_cat.mean())
    return _fit(u_perp, s_cat.new_full((s_cat.numel(),), level), (p @ qt).T, rank)


def _sign_convention(u: torch.Tensor) -> torch.Tensor:
    """+1/-1 per column of ``u`` making its largest-magnitude entry positive (scikit-learn's ``svd_flip``): singular
    vectors are unique only up to a paired sign, so this fixes one, whatever the SVD routine returned."""
    rows = u.abs().argmax(dim=0)
    return torch.where(u[rows, torch.arange(u.shape[1], device=u.device)] < 0, -1.0, 1.0).to(u.dtype)


def merge_knots(x: ModuleInputs, rank: int, inner: str, density: float | None, sign_method: str, device: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """KnOTS (Stoica et al., ICLR 2025): one SVD of the concatenated task updates ``[s_1 B_1 A_1 ... s_n B_n A_n]
    = U S [V_1^T ... V_n^T]`` (the same basis ``U`` for every task), the tasks' ``S V_i^T`` merged by ``inner``
    (``linear``: the weighted sum; ``ties``: PEFT's TIES with the weights), then ``U @ merged``. Thin: the
    concatenation is ``B_cat blockdiag(s_i A_i)``, so a QR of ``B_cat``, one QR per ``A_i^T`` and the SVD of the
    ``R x R`` core (``R = sum r_i``) give ``U`` (out x K) and each ``S V_i^T`` (K x in), in float64."""
    qb, rb = torch.linalg.qr(torch.cat([b.to(device, torch.float64) for b in x.b], dim=1))
    qas, blocks, start = [], [], 0
    for a, s in zip(x.a, x.scalings, strict=True):
        qa, ra = torch.linalg.qr(a.to(device, torch.float64).T * s)  # in x r_i, r_i x r_i
        qas.append(qa)
        blocks.append(rb[:, start:start + a.shape[0]] @ ra.T)
        start += a.shape[0]
    core_u, sigma, core_vh = torch.linalg.svd(torch.cat(blocks, dim=1))
    k = numerical_rank(sigma, (qb.shape[0], sum(qa.shape[0] for qa in qas)))
    u = qb @ core_u[:, :k]  # out x K
    flip = _sign_convention(u)  # TIES's sign election is not symmetric under a flip of a component (ties at 0)
    u, core_vh = u * flip, core_vh[:k] * flip[:, None]
    sv, start = [], 0
    for qa in qas:
        sv.append((sigma[:k, None] * core_vh[:k, start:start + qa.shape[1]]) @ qa.T)  # S V_i^T: K x in
        start += qa.shape[1]
    op = "ties" if inner == "ties" else "linear"
    merged = combine(sv, torch.tensor(x.weights, dtype=torch.float64, device=device), op, density, sign_method, None)
    u2, s2, vh2 = _thin_svd(u, merged)  # balanced factors, and the rank at most min(out, in)
    k = min(rank, numerical_rank(s2, (u.shape[0], merged.shape[1])))
    return _fit(u2[:, :k], s2[:k], vh2[:k], rank)


def merge_core(x: ModuleInputs, rank: int, inner: str, density: float | None, sign_method: str, device: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Core Space merging (Panariello et al., NeurIPS 2025): reference bases from the SVDs of the stacked factors,
    ``U_ref`` of ``[s_1 B_1 ... s_n B_n]`` (out x R) and ``V_ref^T`` of ``[A_1; ...; A_n]`` (R x in); each task
    in core space, ``M_i = U_ref^T s_i B_i A_i V_ref`` (R x R, lossless: ``U_ref M_i V_ref^T = s_i B_i A_i``); the
    ``M_i`` merged by ``inner`` (``linear`` or PEFT's ``ties``, with the weights); then ``U_ref M V_ref^T``.
    Thin: two SVDs of ``out x R`` and ``R x in`` factors and ``R x R`` cores, in float64."""
    b_stack = torch.cat([b.to(device, torch.float64) * s for b, s in zip(x.b, x.scalings, strict=True)], dim=1)
    a_stack = torch.cat([a.to(device, torch.float64) for a in x.a], dim=0)
    u_ref = torch.linalg.svd(b_stack, full_matrices=False)[0]  # out x min(out, R)
    vh_ref = torch.linalg.svd(a_stack, full_matrices=False)[2]  # min(R, in) x in
    u_ref = u_ref * _sign_convention(u_ref)  # TIES in core space is not symmetric under a basis vector's flip
    vh_ref = vh_ref * _sign_convention(vh_ref.T)[:, None]
    cores, start = [], 0
    for a in x.a:
        r = a.shape[0]
        cores.append((u_ref.T @ b_stack[:, start:start + r]) @ (a_stack[start:start + r] @ vh_ref.T))
        start += r
    op = "ties" if inner == "ties" else "linear"
    merged = combine(cores, torch.tensor(x.weights, dtype=torch.float64, device=device), op, density, sign_method, None)
    u, s, vh = _thin_svd(u_ref @ merged, vh_ref)
    k = min(rank, numerical_rank(s, (u_ref.shape[0], vh_ref.shape[1])))
    return _fit(u[:, :k], s[:k], vh[:k], rank)
