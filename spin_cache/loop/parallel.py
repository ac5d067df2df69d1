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

from ..errors import InputError, SpinCacheError
from ..extract.machine import usable_cores
from ..validation import POSITIVE_INT, check

SCHEDULER_ENV = "SPIN_CACHE_SCHEDULER"
LOCAL_SCHEDULERS = ("sync", "threads", "processes")
#: Where the dashboard listens when it is asked for without an address (loopback only).
DEFAULT_DASHBOARD = "127.0.0.1:8787"


def resolve_scheduler(scheduler: str | None) -> str:
    """--scheduler, else $SPIN_CACHE_SCHEDULER, else the local default: a threaded dask.distributed cluster, one
    task per core (torch releases the GIL in its matmuls, so threads use every core without the seconds each worker
    process takes to start; BENCHMARKS.md, "Probe scheduler")."""
    chosen = scheduler or os.environ.get(SCHEDULER_ENV) or "threads"
    if chosen not in LOCAL_SCHEDULERS and not chosen.startswith(("tcp://", "tls://", "inproc://")):
        raise InputError(
            f"--scheduler {chosen}: use sync, threads, processes or a dask.distributed address like tcp://HOST:8786"
        )
    return chosen


def default_workers() -> int:
    """How many cores this process may run on (:func:`spin_cache.extract.machine.usable_cores`, the one place that
    counts them); >= 1."""
    return usable_cores()


def default_memory_budget() -> int:
    """Half of this machine's memory."""
    import psutil

    return int(psutil.virtual_memory().total // 2)


def concurrent_tasks(scheduler: str | None, workers: int | None) -> int:
    """How many tasks may run at the same time, each with its share of the memory budget."""
    return 1 if resolve_scheduler(scheduler) == "sync" else (workers or default_workers())


def task_memory_budget(budget: int | None, scheduler: str | None, workers: int | None) -> int:
    """One task's share of the budget: tasks that may run at the same time split it."""
    total = budget or default_memory_budget()
    return max(1, total // concurrent_tasks(scheduler, workers))


def check_memory_budget(budget: int | None, per_task_need: int, scheduler: str | None, workers: int | None) -> None:
    """Refuse, before any work, a budget whose per-task share is below what one task needs at the least (one row
    block of its widest layer): streaming cannot go below that, it only gets slower."""
    if budget is None:
        return
    need = per_task_need * concurrent_tasks(scheduler, workers)
    if budget < need:
        raise InputError(
            f"--memory-budget {format_bytes(budget)}: too small for one row block per running task; give at least "
            f"{format_bytes(need)} (or fewer --workers)"
        )


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 13107200 -> '12.5 MiB'; rounded up, so a minimum stated this way is enough."""
    import math

    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{math.ceil(n / size * 10) / 10:g} {unit}"
    return f"{int(n)} bytes"


def check_workers(workers: int | None) -> int | None:
    """--workers: None (one per core) or a positive integer."""
    return None if workers is None else check("--workers", workers, POSITIVE_INT)


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


class TaskError:
    """A task's SpinCacheError, returned rather than raised: Dask would retry a raised one (a damaged chunk stays
    damaged) and wrap it in its own traceback; the client raises it again, same class and message."""

    def __init__(self, error: SpinCacheError) -> None:
        self.error = error


def call_limited(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    """What a worker runs: `fn(*args)` with its threads capped; a SpinCacheError comes back as a TaskError."""
    with thread_limit(threads):
        try:
            return fn(*args)
        except SpinCacheError as exc:
            return TaskError(exc)


def _unwrap(result: Any) -> Any:
    if isinstance(result, TaskError):
        raise result.error
    return result


def _task_failure(desc: str, exc: BaseException) -> SpinCacheError:
    """One line for a task that failed with something other than a SpinCacheError."""
    detail = " ".join(str(exc).split())[:300] or "no message"
    return SpinCacheError(
        f"{desc}: a task failed ({type(exc).__name__}: {detail}); if a worker was lost or ran out of memory, rerun "
        "the same command to continue from the results already saved"
    )


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    desc: str = "tasks",
    progress: bool = True,
    dashboard: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield (index, result) for each task as it completes.

    A task that raises a SpinCacheError (bad input, a damaged chunk) stops the run with that same error, from any
    scheduler, and is not retried; any other failure is retried once, then raises one SpinCacheError line.
    `dashboard`: the address of a local cluster's dashboard (None: no dashboard; see :func:`local_cluster`)."""
    from tqdm.auto import tqdm

    chosen = resolve_scheduler(scheduler)
    workers = check_workers(workers)
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress)
    try:
        if chosen == "sync" or not tasks:
            for i, args in enumerate(tasks):
                try:
                    result = call_limited(fn, default_workers(), *args)
                except Exception as exc:
                    raise _task_failure(desc, exc) from exc
                yield i, _unwrap(result)
                bar.update(1)
            return
        with _client(chosen, workers, dashboard) as (client, threads_per_task):
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
                    raise _task_failure(desc, exc) from exc
                yield futures[future], _unwrap(result)
                bar.update(1)
    finally:
        bar.close()


@contextmanager
def local_cluster(scheduler: str, workers: int, dashboard: str | None = None) -> Iterator[Any]:
    """A local dask.distributed cluster that only this machine can reach.

    ``threads``: one in-process worker with `workers` threads, talking over inproc (no socket); ``processes``:
    `workers` single-threaded worker processes on 127.0.0.1. Every dask server also starts an HTTP server (even
    with ``dashboard_address=None`` the scheduler's binds 0.0.0.0:8787): here each binds 127.0.0.1 on a free port
    and serves only a health check, unless `dashboard` is given (an address such as ``127.0.0.1:8787``; an address
    without a host, ``:8787``, means every interface), where the scheduler serves the dashboard (with bokeh
    installed) and its usual routes."""
    import logging

    import dask
    from distributed import Nanny, Scheduler, SpecCluster, Worker
    from distributed.system import MEMORY_LIMIT

    processes = scheduler == "processes"
    protocol, host = ("tcp://", "127.0.0.1") if processes else ("inproc://", None)
    n_workers = workers if processes else 1
    quiet_http = ["distributed.http.health"]
    config: dict[str, Any] = {"distributed.worker.http.routes": quiet_http}
    if dashboard is None:
        config["distributed.scheduler.http.routes"] = quiet_http
    scheduler_spec = {
        "cls": Scheduler,
        "options": {
            "host": host,
            "port": 0,
            "protocol": protocol,
            "dashboard": dashboard is not None,
            "dashboard_address": dashboard or "127.0.0.1:0",
        },
    }
    worker_spec = {
        "cls": Nanny if processes else Worker,
        "options": {
            "host": host,
            "protocol": protocol,
            "nthreads": 1 if processes else workers,
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
            "memory_limit": MEMORY_LIMIT // n_workers,
            "silence_logs": logging.ERROR,
        },
    }
    with dask.config.set(config):  # read when the servers start, and handed to worker processes
        cluster = SpecCluster(
            scheduler=scheduler_spec,
            workers={i: worker_spec for i in range(n_workers)},
            worker=worker_spec,
            silence_logs=logging.ERROR,
        )
    try:
        yield cluster
    finally:
        cluster.close()


@contextmanager
def _client(scheduler: str, workers: int | None, dashboard: str | None = None) -> Iterator[tuple[Any, int]]:
    import logging

    from dask.distributed import Client

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = workers or default_workers()
    if scheduler in ("threads", "processes"):
        with local_cluster(scheduler, n, dashboard) as cluster:
            client = Client(cluster)
            try:
                # threads share one process: each task gets one thread so n tasks run side by side.
                yield client, 1
            finally:
                client.close()
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise SpinCacheError(f"--scheduler {scheduler}: cannot connect ({exc}); is the scheduler running?") from exc
        try:
            yield client, 1
        finally:
            client.close()
