"""The background writer: encodes a pooled block's shards and commits the block."""

from __future__ import annotations

import queue
import threading

import torch

from ..errors import SpinCacheError
from ..store.activation_store import ActivationStore
from .pool import PooledBlock
from .schedule import Throttle, lower_this_threads_priority


class BlockWriter:
    """A background thread that writes finished blocks, each array through `throttle` (so the number of arrays
    compressed at once can grow mid-block); the queue bound keeps memory bounded. Written blocks' buffers come
    back as spares for the next blocks."""

    def __init__(self, store: ActivationStore, throttle: Throttle, threads: int, max_pending: int = 1) -> None:
        self.store = store
        self.throttle = throttle
        self.threads = threads
        self.queue: queue.Queue[tuple[int, PooledBlock] | None] = queue.Queue(maxsize=max_pending)
        self.spares: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="spin-cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lower_this_threads_priority()
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            block, pooled = item
            try:
                info = {"overflow": pooled.overflow}
                self.store.write_block(
                    block, pooled.arrays, info, self.threads, row_index=pooled.row_index, gate=self.throttle
                )
            except BaseException as exc:  # re-raised in the main thread
                self.error = exc
            self.spares.put(pooled.buffer)

    def spare(self) -> torch.Tensor | None:
        """The buffer of a block already written, for reuse; None when there is none yet."""
        try:
            return self.spares.get_nowait()
        except queue.Empty:
            return None

    def put(self, block: int, pooled: PooledBlock) -> None:
        """Queue a pooled block (its buffer comes back as a spare once written)."""
        self._raise()
        self.queue.put((block, pooled))

    def close(self) -> None:
        """Write what is queued, stop the thread and raise the first error it met."""
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        """Stop the thread (after the blocks already queued); errors are not raised (see :meth:`close`)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise SpinCacheError(f"writing to {self.store.url} failed: {self.error}") from self.error
