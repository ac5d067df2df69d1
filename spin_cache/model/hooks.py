"""The hooked forward: the one place where spin-cache registers hooks on a model.

Every reading of hidden states and FFN activations (extraction, predict, explain) goes through
:func:`forward_with_hooks`, which hands each activation to a callback as it is produced and stops the forward
after the deepest layer needed. :func:`run_layers` and :func:`pool_layers_into` pool inside that callback."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from spin_cache.errors import InputError
from spin_cache.model import kernels

from ..representations import KINDS, POOLINGS
from .loading import LoadedModel
from .pooling import MaskPooler, _check_poolings


class _StopForward(Exception):
    """Raised from a forward hook to stop the model right after block ``upto_layer``."""


def _first_tensor(value: Any) -> torch.Tensor:
    """The hidden states in a block's or model's output (a tensor, a tuple led by one, or a ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        states: torch.Tensor = value.last_hidden_state
        return states
    raise TypeError(f"cannot find the hidden states in a {type(value).__name__}")


def _with_tokens_axis(states: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
    """`states` as (batch, tokens, width): some blocks (OPT) flatten (batch, tokens) before their FFN, so its down
    projection reads (batch * tokens, width); that is viewed back, every other shape is returned as it is."""
    if states.dim() == 2 and states.shape[0] == batch * tokens:
        return states.view(batch, tokens, states.shape[-1])
    return states


def _accepts(module: torch.nn.Module, name: str) -> bool:
    """Whether `module.forward` takes a keyword argument `name`."""
    forward = module.forward
    return _function_accepts(getattr(forward, "__func__", forward), name)


@functools.lru_cache(maxsize=256)
def _function_accepts(function: Callable[..., Any], name: str) -> bool:
    """Whether `function` takes a parameter `name`; cached, since extraction asks once per batch."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def forward_arguments(loaded: LoadedModel, attention_mask: torch.Tensor) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The module to call and its keyword arguments: the mask, position ids from the mask for decoders (so left
    padding changes nothing), and no KV cache."""
    adapter = loaded.adapter
    kwargs: dict[str, Any] = {"attention_mask": attention_mask}
    runner = adapter.runner if adapter.runner is not None else loaded.model
    if adapter.needs_position_ids and _accepts(runner, "position_ids"):
        kwargs["position_ids"] = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    if _accepts(runner, "use_cache"):
        kwargs["use_cache"] = False
    return runner, kwargs


def run_layers(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    poolings: Sequence[str],
    kinds: Sequence[str] = KINDS,
    upto_layer: int | None = None,
    copy: bool = True,
    check_finite: bool = True,
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """Run one forward pass and pool every layer's hidden states and FFN activations.

    Returns ``{(kind, layer): {pooling: (B, D) float32}}`` with hidden layers 0..L (0 = embedding output,
    layer l = ``output_hidden_states[l]``) and ffn layers 1..L (the FFN activation inside block l). With
    ``upto_layer=K`` the forward pass stops right after block K and only layers <= K are returned.
    Results stay on the model's device and are ordinary (not inference-mode) tensors; with ``copy=False`` they
    are the inference-mode tensors themselves (fine to read, not to update in place), saving a copy per layer.
    With ``check_finite=False`` mean pooling skips its per-layer check for NaN or inf at padded positions (which
    its fast route would let leak in): the caller must check the results and redo a batch that is not finite.
    """
    poolings, kinds = _check_run(loaded, input_ids, attention_mask, poolings, kinds, upto_layer)
    upto = loaded.adapter.num_layers if upto_layer is None else int(upto_layer)
    # refuses rows without a real token, before the forward pass; a host mask is looked at on the host
    pooler = MaskPooler(attention_mask, poolings, check_finite, device=loaded.device)
    results: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def record(kind: str, layer: int, states: torch.Tensor) -> None:
        results[(kind, layer)] = pooler(states)

    forward_with_hooks(loaded, input_ids, attention_mask, record, kinds=kinds, upto=upto)
    order = {k: i for i, k in enumerate(KINDS)}
    # clone outside inference mode: callers get ordinary tensors (inference tensors refuse in-place updates)
    return {
        key: {p: t.clone() if copy and t.is_inference() else t for p, t in results[key].items()}
        for key in sorted(results, key=lambda k: (order[k[0]], k[1]))
        if key[0] in kinds and key[1] <= upto
    }


def pool_layers_into(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    columns: dict[tuple[str, int], dict[str, int]],
    out: torch.Tensor,
) -> int:
    """Run one forward pass over every layer and write each wanted pooled reading straight into `out`
    (B, columns), converted to its dtype: ``columns[(kind, layer)][pooling]`` is where that reading's first
    column goes. On the CPU the fused kernel (:mod:`spin_cache.model.kernels`) pools each activation in one read.

    Returns how many written values are not finite. Padded positions are not checked for NaN or inf first (the
    fast mean would let them leak in): when the count is not zero, pool the batch again with
    :func:`run_layers` (``check_finite=True``) before trusting it.
    """
    kinds = tuple(dict.fromkeys(kind for kind, _ in columns))
    poolings = tuple(dict.fromkeys(p for wanted in columns.values() for p in wanted))
    _check_run(loaded, input_ids, attention_mask, poolings, kinds, None)
    if out.shape[0] != input_ids.shape[0]:
        raise InputError(f"out has {out.shape[0]} rows for a batch of {input_ids.shape[0]}")
    # The kernel needs only each row's span of real tokens (a few numpy operations: small tensor operations
    # between the model's run on cold caches and are dear); torch's bookkeeping is built only if some activation
    # is not the kernel's (bfloat16 compute, a GPU, rows with gaps) or to refuse rows without a real token.
    spans = kernels.token_spans(attention_mask)
    pooler = None if spans is not None else MaskPooler(attention_mask, poolings, False, device=loaded.device)
    not_finite = 0

    def write(kind: str, layer: int, states: torch.Tensor) -> None:
        nonlocal not_finite, pooler
        wanted = columns.get((kind, layer))
        if not wanted:
            return
        if spans is not None and kernels.can_pool_into(states, out):
            not_finite += kernels.pool_into(states, *spans, out, wanted)
            return
        if pooler is None:
            pooler = MaskPooler(attention_mask, poolings, False, device=loaded.device)
        not_finite += pooler.pool_into(states, out, wanted)

    forward_with_hooks(loaded, input_ids, attention_mask, write, kinds=kinds)
    return not_finite


def _check_run(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    poolings: Sequence[str],
    kinds: Sequence[str],
    upto_layer: int | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate a pass's arguments; returns the poolings and kinds as tuples without repeats."""
    num_layers = loaded.adapter.num_layers
    if isinstance(poolings, str):
        poolings = (poolings,)
    if isinstance(kinds, str):
        kinds = (kinds,)
    poolings = tuple(dict.fromkeys(poolings))
    kinds = tuple(dict.fromkeys(kinds))
    if not poolings:
        raise InputError(f"no pooling asked for; choose from {', '.join(POOLINGS)}")
    _check_poolings(poolings)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"unknown kind {bad[0]!r}; choose from {', '.join(KINDS)}")
    if upto_layer is not None and not 0 <= int(upto_layer) <= num_layers:
        raise InputError(f"upto_layer must be between 0 and {num_layers} for this model, got {upto_layer}")
    if input_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise InputError(
            f"input_ids and attention_mask must both have shape (batch, tokens), got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    return poolings, kinds


def forward_with_hooks(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    on_layer: Callable[[str, int, torch.Tensor], None],
    *,
    kinds: Sequence[str] = KINDS,
    upto: int | None = None,
    layers: Collection[int] | None = None,
) -> None:
    """Run one forward pass and hand each wanted activation to `on_layer` as it is produced.

    The only place in spin-cache that registers hooks on a model; the hooks are removed before returning.

    Parameters
    ----------
    loaded
        The model, its adapter and its device; `input_ids` and `attention_mask` (B, T) are moved there.
    on_layer
        Called as ``on_layer(kind, layer, states)`` with the full (B, T, D) activation, in inference mode, once
        per (kind, layer): hidden layer 0 is the first block's input (the embedding output), hidden layer l < L
        block l's output, hidden layer L the model's output (after any final norm); ffn layer l is the input of
        block l's FFN down projection (viewed as (B, T, D) where the block flattens it to (B * T, D), as OPT's do).
    kinds
        The kinds to read (see :data:`spin_cache.representations.KINDS`).
    upto
        The deepest layer needed (default: the last); the forward pass stops right after block `upto`.
    layers
        Only these layers are handed over (default: every layer up to `upto`).

    Raises
    ------
    InputError
        When an activation is produced twice in one pass (a chunked feed-forward), since pooling it would then
        see only part of the tokens.
    """
    adapter = loaded.adapter
    num_layers = adapter.num_layers
    upto = num_layers if upto is None else int(upto)
    device = loaded.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    wanted = range(upto + 1) if layers is None else set(layers)
    want_hidden = "hidden" in kinds
    want_ffn = "ffn" in kinds
    seen: set[tuple[str, int]] = set()
    handles: list[Any] = []

    def record(kind: str, layer: int, states: torch.Tensor) -> None:
        if (kind, layer) in seen:
            raise InputError(
                f"the {kind} activation of layer {layer} was produced twice in one pass "
                "(chunked feed-forward?); set chunk_size_feed_forward=0 in the model config"
            )
        seen.add((kind, layer))
        on_layer(kind, layer, states)

    def embed_pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if want_hidden and 0 in wanted:
            record("hidden", 0, args[0] if args else kwargs["hidden_states"])
        if upto == 0:
            raise _StopForward

    def make_block_hook(layer: int, read: bool) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if read:
                record("hidden", layer, _first_tensor(output))
            if layer == upto and upto < num_layers:
                raise _StopForward

        return hook

    batch, tokens = input_ids.shape

    def make_ffn_hook(layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            record("ffn", layer, _with_tokens_axis(args[0], batch, tokens))

        return hook

    runner, kwargs = forward_arguments(loaded, attention_mask)
    try:
        if (want_hidden and 0 in wanted) or upto == 0:
            handles.append(adapter.blocks[0].register_forward_pre_hook(embed_pre_hook, with_kwargs=True))
        for i, block in enumerate(adapter.blocks[:upto]):
            layer = i + 1
            # hidden layer L comes from the model's output (after the final norm), not from the last block
            read = want_hidden and layer < num_layers and layer in wanted
            if read or (layer == upto and upto < num_layers):
                handles.append(block.register_forward_hook(make_block_hook(layer, read)))
            if want_ffn and layer in wanted:
                handles.append(adapter.down_projections[i].register_forward_pre_hook(make_ffn_hook(layer)))
        output = None
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            output = runner(input_ids=input_ids, **kwargs)
            if want_hidden and upto == num_layers and num_layers in wanted:
                if output is None:
                    raise RuntimeError("the model stopped before its last layer")
                record("hidden", num_layers, _first_tensor(output))
    finally:
        for handle in handles:
            handle.remove()
