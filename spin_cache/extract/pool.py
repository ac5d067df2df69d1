"""Pool one block of rows: batches through the hooked forward, pooled values packed into the block buffer."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SpinCacheError
from ..model.hooks import pool_layers_into, run_layers
from ..model.loading import LoadedModel
from ..store.activation_store import ActivationStore
from ..store.layout import FLOAT16_MAX, Layout
from .schedule import _CoreForWriter
from .transfer import _TORCH_DTYPES, _host_view, _HostCopier, _Landed, _Pooled


@dataclass
class _PooledBlock:
    """One row block's pooled values in the stored dtype, ready for the writer."""

    buffer: torch.Tensor  # (rows, every array's columns), rows in the order they were pooled (by length)
    arrays: dict[tuple[str, str, int], np.ndarray]  # column views of `buffer`, one per array
    row_index: np.ndarray  # the block's row r is buffer row row_index[r]
    overflow: int  # values beyond float16's range


def _pool_block(
    loaded: LoadedModel,
    store: ActivationStore,
    encodings: list[list[int]],
    start: int,
    stop: int,
    batch_size: int,
    bar: object,
    spare: torch.Tensor | None = None,
    core_for_writer: _CoreForWriter | None = None,
) -> _PooledBlock:
    """Pool one row block, batches sorted by length. Each batch's pooled values land in the stored dtype as one
    contiguous slice of a block-wide buffer, in pooling order: nothing is scattered on the model's thread, the
    writer gathers rows back into place as it cuts chunks. On the CPU each activation is pooled straight into
    that slice inside its forward hook (by the fused kernel, see `spin_cache.model.kernels`); on CUDA the batch's
    pooled values are packed on the device and copied into the pinned buffer on a side stream, landing only
    after the next batch's forward has been queued, so the GPU never waits on it. A `spare` buffer the writer
    has finished with is reused (a fresh one costs a page fault per 4 KiB, and pinning). `core_for_writer`, on
    the CPU, sets the model's threads before each batch."""
    layout = store.layout
    keys = layout.array_keys()
    offsets = np.cumsum([0] + [layout.widths[k[0]] for k in keys])
    buffer = _block_buffer(spare, (stop - start, int(offsets[-1])), layout.dtype, loaded.device)
    block = _host_view(buffer)
    # Longest first: the first batch shows at once whether memory suffices.
    order = sorted(range(start, stop), key=lambda i: (-len(encodings[i]), i))
    position = np.empty(len(order), dtype=np.int64)  # buffer row of each of the block's rows
    position[np.asarray(order) - start] = np.arange(len(order))
    copier = _HostCopier(loaded.device)
    overflow = 0
    filled = 0

    def exact(rows: list[int], pooled: dict | None) -> Iterator[tuple[list[int], torch.Tensor, int]]:
        """The slow route, for a batch whose fast values are not all finite: the float32 values tell values beyond
        float16's range (counted) from NaN or inf, which padded positions may have leaked into the fast mean: such
        a batch is pooled again the exact way."""
        parts = (
            [_Pooled(rows, pooled)]
            if pooled is not None
            else _pooled_batches(loaded, encodings, rows, layout, check_finite=True)
        )
        for part in parts:
            values = torch.cat([part.pooled[(k, layer)][p] for k, p, layer in keys], dim=1)
            low, high = (float(v) for v in torch.aminmax(values))
            if pooled is not None and not (math.isfinite(low) and math.isfinite(high)):
                yield from exact(part.rows, None)
                continue
            beyond = _count_beyond_float16(values, low, high) if layout.dtype == "float16" else 0
            yield part.rows, values.to(_TORCH_DTYPES[layout.dtype]), beyond

    def redo(rows: list[int], pooled: dict | None) -> int:
        """Replace a batch's values by the slow route's; returns the count of values beyond float16's range."""
        beyond = 0
        for part_rows, values, part_beyond in exact(rows, pooled):
            block[position[np.asarray(part_rows) - start]] = _host_view(values)
            beyond += part_beyond
        return beyond

    def check(landed: _Landed) -> int:
        """A landed batch that is finite in the stored dtype is finite in float32 too and in place; any other is
        redone."""
        return 0 if all(math.isfinite(v) for v in landed.min_max) else redo(landed.rows, landed.pooled)

    columns: dict[tuple[str, int], dict[str, int]] = {}
    for j, (kind, pooling, layer) in enumerate(keys):
        columns.setdefault((kind, layer), {})[pooling] = int(offsets[j])

    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]
        if core_for_writer is not None:
            core_for_writer.before_batch(len(rows), max(len(encodings[i]) for i in rows))
        if loaded.device.type != "cuda":  # pooled straight into the buffer (by the fused kernel on the CPU)
            target = buffer[filled : filled + len(rows)]
            filled += len(rows)
            if _pool_into(loaded, encodings, rows, columns, target):
                overflow += redo(rows, None)
            bar.update(len(rows))  # type: ignore[attr-defined]
            continue
        for part in _pooled_batches(loaded, encodings, rows, layout, check_finite=False):
            pieces = [part.pooled[(k, layer)][p] for k, p, layer in keys]
            target = buffer[filled : filled + len(part.rows)]
            filled += len(part.rows)
            for landed in copier.submit(pieces, target, part, layout.dtype):
                overflow += check(landed)
        bar.update(len(rows))  # type: ignore[attr-defined]
    for landed in copier.drain():
        overflow += check(landed)
    arrays = {key: block[:, offsets[j] : offsets[j + 1]] for j, key in enumerate(keys)}
    return _PooledBlock(buffer=buffer, arrays=arrays, row_index=position, overflow=overflow)


def _block_buffer(spare: torch.Tensor | None, shape: tuple[int, int], dtype: str, device: torch.device) -> torch.Tensor:
    torch_dtype = _TORCH_DTYPES[dtype]
    if spare is not None and spare.dtype == torch_dtype and spare.shape[0] >= shape[0] and spare.shape[1] == shape[1]:
        return spare[: shape[0]]
    if device.type == "cuda":
        return torch.empty(shape, dtype=torch_dtype, pin_memory=True)
    # numpy asks for transparent huge pages for large arrays, torch does not: the writer reads this buffer a
    # 128-byte run per row and chunk, and 4 KiB pages made its reads ~5% slower
    array = np.empty(shape, dtype=np.uint16 if dtype == "bfloat16" else np.dtype(dtype))
    return torch.from_numpy(array).view(torch_dtype)


def _pool_into(
    loaded: LoadedModel,
    encodings: list[list[int]],
    rows: list[int],
    columns: dict[tuple[str, int], dict[str, int]],
    target: torch.Tensor,
) -> int:
    """Run one batch off CUDA, its pooled values written into `target`; returns the count of values that are
    not finite (then the batch must be pooled again the exact way)."""
    batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
    return pool_layers_into(loaded, batch["input_ids"], batch["attention_mask"], columns, target)


def _pooled_batches(
    loaded: LoadedModel, encodings: list[list[int]], rows: list[int], layout: Layout, check_finite: bool
) -> list[_Pooled]:
    """Run one batch; a batch that runs out of GPU memory is split in two and retried, never lost."""
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
        return [_Pooled(rows, pooled)]
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise SpinCacheError(
                f"one example of {len(encodings[rows[0]])} tokens does not fit in GPU memory; "
                "lower --max-length or use a larger GPU"
            ) from None
        torch.cuda.empty_cache()
        half = len(rows) // 2
        return _pooled_batches(loaded, encodings, rows[:half], layout, check_finite) + _pooled_batches(
            loaded, encodings, rows[half:], layout, check_finite
        )


def _count_beyond_float16(values: torch.Tensor, low: float, high: float) -> int:
    """Values that float16 cannot hold (they would be stored as inf). The values' min and max decide; the exact
    count (a few passes more) is taken only when something is out of range."""
    if max(-low, high) <= FLOAT16_MAX:
        return 0
    return int((values.abs() > FLOAT16_MAX).sum())


# stored and compute dtypes by name
