"""The frozen transformer: where it lives and what it is (identity), how to load it, which modules hold its blocks and
FFN down projections (adapters), and the one hooked forward that pools their activations (hooks, pooling, kernels)."""

from .adapters import Adapter, find_adapter, supported_model_types
from .hooks import run_layers
from .identity import model_identity, resolve_model_path
from .loading import LoadedModel, load_model, load_tokenizer

__all__ = [
    "Adapter",
    "LoadedModel",
    "find_adapter",
    "load_model",
    "load_tokenizer",
    "model_identity",
    "resolve_model_path",
    "run_layers",
    "supported_model_types",
]
