"""Extraction cost against a bare forward pass, store size against raw float32, and column-read cost.

    python benchmarks/bench_extract.py [--limit N] [--batch-size 32] [--repeats 3] [--without-writing]

Bare forward: the same model, rows, blocks and length-sorted batches as `spin-cache extract`, outputs discarded.
Extraction: `run_extraction` into a fresh store (forward + pooling of every layer + background writing), its block
phase (model loading and tokenising are excluded from both sides).
The two are paired batch by batch, because this VM's speed drifts by 10-20% within a minute: during the
extraction, each batch's bare forward runs right before its pooled forward or right after it (alternately), with
the background writer paused meanwhile (it finishes the array in hand first, charged to the extraction). The
extraction's time is its block phase less those bare forwards, so both sides of the ratio are measured within
the same fraction of a second. All the writer's work stays inside the extraction's time.
With --without-writing each round also runs the extraction with the store's write_block replaced by a no-op
(pooling and packing only, nothing committed): the difference to the full extraction is what writing costs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from spin_cache.data.loading import load_dataset
from spin_cache.extract import plan as extract_plan
from spin_cache.extract import pool as extract_pool
from spin_cache.extract import run as extract_run
from spin_cache.extract import schedule as extract_schedule
from spin_cache.extract.allocator import pin_malloc_thresholds
from spin_cache.model import kernels
from spin_cache.model.loading import load_model
from spin_cache.store.activation_store import ActivationStore


def bare_batch(loaded, encodings, rows: list[int]) -> None:
    """The bare forward of one batch: padded as extraction pads it, outputs discarded."""
    runner = loaded.adapter.runner or loaded.model
    with torch.inference_mode():
        batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, return_tensors="pt")
        runner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


class _PausableThrottle(extract_schedule.Throttle):
    """extract's writer gate, able to hold the writer while a bare forward runs (the benchmark's, not the product's)."""

    def pause(self) -> int:
        with self.changed:
            limit, self.limit = self.limit, 0
            while self.active:  # the array in hand (extraction's time); its exit may wake a writer thread, not us
                self.changed.wait(0.001)
            return limit

    def resume(self, limit: int) -> None:
        with self.changed:
            self.limit = limit
            self.changed.notify_all()


@contextlib.contextmanager
def paired_bare_forwards(loaded, encodings) -> Iterator[list[float]]:
    """While active, every batch the extraction runs is paired with the bare forward of the same rows, right
    before it or right after it (alternately), with the writer paused; yields the list of their seconds."""
    bare: list[float] = []
    all_threads = torch.get_num_threads()
    throttles: list[_PausableThrottle] = []
    real_pooled_batches, real_pool_into, real_throttle = (
        extract_pool.pooled_batches,
        extract_pool.pool_into,
        extract_run.Throttle,
    )

    def throttle(limit: int) -> _PausableThrottle:
        throttles.append(_PausableThrottle(limit))
        return throttles[-1]

    def bare_now(rows: list[int]) -> None:
        limit = throttles[-1].pause()
        threads = torch.get_num_threads()  # extraction may have handed a core to its writer: not the bare forward
        torch.set_num_threads(all_threads)
        t0 = time.perf_counter()
        bare_batch(loaded, encodings, rows)
        bare.append(time.perf_counter() - t0)
        torch.set_num_threads(threads)
        throttles[-1].resume(limit)

    def paired(run_batch, rows: list[int]):
        before = len(bare) % 2 == 0
        if before:
            bare_now(rows)
        result = run_batch()
        if not before:
            bare_now(rows)
        return result

    def pooled_batches(loaded_x, encodings_x, rows, layout, check_finite):  # on CUDA
        run = functools.partial(real_pooled_batches, loaded_x, encodings_x, rows, layout, check_finite)
        # the slow route for a non-finite batch, or an out-of-memory split: not paired
        return run() if check_finite else paired(run, rows)

    def pool_into(loaded_x, encodings_x, rows, columns, target):  # on the CPU
        return paired(functools.partial(real_pool_into, loaded_x, encodings_x, rows, columns, target), rows)

    extract_pool.pooled_batches, extract_pool.pool_into, extract_run.Throttle = pooled_batches, pool_into, throttle
    try:
        yield bare
    finally:
        extract_pool.pooled_batches, extract_pool.pool_into, extract_run.Throttle = (
            real_pooled_batches,
            real_pool_into,
            real_throttle,
        )


def column_reads(store_path: str, share: float, seed: int = 0) -> dict:
    """Bytes fetched to read a random `share` of each layer's columns, against those columns' stored bytes."""
    store = ActivationStore.open(store_path, count_bytes=True)
    rng = np.random.default_rng(seed)
    stored = store.nbytes_stored()
    wanted = 0.0
    for kind, pooling, layer in store.layout.array_keys():
        width = store.width(kind)
        cols = np.sort(rng.choice(width, max(1, round(share * width)), replace=False))
        store.read(kind, pooling, layer, columns=cols)
        n_arrays = len(store.poolings) * len(store.layers(kind))
        wanted += stored[kind] / n_arrays * len(cols) / width
    return {
        "share": share,
        "bytes_read": store.counter.bytes_read,
        "bytes_of_columns": int(wanted),
        "read_over_needed": store.counter.bytes_read / wanted,
    }


def extraction(dataset, loaded, encodings, batch_size: int, keep: dict, write: bool = True) -> tuple[float, float]:
    """(extraction seconds, bare forward seconds) of one extraction into a fresh store, paired batch by batch;
    the first store's sizes and column-read costs go into `keep`. With write=False blocks are pooled and packed
    but not written."""
    real_write_block, real_flops_per_byte = ActivationStore.write_block, extract_schedule.MODEL_FLOPS_PER_WRITTEN_BYTE
    if not write:  # nothing written: no core is handed to the writer either
        ActivationStore.write_block = lambda self, *args, **kwargs: None
        extract_schedule.MODEL_FLOPS_PER_WRITTEN_BYTE = 0.0
    try:
        with tempfile.TemporaryDirectory() as tmp, paired_bare_forwards(loaded, encodings) as bare:
            out = os.path.join(tmp, "store")
            report = extract_run.run_extraction(data=dataset, out=out, batch_size=batch_size, progress=False)
            if write and not keep:
                info = report.store.info()
                keep |= {"stored": sum(info["bytes_stored"].values()), "float32": info["bytes_float32"],
                         "reads_5pct": column_reads(out, 0.05), "command_s": report.seconds - sum(bare),
                         "block_rows": report.store.layout.block_rows}  # fmt: skip
            return report.extract_seconds - sum(bare), sum(bare)
    finally:
        ActivationStore.write_block, extract_schedule.MODEL_FLOPS_PER_WRITTEN_BYTE = (
            real_write_block,
            real_flops_per_byte,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="rows per split (default: all of SST-2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of paired extractions")
    ap.add_argument("--without-writing", action="store_true", help="also time extraction with writing switched off")
    args = ap.parse_args()
    dataset = load_dataset("sst2")
    if args.limit:
        dataset = dataset.subset(args.limit)
    loaded = load_model("minilm", device="cpu")
    kernels.fused_pooling()  # built (once per machine) before anything is timed
    encodings, _, _ = extract_plan.tokenize(loaded, dataset, 512)
    pin_malloc_thresholds()  # what extraction does: both sides run with the same allocator settings
    keep: dict = {}
    rounds = []
    for _ in range(args.repeats):
        seconds = {}
        for mode in ("extract", "no_writing") if args.without_writing else ("extract",):
            extract_s, bare_s = extraction(dataset, loaded, encodings, args.batch_size, keep, write=mode == "extract")
            seconds |= {mode: extract_s, f"bare ({mode})": bare_s}
        rounds.append(seconds)
        print(json.dumps({k: round(v, 2) for k, v in seconds.items()}), flush=True)
    ratios = [r["extract"] / r["bare (extract)"] for r in rounds]
    total = sum(r["extract"] for r in rounds) / sum(r["bare (extract)"] for r in rounds)
    print(f"\nrows {len(dataset)}  batch {args.batch_size}  blocks of {keep['block_rows']}  "
          f"threads {torch.get_num_threads()}")  # fmt: skip

    def times(mode: str) -> str:
        return " ".join(f"{r[mode]:.1f}s" for r in rounds)

    print(f"bare forward (paired with the extraction): {times('bare (extract)')}")
    print(f"extract: {times('extract')} | ratio to its paired bare forward: "
          f"median {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"all rounds' seconds: {total:.3f}x")  # fmt: skip
    if args.without_writing:
        no_writing = sum(r["no_writing"] for r in rounds) / sum(r["bare (no_writing)"] for r in rounds)
        print(f"extract without writing: {times('no_writing')} | all rounds' seconds: {no_writing:.3f}x its paired "
              f"bare forward (writing adds {total - no_writing:+.3f}x)")  # fmt: skip
    print(f"whole command (first run, with model load, tokenising, hashing): {keep['command_s']:.1f}s")
    print(f"store {keep['stored'] / 2**20:.1f} MiB vs float32 {keep['float32'] / 2**20:.1f} MiB: "
          f"{keep['stored'] / keep['float32']:.3f}x")  # fmt: skip
    r = keep["reads_5pct"]
    print(
        f"5% random columns: read {r['bytes_read'] / 2**20:.1f} MiB for {r['bytes_of_columns'] / 2**20:.1f} MiB "
        f"of columns ({r['read_over_needed']:.1f}x)"
    )


if __name__ == "__main__":
    main()
