"""Linear classifiers on pooled neurons: the L1/L2 logistic-regression solver used by probes and heads,
`SpinClassifier` (a scikit-learn style estimator), and the exported `Head` artifact (JSON + safetensors).

The solver is FISTA (accelerated proximal gradient) on standardised features, in float32 torch, warm-started
along a path of C values. C has scikit-learn's meaning: minimise ||w||_1 (or ||w||^2 / 2) + C * sum(logloss), so
the paper's grid (0.1, 0.2, 1, 10, 100) means the same thing here as in the paper's sklearn recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from . import __version__
from .errors import InputError, IntegrityError
from .outputs import finite_or_null

PAPER_C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)
# The paper's grid plus three stronger values: on MiniLM/SST-2, 20 of 39 probes chose the paper grid's smallest C
# (0.1), i.e. the optimum lay below the grid; with these added, C = 0.05 is chosen most (BENCHMARKS.md).
PROBE_C_GRID = (0.01, 0.02, 0.05, *PAPER_C_GRID)
# Heads see hundreds of correlated neurons from several layers and want stronger L2 regularisation (same source);
# 0.0001 was added when the best dev configuration chose 0.0003, the grid's smallest value.
HEAD_C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0)
METRICS = ("accuracy", "macro_f1")


# ---- metrics -------------------------------------------------------------------------------------------------


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "accuracy") -> float:
    """Accuracy or macro-F1 (the mean over classes present in y_true or y_pred)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    if metric == "accuracy":
        return float(np.mean(y_true == y_pred))
    if metric == "macro_f1":
        f1s = []
        for c in np.union1d(y_true, y_pred):
            tp = np.sum((y_pred == c) & (y_true == c))
            fp = np.sum((y_pred == c) & (y_true != c))
            fn = np.sum((y_pred != c) & (y_true == c))
            f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
        return float(np.mean(f1s))
    raise InputError(f"--metric {metric}: choose from {', '.join(METRICS)}")


# ---- the solver ------------------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """Mean and scale from the training split; constant features get scale 1 (they carry nothing)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        std[~np.isfinite(std) | (std < 1e-12)] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def fit_chunks(cls, chunks: Iterable[np.ndarray], width: int) -> Standardizer:
        """The same statistics in one pass over row blocks (out of core)."""
        total = np.zeros(width)
        squares = np.zeros(width)
        n = 0
        for x in chunks:
            x64 = np.asarray(x, dtype=np.float64)
            total += x64.sum(axis=0)
            squares += (x64 * x64).sum(axis=0)
            n += len(x64)
        mean = total / max(n, 1)
        std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))
        std[std < 1e-12] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32, copy=False)


@dataclass
class LinearFit:
    coef: np.ndarray  # (n_outputs, n_features): 1 output for binary, K for multi-class
    intercept: np.ndarray  # (n_outputs,)
    iterations: int
    converged: bool


class Design:
    """Rows (standardised features and labels) for the solver: one in-memory block, or row blocks produced on
    demand by `blocks()` (out of core: each pass over the data reads them again, memory stays one block)."""

    def __init__(
        self, blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], n_rows: int, n_features: int
    ) -> None:
        self.blocks = blocks
        self.n_rows = n_rows
        self.n_features = n_features

    @classmethod
    def of(cls, x: np.ndarray | torch.Tensor, y: np.ndarray) -> Design:
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
        return cls(lambda: [(xt, yt)], int(xt.shape[0]), int(xt.shape[1]))


def _lipschitz(data: Design, n_outputs: int) -> float:
    """Upper bound of the mean-logloss gradient's Lipschitz constant (power iteration for ||X||_2^2)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(data.n_features, generator=gen)
    v /= v.norm()
    sigma2 = 1.0
    for _ in range(30):
        w = torch.zeros_like(v)
        for x, _ in data.blocks():
            w += x.T @ (x @ v)
        sigma2 = float(w.norm())
        if sigma2 == 0:
            return 1.0
        v = w / sigma2
    factor = 0.25 if n_outputs == 1 else 0.5
    # + 1 column of ones for the intercept; 1.05 covers power-iteration error.
    return 1.05 * factor * (sigma2 + data.n_rows) / data.n_rows


def _block_loss(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    if n_classes == 2:
        return torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.to(z.dtype), reduction="sum")
    return torch.nn.functional.cross_entropy(z, y, reduction="sum")


def _grad(data: Design, w: torch.Tensor, b: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the mean logloss (binary: sigmoid on one output; else softmax), summed over row blocks."""
    gw = torch.zeros_like(w)
    gb = torch.zeros_like(b)
    for x, y in data.blocks():
        z = x @ w.T + b
        if n_classes == 2:
            r = (torch.sigmoid(z[:, 0]) - y.to(z.dtype)).unsqueeze(1)
        else:
            r = torch.softmax(z, dim=1)
            r[torch.arange(len(y)), y] -= 1.0
        gw += r.T @ x
        gb += r.sum(dim=0)
    return gw / data.n_rows, gb / data.n_rows


def _objective(data: Design, w: torch.Tensor, b: torch.Tensor, k: int, lam: float, pen: str) -> float:
    loss = sum(float(_block_loss(x @ w.T + b, y, k)) for x, y in data.blocks()) / data.n_rows
    reg = w.abs().sum() if pen == "l1" else 0.5 * (w * w).sum()
    return float(loss + lam * reg)


def fit_logistic(
    data: Design,
    n_classes: int,
    c: float,
    *,
    penalty: str = "l1",
    max_iter: int = 300,
    tol: float = 1e-4,
    warm: LinearFit | None = None,
    lipschitz: float | None = None,
) -> LinearFit:
    """Minimise mean logloss + lam * penalty with lam = 1 / (C * n) by FISTA with adaptive restarts."""
    n, d = data.n_rows, data.n_features
    n_out = 1 if n_classes == 2 else n_classes
    lam = 1.0 / (c * n)
    step = 1.0 / ((lipschitz or _lipschitz(data, n_out)) + (lam if penalty == "l2" else 0.0))
    if warm is not None and warm.coef.shape == (n_out, d):
        w = torch.as_tensor(warm.coef, dtype=torch.float32).clone()
        b = torch.as_tensor(warm.intercept, dtype=torch.float32).clone()
    else:
        w = torch.zeros(n_out, d)
        b = torch.zeros(n_out)
    w_prev, b_prev = w.clone(), b.clone()
    t = 1.0
    prev_obj = float("inf")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        mom = (t - 1.0) / (t_next := (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0)
        wy = w + mom * (w - w_prev)
        by = b + mom * (b - b_prev)
        gw, gb = _grad(data, wy, by, n_classes)
        w_prev, b_prev = w, b
        if penalty == "l1":
            z = wy - step * gw
            w = torch.sign(z) * torch.clamp(z.abs() - step * lam, min=0.0)
        else:
            w = wy - step * (gw + lam * wy)
        b = by - step * gb
        t = t_next
        if it % 10 == 0 or it == max_iter:
            obj = _objective(data, w, b, n_classes, lam, penalty)
            if obj > prev_obj:  # adaptive restart keeps FISTA monotone in practice
                t = 1.0
            if abs(prev_obj - obj) <= tol * max(abs(obj), 1e-12) * 10:
                converged = True
                break
            prev_obj = obj
    return LinearFit(w.numpy().copy(), b.numpy().copy(), it, converged)


def predict_design(data: Design, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) over every block of `data`."""
    ys, preds = [], []
    for x, y in data.blocks():
        preds.append(predict_labels(decision(x.numpy(), coef, intercept)))
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(preds)


def decision(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) @ coef.T.astype(np.float32) + intercept.astype(np.float32)


def probabilities(scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0].astype(np.float64)))
        return np.stack([1.0 - p1, p1], axis=1)
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_labels(scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    return scores.argmax(axis=1).astype(np.int64)


@dataclass
class PathResult:
    """One C path: the fit chosen on dev and the metric history of every C."""

    c: float
    fit: LinearFit
    dev: float
    history: list[dict] = field(default_factory=list)


def fit_c_path(
    train: Design,
    dev: Design,
    n_classes: int,
    c_grid: Sequence[float] = PAPER_C_GRID,
    *,
    penalty: str = "l1",
    metric: str = "accuracy",
    max_iter: int = 300,
    tol: float = 1e-4,
) -> PathResult:
    """Fit every C in increasing order (warm starts: strong to weak regularisation), keep the best on dev.

    Features must already be standardised. Ties on dev go to the smaller C (the sparser, simpler model).
    """
    lip = _lipschitz(train, 1 if n_classes == 2 else n_classes)
    warm = None
    best: PathResult | None = None
    history = []
    for c in sorted(c_grid):
        fit = fit_logistic(train, n_classes, c, penalty=penalty, max_iter=max_iter, tol=tol, warm=warm, lipschitz=lip)
        warm = fit
        dev_score = score_predictions(*predict_design(dev, fit.coef, fit.intercept), metric)
        history.append(
            {
                "C": c,
                "dev": dev_score,
                "nonzero": int(np.count_nonzero(np.abs(fit.coef).sum(axis=0))),
                "iterations": fit.iterations,
            }
        )
        if best is None or dev_score > best.dev:
            best = PathResult(c=c, fit=fit, dev=dev_score)
    assert best is not None
    best.history = history
    return best


# ---- the estimator ---------------------------------------------------------------------------------------------


class SpinClassifier:
    """Logistic-regression head on pooled neuron features, in the style of scikit-learn.

    `fit(X, y)` standardises X with statistics of X, then fits an L1 or L2 logistic regression. With a list of
    C values and `X_dev, y_dev` given to `fit`, C is chosen on the dev set (warm-started path). The solver is
    deterministic; `random_state` seeds nothing stochastic today and is kept for the scikit-learn contract
    (and for the random-control selections built on top of it).
    """

    def __init__(
        self,
        C: float | Sequence[float] = 1.0,
        penalty: str = "l2",
        max_iter: int = 300,
        tol: float = 1e-4,
        metric: str = "accuracy",
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.penalty = penalty
        self.max_iter = max_iter
        self.tol = tol
        self.metric = metric
        self.random_state = random_state

    # scikit-learn protocol
    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("C", "penalty", "max_iter", "tol", "metric", "random_state")}

    def set_params(self, **params: Any) -> SpinClassifier:
        for k, v in params.items():
            if k not in self.get_params():
                raise InputError(f"SpinClassifier has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_dev: np.ndarray | None = None,
        y_dev: np.ndarray | None = None,
        n_classes: int | None = None,
    ) -> SpinClassifier:
        if self.penalty not in ("l1", "l2"):
            raise InputError(f"penalty {self.penalty!r}: choose l1 or l2")
        y = np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(n_classes or (y.max() + 1))
        self.classes_ = np.arange(self.n_classes_)
        self.scaler_ = Standardizer.fit(X)
        xs = self.scaler_.transform(X)
        grid = [float(self.C)] if np.isscalar(self.C) else [float(c) for c in self.C]  # type: ignore[arg-type]
        if X_dev is None or y_dev is None:
            if len(grid) != 1:
                raise InputError("choosing C from a grid needs X_dev and y_dev")
            X_dev, y_dev = X, y
        res = fit_c_path(
            Design.of(xs, y),
            Design.of(self.scaler_.transform(X_dev), np.asarray(y_dev)),
            self.n_classes_,
            grid,
            penalty=self.penalty,
            metric=self.metric,
            max_iter=self.max_iter,
            tol=self.tol,
        )
        self.C_ = res.c
        self.coef_ = res.fit.coef
        self.intercept_ = res.fit.intercept
        self.history_ = res.history
        self.n_features_in_ = xs.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted(X)
        return decision(self.scaler_.transform(X), self.coef_, self.intercept_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return probabilities(self.decision_function(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict_labels(self.decision_function(X))

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return score_predictions(np.asarray(y), self.predict(X), self.metric)

    def _check_fitted(self, X: np.ndarray) -> None:
        if not hasattr(self, "coef_"):
            raise InputError("this SpinClassifier is not fitted yet; call fit first")
        if np.asarray(X).shape[1] != self.n_features_in_:
            raise InputError(f"X has {np.asarray(X).shape[1]} features, the classifier expects {self.n_features_in_}")

    # persistence: JSON + safetensors, never pickle
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.scaler_.mean,
            "scale": self.scaler_.scale,
            "coef": self.coef_.astype(np.float32),
            "intercept": self.intercept_.astype(np.float32),
        }

    def to_json(self) -> dict:
        return {
            "params": self.get_params(),
            "C_": self.C_,
            "n_classes": self.n_classes_,
            "n_features": self.n_features_in_,
            "history": self.history_,
        }

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict[str, np.ndarray]) -> SpinClassifier:
        params = dict(meta["params"])
        if isinstance(params.get("C"), list):
            params["C"] = tuple(params["C"])
        clf = cls(**params)
        clf.C_ = meta["C_"]
        clf.n_classes_ = int(meta["n_classes"])
        clf.classes_ = np.arange(clf.n_classes_)
        clf.n_features_in_ = int(meta["n_features"])
        clf.history_ = meta.get("history", [])
        clf.scaler_ = Standardizer(arrays["mean"], arrays["scale"])
        clf.coef_ = arrays["coef"]
        clf.intercept_ = arrays["intercept"]
        return clf

    def save(self, path: str | Path) -> None:
        Head(classifier=self, selection={}, info={}).save(path)

    @classmethod
    def load(cls, path: str | Path) -> SpinClassifier:
        return Head.load(path).classifier


# ---- the exported head -----------------------------------------------------------------------------------------

HEAD_FORMAT = "spin-cache-head"
HEAD_FILES = ("head.json", "head.safetensors")
#: The head.json key holding the sha256 of every head file (head.json's own: over its canonical JSON without this key).
CHECKSUMS_KEY = "checksums"
_META_KEYS = ("format", "spin_cache_version", "classifier", "layers", CHECKSUMS_KEY)
REEXPORT = "export the head again with `spin-cache sweep STORE --probes RUN --out SWEEP`"


def canonical_meta_sha256(meta: dict) -> str:
    """sha256 of head.json's content without its checksums: sorted keys, no whitespace, ASCII. Whitespace and key
    order may change (a reformatted file still loads); any changed value, key or array shape does not."""
    body = {k: v for k, v in meta.items() if k != CHECKSUMS_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Head:
    """A fitted SpinClassifier plus what it reads: kind, pooling and per-layer neuron indices of a store.

    `info` holds the store fingerprint, the model's identity and hashes, label names and metric history.
    Feature order: layers ascending, within a layer the indices in the order stored. `source` is the folder a
    loaded head came from (relative model hints resolve against it); None for a head built in memory.
    """

    classifier: SpinClassifier
    selection: dict[int, np.ndarray]  # layer -> neuron indices
    info: dict
    source: Path | None = field(default=None, compare=False, repr=False)

    @property
    def layers(self) -> list[int]:
        return sorted(self.selection)

    @property
    def deepest_layer(self) -> int:
        return max(self.selection) if self.selection else 0

    @property
    def n_neurons(self) -> int:
        return int(sum(len(v) for v in self.selection.values()))

    @property
    def name(self) -> str:
        """How messages name this head: its folder, or "the head" for one built in memory."""
        return str(self.source) if self.source is not None else "the head"

    def save(self, path: str | Path) -> None:
        """Write head.safetensors and head.json (with the sha256 of both, see :data:`CHECKSUMS_KEY`), each file
        replaced atomically, the arrays first."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"classifier.{k}": v for k, v in self.classifier.to_arrays().items()}
        arrays |= {f"selection.layer_{layer:03d}": np.asarray(idx, np.int64) for layer, idx in self.selection.items()}
        blob = save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        meta = {
            "format": HEAD_FORMAT,
            "spin_cache_version": __version__,
            "classifier": self.classifier.to_json(),
            "layers": self.layers,
            **self.info,
        }
        meta = json.loads(
            json.dumps(finite_or_null(meta), allow_nan=False)
        )  # the hash is over what a reader will parse (keys as strings, lists)
        meta[CHECKSUMS_KEY] = {
            "head.json": canonical_meta_sha256(meta),
            "head.safetensors": hashlib.sha256(blob).hexdigest(),
        }
        _write_atomic(folder / "head.safetensors", blob)
        _write_atomic(folder / "head.json", json.dumps(meta, indent=2, sort_keys=True, allow_nan=False).encode())

    @classmethod
    def load(cls, path: str | Path) -> Head:
        """Read a head directory, checking both files' sha256 and every value before it is used.

        Raises InputError (not a head directory), IntegrityError (a changed or damaged file, a head written
        before checksums, selection indices that are negative, repeated or do not match the classifier).
        """
        folder = Path(path)
        meta_path, arr_path = folder / "head.json", folder / "head.safetensors"
        for p in (meta_path, arr_path):
            if not p.is_file():
                raise InputError(f"{p}: missing; a head directory holds head.json and head.safetensors")
        try:
            meta = json.loads(meta_path.read_bytes())
            blob = arr_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc}); {REEXPORT}") from None
        if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{meta_path}: not a spin-cache head (format {str(fmt)[:40]!r})")
        _check_checksums(meta_path, arr_path, meta, blob)
        _check_head_meta(meta_path, meta)
        try:
            arrays = load_safetensors(blob)
        except Exception as exc:  # the checksum matched: a head written damaged
            raise IntegrityError(f"{arr_path}: unreadable ({type(exc).__name__}); {REEXPORT}") from None
        try:
            clf = SpinClassifier.from_parts(
                meta["classifier"], {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("classifier.")}
            )
            selection = {layer: arrays[f"selection.layer_{layer:03d}"] for layer in meta["layers"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"{folder}: head.json and head.safetensors do not match (missing {exc!s}); {REEXPORT}"
            ) from None
        _check_arrays(folder, clf, selection)
        info = {k: v for k, v in meta.items() if k not in _META_KEYS}
        return cls(classifier=clf, selection=selection, info=info, source=folder.resolve())

    def check_fits(self, num_layers: int, width: int) -> None:
        """Refuse a head whose layers or neuron indices lie outside a model with `num_layers` layers of `width`
        neurons (of the head's kind): IntegrityError naming the head and the layer."""
        kind = self.info.get("kind")
        lowest = 1 if kind == "ffn" else 0
        for layer in self.layers:
            if not lowest <= layer <= num_layers:
                raise IntegrityError(
                    f"{self.name}: selects {kind} layer {layer}, but the model has {kind} layers "
                    f"{lowest}..{num_layers}; {REEXPORT}"
                )
            idx = self.selection[layer]
            if len(idx) and int(idx.max()) >= width:
                raise IntegrityError(
                    f"{self.name}: layer {layer} selects neuron {int(idx.max())}, but the model's {kind} layers have "
                    f"{width} neurons (0..{width - 1}); {REEXPORT}"
                )


def _check_checksums(meta_path: Path, arr_path: Path, meta: dict, blob: bytes) -> None:
    sums = meta.get(CHECKSUMS_KEY)
    if sums is None:
        # Written before checksums (spin-cache 0.1.0): nothing proves it is the head that was exported, and a
        # warning would let any damaged head through; re-exporting costs one sweep.
        raise IntegrityError(f"{meta_path}: written without checksums by an older spin-cache; {REEXPORT}")
    if not isinstance(sums, dict) or not all(isinstance(sums.get(n), str) for n in HEAD_FILES):
        raise IntegrityError(f"{meta_path}: the {CHECKSUMS_KEY!r} block is damaged; {REEXPORT}")
    if canonical_meta_sha256(meta) != sums["head.json"]:
        raise IntegrityError(f"{meta_path}: changed since it was exported (sha256 differs); {REEXPORT}")
    if hashlib.sha256(blob).hexdigest() != sums["head.safetensors"]:
        raise IntegrityError(f"{arr_path}: changed or damaged since it was exported (sha256 differs); {REEXPORT}")


def _check_arrays(folder: Path, clf: SpinClassifier, selection: dict[int, np.ndarray]) -> None:
    """Selection indices are non-negative, distinct integers (a negative one would wrap around), and the arrays
    have the shapes the classifier needs. Upper bounds need the model: :meth:`Head.check_fits`."""
    for layer, idx in selection.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) == 0:
            raise IntegrityError(
                f"{folder}: layer {layer}'s selection is not a list of neuron indices ({idx.dtype}, shape "
                f"{idx.shape}); {REEXPORT}"
            )
        if int(idx.min()) < 0:
            raise IntegrityError(f"{folder}: layer {layer} selects neuron {int(idx.min())} (negative); {REEXPORT}")
        if len(np.unique(idx)) != len(idx):
            raise IntegrityError(f"{folder}: layer {layer} selects a neuron twice; {REEXPORT}")
    # A bare classifier (SpinClassifier.save) has no selection: its arrays must agree with its n_features.
    n = sum(len(v) for v in selection.values()) if selection else clf.n_features_in_
    n_out = 1 if clf.n_classes_ == 2 else clf.n_classes_
    shapes = {
        "n_features": (clf.n_features_in_, n),
        "coef": (tuple(clf.coef_.shape), (n_out, n)),
        "intercept": (tuple(clf.intercept_.shape), (n_out,)),
        "mean": (tuple(clf.scaler_.mean.shape), (n,)),
        "scale": (tuple(clf.scaler_.scale.shape), (n,)),
    }
    for what, (got, want) in shapes.items():
        if got != want:
            raise IntegrityError(
                f"{folder}: classifier {what} is {got}, but the selection has {n} neurons ({want} expected); {REEXPORT}"
            )


def _check_head_meta(meta_path: Path, meta: dict) -> None:
    """Refuse a crafted head.json before any of its values is used: layers are non-negative integers (they name
    arrays), kind and pooling are the known words, the classifier block is a JSON object."""
    from .models import KINDS, POOLINGS

    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(type(x) is int and 0 <= x < 10_000 for x in layers):
        raise IntegrityError(f"{meta_path}: 'layers' must be a list of layer numbers, got {str(layers)[:40]!r}")
    for key, allowed in (("kind", KINDS), ("pooling", POOLINGS)):
        if key in meta and meta[key] not in allowed:
            raise IntegrityError(f"{meta_path}: {key} {str(meta[key])[:40]!r} is not one of {', '.join(allowed)}")
    if not isinstance(meta.get("classifier"), dict):
        raise IntegrityError(f"{meta_path}: no 'classifier' block; {REEXPORT}")
