"""Extraction cost against a bare forward pass, store size against raw float32, and column-read cost.

    python benchmarks/bench_extract.py [--limit N] [--batch-size 32] [--repeats 3]

Bare forward: the same model, rows, blocks and length-sorted batches as `spin-cache extract`, outputs discarded.
Extraction: `run_extraction` into a fresh store (forward + pooling of every layer + background writing); the
ratio uses its block phase (model loading and tokenising are excluded from both sides). Each round runs both, in
alternating order, and the ratio compares the runs of one round: this VM's speed drifts by 10-20% over minutes.
With --without-writing each round also runs the extraction with the store's write_block replaced by a no-op
(pooling and packing only, nothing committed): the difference to the full extraction is what writing costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from spin_cache.allocator import pin_malloc_thresholds
from spin_cache.data import load_dataset
from spin_cache.extract import _tokenize, run_extraction
from spin_cache.models import load_model
from spin_cache.store import ActivationStore


def bare_forward(loaded, encodings, block_rows: int, batch_size: int) -> float:
    runner = loaded.adapter.runner or loaded.model
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(encodings), block_rows):
            stop = min(start + block_rows, len(encodings))
            order = sorted(range(start, stop), key=lambda i: (-len(encodings[i]), i))
            for b0 in range(0, len(order), batch_size):
                rows = order[b0 : b0 + batch_size]
                batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, return_tensors="pt")
                runner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return time.perf_counter() - t0


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


def extraction(dataset, batch_size: int, keep: dict, write: bool = True) -> tuple[float, int]:
    """Seconds of the block phase of one extraction into a fresh store (and its block rows); the first store's
    sizes and column-read costs go into `keep`. With write=False blocks are pooled and packed but not written."""
    real_write_block = ActivationStore.write_block
    if not write:
        ActivationStore.write_block = lambda self, *args, **kwargs: None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "store")
            report = run_extraction(data=dataset, out=out, batch_size=batch_size, progress=False)
            if write and not keep:
                info = report.store.info()
                keep |= {"stored": sum(info["bytes_stored"].values()), "float32": info["bytes_float32"],
                         "reads_5pct": column_reads(out, 0.05), "command_s": report.seconds}  # fmt: skip
            return report.extract_seconds, report.store.layout.block_rows
    finally:
        ActivationStore.write_block = real_write_block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="rows per split (default: all of SST-2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (bare, extract), order alternated")
    ap.add_argument("--without-writing", action="store_true", help="also time extraction with writing switched off")
    args = ap.parse_args()
    dataset = load_dataset("sst2")
    if args.limit:
        dataset = dataset.subset(args.limit)
    loaded = load_model("minilm", device="cpu")
    encodings, _, _ = _tokenize(loaded, dataset, 512)
    pin_malloc_thresholds()  # what extraction does: both sides run with the same allocator settings
    keep: dict = {}
    block_rows = 2048
    rounds = []
    for r in range(args.repeats):
        seconds = {}
        modes = ["bare", "extract"] + (["no_writing"] if args.without_writing else [])
        for mode in modes if r % 2 else modes[::-1]:  # alternate: this VM's speed drifts
            if mode == "bare":
                seconds[mode] = bare_forward(loaded, encodings, block_rows, args.batch_size)
            else:
                seconds[mode], block_rows = extraction(dataset, args.batch_size, keep, write=mode == "extract")
        rounds.append(seconds)
        print(json.dumps({k: round(v, 2) for k, v in seconds.items()}), flush=True)
    ratios = [r["extract"] / r["bare"] for r in rounds]
    total = sum(r["extract"] for r in rounds) / sum(r["bare"] for r in rounds)
    print(f"\nrows {len(dataset)}  batch {args.batch_size}  blocks of {block_rows}  threads {torch.get_num_threads()}")

    def times(mode: str) -> str:
        return " ".join(f"{r[mode]:.1f}s" for r in rounds)

    print(f"bare forward: {times('bare')}")
    print(f"extract: {times('extract')} | ratio to the bare forward of the same round: "
          f"median {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"all rounds' seconds: {total:.3f}x")  # fmt: skip
    if args.without_writing:
        no_writing = sum(r["no_writing"] for r in rounds) / sum(r["bare"] for r in rounds)
        print(f"extract without writing: {times('no_writing')} | all rounds' seconds: {no_writing:.3f}x the bare "
              f"forward (writing adds {total - no_writing:+.3f}x)")  # fmt: skip
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
