"""Run the model once over a dataset and stream every layer's pooled activations into an ActivationStore.

Rows keep the dataset's order (train, dev, test) and are cut into blocks; inside a block, examples are sorted by
length into batches so that padding stays small. A block is pooled on the model's device, handed to a background
writer and committed with a marker; a rerun skips committed blocks, so a crash loses at most the blocks in
flight and the finished store is identical to an uninterrupted run (batches depend only on the block)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import __version__
from ..data.loading import LabelledDataset
from ..model.identity import DEFAULT_MODEL, model_identity, resolve_model_path
from ..model.loading import LoadedModel, load_model
from ..representations import KINDS, default_poolings
from ..store.activation_store import ActivationStore
from ..store.layout import FORMAT_VERSION, Layout, default_block_rows, dtype_bytes
from ..store.lock import StoreLock
from ..store.manifest import new_manifest
from .allocator import pin_malloc_thresholds
from .plan import (
    DEFAULT_CHUNK_COLS,
    DEFAULT_STORES_DIR,
    _check_options,
    _examples_table,
    _existing_store,
    _fingerprint,
    _is_decoder,
    _load_data,
    _load_tokenizer_and_config,
    _pooling_route,
    _repair_examples,
    _resolve_max_length,
    _tokenize,
    _transformers_version,
    resolve_compute_dtype,
)
from .pool import _TORCH_DTYPES, _pool_block
from .schedule import _CoreForWriter, _Throttle
from .workers import _check_parallel, _run_workers, _shard_device, _wait_for_store
from .write import _BlockWriter


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
