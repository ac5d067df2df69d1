"""The hooked forward: the one place where spin-cache registers hooks on a model.

Every reading of hidden states and FFN activations (extraction, `run_layers`, predict, explain) goes through
:func:`forward_with_hooks`, which pools inside the hooks and stops the forward after the deepest layer needed."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
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
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"cannot find the hidden states in a {type(value).__name__}")


def _accepts(module: torch.nn.Module, name: str) -> bool:
    forward = module.forward
    return _function_accepts(getattr(forward, "__func__", forward), name)


@functools.lru_cache(maxsize=256)
def _function_accepts(function: Callable, name: str) -> bool:
    """Cached: extraction asks once per batch, and inspect.signature costs ~0.3 ms."""
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

    _forward_with_hooks(loaded, input_ids, attention_mask, kinds, upto, record)
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
    # between the model's cost ~50 us each on cold caches); torch's bookkeeping is built only if some activation
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

    _forward_with_hooks(loaded, input_ids, attention_mask, kinds, loaded.adapter.num_layers, write)
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


def _forward_with_hooks(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    kinds: Sequence[str],
    upto: int,
    on_states: Callable[[str, int, torch.Tensor], None],
) -> None:
    """One forward pass (stopped after block `upto`) that hands each wanted (kind, layer)'s full (B, T, D)
    activation to `on_states` as it is produced, in inference mode."""
    adapter = loaded.adapter
    num_layers = adapter.num_layers
    device = loaded.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
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
        on_states(kind, layer, states)

    def embed_pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        record("hidden", 0, args[0] if args else kwargs["hidden_states"])
        if upto == 0:
            raise _StopForward

    def make_block_hook(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if want_hidden and layer < num_layers:  # layer L comes from the model output (final norm)
                record("hidden", layer, _first_tensor(output))
            if layer == upto and upto < num_layers:
                raise _StopForward

        return hook

    def make_ffn_hook(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            record("ffn", layer, args[0])

        return hook

    runner, kwargs = forward_arguments(loaded, attention_mask)
    try:
        if want_hidden or upto == 0:
            handles.append(adapter.blocks[0].register_forward_pre_hook(embed_pre_hook, with_kwargs=True))
        for i, block in enumerate(adapter.blocks[:upto]):
            layer = i + 1
            if (want_hidden and layer < num_layers) or (layer == upto and upto < num_layers):
                handles.append(block.register_forward_hook(make_block_hook(layer)))
            if want_ffn:
                handles.append(adapter.down_projections[i].register_forward_pre_hook(make_ffn_hook(layer)))
        output = None
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            output = runner(input_ids=input_ids, **kwargs)
            if want_hidden and upto == num_layers:
                if output is None:
                    raise RuntimeError("the model stopped before its last layer")
                record("hidden", num_layers, _first_tensor(output))
    finally:
        for handle in handles:
            handle.remove()
