"""Using an exported head on new text: predict (early exit at the deepest selected layer) and explain (per-token and
per-layer contributions)."""

from .explain import Explanation, explain
from .predict import Predictor, run_predict

__all__ = ["Explanation", "Predictor", "explain", "run_predict"]
