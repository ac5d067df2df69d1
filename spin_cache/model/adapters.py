"""Architecture support: one finder per model family that locates the transformer blocks and the FFN down
projections of a loaded model (:data:`ADAPTERS`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from spin_cache.errors import InputError

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
DISTILBERT_TYPES = ("distilbert",)
GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
T5_TYPES = ("t5", "mt5", "umt5")
DEBERTA_V2_TYPES = ("deberta-v2",)
MODERNBERT_TYPES = ("modernbert",)
MPNET_TYPES = ("mpnet",)
GPT_NEOX_TYPES = ("gpt_neox",)
OPT_TYPES = ("opt",)
PHI_TYPES = ("phi",)
PHI3_TYPES = ("phi3",)
GEMMA_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
FALCON_TYPES = ("falcon",)
#: Causal decoders: their default pooling is `last` (the last real token), encoders pool `first`.
DECODER_TYPES = (
    GPT2_TYPES + LLAMA_TYPES + GPT_NEOX_TYPES + OPT_TYPES + PHI_TYPES + PHI3_TYPES + GEMMA_TYPES + FALCON_TYPES
)


@dataclass
class Adapter:
    """Where the blocks and FFN down projections of one architecture family lie on a loaded model."""

    family: str  # a key of ADAPTERS: "bert", "gpt2", "llama", "t5-encoder", "deberta-v2", "gemma", ...
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
        return int(_get(module, "nx")), int(_get(module, "nf"))
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
    """``obj.<dotted>``, or None where an attribute on the way is missing or None."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _each(blocks: Iterable[torch.nn.Module], dotted: str) -> list[torch.nn.Module]:
    """``block.<dotted>`` of every block: the per-block modules a finder has checked are there."""
    return [_get(b, dotted) for b in blocks]


def _make(
    family: str,
    is_decoder: bool,
    runner: torch.nn.Module,
    blocks: Iterable[torch.nn.Module],
    downs: Iterable[torch.nn.Module],
    needs_position_ids: bool,
    model_type: str | None,
) -> Adapter:
    block_list, down_list = list(blocks), list(downs)
    ffn_size, hidden_size = _linear_sizes(down_list[0])
    return Adapter(
        family=family,
        is_decoder=is_decoder,
        num_layers=len(block_list),
        hidden_size=hidden_size,
        ffn_size=ffn_size,
        blocks=block_list,
        down_projections=down_list,
        needs_position_ids=needs_position_ids,
        runner=runner,
        model_type=model_type,
    )


def _find_t5_encoder(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    stacks = [model, _get(model, "encoder")]
    for stack in stacks:
        if stack is None or bool(getattr(stack, "is_decoder", False)):
            continue
        blocks = _get(stack, "block")
        if (
            isinstance(blocks, torch.nn.ModuleList)
            and len(blocks)
            and all(
                _get(b, "layer") is not None and _get(_get(b, "layer")[-1], "DenseReluDense.wo") is not None
                for b in blocks
            )
        ):
            downs = [_get(_get(b, "layer")[-1], "DenseReluDense.wo") for b in blocks]
            # T5EncoderModel: run the whole model (same output); full T5: run its encoder stack only
            runner = model if stack is _get(model, "encoder") and _get(model, "decoder") is None else stack
            return _make("t5-encoder", False, runner, blocks, downs, False, model_type)
    return None


def _find_deberta_v2(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    """DeBERTa-v2/v3: BERT-like blocks; positions from the mask (absolute position embeddings, when the config has
    them, then ignore left padding). Models with a convolution after the first block (deberta-v2-xlarge and up)
    read hidden layer 1 after it, as ``output_hidden_states[1]`` does: the convolution stands in for block 1 in
    ``blocks`` (its input is the embedding output, its output hidden layer 1)."""
    for base in _base_candidates(model):
        layers = _get(base, "encoder.layer")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "output.dense") is not None and _get(b, "intermediate") is not None for b in layers)
        ):
            downs = _each(layers, "output.dense")
            blocks = list(layers)
            conv = _get(base, "encoder.conv")
            if isinstance(conv, torch.nn.Module):
                blocks[0] = conv
            return _make("deberta-v2", False, base, blocks, downs, True, model_type)
    return None


def _find_opt(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "decoder.layers")
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and all(_get(b, "fc2") is not None for b in layers):
            if _get(base, "decoder.project_out") is not None:
                # the model's output is projected to word_embed_proj_dim (opt-350m): its last hidden layer would
                # have another width than the others
                raise InputError(
                    f"unsupported OPT model: its output is projected from {_get(base, 'config.hidden_size')} to "
                    f"{_get(base, 'config.word_embed_proj_dim')} dimensions (word_embed_proj_dim, as in opt-350m); "
                    "use an OPT model without that projection"
                )
            # OPT flattens (batch, tokens) before its FFN: fc2 reads (batch * tokens, ffn), which the hooked
            # forward (spin_cache.model.hooks) views back as (batch, tokens, ffn)
            return _make("opt", True, base, layers, _each(layers, "fc2"), True, model_type)
    return None


def _find_gemma(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    """Gemma 1/2/3: Llama-like blocks; a multimodal Gemma 3 runs its text model only."""
    candidates = _base_candidates(model)
    for cand in list(candidates):
        text = getattr(cand, "language_model", None)
        if isinstance(text, torch.nn.Module) and all(text is not c for c in candidates):
            candidates.insert(0, text)
    for base in candidates:
        layers = _get(base, "layers")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(isinstance(_get(b, "mlp.down_proj"), torch.nn.Module) for b in layers)
        ):
            return _make("gemma", True, base, layers, _each(layers, "mlp.down_proj"), True, model_type)
    return None


def _layers_finder(
    family: str,
    layers_path: str,
    down_path: str,
    *,
    is_decoder: bool,
    needs_position_ids: bool,
    requires: tuple[str, ...] = (),
) -> Callable[[torch.nn.Module, str | None], Adapter | None]:
    """A finder for the common shape: ``base.<layers_path>[i].<down_path>`` is block i's FFN down projection.

    Parameters
    ----------
    family, is_decoder, needs_position_ids
        What the adapter records (see :class:`Adapter`).
    layers_path, down_path
        Dotted paths: the block list from the base model, the down projection from a block.
    requires
        Further dotted paths every block must have, where the two paths alone could match another family's
        blocks (BERT's ``intermediate``).
    """

    def find(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
        for base in _base_candidates(model):
            layers = _get(base, layers_path)
            if (
                isinstance(layers, torch.nn.ModuleList)
                and len(layers)
                and all(isinstance(_get(b, down_path), torch.nn.Module) for b in layers)
                and all(_get(b, path) is not None for b in layers for path in requires)
            ):
                downs = _each(layers, down_path)
                return _make(family, is_decoder, base, layers, downs, needs_position_ids, model_type)
        return None

    find.__name__ = f"_find_{family.replace('-', '_')}"
    return find


#: family -> (model types handled, finder). Add a family here to support another architecture. Each finder
#: returns the blocks and, per block, the module whose input is the FFN activation (the down projection's input:
#: act(up(x)), or act(gate(x)) * up(x) for gated MLPs).
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[torch.nn.Module, str | None], Adapter | None]]] = {
    "bert": (
        BERT_TYPES,
        _layers_finder(
            "bert",
            "encoder.layer",
            "output.dense",
            is_decoder=False,
            needs_position_ids=False,
            requires=("intermediate",),
        ),
    ),
    "distilbert": (
        DISTILBERT_TYPES,
        _layers_finder("distilbert", "transformer.layer", "ffn.lin2", is_decoder=False, needs_position_ids=False),
    ),
    "gpt2": (GPT2_TYPES, _layers_finder("gpt2", "h", "mlp.c_proj", is_decoder=True, needs_position_ids=True)),
    "llama": (
        LLAMA_TYPES,
        _layers_finder("llama", "layers", "mlp.down_proj", is_decoder=True, needs_position_ids=True),
    ),
    "t5-encoder": (T5_TYPES, _find_t5_encoder),
    # encoders
    "deberta-v2": (DEBERTA_V2_TYPES, _find_deberta_v2),
    # ModernBERT: rotary positions (from the mask: left padding changes nothing), GLU MLP (Wi -> act * gate -> Wo)
    "modernbert": (
        MODERNBERT_TYPES,
        _layers_finder("modernbert", "layers", "mlp.Wo", is_decoder=False, needs_position_ids=True),
    ),
    # MPNet: BERT-like blocks; positions come from the pad token, as in RoBERTa
    "mpnet": (
        MPNET_TYPES,
        _layers_finder("mpnet", "encoder.layer", "output.dense", is_decoder=False, needs_position_ids=False),
    ),
    # decoders
    "gpt-neox": (
        GPT_NEOX_TYPES,
        _layers_finder("gpt-neox", "layers", "mlp.dense_4h_to_h", is_decoder=True, needs_position_ids=True),
    ),
    "opt": (OPT_TYPES, _find_opt),
    "phi": (PHI_TYPES, _layers_finder("phi", "layers", "mlp.fc2", is_decoder=True, needs_position_ids=True)),
    # Phi-3: fused gate_up_proj; the down projection's input is up * act(gate)
    "phi3": (PHI3_TYPES, _layers_finder("phi3", "layers", "mlp.down_proj", is_decoder=True, needs_position_ids=True)),
    "gemma": (GEMMA_TYPES, _find_gemma),
    "falcon": (
        FALCON_TYPES,
        _layers_finder("falcon", "h", "mlp.dense_4h_to_h", is_decoder=True, needs_position_ids=True),
    ),
}

#: families also recognised by structure when the model type is not listed (any model.layers[i].mlp.down_proj)
_STRUCTURAL_FAMILIES = ("llama",)


def supported_model_types() -> tuple[str, ...]:
    """All model types listed in :data:`ADAPTERS`."""
    return tuple(t for types, _ in ADAPTERS.values() for t in types)


def _unsupported(what: str) -> InputError:
    return InputError(
        f"unsupported model {what}; supported model types: {', '.join(supported_model_types())} "
        "(adapters live in spin_cache/model/adapters.py, ADAPTERS registry)"
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
