"""Pool one block of rows: batches through the hooked forward, pooled values packed into the block buffer."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SpinCacheError
from ..model.hooks import pool_layers_into, run_layers
from ..model.loading import TORCH_DTYPES, LoadedModel
from ..store.activation_store import ActivationStore
from ..store.layout import FLOAT16_MAX, Layout
from .schedule import CoreForWriter
from .transfer import HostCopier, Landed, Pooled, PooledBatch, host_view


@dataclass
class PooledBlock:
    """One row block's pooled values in the stored dtype, ready for the writer."""

    buffer: torch.Tensor  # (rows, every array's columns), rows in the order they were pooled (by length)
    arrays: dict[tuple[str, str, int], np.ndarray]  # column views of `buffer`, one per array
    row_index: np.ndarray  # the block's row r is buffer row row_index[r]
    overflow: int  # values beyond float16's range


@dataclass
class _BlockBuffer:
    """Where a block's batches land: a (rows, columns) buffer in the stored dtype, filled in pooling order, one
    contiguous slice per batch; `position` maps the block's rows to buffer rows."""

    buffer: torch.Tensor
    host: np.ndarray  # a numpy view of `buffer`
    layout: Layout
    keys: list[tuple[str, str, int]]  # (kind, pooling, layer) of each array, in column order
    offsets: np.ndarray  # array j's columns are offsets[j]:offsets[j + 1]
    start: int  # the block's first row
    position: np.ndarray
    filled: int = 0

    def next_rows(self, n: int) -> torch.Tensor:
        """The buffer's next `n` rows, for the next batch."""
        target = self.buffer[self.filled : self.filled + n]
        self.filled += n
        return target

    def put(self, rows: list[int], values: torch.Tensor) -> None:
        """Write a batch's values (stored dtype, rows in `rows` order) into the buffer rows of those rows."""
        self.host[self.position[np.asarray(rows) - self.start]] = host_view(values)

    def columns(self) -> dict[tuple[str, int], dict[str, int]]:
        """``{(kind, layer): {pooling: first column}}``, as :func:`spin_cache.model.hooks.pool_layers_into` wants."""
        columns: dict[tuple[str, int], dict[str, int]] = {}
        for j, (kind, pooling, layer) in enumerate(self.keys):
            columns.setdefault((kind, layer), {})[pooling] = int(self.offsets[j])
        return columns

    def finish(self, overflow: int) -> PooledBlock:
        """The filled block, with one column view per array."""
        arrays = {key: self.host[:, self.offsets[j] : self.offsets[j + 1]] for j, key in enumerate(self.keys)}
        return PooledBlock(buffer=self.buffer, arrays=arrays, row_index=self.position, overflow=overflow)


def pool_block(
    loaded: LoadedModel,
    store: ActivationStore,
    encodings: list[list[int]],
    start: int,
    stop: int,
    batch_size: int,
    bar: object,
    spare: torch.Tensor | None = None,
    core_for_writer: CoreForWriter | None = None,
) -> PooledBlock:
    """Pool rows `start`..`stop` (one block) of `encodings` through the model, in batches sorted by length.

    Each batch's pooled values land in the stored dtype as one contiguous slice of a block-wide buffer, in
    pooling order: nothing is scattered on the model's thread, the writer gathers rows back into place as it cuts
    chunks. Off CUDA each activation is pooled straight into that slice inside its forward hook (by the fused
    kernel on the CPU, see :mod:`spin_cache.model.kernels`); on CUDA see :func:`_pool_batches_on_cuda`.

    Parameters
    ----------
    bar
        A tqdm bar, updated with the rows pooled.
    spare
        A buffer the writer has finished with, reused when it fits (a fresh one costs a page fault per 4 KiB,
        and pinning).
    core_for_writer
        On the CPU, sets the model's threads before each batch.
    """
    layout = store.layout
    keys = layout.array_keys()
    offsets = np.cumsum([0] + [layout.widths[k[0]] for k in keys])
    buffer = _block_buffer(spare, (stop - start, int(offsets[-1])), layout.dtype, loaded.device)
    # Longest first: the first batch shows at once whether memory suffices.
    order = sorted(range(start, stop), key=lambda i: (-len(encodings[i]), i))
    position = np.empty(len(order), dtype=np.int64)  # buffer row of each of the block's rows
    position[np.asarray(order) - start] = np.arange(len(order))
    target = _BlockBuffer(buffer, host_view(buffer), layout, keys, offsets, start, position)
    batches = _batches(encodings, order, batch_size, core_for_writer)
    if loaded.device.type == "cuda":
        overflow = _pool_batches_on_cuda(loaded, encodings, batches, target, bar)
    else:
        overflow = _pool_batches_in_place(loaded, encodings, batches, target, bar)
    return target.finish(overflow)


def _batches(
    encodings: list[list[int]], order: list[int], batch_size: int, core_for_writer: CoreForWriter | None
) -> Iterator[list[int]]:
    """The rows of each batch, in `order`; `core_for_writer` sets the model's threads before each."""
    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]
        if core_for_writer is not None:
            core_for_writer.before_batch(len(rows), max(len(encodings[i]) for i in rows))
        yield rows


def _pool_batches_in_place(
    loaded: LoadedModel, encodings: list[list[int]], batches: Iterator[list[int]], target: _BlockBuffer, bar: object
) -> int:
    """Off CUDA: each batch pooled straight into its slice of the buffer; returns the values beyond float16."""
    columns = target.columns()
    overflow = 0
    for rows in batches:
        if pool_into(loaded, encodings, rows, columns, target.next_rows(len(rows))):
            overflow += _redo(loaded, encodings, target, rows, None)
        bar.update(len(rows))  # type: ignore[attr-defined]
    return overflow


def _pool_batches_on_cuda(
    loaded: LoadedModel, encodings: list[list[int]], batches: Iterator[list[int]], target: _BlockBuffer, bar: object
) -> int:
    """On CUDA: each batch's pooled values are packed on the device and copied into the pinned buffer on a side
    stream, landing only after the next batch's forward has been queued, so the GPU never waits on the copy.
    Returns the values beyond float16."""
    copier = HostCopier(loaded.device)
    overflow = 0
    for rows in batches:
        for part in pooled_batches(loaded, encodings, rows, target.layout, check_finite=False):
            pieces = [part.pooled[(k, layer)][p] for k, p, layer in target.keys]
            for landed in copier.submit(pieces, target.next_rows(len(part.rows)), part, target.layout.dtype):
                overflow += _check_landed(loaded, encodings, target, landed)
        bar.update(len(rows))  # type: ignore[attr-defined]
    for landed in copier.drain():
        overflow += _check_landed(loaded, encodings, target, landed)
    return overflow


def _check_landed(loaded: LoadedModel, encodings: list[list[int]], target: _BlockBuffer, landed: Landed) -> int:
    """A landed batch that is finite in the stored dtype is finite in float32 too and in place; any other is
    redone. Returns the values beyond float16."""
    if all(math.isfinite(v) for v in landed.min_max):
        return 0
    return _redo(loaded, encodings, target, landed.rows, landed.pooled)


def _redo(
    loaded: LoadedModel, encodings: list[list[int]], target: _BlockBuffer, rows: list[int], pooled: Pooled | None
) -> int:
    """Replace a batch's values by the exact route's; returns the count of values beyond float16's range."""
    beyond = 0
    for part_rows, values, part_beyond in _exact(loaded, encodings, target, rows, pooled):
        target.put(part_rows, values)
        beyond += part_beyond
    return beyond


def _exact(
    loaded: LoadedModel, encodings: list[list[int]], target: _BlockBuffer, rows: list[int], pooled: Pooled | None
) -> Iterator[tuple[list[int], torch.Tensor, int]]:
    """The slow route, for a batch whose fast values are not all finite: the float32 values (`pooled`, when the
    batch has them) tell values beyond float16's range (counted) from NaN or inf, which padded positions may have
    leaked into the fast mean: such a batch is pooled again with every padded position checked.

    Yields (rows, values in the stored dtype, count beyond float16) per part of the batch."""
    layout = target.layout
    parts = (
        [PooledBatch(rows, pooled)]
        if pooled is not None
        else pooled_batches(loaded, encodings, rows, layout, check_finite=True)
    )
    for part in parts:
        values = torch.cat([part.pooled[(k, layer)][p] for k, p, layer in target.keys], dim=1)
        low, high = (float(v) for v in torch.aminmax(values))
        if pooled is not None and not (math.isfinite(low) and math.isfinite(high)):
            yield from _exact(loaded, encodings, target, part.rows, None)
            continue
        beyond = _count_beyond_float16(values, low, high) if layout.dtype == "float16" else 0
        yield part.rows, values.to(TORCH_DTYPES[layout.dtype]), beyond


def _block_buffer(spare: torch.Tensor | None, shape: tuple[int, int], dtype: str, device: torch.device) -> torch.Tensor:
    torch_dtype = TORCH_DTYPES[dtype]
    if spare is not None and spare.dtype == torch_dtype and spare.shape[0] >= shape[0] and spare.shape[1] == shape[1]:
        return spare[: shape[0]]
    if device.type == "cuda":
        return torch.empty(shape, dtype=torch_dtype, pin_memory=True)
    # numpy asks for transparent huge pages for large arrays, torch does not: the writer reads this buffer a
    # 128-byte run per row and chunk, which small pages make slower
    array = np.empty(shape, dtype=np.uint16 if dtype == "bfloat16" else np.dtype(dtype))
    return torch.from_numpy(array).view(torch_dtype)


def pool_into(
    loaded: LoadedModel,
    encodings: list[list[int]],
    rows: list[int],
    columns: dict[tuple[str, int], dict[str, int]],
    target: torch.Tensor,
) -> int:
    """Run one batch (`rows` of `encodings`) off CUDA, its pooled values written into `target` at `columns`
    (see :func:`spin_cache.model.hooks.pool_layers_into`); returns the count of values that are not finite (then
    the batch must be pooled again the exact way)."""
    batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
    return pool_layers_into(loaded, batch["input_ids"], batch["attention_mask"], columns, target)


def pooled_batches(
    loaded: LoadedModel, encodings: list[list[int]], rows: list[int], layout: Layout, check_finite: bool
) -> list[PooledBatch]:
    """Run one batch (`rows` of `encodings`) and pool it with :func:`spin_cache.model.hooks.run_layers`; a batch
    that runs out of GPU memory is split in two and retried, never lost."""
    batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
    try:
        pooled = run_layers(  # host tensors: run_layers reads the mask on the host, then moves both
            loaded,
            batch["input_ids"],
            batch["attention_mask"],
            layout.poolings,
            kinds=layout.kinds,
            copy=False,
            check_finite=check_finite,
        )
        return [PooledBatch(rows, pooled)]
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise SpinCacheError(
                f"one example of {len(encodings[rows[0]])} tokens does not fit in GPU memory; "
                "lower --max-length or use a larger GPU"
            ) from None
        torch.cuda.empty_cache()
        half = len(rows) // 2
        return pooled_batches(loaded, encodings, rows[:half], layout, check_finite) + pooled_batches(
            loaded, encodings, rows[half:], layout, check_finite
        )


def _count_beyond_float16(values: torch.Tensor, low: float, high: float) -> int:
    """Values that float16 cannot hold (they would be stored as inf). The values' min and max decide; the exact
    count (a few passes more) is taken only when something is out of range."""
    if max(-low, high) <= FLOAT16_MAX:
        return 0
    return int((values.abs() > FLOAT16_MAX).sum())
