"""Neuron selection rules, applied per layer to a probe's saliency scores (squared weights).

Every rule returns neuron indices in rank order (most salient first; ties to the lower index) and keeps at least
one neuron, so that every layer takes part in the integration even when its probe zeroed every weight.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

RULES = ("eta", "top-k", "top-percent")


def rank_order(saliency: np.ndarray) -> np.ndarray:
    """Neuron indices from most to least salient; ties broken by the lower index."""
    s = np.asarray(saliency, dtype=np.float64)
    return np.lexsort((np.arange(len(s)), -s))


def select_eta(saliency: np.ndarray, eta: float) -> np.ndarray:
    """The shortest rank-order prefix whose saliency reaches `eta` of the layer's total (0 <= eta <= 1)."""
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"--eta {eta}: must be between 0 and 1")
    order = rank_order(saliency)
    s = np.asarray(saliency, dtype=np.float64)[order]
    total = s.sum()
    if total <= 0.0:  # every weight zero: nothing is salient, keep the one neuron the rule guarantees
        return order[:1]
    share = np.cumsum(s) / total
    # Tolerance: float sums of shares can stop a hair short of eta = 1.
    count = int(np.searchsorted(share, eta - 1e-12, side="left")) + 1
    return order[: max(1, min(count, len(order)))]


def select_top_k(saliency: np.ndarray, k: int) -> np.ndarray:
    """The `k` most salient neurons in rank order (all of them when the layer has fewer); InputError if k < 1."""
    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    return rank_order(saliency)[: min(int(k), len(saliency))]


def select_top_percent(saliency: np.ndarray, percent: float) -> np.ndarray:
    """The most salient ``ceil(percent / 100 * n)`` of the layer's n neurons in rank order, at least one (a
    float product a hair above a whole number is not rounded up); InputError unless 0 < percent <= 100."""
    if not 0.0 < percent <= 100.0:
        raise InputError(f"--top-percent {percent}: must be in (0, 100]")
    n = len(saliency)
    return rank_order(saliency)[: max(1, min(n, math.ceil(percent / 100.0 * n - 1e-9)))]


def select(saliency: np.ndarray, rule: str, value: float) -> np.ndarray:
    """Dispatch on the rule name: 'eta', 'top-k' or 'top-percent'."""
    if rule == "eta":
        return select_eta(saliency, float(value))
    if rule == "top-k":
        return select_top_k(saliency, int(value))
    if rule == "top-percent":
        return select_top_percent(saliency, float(value))
    raise InputError(f"selection rule {rule!r}: choose from {', '.join(RULES)}")


def random_like(counts: dict[int, int], widths: dict[int, int], seed: int) -> dict[int, np.ndarray]:
    """The random control: per layer, as many neurons as `counts` says, drawn uniformly with a fixed seed."""
    rng = np.random.default_rng(seed)
    return {layer: np.sort(rng.choice(widths[layer], size=n, replace=False)) for layer, n in sorted(counts.items())}
