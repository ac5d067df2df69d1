"""The SPIN paper's official probe recipe (Jiao et al. 2024), as importable functions, for benchmarks.

Per probe: features standardised with train statistics; for every C in (0.1, 0.2, 1, 10, 100) a scikit-learn
logistic regression with an L1 penalty, solver saga, warm_start=True, max_iter=4, `fit` called 16 times
(16 warm-started rounds of 4 epochs); the C with the best dev accuracy is kept (ties -> the first, i.e. smaller, C).
Saliency = squared weight summed over classes; selection by cumulative share eta (same rule as spin_cache.loop.select).

The paper wrote ``LogisticRegression(penalty='elasticnet', l1_ratio=1, solver='saga', ...)``. scikit-learn 1.8+
deprecates ``penalty``; the equivalent non-deprecated call is ``LogisticRegression(l1_ratio=1.0, solver='saga',
...)`` (l1_ratio=1 means a pure L1 penalty), which is what `paper_model` builds when sklearn supports it.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

PAPER_C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)
ROUNDS = 16
ITERS_PER_ROUND = 4


def _penalty_is_deprecated() -> bool:
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 8)


def paper_model(c: float, seed: int = 0) -> LogisticRegression:
    """The paper's estimator for one C (penalty='elasticnet', l1_ratio=1, saga, warm_start, max_iter=4)."""
    kwargs = dict(C=c, l1_ratio=1.0, solver="saga", warm_start=True, max_iter=ITERS_PER_ROUND, random_state=seed)
    if not _penalty_is_deprecated() and "penalty" in inspect.signature(LogisticRegression).parameters:
        kwargs["penalty"] = "elasticnet"
    return LogisticRegression(**kwargs)


def standardise(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in (x_train, *others)]


def fit_paper(
    x_train: np.ndarray,
    y_train: np.ndarray,
    c: float,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> LogisticRegression:
    """16 warm-started `fit` calls of 4 saga epochs each (the paper's loop)."""
    model = paper_model(c, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(rounds):
            model.fit(x_train, y_train)
    return model


def saliency(model: LogisticRegression) -> np.ndarray:
    return (np.asarray(model.coef_, dtype=np.float64) ** 2).sum(axis=0)


def probe(
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    c_grid: Sequence[float] = PAPER_C_GRID,
    rounds: int = ROUNDS,
    standardised: bool = False,
) -> dict:
    """One layer (or one head): standardise on train, fit every C, keep the best dev accuracy.

    `x` and `y` map split name ('train', 'dev', optionally 'test') to arrays.
    """
    t0 = time.perf_counter()
    splits = [s for s in ("train", "dev", "test") if s in x and len(x[s])]
    if standardised:
        xs = dict(x)
    else:
        xs = dict(zip(splits, standardise(*(x[s] for s in splits)), strict=True))
    best = None
    for c in c_grid:
        model = fit_paper(xs["train"], y["train"], c, rounds)
        dev = float(model.score(xs["dev"], y["dev"]))
        if best is None or dev > best[0]:
            best = (dev, c, model)
    dev, c, model = best
    test = float(model.score(xs["test"], y["test"])) if "test" in splits else float("nan")
    return {
        "C": float(c),
        "dev_metric": dev,
        "test_metric": test,
        "saliency": saliency(model),
        "n_nonzero": int(np.count_nonzero(model.coef_)),
        "fit_seconds": time.perf_counter() - t0,
    }


def select_eta(sal: np.ndarray, eta: float) -> np.ndarray:
    """Shortest rank-order prefix whose squared weights reach `eta` of the layer's total (at least one neuron)."""
    s = np.asarray(sal, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s))
    total = s.sum()
    if total <= 0:
        return order[:1]
    share = np.cumsum(s[order]) / total
    count = int(np.searchsorted(share, eta - 1e-12, side="left")) + 1
    return order[: max(1, min(count, len(order)))]


def split_arrays(x: np.ndarray, split: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    xs = {s: x[split == s] for s in ("train", "dev", "test")}
    ys = {s: labels[split == s] for s in ("train", "dev", "test")}
    return xs, ys


def probe_store(store_path: str, keys: Sequence[tuple[str, str, int]] | None = None, rounds: int = ROUNDS) -> list:
    """The paper recipe over every (kind, pooling, layer) of a spin-cache store (read into memory as float32)."""
    from spin_cache.store.activation_store import ActivationStore

    store = ActivationStore.open(store_path)
    split = store.examples["split"].to_numpy()
    labels = store.examples["label"].to_numpy().astype(np.int64)
    rows = []
    for kind, pooling, layer in keys or store.layout.array_keys():
        x, y = split_arrays(store.read(kind, pooling, layer), split, labels)
        res = probe(x, y, rounds=rounds)
        res.update(kind=kind, pooling=pooling, layer=int(layer))
        rows.append(res)
    return rows
