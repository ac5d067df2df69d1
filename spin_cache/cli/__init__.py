"""The command line: `spin-cache COMMAND ...` (see :func:`main`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
