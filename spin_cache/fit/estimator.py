"""`SpinClassifier`: a scikit-learn classifier (logistic regression, C optionally chosen on a dev split) on top of
the solver in `solver.py`, which stays independent of scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InputError
from .metrics import METRICS, score_predictions
from .solver import Design, LinearFit, Standardizer, decision, fit_c_path, predict_labels, probabilities


class EstimatorInputError(InputError, ValueError):
    """Bad data or settings given to the estimator: one line for the command line (InputError, exit 2), and a
    ValueError for scikit-learn and its users."""


class EstimatorParameterError(InputError, InvalidParameterError):
    """A constructor parameter outside its declared constraints: scikit-learn's InvalidParameterError (a
    ValueError and TypeError) that the command line prints as one line (InputError)."""


def _c_grid(c: Any) -> list[float]:
    """C as the list of values to fit: one positive number, or a non-empty sequence of them."""
    values: list[Any] = [c] if np.isscalar(c) else list(c)
    ok = bool(values) and all(_is_positive_real(v) for v in values)
    if not ok:
        raise EstimatorParameterError(
            f"The 'C' parameter of SpinClassifier must be a positive float or a non-empty sequence of positive "
            f"floats. Got {c!r} instead."
        )
    return [float(v) for v in values]


def _is_positive_real(v: object) -> bool:
    """A finite real number > 0 that is not a bool (a Python or NumPy number, a Fraction, ...)."""
    return isinstance(v, Real) and not isinstance(v, bool) and bool(np.isfinite(float(v))) and float(v) > 0


class SpinClassifier(ClassifierMixin, BaseEstimator):
    """Logistic-regression head on pooled neuron features; a scikit-learn classifier.

    `fit(X, y)` standardises X with statistics of X, then fits an L1 or L2 logistic regression (C has
    scikit-learn's meaning). With a sequence of C values and `X_dev, y_dev` given to `fit`, every C is fitted
    (warm-started path) and the best on dev is kept (`C_`; ties to the smaller C); with a single C it is a plain
    estimator and dev data is optional. Labels may be any values scikit-learn classifies (ints, strings):
    `classes_` holds the sorted labels seen in `y`, or ``0..n_classes-1`` when `n_classes` is given (integer-coded
    labels, as a store holds them). The solver is deterministic: `random_state` seeds nothing here and is kept for
    the scikit-learn contract (and for the random-control selections built on top of it).

    Parameters
    ----------
    C : float or sequence of float, default 1.0
        Inverse regularisation strength; a sequence is a grid searched on dev data.
    penalty : {"l1", "l2"}, default "l2"
    max_iter : int >= 1, default 300
    tol : float >= 0, default 1e-4
    metric : {"accuracy", "macro_f1"}, default "accuracy"
        What `score` reports and what chooses C on dev.
    random_state : int, RandomState or None, default 0
    """

    _parameter_constraints: dict[str, Any] = {  # noqa: RUF012 (scikit-learn's declared, class-level constraints)
        "C": [Interval(Real, 0, None, closed="neither"), "array-like"],
        "penalty": [StrOptions({"l1", "l2"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "metric": [StrOptions(set(METRICS))],
        "random_state": ["random_state"],
    }
    # fitted attributes (set by fit / from_parts; declared here for the type checker only, so that
    # check_is_fitted still sees an unfitted estimator)
    classes_: np.ndarray

    def __init__(
        self,
        C: float | Sequence[float] = 1.0,
        penalty: str = "l2",
        max_iter: int = 300,
        tol: float = 1e-4,
        metric: str = "accuracy",
        random_state: int | None = 0,
    ) -> None:
        self.C = C
        self.penalty = penalty
        self.max_iter = max_iter
        self.tol = tol
        self.metric = metric
        self.random_state = random_state

    def _validate_params(self) -> None:
        try:
            super()._validate_params()
        except InvalidParameterError as exc:
            raise EstimatorParameterError(str(exc)) from None
        _c_grid(self.C)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags.multi_label = False
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self,
        X: Any,
        y: Any,
        X_dev: Any = None,
        y_dev: Any = None,
        n_classes: int | None = None,
    ) -> SpinClassifier:
        """Fit on (X, y); with a C grid, choose C on (X_dev, y_dev). `n_classes` fixes `classes_` to
        ``0..n_classes-1`` (labels are then integer codes, some of which may be absent from y)."""
        grid = _c_grid(self.C)
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        if n_classes is not None:
            if isinstance(n_classes, bool) or not isinstance(n_classes, Integral) or n_classes < 2:
                raise EstimatorInputError(f"n_classes {n_classes!r}: give an integer >= 2")
            self.classes_ = np.arange(int(n_classes))
        else:
            self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise EstimatorInputError(
                f"SpinClassifier needs samples of at least 2 classes in y; got 1 class ({self.classes_.tolist()[0]!r})"
            )
        y_codes = self._encode(y, "y")
        if X_dev is None or y_dev is None:
            if X_dev is not None or y_dev is not None:
                raise EstimatorInputError("give both X_dev and y_dev, or neither")
            if len(grid) != 1:
                raise EstimatorInputError(
                    f"choosing C from a grid of {len(grid)} values needs X_dev and y_dev (or give a single C)"
                )
            dev_data = None
        else:
            dev_x, y_dev = validate_data(self, X_dev, y_dev, dtype=[np.float32, np.float64], reset=False)
            dev_data = (dev_x, self._encode(y_dev, "y_dev"))
        self.n_classes_ = len(self.classes_)
        self.scaler_ = Standardizer.fit(X)
        train = Design.of(self.scaler_.transform(X), y_codes)
        dev = train if dev_data is None else Design.of(self.scaler_.transform(dev_data[0]), dev_data[1])
        res = fit_c_path(
            train,
            dev,
            self.n_classes_,
            grid,
            penalty=self.penalty,
            metric=self.metric,
            max_iter=self.max_iter,
            tol=self.tol,
        )
        return self.adopt_fit(self.scaler_, res.c, res.fit, res.history)

    def adopt_fit(
        self, scaler: Standardizer, c: float, fit: LinearFit, history: list[dict[str, Any]]
    ) -> SpinClassifier:
        """Take C `c`'s fit of a C path (`fit_c_path` on features standardised by `scaler`, its `history`) as this
        classifier's fitted state, as `fit` does; `classes_`, `n_classes_` and `n_features_in_` must already be set.
        Returns self."""
        self.scaler_ = scaler
        self.C_ = c
        self.coef_ = fit.coef
        self.intercept_ = fit.intercept
        self.history_ = history
        self.n_iter_ = np.array([h["iterations"] for h in history if h["C"] == c][:1], dtype=np.int32)
        return self

    def _encode(self, y: np.ndarray, what: str) -> np.ndarray:
        """Labels -> integer codes (positions in classes_); a label outside classes_ is refused, naming it."""
        y = np.asarray(y)
        try:
            pos = np.searchsorted(self.classes_, y)
        except TypeError:  # labels of another type than classes_ (str vs int)
            raise EstimatorInputError(
                f"{what} holds labels of another type than the classes {self.classes_.tolist()[:10]}"
            ) from None
        pos = np.clip(pos, 0, len(self.classes_) - 1)
        bad = self.classes_[pos] != y
        if np.any(bad):
            label = y[np.flatnonzero(bad)[0]]
            label = label.item() if isinstance(label, np.generic) else label
            raise EstimatorInputError(
                f"{what} holds the label {label!r}, which is not one of the classes {self.classes_.tolist()[:10]}"
            )
        return pos.astype(np.int64)

    def _scores(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return decision(self.scaler_.transform(X), self.coef_, self.intercept_)

    def raw_decision(self, X: Any) -> np.ndarray:
        """Decision values of every output, shape (n, n_outputs): one logit column for a binary head (the second
        class's), one per class otherwise. `decision_function` is the same in scikit-learn's shape."""
        return self._scores(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """scikit-learn's shape: (n,) for two classes (positive means `classes_[1]`), (n, n_classes) otherwise."""
        scores = self._scores(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities, one column per class in `classes_` order."""
        return probabilities(self._scores(X))

    def predict(self, X: Any) -> np.ndarray:
        """The predicted label of each row, shape (n,): values of `classes_`."""
        codes = predict_labels(self._scores(X))
        arr: np.ndarray = self.classes_[codes]
        return arr

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """`metric` (accuracy by default) of predict(X) against y."""
        if sample_weight is not None:
            from sklearn.metrics import accuracy_score, f1_score

            if self.metric == "accuracy":
                return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
            return float(f1_score(y, self.predict(X), average="macro", sample_weight=sample_weight))
        return score_predictions(np.asarray(y), self.predict(X), self.metric)

    # persistence: JSON + safetensors, never pickle
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays a head file stores: the standardiser's ``mean`` and ``scale`` (n_features,), ``coef``
        (n_outputs, n_features) and ``intercept`` (n_outputs,) as float32. Raises NotFittedError before `fit`."""
        check_is_fitted(self)
        return {
            "mean": self.scaler_.mean,
            "scale": self.scaler_.scale,
            "coef": self.coef_.astype(np.float32),
            "intercept": self.intercept_.astype(np.float32),
        }

    def to_json(self) -> dict[str, Any]:
        """The fitted classifier's JSON part: its parameters, the chosen ``C_``, ``n_classes``, ``n_features``, the
        C path's ``history`` and, only for labels other than ``0..n_classes-1``, ``classes``. Raises NotFittedError
        before `fit`."""
        check_is_fitted(self)
        params = self.get_params()
        if not np.isscalar(params["C"]):
            params["C"] = [float(c) for c in params["C"]]
        meta = {
            "params": params,
            "C_": self.C_,
            "n_classes": self.n_classes_,
            "n_features": self.n_features_in_,
            "history": self.history_,
        }
        if not np.array_equal(self.classes_, np.arange(self.n_classes_)):
            meta["classes"] = self.classes_.tolist()  # 0..n-1 is rebuilt from n_classes, so only others are written
        return meta

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SpinClassifier:
        """A fitted classifier from what `to_json` and `to_arrays` returned, without refitting.

        Raises KeyError for a missing key and ValueError when ``classes`` and ``n_classes`` disagree; the shapes of
        the arrays are not checked here (`Head.load` does).
        """
        params = dict(meta["params"])
        if isinstance(params.get("C"), list):
            params["C"] = tuple(params["C"])
        clf = cls(**params)
        clf.C_ = meta["C_"]
        clf.n_classes_ = int(meta["n_classes"])
        classes = meta.get("classes")
        clf.classes_ = np.arange(clf.n_classes_) if classes is None else np.asarray(classes)
        if len(clf.classes_) != clf.n_classes_:
            raise ValueError(f"classes ({len(clf.classes_)}) and n_classes ({clf.n_classes_}) differ")
        clf.n_features_in_ = int(meta["n_features"])
        clf.history_ = meta.get("history", [])
        clf.scaler_ = Standardizer(arrays["mean"], arrays["scale"])
        clf.coef_ = arrays["coef"]
        clf.intercept_ = arrays["intercept"]
        return clf

    def save(self, path: str | Path) -> None:
        """Write the classifier to the folder `path` as a head that selects nothing (see `Head.save`)."""
        from .head import Head  # a classifier on its own is saved as a head without a selection

        Head(classifier=self, selection={}, info={}).save(path)

    @classmethod
    def load(cls, path: str | Path) -> SpinClassifier:
        """The classifier of the head folder `path`, checked as `Head.load` checks it (whatever it selects)."""
        from .head import Head

        return Head.load(path).classifier
