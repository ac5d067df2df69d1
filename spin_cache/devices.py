"""Device names, shared by extraction, predict and the solver."""

from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a device name; ``"auto"`` is cuda when available, else cpu.

    Raises InputError for an unknown name and for a CUDA device on a machine without CUDA.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return dev
