"""C++ kernels compiled for this CPU on first use, shared by extraction (the fused pooling, spin_cache.model.kernels)
and the solver (the class products, spin_cache.fit.products).

A kernel is built with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja), with
``-march=native`` (its vector loops need this CPU's instruction set to be fast), once per source, CPU, torch
installation and Python, and cached under ``~/.cache/spin-cache/kernels`` (``$XDG_CACHE_HOME`` if set). Where it
cannot be built, the caller falls back to torch and the user is told once; each kernel has an environment switch
that turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Compiler flags of every kernel: -fopenmp, or at::parallel_for runs serially.
FLAGS = ("-O3", "-march=native", "-fopenmp")
_OFF = ("0", "false", "no", "off")

log = logging.getLogger(__name__)


def cpu_signature() -> str:
    """What decides whether a build made with -march=native runs here: the CPU's model and instruction sets."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))


def build_name(prefix: str, source: str) -> str:
    """The cached build's name: `prefix` and a hash of everything the binary depends on."""
    h = hashlib.sha256()
    # torch's folder too: the build's ninja file names its headers, so two environments sharing one build
    # directory would rebuild it in turn
    torch_folder = str(Path(torch.__file__).resolve().parent)
    for part in (source, " ".join(FLAGS), torch.__version__, torch_folder, sys.version, cpu_signature()):
        h.update(part.encode())
        h.update(b"\0")
    return prefix + h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where builds are kept: $XDG_CACHE_HOME/spin-cache/kernels, else ~/.cache/spin-cache/kernels."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "spin-cache" / "kernels"


def switched_off(switch: str) -> bool:
    """Whether the environment variable `switch` turns its kernel off (0, false, no or off)."""
    return os.environ.get(switch, "1").strip().lower() in _OFF


def build(name: str, source: str, functions: Sequence[str], *, what: str, instead: str, switch: str) -> Any | None:
    """The compiled module `name` exposing `functions`, built once into the cache; None where it cannot be built
    (no compiler, no ninja, a read-only cache), after a RuntimeWarning that says `what` could not be built and what
    happens `instead`."""
    directory = cache_dir() / name
    try:
        from torch.utils.cpp_extension import load_inline

        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / f"{name}.so").exists():
            log.info("building the %s for this CPU (once, about 30 s)", what)
        return load_inline(
            name,
            cpp_sources=[source],
            functions=list(functions),
            extra_cflags=list(FLAGS),
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a read-only home: the caller uses torch
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"spin-cache: the {what} could not be built in {directory} ({reason}); {instead}. Install a C++ "
            f"compiler and ninja, or set {switch}=0 to stop trying.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
