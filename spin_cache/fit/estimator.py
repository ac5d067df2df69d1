"""`SpinClassifier`: a logistic-regression estimator with C chosen on a dev split, on top of the solver."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .metrics import score_predictions
from .solver import Design, Standardizer, decision, fit_c_path, predict_labels, probabilities


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
        from .head import Head  # a classifier on its own is saved as a head without a selection

        Head(classifier=self, selection={}, info={}).save(path)

    @classmethod
    def load(cls, path: str | Path) -> SpinClassifier:
        from .head import Head

        return Head.load(path).classifier
