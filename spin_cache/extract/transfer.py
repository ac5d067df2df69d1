"""Device to host: asynchronous copies of pooled blocks into pinned host memory on a side stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.loading import TORCH_DTYPES

#: One batch's pooled readings: ``pooled[(kind, layer)][pooling]`` is a (rows, D) tensor.
Pooled = dict[tuple[str, int], dict[str, torch.Tensor]]


@dataclass
class PooledBatch:
    """One batch's pooled readings: ``pooled[(kind, layer)][pooling]`` is a (len(rows), D) tensor, row i of which
    belongs to the block's row ``rows[i]``."""

    rows: list[int]
    pooled: Pooled


def _pack(pieces: list[torch.Tensor], dtype: str) -> torch.Tensor:
    """Concatenate float32 pieces along columns, converting to the stored dtype in the same pass."""
    shape = (pieces[0].shape[0], sum(p.shape[1] for p in pieces))
    out = torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=pieces[0].device)
    return torch.cat(pieces, dim=1, out=out)


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """(min, max) as a float32 tensor on the values' device (read later: no device sync here)."""
    return torch.stack(torch.aminmax(values)).to(torch.float32)


@dataclass
class Landed:
    """A batch whose packed values are in the block buffer, with their min/max, and the pooled tensors they came
    from (needed only if the values are not all finite)."""

    rows: list[int]
    min_max: tuple[float, float]
    pooled: Pooled


class HostCopier:
    """On CUDA, packs each batch on the device and copies it with a non-blocking copy into its slice of the
    pinned host block buffer on a side stream, handed back one batch later, so that nothing waits for the device
    in between (the min/max that decides a batch's fate is read only then)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pending: list[tuple[torch.cuda.Event, torch.Tensor, PooledBatch]] = []

    def submit(self, pieces: list[torch.Tensor], target: torch.Tensor, part: PooledBatch, dtype: str) -> list[Landed]:
        """Pack `pieces` (the batch's readings, in column order) into `dtype` and start copying them into `target`;
        returns the batch before it once it has landed (none for the first)."""
        assert self.stream is not None, "on the CPU batches are pooled straight into the buffer"
        packed = _pack(pieces, dtype)
        min_max = _min_max(packed)
        host_min_max = torch.empty(2, dtype=torch.float32, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(packed.device))
        with torch.cuda.stream(self.stream):
            target.copy_(packed, non_blocking=True)
            host_min_max.copy_(min_max, non_blocking=True)
            packed.record_stream(self.stream)
            min_max.record_stream(self.stream)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending.append((event, host_min_max, part))
        return [self._pop()] if len(self.pending) > 1 else []

    def _pop(self) -> Landed:
        event, host_min_max, part = self.pending.pop(0)
        event.synchronize()
        return Landed(part.rows, tuple(host_min_max.tolist()), part.pooled)

    def drain(self) -> list[Landed]:
        """Wait for every batch still in flight; returns them in order."""
        return [self._pop() for _ in range(len(self.pending))]


def host_view(values: torch.Tensor) -> np.ndarray:
    """A numpy view of host values (numpy has no bfloat16: its raw bits, as uint16)."""
    if values.dtype == torch.bfloat16:
        return values.view(torch.int16).cpu().numpy().view(np.uint16)
    return values.cpu().numpy()
