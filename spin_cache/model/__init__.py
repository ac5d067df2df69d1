"""The frozen transformer: where it lives and what it is (identity), how to load it, which modules hold its blocks and
FFN down projections (adapters), and the one hooked forward that pools their activations (hooks, pooling, kernels)."""

from .adapters import Adapter, find_adapter, supported_model_types
from .hooks import forward_with_hooks, pool_layers_into, run_layers
from .identity import model_identity, resolve_model_path
from .loading import LoadedModel, ModelFiles, load_model, load_tokenizer, read_model_files, resolve_device

__all__ = [
    "Adapter",
    "LoadedModel",
    "ModelFiles",
    "find_adapter",
    "forward_with_hooks",
    "load_model",
    "load_tokenizer",
    "model_identity",
    "pool_layers_into",
    "read_model_files",
    "resolve_device",
    "resolve_model_path",
    "run_layers",
    "supported_model_types",
]
