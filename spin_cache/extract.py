"""Run the model once over a dataset and stream every layer's pooled activations into an ActivationStore.

Rows keep the dataset's order (train, dev, test) and are cut into blocks; inside a block, examples are sorted by
length into batches so that padding stays small. A block is pooled on the model's device, handed to a background
writer thread and committed with a marker; a rerun skips committed blocks, so a crash loses at most the blocks in
flight and the finished store is identical to an uninterrupted run (batches depend only on the block).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from . import __version__, kernels
from .allocator import pin_malloc_thresholds
from .data import LabelledDataset, load_dataset
from .errors import InputError, IntegrityError, SpinCacheError, StoreMismatchError
from .lock import StoreLock
from .models import (
    DEFAULT_MODEL,
    KINDS,
    POOLINGS,
    LoadedModel,
    _resolve_device,
    default_poolings,
    load_model,
    model_identity,
    pool_layers_into,
    resolve_model_path,
    run_layers,
)
from .outputs import check_store_destination
from .store import (
    FLOAT16_MAX,
    FORMAT_VERSION,
    STORE_DTYPES,
    ActivationStore,
    Layout,
    _fs,
    default_block_rows,
    describe_differences,
    dtype_bytes,
    fingerprint_inputs,
    new_manifest,
)

DEFAULT_CHUNK_COLS = 64
DEFAULT_MAX_LENGTH = 512
DEFAULT_STORES_DIR = "stores"


@dataclass
class ExtractionReport:
    """What one `extract` call did."""

    store: ActivationStore
    cache_hit: bool = False
    resumed_blocks: int = 0
    written_blocks: int = 0
    seconds: float = 0.0
    extract_seconds: float = 0.0  # forward + pooling + writing, model loading and tokenising excluded
    n_truncated: int = 0
    overflow: int = 0
    messages: list[str] = field(default_factory=list)


def extract(
    model: str = DEFAULT_MODEL,
    data: str | LabelledDataset = "sst2",
    out: str | os.PathLike | None = None,
    **options: object,
) -> ActivationStore:
    """Extract pooled activations of `model` over `data` into a store at `out` and return it.

    Options are those of `run_extraction` (kinds, poolings, max_length, batch_size, device, dtype, ...).
    """
    return run_extraction(model=model, data=data, out=out, **options).store  # type: ignore[arg-type]


def run_extraction(
    *,
    model: str = DEFAULT_MODEL,
    data: str | LabelledDataset = "sst2",
    out: str | os.PathLike | None = None,
    train: str | None = None,
    dev: str | None = None,
    test: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    kinds: Sequence[str] = KINDS,
    poolings: Sequence[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "float16",
    compute_dtype: str = "auto",
    block_rows: int | None = None,
    chunk_cols: int = DEFAULT_CHUNK_COLS,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
) -> ExtractionReport:
    """The extraction behind `spin-cache extract`; see `extract` for the short form.

    `workers=N` runs N local processes (one model each, on cuda:i when there are several GPUs), each writing a
    disjoint set of row blocks; `shard=(i, n)` is one such worker, for launching by hand on several machines
    (shard 0 creates the store, the others wait for it). The store is complete once every block is committed.
    """
    options = {k: v for k, v in locals().items() if k not in ("workers", "shard")}
    t0 = time.perf_counter()
    _check_options(kinds, poolings, dtype, compute_dtype, batch_size, chunk_cols, block_rows)
    compute_dtype = resolve_compute_dtype(compute_dtype, device)
    _check_parallel(workers, shard)
    dataset = (
        data if isinstance(data, LabelledDataset) else _load_data(data, train, dev, test, text_column, label_column)
    )

    model_path = resolve_model_path(model)
    identity = model_identity(model_path)
    tokenizer, config = _load_tokenizer_and_config(model_path)
    is_decoder = _is_decoder(config)
    poolings = tuple(poolings) if poolings else default_poolings(is_decoder)
    max_length = _resolve_max_length(max_length, tokenizer, config)
    settings = {
        "kinds": list(kinds),
        "poolings": list(poolings),
        "max_length": max_length,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
    }
    dataset_info = {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint(),
        "n_rows": len(dataset),
        "rows_per_split": {s: int((dataset.splits == s).sum()) for s in ("train", "dev", "test")},
        "label_names": list(dataset.label_names),
    }
    dataset_info["rows_per_split"] = {k: v for k, v in dataset_info["rows_per_split"].items() if v}
    model_info = {"name": str(model), "path": str(model_path), **identity}
    probe_manifest = {
        "format_version": FORMAT_VERSION,
        "model": model_info,
        "dataset": dataset_info,
        "extraction": settings,
    }
    fingerprint = _fingerprint(probe_manifest)
    url = str(out) if out is not None else os.path.join(DEFAULT_STORES_DIR, fingerprint[:16])

    existing = _existing_store(url, probe_manifest, overwrite, storage_options)
    if existing is not None and existing.is_complete:
        existing.check_reusable()  # a cache hit only on a complete, consistent store; else exit 4 naming why
        return ExtractionReport(store=existing, cache_hit=True, seconds=time.perf_counter() - t0)

    with StoreLock(url, storage_options, shard if workers == 1 else None):
        if not progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        if existing is None and shard is not None and shard[0] != 0:
            existing = _wait_for_store(url, probe_manifest, storage_options)
        if shard is not None:
            device = _shard_device(device, shard)
        loaded = load_model(str(model_path), device=device, dtype=_TORCH_DTYPES[compute_dtype])
        encodings, n_tokens, truncated = _tokenize(loaded, dataset, max_length)
        if existing is None:
            widths = {"hidden": loaded.adapter.hidden_size, "ffn": loaded.adapter.ffn_size}
            layers = {
                "hidden": list(range(loaded.adapter.num_layers + 1)),
                "ffn": list(range(1, loaded.adapter.num_layers + 1)),
            }
            row_bytes = sum(widths[k] * len(layers[k]) * len(poolings) for k in kinds) * dtype_bytes(dtype)
            layout = Layout(
                kinds=tuple(kinds),
                poolings=poolings,
                layers={k: layers[k] for k in kinds},
                widths={k: widths[k] for k in kinds},
                n_rows=len(dataset),
                dtype=dtype,
                block_rows=block_rows or default_block_rows(row_bytes, chunk_cols * dtype_bytes(dtype)),
                chunk_cols=chunk_cols,
            )
            model_info |= {
                "family": loaded.adapter.family,
                "is_decoder": loaded.adapter.is_decoder,
                "num_layers": loaded.adapter.num_layers,
            }
            manifest = new_manifest(model=model_info, dataset=dataset_info, extraction=settings, layout=layout)
            store = ActivationStore.create(
                url,
                manifest,
                _examples_table(dataset, n_tokens, truncated),
                overwrite=overwrite,
                storage_options=storage_options,
            )
        else:
            store = ActivationStore.open(url, mode="a", storage_options=storage_options)
            if not store.is_complete and (shard is None or shard[0] == 0):
                _repair_examples(store, _examples_table(dataset, n_tokens, truncated))

        report = ExtractionReport(store=store, n_truncated=int(truncated.sum()))
        committed = store.committed_blocks()
        report.resumed_blocks = len(committed)
        todo = [b for b in range(store.layout.n_blocks) if b not in committed]
        if shard is not None:
            todo = [b for b in todo if b % shard[1] == shard[0]]
        t_blocks = time.perf_counter()
        if workers > 1:
            del loaded  # each worker loads its own copy
            _run_workers(options, url, workers, store, len(todo), progress)
            loaded = None
        else:
            _extract_blocks(loaded, store, encodings, todo, batch_size, progress, report)
        report.extract_seconds = time.perf_counter() - t_blocks
        report.written_blocks = len(todo) if workers > 1 else report.written_blocks
        committed = store.committed_blocks()
        report.overflow = sum(int(m.get("overflow", 0)) for m in committed.values())
        store = ActivationStore.open(url, mode="a", storage_options=storage_options)  # a worker may have finished it
        report.store = store
        if len(committed) == store.layout.n_blocks and not store.is_complete:
            store.mark_complete(
                {
                    "spin_cache_version": __version__,
                    "torch_version": torch.__version__,
                    "transformers_version": _transformers_version(),
                    "device": str(loaded.device) if loaded is not None else f"{workers} workers on {device}",
                    "pooling": _pooling_route(loaded),
                    "batch_size": batch_size,
                    "padding_side": tokenizer.padding_side,
                    "n_truncated": report.n_truncated,
                    "overflow": report.overflow,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        if report.overflow:
            report.messages.append(
                f"{report.overflow} values were outside float16's range and are stored as ±inf; "
                "rerun with --dtype bfloat16 or --dtype float32 --overwrite"
            )
        report.seconds = time.perf_counter() - t0
        return report


# ------------------------------------------------------------------------------------------------------------


def _extract_blocks(
    loaded: LoadedModel,
    store: ActivationStore,
    encodings: list[list[int]],
    blocks: list[int],
    batch_size: int,
    progress: bool,
    report: ExtractionReport,
) -> None:
    import numcodecs.blosc
    from tqdm.auto import tqdm

    layout = store.layout
    n_rows = sum(layout.block_range(b)[1] - layout.block_range(b)[0] for b in blocks)
    pin_malloc_thresholds()  # reuse freed activations instead of faulting in fresh pages every batch
    # On the CPU the model already uses every core: one compression thread, at the lowest priority, fills the
    # gaps instead of competing with it. On a GPU the host's cores are free but for the one feeding the device:
    # the writer compresses up to 8 arrays at once (~1 MB of output per example for a 1B model); more threads
    # would take the GIL from the feeding thread between their calls into Blosc.
    # Once the last block is pooled the model is done: whatever is left to write (often a block and a half on
    # the CPU, where the writer only gets the gaps) may use every core.
    blosc_threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    write_threads = 1 if loaded.device.type == "cpu" else max(1, min(cores - 1, 8))
    throttle = _Throttle(write_threads)
    writer = _BlockWriter(store, throttle, threads=cores)
    core_for_writer = None
    if loaded.device.type == "cpu":
        flops_per_token = 2.0 * sum(p.numel() for b in loaded.adapter.blocks for p in b.parameters())
        core_for_writer = _CoreForWriter(flops_per_token, layout.block_rows * layout.row_bytes)
    bar = tqdm(total=n_rows, desc="extract", unit="ex", disable=not progress, smoothing=0.1)
    tokens = 0
    t_start = time.perf_counter()
    try:
        for block in blocks:
            start, stop = layout.block_range(block)
            if core_for_writer is not None:
                core_for_writer.start_block(block)
            pooled = _pool_block(
                loaded, store, encodings, start, stop, batch_size, bar, writer.spare(), core_for_writer
            )
            tokens += sum(len(encodings[i]) for i in range(start, stop))
            if block == blocks[-1]:
                throttle.raise_to(cores)
            writer.put(block, pooled)
            report.written_blocks += 1
            elapsed = max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix_str(f"{tokens / elapsed:,.0f} tok/s", refresh=False)
        writer.close()
    finally:
        writer.stop()
        if core_for_writer is not None:
            core_for_writer.restore()
        bar.close()
        numcodecs.blosc.set_nthreads(blosc_threads)


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
    that slice inside its forward hook (by the fused kernel, see `spin_cache.kernels`); on CUDA the batch's
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


@dataclass
class _Pooled:
    rows: list[int]
    pooled: dict


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
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _pack(pieces: list[torch.Tensor], dtype: str) -> torch.Tensor:
    """Concatenate float32 pieces along columns, converting to the stored dtype in the same pass."""
    shape = (pieces[0].shape[0], sum(p.shape[1] for p in pieces))
    out = torch.empty(shape, dtype=_TORCH_DTYPES[dtype], device=pieces[0].device)
    return torch.cat(pieces, dim=1, out=out)


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """(min, max) as a float32 tensor on the values' device (read later: no device sync here)."""
    return torch.stack(torch.aminmax(values)).to(torch.float32)


@dataclass
class _Landed:
    """A batch whose packed values are in the block buffer, with their min/max, and the pooled tensors they came
    from (needed only if the values are not all finite)."""

    rows: list[int]
    min_max: tuple[float, float]
    pooled: dict


class _HostCopier:
    """On CUDA, packs each batch on the device and copies it with a non-blocking copy into its slice of the
    pinned host block buffer on a side stream, handed back one batch later, so that nothing waits for the device
    in between (the min/max that decides a batch's fate is read only then)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pending: list[tuple[torch.cuda.Event, torch.Tensor, _Pooled]] = []

    def submit(self, pieces: list[torch.Tensor], target: torch.Tensor, part: _Pooled, dtype: str) -> list[_Landed]:
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

    def _pop(self) -> _Landed:
        event, host_min_max, part = self.pending.pop(0)
        event.synchronize()
        return _Landed(part.rows, tuple(host_min_max.tolist()), part.pooled)

    def drain(self) -> list[_Landed]:
        return [self._pop() for _ in range(len(self.pending))]


def _host_view(values: torch.Tensor) -> np.ndarray:
    """A numpy view of host values (numpy has no bfloat16: its raw bits, as uint16)."""
    if values.dtype == torch.bfloat16:
        return values.view(torch.int16).cpu().numpy().view(np.uint16)
    return values.cpu().numpy()


def _lower_this_threads_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: nice is per thread). The model's worker threads
    wait for each other at every parallel operation, so a writer that preempts one of them stalls them all; at low
    priority it runs in the gaps instead, and when it falls behind the bounded queue makes the model wait."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class _Throttle:
    """A gate that lets at most `limit` threads through at once; the limit can be raised while threads wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.changed = threading.Condition()

    def raise_to(self, limit: int) -> None:
        with self.changed:
            self.limit = max(self.limit, limit)
            self.changed.notify_all()

    def __enter__(self) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.active < self.limit)
            self.active += 1

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self.active -= 1
            self.changed.notify()


# The arithmetic one model thread does in the time one writer thread encodes and writes one byte of a block
# (float16 activations through Blosc zstd-1 + crc32c). Measured here: the bundled MiniLM runs ~76-90 GFLOP/s on
# one thread of this CPU, the writer ~210 MB/s (BENCHMARKS.md, Extraction). Only the schedule below depends on
# it, never a stored value; if it is off on another CPU the writer either finishes early (a core idles for the
# rest of those batches) or late (the rest is written beside the model, as without a schedule).
MODEL_FLOPS_PER_WRITTEN_BYTE = 350.0


class _CoreForWriter:
    """On the CPU, hands one of the model's cores to the writer at the start of each block, for about as long as
    writing the previous block takes.

    The model's OpenMP threads keep every core busy and wait for each other at every operation, so a writer that
    takes a core from one of them stalls them all: its CPU time costs about as much wall time. On one thread
    fewer of two the forward pass runs ~1.6x slower (measured here), so a core of the writer's own costs ~40% of
    that.
    How long is decided from what is known before the block runs (the block's bytes, the batches' tokens, the
    model's size), never from timings: results of a batch can differ in the last bit with the thread count
    (MKL splits some matrix products by thread), and a store must not depend on when its writer ran. The first
    block has nothing to write before it and keeps every thread."""

    def __init__(self, flops_per_token: float, block_bytes: int) -> None:
        self.threads = self.current = torch.get_num_threads()
        self.flops_per_token = flops_per_token
        # the arithmetic the model's remaining threads do while one writer thread writes a block (none on one)
        self.block_flops = block_bytes * MODEL_FLOPS_PER_WRITTEN_BYTE * (self.threads - 1)
        self.left = 0.0

    def start_block(self, block: int) -> None:
        self.left = self.block_flops if block > 0 else 0.0

    def before_batch(self, rows: int, tokens: int) -> None:
        """Set the threads for a batch of `rows` padded to `tokens`."""
        wanted = self.threads - 1 if self.left > 0 else self.threads
        self.left -= rows * tokens * self.flops_per_token
        self._set(wanted)

    def restore(self) -> None:
        self._set(self.threads)

    def _set(self, threads: int) -> None:
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads


class _BlockWriter:
    """A background thread that writes finished blocks, each array through `throttle` (so the number of arrays
    compressed at once can grow mid-block); the queue bound keeps memory bounded. Written blocks' buffers come
    back as spares for the next blocks."""

    def __init__(self, store: ActivationStore, throttle: _Throttle, threads: int, max_pending: int = 1) -> None:
        self.store = store
        self.throttle = throttle
        self.threads = threads
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.spares: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="spin-cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        _lower_this_threads_priority()
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            block, pooled = item
            try:
                info = {"overflow": pooled.overflow}
                self.store.write_block(
                    block, pooled.arrays, info, self.threads, row_index=pooled.row_index, gate=self.throttle
                )
            except BaseException as exc:  # re-raised in the main thread
                self.error = exc
            self.spares.put(pooled.buffer)

    def spare(self) -> torch.Tensor | None:
        try:
            return self.spares.get_nowait()
        except queue.Empty:
            return None

    def put(self, block: int, pooled: _PooledBlock) -> None:
        """Queue a pooled block (its buffer comes back as a spare once written)."""
        self._raise()
        self.queue.put((block, pooled))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise SpinCacheError(f"writing to {self.store.url} failed: {self.error}") from self.error


# ------------------------------------------------------------------------------------------------------------


def resolve_compute_dtype(compute_dtype: str, device: str) -> str:
    """'auto': bfloat16 on a CUDA device that supports it, float32 elsewhere (CPU matmuls in bf16 are slow)."""
    if compute_dtype != "auto":
        return compute_dtype
    dev = _resolve_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def _pooling_route(loaded: LoadedModel | None) -> str:
    """What pooled the activations (for the manifest): `mean` may differ in its last stored bit between the two."""
    if loaded is None:
        return "by the workers (fused kernel where each could build it)"
    float32 = next(loaded.model.parameters()).dtype == torch.float32  # the kernel takes float32 activations
    fused = loaded.device.type == "cpu" and float32 and kernels.fused_pooling() is not None
    return "fused kernel (spin_cache.kernels)" if fused else "torch"


def _check_parallel(workers: int, shard: tuple[int, int] | None) -> None:
    if workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    if shard is not None:
        i, n = shard
        if workers != 1:
            raise InputError("--workers and --shard are exclusive: --shard I/N is one worker of N")
        if not (n >= 1 and 0 <= i < n):
            raise InputError(f"--shard {i}/{n}: I must be between 0 and N-1")


def _shard_device(device: str, shard: tuple[int, int]) -> str:
    """One GPU per worker when there are several; on the CPU, the cores are shared out."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{shard[0] % torch.cuda.device_count()}"
    if device == "cpu" or not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // shard[1]))
    return device


def _wait_for_store(url: str, wanted: dict, storage_options: dict | None, timeout: float = 600) -> ActivationStore:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = _existing_store(url, wanted, False, storage_options)
        if found is not None:
            return found
        time.sleep(0.5)
    raise SpinCacheError(f"{url}: no store after {timeout:.0f}s; start shard 0 first (it creates the store)")


def _worker(options: dict, shard: tuple[int, int]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run_extraction(**(options | {"progress": False, "overwrite": False}), shard=shard)
    return report.written_blocks


def _run_workers(options: dict, url: str, workers: int, store: ActivationStore, n_blocks: int, progress: bool) -> None:
    """Start `workers` processes on disjoint row blocks and follow their commits."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    options = options | {"out": url}
    ctx = mp.get_context("spawn")  # CUDA and torch threads do not survive fork
    bar = tqdm(total=n_blocks, desc=f"extract ({workers} workers)", unit="block", disable=not progress)
    start = len(store.committed_blocks())
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, options, (i, workers)) for i in range(workers)]
        while True:
            _, pending = wait(futures, timeout=1.0)
            bar.n = len(store.committed_blocks()) - start
            bar.refresh()
            if not pending:
                break
        bar.close()
        for future in futures:
            future.result()  # re-raise a worker's error here


def _check_options(
    kinds: Sequence[str],
    poolings: Sequence[str] | None,
    dtype: str,
    compute_dtype: str,
    batch_size: int,
    chunk_cols: int,
    block_rows: int | None,
) -> None:
    bad_kinds = [k for k in kinds if k not in KINDS]
    if not kinds or bad_kinds:
        raise InputError(f"--kinds: {bad_kinds or 'none'} not supported; choose from {', '.join(KINDS)}")
    bad_pool = [p for p in poolings or () if p not in POOLINGS]
    if bad_pool:
        raise InputError(f"--poolings: {', '.join(bad_pool)} not supported; choose from {', '.join(POOLINGS)}")
    if dtype not in STORE_DTYPES:
        raise InputError(f"--dtype {dtype}: choose from {', '.join(STORE_DTYPES)}")
    if compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"--compute-dtype {compute_dtype}: choose from auto, float32, bfloat16, float16")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if chunk_cols < 1:
        raise InputError(f"--chunk-cols {chunk_cols}: must be at least 1")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"--block-rows {block_rows}: must be at least 1")


def _load_data(
    data: str | None, train: str | None, dev: str | None, test: str | None, text_column: str, label_column: str
) -> LabelledDataset:
    if train or dev or test:
        if data not in (None, "sst2"):
            raise InputError(
                "--data and --train/--dev/--test are exclusive: pass one file with a split column or one per split"
            )
        return load_dataset(None, train=train, dev=dev, test=test, text_column=text_column, label_column=label_column)
    return load_dataset(data, text_column=text_column, label_column=label_column)


def _load_tokenizer_and_config(path: Path) -> tuple[object, object]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot load the model's config or tokenizer ({exc})") from exc
    return tokenizer, config


def _is_decoder(config: object) -> bool:
    model_type = getattr(config, "model_type", "")
    if model_type in ("t5", "mt5", "umt5"):
        return False
    return bool(getattr(config, "is_decoder", False)) or model_type in (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "phi3",
        "gpt_neox",
        "opt",
    )


def _resolve_max_length(max_length: int | None, tokenizer: object, config: object) -> int:
    limits = [
        v
        for v in (
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(v, int) and 0 < v < 10**7
    ]
    cap = min(limits) if limits else None
    if max_length is None:
        return min([DEFAULT_MAX_LENGTH, *([cap] if cap else [])])
    if max_length < 2:
        raise InputError(f"--max-length {max_length}: must be at least 2")
    if cap is not None and max_length > cap:
        raise InputError(f"--max-length {max_length} exceeds the model's {cap} positions; pass --max-length {cap}")
    return max_length


def _tokenize(
    loaded: LoadedModel, dataset: LabelledDataset, max_length: int
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    tok = loaded.tokenizer
    full = tok(list(dataset.texts), truncation=False, verbose=False)["input_ids"]
    n_tokens = np.array([len(x) for x in full], dtype=np.int64)
    truncated = n_tokens > max_length
    encodings = list(full)
    long_rows = np.flatnonzero(truncated)
    if long_rows.size:
        cut = tok([dataset.texts[i] for i in long_rows], truncation=True, max_length=max_length)["input_ids"]
        for i, ids in zip(long_rows, cut, strict=True):
            encodings[i] = ids
    empty = [i for i, ids in enumerate(encodings) if len(ids) == 0]
    if empty:
        raise InputError(f"example {dataset.ids[empty[0]]!r} tokenises to nothing; remove it or fix its text")
    return encodings, n_tokens, truncated


def _examples_table(dataset: LabelledDataset, n_tokens: np.ndarray, truncated: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row": np.arange(len(dataset), dtype=np.int64),
            "example_id": list(dataset.ids),
            "split": [str(s) for s in dataset.splits],
            "label": dataset.labels.astype(np.int64),
            "label_name": [dataset.label_names[i] for i in dataset.labels],
            "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in dataset.texts],
            "n_tokens": n_tokens,
            "truncated": truncated,
        }
    )


def _fingerprint(partial_manifest: dict) -> str:
    from .store import canonical_hash

    return canonical_hash(fingerprint_inputs(partial_manifest))


def _repair_examples(store: ActivationStore, examples: pl.DataFrame) -> None:
    """Resuming an incomplete store: write its examples table again if it is missing or unreadable (a crash while
    the store was created). Same fingerprint, same table: it depends only on the dataset and the tokenizer."""
    try:
        store.examples  # noqa: B018 - reading it is the check
    except IntegrityError:
        store.write_examples(examples)


def _existing_store(url: str, wanted: dict, overwrite: bool, storage_options: dict | None) -> ActivationStore | None:
    """The store at `url` if there is one made from `wanted`; None where a new one may be created (nothing there,
    an empty directory, or a store with `overwrite`). Anything else at `url` is refused, never deleted."""
    fs, root = _fs(url, storage_options)
    if not check_store_destination(fs, root, url, option="--out"):
        return None
    if overwrite:
        return None
    store = ActivationStore.open(url, mode="r", storage_options=storage_options)
    if store.fingerprint != _fingerprint(wanted):
        diffs = describe_differences(fingerprint_inputs(store.manifest), fingerprint_inputs(wanted))
        raise StoreMismatchError(
            f"{url} holds a store made from other inputs ({'; '.join(diffs[:4])}); "
            "pass another --out, or --overwrite to replace it"
        )
    return store


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
