"""Run model-free jobs (probes, sweep groups) as Dask tasks, locally or on a `dask.distributed` cluster.

Tasks are module-level functions that take a store URL and small arguments and open the store themselves, so no
array is ever shipped from the client. Each task caps its BLAS/torch threads so that workers do not oversubscribe
the cores they were given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import InputError, SpinCacheError

SCHEDULER_ENV = "SPIN_CACHE_SCHEDULER"
LOCAL_SCHEDULERS = ("sync", "threads", "processes")


def resolve_scheduler(scheduler: str | None) -> str:
    """--scheduler, else $SPIN_CACHE_SCHEDULER, else the local default: a threaded dask.distributed cluster, one
    task per core (torch releases the GIL in its matmuls; measured faster than worker processes here, whose start-up
    costs seconds; see BENCHMARKS.md)."""
    chosen = scheduler or os.environ.get(SCHEDULER_ENV) or "threads"
    if chosen not in LOCAL_SCHEDULERS and not chosen.startswith(("tcp://", "tls://", "inproc://")):
        raise InputError(
            f"--scheduler {chosen}: use sync, threads, processes or a dask.distributed address like tcp://HOST:8786"
        )
    return chosen


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_memory_budget() -> int:
    """Half of this machine's memory."""
    import psutil

    return int(psutil.virtual_memory().total // 2)


def task_memory_budget(budget: int | None, scheduler: str | None, workers: int | None) -> int:
    """One task's share of the budget: tasks that may run at the same time split it."""
    total = budget or default_memory_budget()
    concurrent = 1 if resolve_scheduler(scheduler) == "sync" else (workers or default_workers())
    return max(1, total // concurrent)


def parse_bytes(text: str) -> int:
    """'8G', '512MiB', '1e9' -> bytes."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
             "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}  # fmt: skip
    s = text.strip().lower()
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = s[len(number) :].strip()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError) as exc:
        raise InputError(f"--memory-budget {text}: give a size like 8G, 512MiB or 2000000000") from exc
    if value <= 0:
        raise InputError(f"--memory-budget {text}: must be positive")
    return int(value)


_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE = {"active": 0, "saved": 0}


@contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Cap torch and BLAS threads inside one task. Tasks running side by side in one process (the threads
    scheduler) share the setting: the first one in saves the process's value, the last one out restores it."""
    import torch
    from threadpoolctl import threadpool_limits

    with _LIMIT_LOCK:
        if _LIMIT_STATE["active"] == 0:
            _LIMIT_STATE["saved"] = torch.get_num_threads()
        _LIMIT_STATE["active"] += 1
        torch.set_num_threads(max(1, n))
    try:
        with threadpool_limits(limits=max(1, n)):
            yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_STATE["active"] -= 1
            if _LIMIT_STATE["active"] == 0:
                torch.set_num_threads(_LIMIT_STATE["saved"])


def call_limited(fn: Callable, threads: int, *args: Any) -> Any:
    """What a worker runs: `fn(*args)` with its threads capped."""
    with thread_limit(threads):
        return fn(*args)


def run_tasks(
    fn: Callable,
    tasks: Sequence[tuple],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    desc: str = "tasks",
    progress: bool = True,
) -> Iterator[tuple[int, Any]]:
    """Yield (index, result) for each task as it completes. A failed task is retried once, then raises."""
    from tqdm.auto import tqdm

    chosen = resolve_scheduler(scheduler)
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress)
    try:
        if chosen == "sync" or not tasks:
            for i, args in enumerate(tasks):
                yield i, call_limited(fn, default_workers(), *args)
                bar.update(1)
            return
        with _client(chosen, workers) as (client, threads_per_task):
            from dask.distributed import as_completed

            futures = {
                client.submit(call_limited, fn, threads_per_task, *args, pure=False, retries=1): i
                for i, args in enumerate(tasks)
            }
            for future in as_completed(futures):
                try:
                    result = future.result()
                except SpinCacheError:
                    raise
                except Exception as exc:
                    raise SpinCacheError(
                        f"{desc}: a task failed on the Dask cluster ({type(exc).__name__}: {exc}); "
                        "rerun to continue from the results already saved"
                    ) from exc
                yield futures[future], result
                bar.update(1)
    finally:
        bar.close()


@contextmanager
def _client(scheduler: str, workers: int | None) -> Iterator[tuple[Any, int]]:
    import logging

    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = workers or default_workers()
    if scheduler in ("threads", "processes"):
        processes = scheduler == "processes"
        cluster = LocalCluster(
            n_workers=n if processes else 1,
            threads_per_worker=1 if processes else n,
            processes=processes,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        try:
            # threads share one process: each task gets one thread so n tasks run side by side.
            yield client, 1
        finally:
            client.close()
            cluster.close()
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise SpinCacheError(f"--scheduler {scheduler}: cannot connect ({exc}); is the scheduler running?") from exc
        try:
            yield client, 1
        finally:
            client.close()
