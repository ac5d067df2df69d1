"""Several model processes on disjoint row blocks (`--workers N`, `--shard I/N`)."""

from __future__ import annotations

import os
import time

import torch

from ..errors import InputError, SpinCacheError
from ..store.activation_store import ActivationStore
from .plan import _existing_store


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
    from .run import run_extraction  # a spawned worker runs the whole extraction for its shard (run imports us)

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
