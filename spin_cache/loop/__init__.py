"""The model-free loop, on Dask: one L1 probe per layer scores every neuron (probe), selection keeps the salient ones
(select), and the sweep integrates the first K layers and picks the configuration on dev (sweep)."""

from .probe import ProbeRun, ProbeSettings, run_probes
from .select import select
from .sweep import SweepResult, SweepSettings, run_sweep

__all__ = ["ProbeRun", "ProbeSettings", "SweepResult", "SweepSettings", "run_probes", "run_sweep", "select"]
