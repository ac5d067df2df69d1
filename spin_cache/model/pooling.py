"""Masked pooling of per-token activations over the real tokens: first, last, mean, max."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spin_cache.errors import InputError

from ..representations import POOLINGS


def _check_poolings(poolings: Sequence[str]) -> None:
    if isinstance(poolings, str):
        poolings = (poolings,)
    bad = [p for p in poolings if p not in POOLINGS]
    if bad:
        raise InputError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLINGS)}")


def _check_pool_inputs(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return the mask as a bool tensor on the states' device."""
    if states.dim() != 3:
        raise InputError(f"states must have shape (batch, tokens, dim), got {tuple(states.shape)}")
    if mask.dim() != 2 or tuple(mask.shape) != tuple(states.shape[:2]):
        raise InputError(f"mask must have shape (batch, tokens) = {tuple(states.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(device=states.device) != 0


def pool_many(states: torch.Tensor, mask: torch.Tensor, poolings: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pool ``states`` (B, T, D) over the real tokens of ``mask`` (B, T) with each of ``poolings``.

    Returns ``{pooling: (B, D) float32}`` computed on the states' device. ``first`` and ``last`` pick the
    first and last REAL token of each row, so they are correct under left and right padding; ``mean`` and
    ``max`` ignore padded positions (even if those hold NaN or inf). Every row needs at least one real token.
    To pool many tensors over one mask, build a :class:`MaskPooler` once and call it per tensor.
    """
    return MaskPooler(_check_pool_inputs(states, mask), poolings)(states)


class MaskPooler:
    """Pools any number of (B, T, D) tensors over one attention mask.

    Everything that depends only on the mask (token counts, the first and last real positions, the span of
    positions real in every row) is computed once, so pooling each of a model's layers costs a handful of
    tensor operations: extraction pools every layer of every batch, and per-call overhead is what it pays.
    """

    MAX_RUNS = 4  # more runs of equal spans than this: max masks the ragged positions instead

    def __init__(
        self,
        mask: torch.Tensor,
        poolings: Sequence[str],
        check_finite: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        """`device`: where the states to pool will be. The mask's bookkeeping is done where the mask is, so that
        a host mask (as the tokenizer makes it) costs no waits for a GPU; what pooling needs is moved once."""
        if mask.dim() != 2:
            raise InputError(f"mask must have shape (batch, tokens), got {tuple(mask.shape)}")
        _check_poolings(poolings)
        self.poolings = tuple(dict.fromkeys(poolings))
        self.mask = mask != 0
        batch, tokens = self.mask.shape
        if batch and tokens == 0:
            raise InputError("every row needs at least one real token, got a batch with no tokens")
        counts = self.mask.sum(dim=1)
        if batch and bool(counts.min() == 0):
            raise InputError("every row needs at least one real token, but a row's attention mask is all zeros")
        self.counts = counts.to(torch.float32).unsqueeze(-1)
        self.check_finite = check_finite
        self.weights: dict[torch.dtype, torch.Tensor] = {}  # (B, 1, T) rows of mask / count for bmm, per dtype
        self.lowest: dict[torch.dtype, torch.Tensor] = {}  # -inf, the fill of masked positions for max
        self.rows = torch.arange(batch, device=mask.device)
        self.runs: list[tuple[int, int, int, int]] | None = None
        self.first: int | torch.Tensor = 0
        self.last: int | torch.Tensor = 0
        self.span: tuple[int, int] = (0, 0)
        self.ragged: list[tuple[int, int, torch.Tensor]] = []
        if batch:
            first = self.mask.to(torch.uint8).argmax(dim=1)  # first index holding the maximum (a real token)
            last = tokens - 1 - self.mask.flip(1).to(torch.uint8).argmax(dim=1)
            self.first, self.last = self._same_or_each(first), self._same_or_each(last)
            self.runs = self._runs(first, last, counts)
            self.span, self.ragged = self._max_regions() if self.runs is None else ((0, 0), [])
        if device is not None and torch.device(device) != self.mask.device:
            self._move(torch.device(device))

    def _move(self, device: torch.device) -> None:
        def move(value: Any) -> Any:
            return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value

        self.mask, self.counts, self.rows = move(self.mask), move(self.counts), move(self.rows)
        self.first, self.last = move(self.first), move(self.last)
        self.ragged = [(lo, hi, move(mask)) for lo, hi, mask in self.ragged]

    @staticmethod
    def _same_or_each(index: torch.Tensor) -> int | torch.Tensor:
        """One position for the whole batch (a plain slice, no gather) when every row agrees."""
        value = int(index[0])
        return value if bool((index == value).all()) else index

    @staticmethod
    def _runs(first: torch.Tensor, last: torch.Tensor, counts: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
        """Consecutive rows whose real tokens are the same unbroken span, as (row0, row1, token0, token1): max
        then reads just those slices, one reduction per run and nothing masked. Batches sorted by length have a
        few runs; None when there are more than MAX_RUNS or a row's real tokens have gaps."""
        spans = torch.stack([first, last + 1, counts]).tolist()
        runs: list[tuple[int, int, int, int]] = []
        for row, (start, stop, count) in enumerate(zip(*spans, strict=True)):
            if stop - start != count:
                return None
            if runs and runs[-1][2:] == (start, stop):
                runs[-1] = (runs[-1][0], row + 1, start, stop)
            else:
                runs.append((row, row + 1, start, stop))
        return runs if len(runs) <= MaskPooler.MAX_RUNS else None

    def _max_regions(self) -> tuple[tuple[int, int], list[tuple[int, int, torch.Tensor]]]:
        """The span real in every row (reduced without masking: length-sorted batches make it most of the
        sequence) and the ragged positions on either side, with their masks, that max must mask."""
        tokens = self.mask.shape[1]
        everywhere = torch.nonzero(self.mask.all(dim=0)).flatten().tolist()
        if not everywhere or everywhere[-1] + 1 - everywhere[0] != len(everywhere):
            return (0, 0), [(0, tokens, self.mask.unsqueeze(-1))]
        a, b = everywhere[0], everywhere[-1] + 1
        sides = [(lo, hi) for lo, hi in ((0, a), (b, tokens)) if hi > lo]
        return (a, b), [(lo, hi, self.mask[:, lo:hi].unsqueeze(-1)) for lo, hi in sides]

    def __call__(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        if states.dim() != 3 or tuple(states.shape[:2]) != tuple(self.mask.shape):
            raise InputError(f"states must have shape (batch, tokens, dim) = ({', '.join(map(str, self.mask.shape))}, "
                             f"dim), got {tuple(states.shape)}")  # fmt: skip
        if states.shape[0] == 0:
            return {
                p: torch.zeros(0, states.shape[2], dtype=torch.float32, device=states.device) for p in self.poolings
            }
        return {p: getattr(self, "_" + p)(states) for p in self.poolings}

    def pool_into(self, states: torch.Tensor, out: torch.Tensor, columns: dict[str, int]) -> int:
        """Pool `states` with each pooling of `columns` ({pooling: first column}) and write the values, converted,
        into those columns of `out` (B, columns). Returns how many written values are not finite; when not zero
        the caller must not trust `out` (with check_finite=False, NaN or inf at padded positions may have leaked
        into a mean) and pools the batch again the exact way. :func:`spin_cache.model.kernels.pool_into` does the same
        in one pass on the CPU."""
        pooled = self(states)
        width = states.shape[2]
        not_finite = 0
        for pooling, column in columns.items():
            target = out[:, column : column + width]
            target.copy_(pooled[pooling])
            not_finite += int((~torch.isfinite(target)).sum())
        return not_finite

    def _pick(self, states: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int):  # a copy, not a view: a view would keep the whole (B, T, D) tensor alive
            return states[:, index].to(torch.float32, copy=True)
        return states[self.rows, index].to(torch.float32)

    def _first(self, states: torch.Tensor) -> torch.Tensor:
        return self._pick(states, self.first)

    def _last(self, states: torch.Tensor) -> torch.Tensor:
        return self._pick(states, self.last)

    def _mean(self, states: torch.Tensor) -> torch.Tensor:
        # A batched matmul with mask / count reads the states once, without masking a copy; padded positions
        # holding NaN or inf would leak through it (0 * inf), so such rare batches take the exact, slower route
        # (with check_finite=False the caller checks instead: extraction checks each batch's packed values once).
        # Sums of half-precision values are taken in float32.
        full = states if states.dtype in (torch.float32, torch.float64) else states.to(torch.float32)
        if full.dtype not in self.weights:
            self.weights[full.dtype] = (self.mask.to(full.dtype) / self.counts.to(full.dtype)).unsqueeze(1)
        mean = torch.bmm(self.weights[full.dtype], full).squeeze(1).to(torch.float32)
        if self.check_finite and not bool(torch.isfinite(mean).all()):
            zeroed = torch.where(
                self.mask.unsqueeze(-1), states, torch.zeros((), dtype=states.dtype, device=states.device)
            )
            mean = zeroed.sum(dim=1, dtype=torch.float32) / self.counts
        return mean

    def _max(self, states: torch.Tensor) -> torch.Tensor:
        if self.runs is not None:
            best = torch.empty((states.shape[0], states.shape[2]), dtype=states.dtype, device=states.device)
            for row0, row1, start, stop in self.runs:
                torch.amax(states[row0:row1, start:stop], dim=1, out=best[row0:row1])
            return best.to(torch.float32)
        if states.dtype not in self.lowest:
            self.lowest[states.dtype] = torch.full((), float("-inf"), dtype=states.dtype, device=states.device)
        lowest = self.lowest[states.dtype]
        a, b = self.span
        peak = states[:, a:b].amax(dim=1) if b > a else None
        for lo, hi, mask in self.ragged:
            part = torch.where(mask, states[:, lo:hi], lowest).amax(dim=1)
            peak = part if peak is None else torch.maximum(peak, part)
        assert peak is not None  # every row has a real token, so some region is non-empty
        return peak.to(torch.float32)


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``states`` (B, T, D), any float dtype, over the real tokens of ``mask`` (B, T) of 0/1.

    Returns a (B, D) float32 tensor computed on the states' device. See :func:`pool_many`.
    """
    return pool_many(states, mask, (pooling,))[pooling]
