"""Norms and distances of low-rank products ``B @ A`` computed from their thin factors, never forming them.

The merge engine measures a merge's error with it (``workers.merge``) and ``adreg diff`` compares two versions'
deltas with it (``registry.deltas``): one copy of the arithmetic, below both. ``||X Y||_F^2 = sum((X^T X) *
(Y Y^T))`` and ``<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T))`` cost O((out + in) r^2) and r x r memory.

The factors are torch tensors; torch itself is imported only inside a method, so that ``registry`` imports
without torch.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: When ``||X - Y||^2`` from the Gram expansion ``||X||^2 + ||Y||^2 - 2<X, Y>`` is below this fraction of
#: ``||X||^2 + ||Y||^2``, cancellation has eaten too many digits (float64 rounding is ~1e-16 of the sum, so up to
#: ~1e-10 of the result at this threshold, and everything below ~1e-8): the distance is then computed again from
#: QR factors of the stacked factors, which has no cancellation.
CANCELLATION = 1e-6


class ExactDelta:
    """The product ``b @ a`` (``b``: out x r, ``a``: r x in) as float64 thin factors, and distances to others."""

    def __init__(self, b: torch.Tensor, a: torch.Tensor) -> None:
        self.b, self.a = b.double(), a.double()

    @functools.cached_property
    def gram_b(self) -> torch.Tensor:
        return self.b.T @ self.b

    @functools.cached_property
    def gram_a(self) -> torch.Tensor:
        return self.a @ self.a.T

    @functools.cached_property
    def squared_norm(self) -> float:
        return max(float((self.gram_b * self.gram_a).sum()), 0.0)

    @functools.cached_property
    def norm(self) -> float:
        """``||b a||_F``."""
        return math.sqrt(self.squared_norm)

    def inner(self, other: ExactDelta) -> float:
        """The Frobenius inner product ``<self.b self.a, other.b other.a>``."""
        return float(((self.b.T @ other.b) * (self.a @ other.a.T)).sum())

    def compare(self, other: ExactDelta) -> tuple[float, str]:
        """``(||other.b other.a - self.b self.a||_F, how)``; the two products must have the same shape.

        ``how`` says which way was exact enough: ``identical`` (same factors: 0), ``shared_b`` / ``shared_a`` (one
        factor is the same, so the difference is ``B (a' - a)`` or ``(b' - b) A``: no cancellation), ``gram`` (the
        Gram expansion), or ``qr`` (the expansion cancelled, see :data:`CANCELLATION`).
        """
        same_b = _same(self.b, other.b)
        same_a = _same(self.a, other.a)
        if same_a and same_b:
            return 0.0, "identical"
        if same_b:
            e = other.a - self.a
            return math.sqrt(max(float((self.gram_b * (e @ e.T)).sum()), 0.0)), "shared_b"
        if same_a:
            e = other.b - self.b
            return math.sqrt(max(float(((e.T @ e) * self.gram_a).sum()), 0.0)), "shared_a"
        total = self.squared_norm + other.squared_norm
        squared = total - 2 * self.inner(other)
        if squared > CANCELLATION * total or total == 0:
            return math.sqrt(max(squared, 0.0)), "gram"
        return self._qr_distance(other), "qr"

    def distance(self, b: torch.Tensor, a: torch.Tensor) -> float:
        """``||b a - self.b self.a||_F`` (see :meth:`compare`)."""
        return self.compare(ExactDelta(b, a))[0]

    def _qr_distance(self, other: ExactDelta) -> float:
        """``||[b', -b] [a'; a]||_F = ||R_left R_right^T||_F`` from the QR factors of the stacked factors: the
        subtraction happens inside a small (r + r') square core, to float64 precision of the result."""
        import torch

        left = torch.cat([other.b, -self.b], dim=1)
        right = torch.cat([other.a, self.a], dim=0)
        r_left = torch.linalg.qr(left, mode="r").R
        r_right = torch.linalg.qr(right.T, mode="r").R
        return float(torch.linalg.matrix_norm(r_left @ r_right.T))


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and bool(x.equal(y))
