"""A change of variables that makes an L2 head's problem well conditioned: the FISTA of multi-class heads runs in it.

The heads' features are hundreds of correlated neurons, so the logloss is steep along a few directions of X and
nearly flat along most: a first-order method's steps are limited by the steepest and crawl along the rest (a
5-class head at weak regularisation took 280 FISTA iterations). With the eigendecomposition of the features'
second moments, ``X^T X / n = V diag(s) V^T``, the weights written as ``w = P u`` with ``P = V diag(s)^-1/2`` give
features ``X P`` that are uncorrelated with unit variance, and the L2 penalty stays separable:
``||w||^2 = sum_j u_j^2 / s_j``. FISTA's proximal step solves that penalty exactly, coordinate by coordinate, so
the steep and the flat directions are handled alike (20-90 iterations where there were 20-280;
BENCHMARKS.md, Loop at scale). The problem is the same one (P is invertible), so the optimum is the same; only the
path to it is shorter. Directions of very low variance are whitened only down to a floor (VARIANCE_FLOOR): the
float32 Gram matrix cannot resolve them finer, and they stay in the problem.

One decomposition serves a whole C path (it does not depend on C). X P is never formed: each iteration maps the
weights through P (a product of the few outputs with a features x features matrix), so the design's rows are read
as before, in memory or streamed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

#: Second moments below this share of the largest are raised to it: the float32 Gram matrix resolves them only to
#: ~1e-5 of the largest, so whitening them fully could leave the whitened features' curvature far above 1 (FISTA's
#: step bound) and dropping them could drop the optimum (a class's signal can live in a low-variance direction).
#: Raised, they stay in the problem, whitened only down to this floor: still the same optimum.
VARIANCE_FLOOR = 1e-4
#: Widest design whitened: the decomposition costs features^3 and its matrix features^2 of memory; wider
#: designs are fitted in their own coordinates (measured at 2,237 features: 1.7 s for the Gram matrix and the
#: decomposition together, against 8 s of iterations saved; BENCHMARKS.md).
MAX_FEATURES = 4096


@dataclass(frozen=True)
class Whitening:
    """``w = u @ project.T`` for weights ``u`` on whitened coordinates, ``u = (w @ project) * variances`` back.
    ``variances``: the second moment of each direction (the eigenvalues s, floored at VARIANCE_FLOOR of the
    largest), so the L2 penalty of ``w`` is ``sum(u**2 / variances)``. ``project`` is invertible: every direction
    is kept."""

    project: torch.Tensor  # (features, features): V diag(s)^-1/2
    variances: torch.Tensor  # (features,)

    @classmethod
    def of(cls, blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], n_rows: int) -> Whitening:
        """The whitening of the features in `blocks` (one pass over the rows to sum X^T X), on their device."""
        gram: torch.Tensor | None = None
        for x, _ in blocks():
            part = x.T @ x
            gram = part if gram is None else gram + part
        if gram is None:
            raise ValueError("whitening: the design has no rows")
        # float32 suffices with the floor: at 2,237 features the objectives of a whole C path matched float64's to 1e-6
        moments, vectors = torch.linalg.eigh(gram / max(n_rows, 1))
        moments = moments.clamp_min(VARIANCE_FLOOR * float(moments.max().clamp_min(1e-30)))
        return cls(project=(vectors / moments.sqrt()).contiguous(), variances=moments)

    @property
    def rank(self) -> int:
        """How many whitened coordinates there are (as many as features)."""
        return int(self.variances.shape[0])

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """The weights (outputs, features) on the original features of whitened weights `u` (outputs, rank)."""
        return u @ self.project.T

    def coordinates(self, w: torch.Tensor) -> torch.Tensor:
        """Whitened weights (outputs, rank) of weights `w` (outputs, features): V^T w scaled by diag(s)^1/2, which
        is (w @ V diag(s)^-1/2) scaled by diag(s), so no second features x features matrix is kept."""
        return (w @ self.project) * self.variances

    def gradient(self, gw: torch.Tensor) -> torch.Tensor:
        """A gradient with respect to the weights (outputs, features) as one with respect to their whitened form."""
        return gw @ self.project


def worth_whitening(n_rows: int, n_features: int) -> bool:
    """Whether a design this shape gets whitened: narrow enough for the decomposition (features^3) to cost less than
    the iterations it saves (each rows x features x outputs), so no wider than it has rows either."""
    return 1 <= n_features <= min(MAX_FEATURES, n_rows)
