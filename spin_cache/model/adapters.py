"""Architecture support: one finder per model family that locates the transformer blocks and the FFN down
projections of a loaded model (:data:`ADAPTERS`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from spin_cache.errors import InputError

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
DISTILBERT_TYPES = ("distilbert",)
GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
T5_TYPES = ("t5", "mt5", "umt5")


@dataclass
class Adapter:
    """Where the blocks and FFN down projections of one architecture family lie on a loaded model."""

    family: str  # "bert", "distilbert", "gpt2", "llama", "t5-encoder"
    is_decoder: bool
    num_layers: int
    hidden_size: int
    ffn_size: int
    blocks: list[torch.nn.Module]  # the transformer blocks in order
    down_projections: list[torch.nn.Module]  # per block, the module whose INPUT is the FFN activation
    # decoders with absolute/rotary positions: pass position_ids = cumsum(mask) - 1 clamped at 0, so that
    # left padding gives the same values as right padding
    needs_position_ids: bool
    # the module whose forward run_layers calls (the base model, or the encoder stack of a full T5)
    runner: torch.nn.Module | None = field(default=None, repr=False)
    model_type: str | None = None


def _linear_sizes(module: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "nx") and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return int(module.nx), int(module.nf)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1]), int(weight.shape[0])
    raise InputError(f"cannot read the sizes of FFN projection {type(module).__name__}")


def _base_candidates(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model itself, its ``base_model`` and the attribute named by ``base_model_prefix``."""
    found: list[torch.nn.Module] = [model]
    for cand in (
        getattr(model, "base_model", None),
        getattr(model, str(getattr(model, "base_model_prefix", "") or "_"), None),
        getattr(model, "model", None),
    ):
        if isinstance(cand, torch.nn.Module) and all(cand is not f for f in found):
            found.append(cand)
    return found


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _make(
    family: str,
    is_decoder: bool,
    runner: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    downs: Sequence[torch.nn.Module],
    needs_position_ids: bool,
    model_type: str | None,
) -> Adapter:
    blocks, downs = list(blocks), list(downs)
    ffn_size, hidden_size = _linear_sizes(downs[0])
    return Adapter(
        family=family,
        is_decoder=is_decoder,
        num_layers=len(blocks),
        hidden_size=hidden_size,
        ffn_size=ffn_size,
        blocks=blocks,
        down_projections=downs,
        needs_position_ids=needs_position_ids,
        runner=runner,
        model_type=model_type,
    )


def _find_bert(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "encoder.layer")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "output.dense") is not None and _get(b, "intermediate") is not None for b in layers)
        ):
            downs = [b.output.dense for b in layers]
            return _make("bert", False, base, layers, downs, False, model_type)
    return None


def _find_distilbert(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "transformer.layer")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "ffn.lin2") is not None for b in layers)
        ):
            downs = [b.ffn.lin2 for b in layers]
            return _make("distilbert", False, base, layers, downs, False, model_type)
    return None


def _find_gpt2(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "h")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "mlp.c_proj") is not None for b in layers)
        ):
            downs = [b.mlp.c_proj for b in layers]
            return _make("gpt2", True, base, layers, downs, True, model_type)
    return None


def _find_llama(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "layers")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(isinstance(_get(b, "mlp.down_proj"), torch.nn.Module) for b in layers)
        ):
            downs = [b.mlp.down_proj for b in layers]
            return _make("llama", True, base, layers, downs, True, model_type)
    return None


def _find_t5_encoder(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    stacks = [model, _get(model, "encoder")]
    for stack in stacks:
        if stack is None or bool(getattr(stack, "is_decoder", False)):
            continue
        blocks = _get(stack, "block")
        if (
            isinstance(blocks, torch.nn.ModuleList)
            and len(blocks)
            and all(_get(b, "layer") is not None and _get(b.layer[-1], "DenseReluDense.wo") is not None for b in blocks)
        ):
            downs = [b.layer[-1].DenseReluDense.wo for b in blocks]
            # T5EncoderModel: run the whole model (same output); full T5: run its encoder stack only
            runner = model if stack is _get(model, "encoder") and _get(model, "decoder") is None else stack
            return _make("t5-encoder", False, runner, blocks, downs, False, model_type)
    return None


#: family -> (model types handled, finder). Add a family here to support another architecture.
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[torch.nn.Module, str | None], Adapter | None]]] = {
    "bert": (BERT_TYPES, _find_bert),
    "distilbert": (DISTILBERT_TYPES, _find_distilbert),
    "gpt2": (GPT2_TYPES, _find_gpt2),
    "llama": (LLAMA_TYPES, _find_llama),
    "t5-encoder": (T5_TYPES, _find_t5_encoder),
}

#: families also recognised by structure when the model type is not listed (any model.layers[i].mlp.down_proj)
_STRUCTURAL_FAMILIES = ("llama",)


def supported_model_types() -> tuple[str, ...]:
    """All model types listed in :data:`ADAPTERS`."""
    return tuple(t for types, _ in ADAPTERS.values() for t in types)


def _unsupported(what: str) -> InputError:
    return InputError(
        f"unsupported model {what}; supported model types: {', '.join(supported_model_types())} "
        "(adapters live in spin_cache/models.py, ADAPTERS registry)"
    )


def find_adapter(model: torch.nn.Module) -> Adapter:
    """Find the blocks and FFN down projections of a supported model (bare base model or one with a head).

    Raises InputError for an unsupported architecture, listing the supported model types.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    what = f"type {model_type!r}" if model_type else f"class {type(model).__name__}"
    for _family, (types, finder) in ADAPTERS.items():
        if model_type in types:
            adapter = finder(model, model_type)
            if adapter is None:
                raise _unsupported(f"{what} ({type(model).__name__}: its blocks were not found)")
            return adapter
    if model_type is not None:
        for family in _STRUCTURAL_FAMILIES:
            adapter = ADAPTERS[family][1](model, model_type)
            if adapter is not None:
                return adapter
    raise _unsupported(what)
