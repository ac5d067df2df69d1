"""The one stage that runs the model: plan (options, data, manifest), run (blocks of batches through the hooked
forward), pool, transfer (device to host), write (shards and commit markers), schedule (the CPU shared with the
writer) and workers (several model processes). Options: :class:`ExtractSettings`."""

from typing import Any

from .settings import ExtractSettings

__all__ = ["ExtractSettings", "ExtractionReport", "extract", "run_extraction"]


def __getattr__(name: str) -> Any:
    # The run imports torch and transformers: only when it is asked for, so the command line starts fast.
    if name in ("ExtractionReport", "extract", "run_extraction"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
