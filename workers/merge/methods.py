"""Per-module arithmetic of the merge methods, on one module's LoRA factors at a time.

Inputs are ``A_i`` (r_i x in), ``B_i`` (out x r_i), the scaling ``s_i`` PEFT applies to ``B_i A_i`` and the
user's weight ``w_i``. Outputs are (A, B) with scaling 1 (the merged config sets ``lora_alpha = r``).
The pruning and sign-election arithmetic is PEFT's own (``peft.utils.merge_utils``); only the random
pruning of the DARE methods uses a seeded generator, so a seed reproduces a merge run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from peft.utils import merge_utils

from registry.merge_rules import METHODS


@dataclass
class ModuleInputs:
    a: list[torch.Tensor]  # float32, (r_i, in)
    b: list[torch.Tensor]  # float32, (out, r_i)
    scalings: list[float]
    weights: list[float]


def _dare_prune(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """PEFT's ``random_pruning(rescale=True)``, drawing from ``generator`` instead of the global RNG."""
    if density >= 1:
        return tensor
    # The mask is drawn on the CPU so a seed gives the same mask on every device.
    mask = torch.bernoulli(torch.full(tensor.shape, density, dtype=tensor.dtype), generator=generator)
    return tensor * mask.to(tensor.device) / density


def combine(tensors: list[torch.Tensor], weights: torch.Tensor, method: str, density: float | None,
            sign_method: str, generator: torch.Generator | None) -> torch.Tensor:
    """One weighted combination of same-shaped task tensors (PEFT's ``merge_utils`` semantics)."""
    base = method.removesuffix("_svd") if method != "svd" else "linear"
    if base == "linear":
        return merge_utils.task_arithmetic(tensors, weights)
    if base == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, weights, density)
    if base == "ties":
        return merge_utils.ties(tensors, weights, density, sign_method)
    pruned = torch.stack([_dare_prune(t, density, generator) for t in tensors], dim=0)
    shaped = merge_utils.reshape_weight_task_tensors(pruned, weights)
    if base == "dare_linear":
        return (pruned * shaped).sum(dim=0)
    if base == "dare_ties":
        mask = merge_utils.calculate_majority_sign_mask(pruned, method=sign_method)
        return merge_utils.disjoint_merge(pruned * shaped, mask)
    raise ValueError(f"unknown method {method}")


def merge_ab(x: ModuleInputs, method: str, density: float | None, sign_method: str,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear / ties / dare_* / magnitude_prune: A and B combined separately with sign*sqrt|w s| and sqrt|w s|."""
    ws = [w * s for w, s in zip(x.weights, x.scalings, strict=True)]
    wa = torch.tensor([math.copysign(math.sqrt(abs(v)), v) if v != 0 else 0.0 for v in ws])
    wb = torch.tensor([math.sqrt(abs(v)) for v in ws])
    return (combine(x.a, wa, method, density, sign_method, generator),
            combine(x.b, wb, method, density, sign_method, generator))


def merge_cat(x: ModuleInputs) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.cat([ai * (w * s) for ai, w, s in zip(x.a, x.weights, x.scalings, strict=True)], dim=0)
    return a, torch.cat(x.b, dim=1)


def _clamp(u: torch.Tensor, vh: torch.Tensor, clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    if clamp is None:
        return u, vh
    dist = torch.cat([u.flatten(), vh.flatten()])
    if dist.numel() <= 16_000_000:  # torch.quantile's input limit
        hi = torch.quantile(dist, clamp)
    else:
        hi = torch.tensor(float(np.quantile(dist.cpu().numpy(), clamp)), dtype=dist.dtype, device=dist.device)
    return u.clamp(-hi, hi), vh.clamp(-hi, hi)


def merge_svd_exact(x: ModuleInputs, rank: int, clamp: float | None, device: str
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of sum_i w_i s_i B_i A_i without forming it: QR of the thin factors, SVD of the R x R core.

    Returns (A, B, residual): ``residual`` is the exact Frobenius norm of what truncation discarded.
    """
    b_cat = torch.cat(x.b, dim=1).to(device, torch.float64)  # out x R
    a_cat = torch.cat([ai * (w * s) for ai, w, s in zip(x.a, x.weights, x.scalings, strict=True)], dim=0)
    a_cat = a_cat.to(device, torch.float64)  # R x in
    qb, rb = torch.linalg.qr(b_cat)  # out x R, R x R
    qa, ra = torch.linalg.qr(a_cat.T)  # in x R, R x R
    um, s, vmh = torch.linalg.svd(rb @ ra.T)  # R x R core
    k = min(rank, s.numel())
    u = (qb @ um[:, :k]) * s[:k]  # out x k, S folded into B as PEFT does
    vh = (qa @ vmh[:k, :].T).T  # k x in
    residual = float(torch.sqrt((s[k:] ** 2).sum()))
    u, vh = _clamp(u, vh, clamp)
    return vh.float(), u.float(), residual


def merge_svd_dense(x: ModuleInputs, method: str, rank: int, density: float | None, sign_method: str,
                    clamp: float | None, generator: torch.Generator | None, device: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruning *_svd methods: combine dense deltas (PEFT's arithmetic), then a reduced SVD."""
    deltas = [(bi.to(device) @ ai.to(device)) * s for ai, bi, s in zip(x.a, x.b, x.scalings, strict=True)]
    weights = torch.tensor(x.weights, device=device)
    delta = combine(deltas, weights, method, density, sign_method, generator)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    u, vh = _clamp(u[:, :k] @ torch.diag(s[:k]), vh[:k, :], clamp)
    return vh.cpu(), u.cpu()


def family(method: str) -> str:
    return METHODS[method].family
