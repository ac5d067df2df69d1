"""Scores of predicted labels: accuracy and macro F1."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

METRICS = ("accuracy", "macro_f1")


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
