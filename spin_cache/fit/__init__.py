"""Linear classifiers on pooled neurons: the solvers (solver), the estimator on top of them (estimator), metrics, and
the exported head format (head)."""

from .estimator import SpinClassifier
from .head import Head
from .metrics import score_predictions
from .solver import HEAD_C_GRID, PROBE_C_GRID, fit_c_path, fit_logistic

__all__ = ["HEAD_C_GRID", "PROBE_C_GRID", "Head", "SpinClassifier", "fit_c_path", "fit_logistic", "score_predictions"]
