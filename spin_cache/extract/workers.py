"""Several model processes on disjoint row blocks (`--workers N`, `--shard I/N`)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import torch

from ..errors import SpinCacheError
from ..store.activation_store import ActivationStore
from .machine import MachinePolicy
from .plan import existing_store
from .settings import ExtractSettings


def shard_device(device: str, shard: tuple[int, int]) -> str:
    """The device of worker `shard` = (i, n): one GPU per worker when there are several; on the CPU the cores are
    shared out (this process's torch threads are set to its share)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{shard[0] % torch.cuda.device_count()}"
    if device == "cpu" or not torch.cuda.is_available():
        policy = MachinePolicy.detect().for_workers(shard[1])
        policy.use_threads(policy.torch_threads)
    return device


def wait_for_store(
    url: str, wanted: dict[str, Any], storage_options: dict[str, Any] | None, timeout: float = 600
) -> ActivationStore:
    """The store made from `wanted` at `url`, once shard 0 has created it; SpinCacheError after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = existing_store(url, wanted, False, storage_options)
        if found is not None:
            return found
        time.sleep(0.5)
    raise SpinCacheError(f"{url}: no store after {timeout:.0f}s; start shard 0 first (it creates the store)")


def _worker(settings: ExtractSettings, shard: tuple[int, int]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .run import run_extraction  # a spawned worker runs the whole extraction for its shard (run imports us)

    one = dataclasses.replace(settings, progress=False, overwrite=False, workers=1, shard=shard)
    return run_extraction(one).written_blocks


def run_workers(settings: ExtractSettings, url: str, store: ActivationStore, n_blocks: int) -> None:
    """Start `settings.workers` processes on disjoint row blocks of the store at `url` and follow their commits
    (`n_blocks`: how many are left to write, for the progress bar)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    workers = settings.workers
    settings = dataclasses.replace(settings, out=url)
    ctx = mp.get_context("spawn")  # CUDA and torch threads do not survive fork
    bar = tqdm(total=n_blocks, desc=f"extract ({workers} workers)", unit="block", disable=not settings.progress)
    start = len(store.committed_blocks())
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, settings, (i, workers)) for i in range(workers)]
        while True:
            _, pending = wait(futures, timeout=1.0)
            bar.n = len(store.committed_blocks()) - start
            bar.refresh()
            if not pending:
                break
        bar.close()
        for future in futures:
            future.result()  # re-raise a worker's error here
