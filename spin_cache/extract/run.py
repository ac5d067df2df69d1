"""Run the model once over a dataset and stream every layer's pooled activations into an ActivationStore.

Rows keep the dataset's order (train, dev, test) and are cut into blocks; inside a block, examples are sorted by
length into batches so that padding stays small. A block is pooled on the model's device, handed to a background
writer and committed with a marker; a rerun skips committed blocks, so a crash loses at most the blocks in
flight and the finished store is identical to an uninterrupted run (batches depend only on the block)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .. import __version__
from ..data.loading import LabelledDataset
from ..model.identity import DEFAULT_MODEL
from ..model.loading import TORCH_DTYPES, LoadedModel, load_model
from ..store.activation_store import ActivationStore
from ..store.layout import Layout, default_block_rows, dtype_bytes
from ..store.lock import StoreLock
from ..store.manifest import new_manifest
from .machine import MachinePolicy
from .plan import (
    DEFAULT_CHUNK_COLS,
    DEFAULT_STORES_DIR,
    ExtractPlan,
    examples_table,
    existing_store,
    plan_extraction,
    pooling_route,
    repair_examples,
    tokenize,
    transformers_version,
)
from .pool import pool_block
from .schedule import CoreForWriter, Throttle
from .settings import ExtractSettings
from .workers import run_workers, shard_device, wait_for_store
from .write import BlockWriter

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "DEFAULT_CHUNK_COLS",
    "DEFAULT_STORES_DIR",
    "ExtractSettings",
    "ExtractionReport",
    "extract",
    "extract_blocks",
    "run_extraction",
]


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
    out: str | os.PathLike[str] | None = None,
    **options: object,
) -> ActivationStore:
    """Extract pooled activations of `model` over `data` into a store at `out` and return it.

    Options are those of :class:`ExtractSettings` (kinds, poolings, max_length, batch_size, device, dtype, ...).
    """
    return run_extraction(model=model, data=data, out=out, **options).store  # type: ignore[arg-type]


def run_extraction(settings: ExtractSettings | None = None, **options: object) -> ExtractionReport:
    """The extraction behind `spin-cache extract`; see `extract` for the short form.

    Parameters
    ----------
    settings
        Every option (see :class:`ExtractSettings`); default: the defaults.
    **options
        Options set on top of `settings`, by name (``run_extraction(model=..., data=..., out=...)``).

    With ``workers=N`` N local processes (one model each, on cuda:i when there are several GPUs) each write a
    disjoint set of row blocks; ``shard=(i, n)`` is one such worker, for launching by hand on several machines
    (shard 0 creates the store, the others wait for it). The store is complete once every block is committed.
    """
    if settings is None:
        settings = ExtractSettings(**options)  # type: ignore[arg-type]
    elif options:
        settings = dataclasses.replace(settings, **options)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    plan = plan_extraction(settings)
    existing = existing_store(plan.url, plan.wanted, settings.overwrite, settings.storage_options)
    if existing is not None and existing.is_complete:
        existing.check_reusable()  # a cache hit only on a complete, consistent store; else exit 4 naming why
        return ExtractionReport(store=existing, cache_hit=True, seconds=time.perf_counter() - t0)
    shard = settings.shard
    with StoreLock(plan.url, settings.storage_options, shard if settings.workers == 1 else None):
        if not settings.progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        if existing is None and shard is not None and shard[0] != 0:
            existing = wait_for_store(plan.url, plan.wanted, settings.storage_options)
        device = settings.device if shard is None else shard_device(settings.device, shard)
        loaded: LoadedModel | None  # None once the workers (each with its own copy) take over
        loaded = load_model(plan.files, device=device, dtype=TORCH_DTYPES[plan.compute_dtype])
        encodings, n_tokens, truncated = tokenize(loaded, plan.dataset, plan.max_length)
        examples = examples_table(plan.dataset, n_tokens, truncated)
        store = _open_or_create_store(plan, loaded, existing, examples)
        report = ExtractionReport(store=store, n_truncated=int(truncated.sum()))
        todo = _blocks_to_do(store, shard, report)
        t_blocks = time.perf_counter()
        if settings.workers > 1:
            del loaded  # each worker loads its own copy
            loaded = None
            run_workers(settings, plan.url, store, len(todo))
            report.written_blocks = len(todo)
        else:
            extract_blocks(loaded, store, encodings, todo, settings.batch_size, settings.progress, report)
        report.extract_seconds = time.perf_counter() - t_blocks
        _finish(plan, loaded, device, report)
        report.seconds = time.perf_counter() - t0
        return report


def _open_or_create_store(
    plan: ExtractPlan, loaded: LoadedModel, existing: ActivationStore | None, examples: pl.DataFrame
) -> ActivationStore:
    """A new store laid out for this model (nothing made from these inputs at the plan's url), or the existing
    one opened for appending; shard 0 (or the only process) repairs a resumed store's examples table."""
    s = plan.settings
    if existing is not None:
        store = ActivationStore.open(plan.url, mode="a", storage_options=s.storage_options)
        if not store.is_complete and (s.shard is None or s.shard[0] == 0):
            repair_examples(store, examples)
        return store
    adapter = loaded.adapter
    widths = {"hidden": adapter.hidden_size, "ffn": adapter.ffn_size}
    layers = {"hidden": list(range(adapter.num_layers + 1)), "ffn": list(range(1, adapter.num_layers + 1))}
    row_bytes = sum(widths[k] * len(layers[k]) * len(plan.poolings) for k in s.kinds) * dtype_bytes(s.dtype)
    layout = Layout(
        kinds=tuple(s.kinds),
        poolings=plan.poolings,
        layers={k: layers[k] for k in s.kinds},
        widths={k: widths[k] for k in s.kinds},
        n_rows=len(plan.dataset),
        dtype=s.dtype,
        block_rows=s.block_rows or default_block_rows(row_bytes, s.chunk_cols * dtype_bytes(s.dtype)),
        chunk_cols=s.chunk_cols,
    )
    model_info = plan.model_info | {
        "family": adapter.family,
        "is_decoder": adapter.is_decoder,
        "num_layers": adapter.num_layers,
    }
    manifest = new_manifest(model=model_info, dataset=plan.dataset_info, extraction=plan.extraction, layout=layout)
    return ActivationStore.create(
        plan.url,
        manifest,
        examples,
        overwrite=s.overwrite,
        storage_options=s.storage_options,
    )


def _blocks_to_do(store: ActivationStore, shard: tuple[int, int] | None, report: ExtractionReport) -> list[int]:
    """The blocks not yet committed (this shard's only); counts the committed ones as resumed in `report`."""
    committed = store.committed_blocks()
    report.resumed_blocks = len(committed)
    todo = [b for b in range(store.layout.n_blocks) if b not in committed]
    if shard is not None:
        todo = [b for b in todo if b % shard[1] == shard[0]]
    return todo


def _finish(plan: ExtractPlan, loaded: LoadedModel | None, device: str, report: ExtractionReport) -> None:
    """Reopen the store (a worker may have finished it), mark it complete once every block is committed, and
    count the values beyond float16's range into `report`."""
    s = plan.settings
    committed = report.store.committed_blocks()
    report.overflow = sum(int(m.get("overflow", 0)) for m in committed.values())
    store = report.store = ActivationStore.open(plan.url, mode="a", storage_options=s.storage_options)
    if len(committed) == store.layout.n_blocks and not store.is_complete:
        store.mark_complete(
            {
                "spin_cache_version": __version__,
                "torch_version": torch.__version__,
                "transformers_version": transformers_version(),
                "device": str(loaded.device) if loaded is not None else f"{s.workers} workers on {device}",
                "pooling": pooling_route(loaded),
                "batch_size": s.batch_size,
                "padding_side": plan.files.tokenizer.padding_side,
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


def extract_blocks(
    loaded: LoadedModel,
    store: ActivationStore,
    encodings: list[list[int]],
    blocks: list[int],
    batch_size: int,
    progress: bool,
    report: ExtractionReport,
) -> None:
    """Pool `blocks` of the store in this process and hand each to a background writer, which commits it.

    `encodings` are every row's token ids; `report.written_blocks` counts the blocks handed over.
    """
    import numcodecs.blosc
    from tqdm.auto import tqdm

    layout = store.layout
    n_rows = sum(layout.block_range(b)[1] - layout.block_range(b)[0] for b in blocks)
    policy = MachinePolicy.detect()
    policy.apply()  # reuse freed activations instead of faulting in fresh pages every batch
    # Once the last block is pooled the model is done: whatever is left to write (often a block and a half on
    # the CPU, where the writer only gets the gaps) may use every core.
    blosc_threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    cores = policy.cores
    throttle = Throttle(policy.write_threads(loaded.device.type))
    writer = BlockWriter(store, throttle, threads=cores)
    core_for_writer = None
    if loaded.device.type == "cpu":
        flops_per_token = 2.0 * sum(p.numel() for b in loaded.adapter.blocks for p in b.parameters())
        core_for_writer = CoreForWriter(flops_per_token, layout.block_rows * layout.row_bytes, policy)
    bar = tqdm(total=n_rows, desc="extract", unit="ex", disable=not progress, smoothing=0.1)
    tokens = 0
    t_start = time.perf_counter()
    try:
        for block in blocks:
            start, stop = layout.block_range(block)
            if core_for_writer is not None:
                core_for_writer.start_block(block)
            pooled = pool_block(loaded, store, encodings, start, stop, batch_size, bar, writer.spare(), core_for_writer)
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
