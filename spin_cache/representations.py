"""What spin-cache reads from a transformer: the kinds of per-layer readings and the poolings over tokens."""

from __future__ import annotations

POOLINGS = ("first", "last", "mean", "max")
KINDS = ("hidden", "ffn")


def default_poolings(is_decoder: bool) -> tuple[str, ...]:
    """Default poolings: encoders ``first`` (CLS), decoders ``last``; both also ``mean`` and ``max``."""
    return ("last", "mean", "max") if is_decoder else ("first", "mean", "max")
