"""The background block writer: a separate process that compresses and writes the row blocks extraction pools.

Why a process and not a thread: a writer thread shares the interpreter lock with the thread that drives the
model, and hands it back and forth a few thousand times per block (around every Blosc call). On the CPU that cost
the model far more than the writer's own CPU time: side by side, a writer thread made extraction 1.08-1.15x the
time of the same run with writing switched off, while the same compression work in a separate low-priority
process cost ~1% (BENCHMARKS.md). On a GPU the feeding thread is the bottleneck and the same lock held it back.

How: the pooled blocks live in a few shared-memory slots (one memfd, mapped by both processes; nothing is left
behind in /dev/shm if either is killed). The extracting process fills a slot, sends the writer one JSON line
(block, slot, row order, commit info) on its stdin, and reuses the slot once the writer replies on its stdout
that the block is committed. The writer opens the store itself and commits each block with its marker, so a
crash loses at most the blocks in flight. If the extracting process dies, the writer sees its stdin close and
exits at once: it never writes on after its parent (a resumed run would write the same files).

    python -m spin_cache.writer CONFIG_JSON   (started by `BlockWriter`; not a user command)
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np

from .errors import SpinCacheError

# numpy has no bfloat16: the writer sees its raw bits
NUMPY_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16), "float32": np.dtype(np.float32)}


class Throttle:
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


class SharedSlots:
    """`n` block buffers of `shape` in one shared memory file (a memfd where there is one: anonymous, freed when
    the last process holding it exits), mapped by the extracting process and by the writer."""

    def __init__(self, n: int, shape: tuple[int, int], dtype: str, fd: int | None = None) -> None:
        self.n, self.shape, self.dtype = n, shape, dtype
        self.slot_bytes = shape[0] * shape[1] * NUMPY_DTYPES[dtype].itemsize
        size = max(1, n * self.slot_bytes)
        self._file: IO[bytes] | None = None
        if fd is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("spin-cache-blocks")
            else:  # an unlinked temporary file: same lifetime rules, backed by the page cache
                self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
                fd = self._file.fileno()
            os.ftruncate(fd, size)
        self.fd = fd
        self.map = mmap.mmap(fd, size)
        flat = np.frombuffer(self.map, dtype=NUMPY_DTYPES[dtype], count=n * shape[0] * shape[1])
        self.arrays = flat.reshape(n, *shape)

    def close(self) -> None:
        self.arrays = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive somewhere: the mapping goes with it
            self.map.close()
        if self._file is not None:
            self._file.close()
        elif self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1


class BlockWriter:
    """The extracting process's side: hands filled slots to the writer process and gets them back once written.

    `slot()` waits for a free slot (the model waits only when the writer is `n_slots - 1` blocks behind: bounded
    memory); `put()` queues a filled slot; `all_cores()` lets the writer compress `cores` arrays at once (once
    the model is done); `close()` waits for every block to be committed and raises the writer's error, if any.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict | None,
        shape: tuple[int, int],
        dtype: str,
        threads: int,
        n_slots: int = 3,
        low_priority: bool = True,
    ) -> None:
        self.url = url
        self.slots = SharedSlots(n_slots, shape, dtype)
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n_slots):
            self.free.put(i)
        self.error: str | None = None
        self.closed = False
        self.write_seconds = 0.0  # the writer's wall time in write_block, summed over blocks
        config = {
            "url": url,
            "storage_options": storage_options,
            "fd": self.slots.fd,
            "n_slots": n_slots,
            "shape": list(shape),
            "dtype": dtype,
            "threads": threads,
            "low_priority": low_priority,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spin_cache.writer", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(self.slots.fd,),
            env=_child_environment(),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._commands = self.process.stdin
        self._replies = threading.Thread(target=self._read_replies, args=(self.process.stdout,), daemon=True)
        self._replies.start()

    def _read_replies(self, stream: IO[bytes]) -> None:
        for line in stream:
            reply = json.loads(line)
            if "error" in reply:
                self.error = self.error or reply["error"]
            if "slot" in reply:
                self.write_seconds += reply.get("seconds", 0.0)
                self.free.put(int(reply["slot"]))
        code = self.process.wait()
        if code != 0 and self.error is None:
            self.error = f"the writer process exited with code {code}"
        self.free.put(-1)  # wakes a waiting slot(): the writer is gone

    def slot(self) -> tuple[int, np.ndarray]:
        """A free slot: its number and its (rows, columns) array."""
        self._raise()
        index = self.free.get()
        if index < 0:
            self.free.put(-1)
            self._raise()
            raise SpinCacheError(f"writing to {self.url} failed: the writer process stopped")
        return index, self.slots.arrays[index]

    def put(self, block: int, slot: int, rows: int, row_index: np.ndarray, info: dict) -> None:
        """Queue block `block`, whose `rows` rows are in `slot` in the order `row_index` (row r of the block is
        slot row row_index[r])."""
        self._raise()
        self._send({"op": "block", "block": block, "slot": slot, "rows": rows,
                    "row_index": row_index.tolist(), "info": info})  # fmt: skip

    def all_cores(self) -> None:
        self._send({"op": "all_cores"})

    def close(self) -> None:
        """Wait until every queued block is committed; raise the writer's error, if any."""
        if not self.closed:
            self.closed = True
            self._send({"op": "close"})
            with contextlib.suppress(OSError):
                self._commands.close()
            self.process.wait()
            self._replies.join()
        self.slots.close()
        self._raise()

    def stop(self) -> None:
        """Stop the writer now (the extracting side failed): blocks in flight are not committed."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._commands.close()  # the writer exits when its stdin closes without "close"
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._replies.join()
        self.slots.close()

    def _send(self, message: dict) -> None:
        try:
            self._commands.write(json.dumps(message).encode() + b"\n")
            self._commands.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.process.wait()
            self._replies.join()
            self._raise()
            raise SpinCacheError(f"writing to {self.url} failed: the writer process stopped") from None

    def _raise(self) -> None:
        if self.error is not None:
            raise SpinCacheError(f"writing to {self.url} failed: {self.error}")


def _child_environment() -> dict[str, str]:
    """This environment, with the folder spin_cache was imported from first on the path (it may not be
    installed, e.g. a source checkout on sys.path)."""
    here = str(Path(__file__).resolve().parent.parent)
    path = [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.environ | {"PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


# ---- the writer process -------------------------------------------------------------------------------------


def _serve(config: dict, replies: IO[str]) -> int:
    import numcodecs.blosc

    from .store import ActivationStore

    numcodecs.blosc.set_nthreads(1)  # parallelism is across arrays, throttled below
    slots = SharedSlots(config["n_slots"], tuple(config["shape"]), config["dtype"], fd=config["fd"])
    store = ActivationStore.open(config["url"], mode="a", storage_options=config["storage_options"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    throttle = Throttle(config["threads"])
    lock = threading.Lock()

    def reply(message: dict) -> None:
        with lock:
            replies.write(json.dumps(message) + "\n")
            replies.flush()

    commands: queue.SimpleQueue[dict | None] = queue.SimpleQueue()

    def read_commands() -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message["op"] == "all_cores":
                throttle.raise_to(cores)
            elif message["op"] == "close":
                commands.put(None)
                return
            else:
                commands.put(message)
        os._exit(3)  # stdin closed without "close": the extracting process is gone, so stop writing now

    threading.Thread(target=read_commands, daemon=True).start()
    failed = False
    while (message := commands.get()) is not None:
        if not failed:
            rows, slot = message["rows"], message["slot"]
            values = slots.arrays[slot][:rows]
            keys = store.layout.array_keys()
            offsets = np.cumsum([0] + [store.layout.widths[k[0]] for k in keys])
            arrays = {key: values[:, offsets[j] : offsets[j + 1]] for j, key in enumerate(keys)}
            started = time.perf_counter()
            try:
                store.write_block(message["block"], arrays, message["info"], cores,
                                  row_index=np.asarray(message["row_index"]), gate=throttle)  # fmt: skip
            except Exception as exc:  # reported to the extracting process, which raises it
                failed = True
                reply({"error": f"{type(exc).__name__}: {exc}"})
            reply({"slot": message["slot"], "seconds": time.perf_counter() - started})
        else:
            reply({"slot": message["slot"]})
    return 0


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    if config.get("low_priority"):
        # the model's threads wait for each other at every parallel operation: a writer that preempts one of
        # them stalls them all; at the lowest priority it runs in the gaps (threads inherit the nice value)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 19)
    replies = os.fdopen(os.dup(1), "w")  # replies only: anything else printed goes to stderr
    os.dup2(2, 1)
    try:
        return _serve(config, replies)
    except Exception as exc:
        with contextlib.suppress(OSError):
            replies.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            replies.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
