"""Sharing the CPU between the model and the writer: the writer's thread limit and its core handover."""

from __future__ import annotations

import contextlib
import os
import threading

from .machine import MachinePolicy


def lower_this_threads_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: nice is per thread). The model's worker threads
    wait for each other at every parallel operation, so a writer that preempts one of them stalls them all; at low
    priority it runs in the gaps instead, and when it falls behind the bounded queue makes the model wait."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Throttle:
    """A gate that lets at most `limit` threads through at once; the limit can be raised while threads wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.changed = threading.Condition()

    def raise_to(self, limit: int) -> None:
        """Let up to `limit` threads through from now on (never lowers the limit)."""
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


# The arithmetic one model thread does in the time one writer thread encodes and writes one byte of a block
# (float16 activations through Blosc zstd-1 + crc32c): the ratio of the two threads' throughputs (BENCHMARKS.md,
# Extraction). Only the schedule below depends on it, never a stored value; if it is off on another CPU the writer
# either finishes early (a core idles for the rest of those batches) or late (the rest is written beside the
# model, as without a schedule).
MODEL_FLOPS_PER_WRITTEN_BYTE = 350.0


class CoreForWriter:
    """On the CPU, hands one of the model's cores to the writer at the start of each block, for about as long as
    writing the previous block takes.

    The model's OpenMP threads keep every core busy and wait for each other at every operation, so a writer that
    takes a core from one of them stalls them all: its CPU time costs about as much wall time. A core of the
    writer's own costs the model less than that (BENCHMARKS.md, Extraction).
    How long is decided from what is known before the block runs (the block's bytes, the batches' tokens, the
    model's size), never from timings: results of a batch can differ in the last bit with the thread count
    (MKL splits some matrix products by thread), and a store must not depend on when its writer ran. The first
    block has nothing to write before it and keeps every thread.

    Parameters
    ----------
    flops_per_token
        The model's arithmetic per token (twice its blocks' parameters).
    block_bytes
        The bytes of one block as stored.
    policy
        The machine's policy (default: detected now); its torch threads are the model's, and it sets them.
    """

    def __init__(self, flops_per_token: float, block_bytes: int, policy: MachinePolicy | None = None) -> None:
        self.policy = policy if policy is not None else MachinePolicy.detect()
        self.threads = self.current = self.policy.torch_threads
        self.flops_per_token = flops_per_token
        # the arithmetic the model's remaining threads do while one writer thread writes a block (none on one)
        self.block_flops = block_bytes * MODEL_FLOPS_PER_WRITTEN_BYTE * (self.threads - 1)
        self.left = 0.0

    def start_block(self, block: int) -> None:
        """Start block number `block`: the writer gets its core back for as long as the block before takes."""
        self.left = self.block_flops if block > 0 else 0.0

    def before_batch(self, rows: int, tokens: int) -> None:
        """Set the threads for a batch of `rows` padded to `tokens`."""
        wanted = self.threads - 1 if self.left > 0 else self.threads
        self.left -= rows * tokens * self.flops_per_token
        self._set(wanted)

    def restore(self) -> None:
        """Give the model every thread again."""
        self._set(self.threads)

    def _set(self, threads: int) -> None:
        if threads != self.current:
            self.policy.use_threads(threads)
            self.current = threads
