"""Machine-specific tuning of an extraction, in one place: the cores this process may use, the threads torch runs
the model on, and glibc's malloc thresholds (:mod:`spin_cache.extract.allocator`).

Extraction asks :meth:`MachinePolicy.detect` once and passes the policy on; nothing else in
:mod:`spin_cache.extract` counts cores, sets torch's threads or tunes malloc.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from .allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, pin_malloc_thresholds

#: The most arrays a writer compresses at once beside a GPU: more threads would take the GIL from the thread that
#: feeds the device between their calls into Blosc.
GPU_WRITE_THREADS = 8


def usable_cores() -> int:
    """The number of cores this process may run on: its CPU affinity where the OS reports one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class MachinePolicy:
    """How an extraction uses this machine.

    Parameters
    ----------
    cores
        The cores this process may use (the writer's threads once the model is done).
    torch_threads
        The intra-op threads torch runs the model on.
    pin_malloc
        Whether :meth:`apply` pins glibc's mmap and trim thresholds, so the loop reuses the memory it frees
        instead of faulting in fresh pages every batch.
    mmap_threshold, trim_threshold
        The thresholds pinned (bytes).
    """

    cores: int
    torch_threads: int
    pin_malloc: bool = True
    mmap_threshold: int = MMAP_THRESHOLD
    trim_threshold: int = TRIM_THRESHOLD

    @classmethod
    def detect(cls) -> MachinePolicy:
        """The policy for this process as it runs now: its usable cores and torch's current thread count."""
        return cls(cores=usable_cores(), torch_threads=torch.get_num_threads())

    def for_workers(self, workers: int) -> MachinePolicy:
        """The policy of one of `workers` processes sharing this machine's CPU: an equal share of the cores."""
        return dataclasses.replace(self, torch_threads=max(1, self.cores // workers))

    def write_threads(self, device_type: str) -> int:
        """How many arrays the writer compresses at once while the model runs on `device_type`.

        On the CPU the model already uses every core: one thread, at the lowest priority, fills the gaps instead
        of competing with it. Beside a GPU every core but the one feeding the device is free, up to
        :data:`GPU_WRITE_THREADS`.
        """
        return 1 if device_type == "cpu" else max(1, min(self.cores - 1, GPU_WRITE_THREADS))

    def apply(self) -> bool:
        """Set torch's threads and, with `pin_malloc`, glibc's thresholds (process-wide and lasting).

        Returns
        -------
        bool
            Whether the malloc thresholds took effect (False off glibc or without `pin_malloc`).
        """
        self.use_threads(self.torch_threads)
        if not self.pin_malloc:
            return False
        return pin_malloc_thresholds(self.mmap_threshold, self.trim_threshold)

    @staticmethod
    def use_threads(threads: int) -> None:
        """Run torch's intra-op work on `threads` threads from now on (a no-op when that is already so)."""
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
