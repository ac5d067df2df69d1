"""Inner-chunk width against store size, encode and decode cost, and what a 5% random column subset reads.

    python benchmarks/bench_chunks.py --store stores/<fingerprint> [--block 1] [--every 4]

Takes one 2,048-row block of every `--every`-th array of a MiniLM store (real activations, float16), cuts it into
inner chunks of 1 to 64 neurons and compresses each with the store's codec (Blosc zstd-1, byte shuffle, 256 KiB
blocks), one thread. A 5% random subset of a layer's neurons touches 1 - 0.95^width of its chunks.
"""

from __future__ import annotations

import argparse
import time

import numcodecs
import numpy as np

from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import compressor_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--block", type=int, default=1, help="which 2,048-row block")
    ap.add_argument("--every", type=int, default=4, help="take every n-th array")
    args = ap.parse_args()
    store = ActivationStore.open(args.store)
    rows = slice(args.block * 2048, (args.block + 1) * 2048)
    keys = store.layout.array_keys()[:: args.every]
    block = np.concatenate([store.read(*key)[rows].astype(np.float16) for key in keys], axis=1)
    config = compressor_config("float16")
    codec = numcodecs.Blosc(cname=config["cname"], clevel=config["clevel"], shuffle=numcodecs.Blosc.SHUFFLE,
                            blocksize=config["blocksize"], typesize=2)  # fmt: skip
    numcodecs.blosc.set_nthreads(1)
    print(f"{len(keys)} arrays, {block.shape[0]} rows x {block.shape[1]} neurons ({block.nbytes / 2**20:.0f} MiB)\n")
    print("| inner chunk (neurons) | chunks | stored vs float32 | encode s | decode us per chunk | 5% random reads |")
    print("|---|---|---|---|---|---|")
    for width in (1, 2, 4, 8, 16, 64):
        chunks = [np.ascontiguousarray(block[:, j : j + width]) for j in range(0, block.shape[1], width)]
        t0 = time.perf_counter()
        encoded = [codec.encode(c) for c in chunks]
        encode_s = time.perf_counter() - t0
        sample = encoded[:2000]
        t0 = time.perf_counter()
        for e in sample:
            codec.decode(e)
        decode_us = (time.perf_counter() - t0) / len(sample) * 1e6
        size = sum(len(e) for e in encoded) / (block.nbytes * 2)
        touched = 1 - 0.95**width
        print(f"| {width} | {len(chunks)} | {size:.3f}x | {encode_s:.2f} | {decode_us:.0f} | "
              f"{touched:.2f} of chunks, ~{touched / 0.05:.1f}x the columns' bytes |")  # fmt: skip


if __name__ == "__main__":
    main()
