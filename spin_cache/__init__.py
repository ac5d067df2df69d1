"""spin-cache: SPIN (Jiao et al., 2024) on a cached activation store."""

__version__ = "0.1.0"
