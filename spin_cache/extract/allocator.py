"""glibc malloc settings for spin-cache's two long loops (no-ops on other C libraries).

Extraction: a steady heap for a loop that allocates and frees the same large tensors batch after batch.

glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised as such blocks are freed) with
fresh pages from the kernel, and gives the top of the heap back once more than the trim threshold is free there.
A forward pass whose activations are pooled by hooks interleaves the model's large buffers with many small
results, so the heap keeps being trimmed and regrown, and every batch faults in fresh zero-filled pages. Pinning
both thresholds lets freed memory be reused instead (BENCHMARKS.md, Extraction).

Streamed sweeps: the heap's free space is given back after each streamed fit (`release_free_heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# glibc's upper bound for the mmap threshold on 64-bit (larger blocks are always mmapped)
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 512 * 2**20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune
        return None
    return libc


def pin_malloc_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Pin glibc's mmap and trim thresholds for this process; True when it took effect.

    The setting is process-wide and lasts (glibc stops adjusting its thresholds once they are set): up to
    `trim_threshold` bytes of freed heap stay mapped for reuse. A no-op returning False off glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    )


def release_free_heap() -> bool:
    """Give the pages of freed heap memory back to the kernel (glibc's malloc_trim); True when some were.

    Streamed fits read the same row blocks pass after pass into arrays of a few varying sizes; the heap's free
    space fragments and the process's resident memory creeps up with every pass over more blocks, although no
    more memory is live. Trimming after each streamed fit keeps a sweep's peak memory flat in the store's size
    (BENCHMARKS.md, Scale). A no-op returning False off glibc.
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
