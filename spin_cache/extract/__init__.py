"""The one stage that runs the model: plan (options, data, manifest), run (blocks of batches through the hooked
forward), pool, transfer (device to host), write (shards and commit markers), schedule (the CPU shared with the
writer) and workers (several model processes)."""

from .run import ExtractionReport, extract, run_extraction

__all__ = ["ExtractionReport", "extract", "run_extraction"]
