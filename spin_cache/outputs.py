"""Where spin-cache may write: the one rule every command that writes follows.

spin-cache never deletes or overwrites what it did not write. An output path may be

- missing (it is created),
- an empty directory,
- or a spin-cache output of the same kind, recognised by its marker file (a store's ``zarr.json`` holding a
  spin-cache manifest, a probe run's ``run.json``, a sweep's ``sweep.json``, a report's ``report.html``).

Anything else, a file or a directory holding other things, is refused with one line naming the path and what to do.
``--overwrite`` replaces only a spin-cache output, never a foreign directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import numpy as np

from .errors import InputError

#: The marker file of each kind of output directory.
MARKERS = {
    "store": "zarr.json",
    "probe run": "run.json",
    "sweep": "sweep.json",
    "report": "report.html",
}


def _foreign(option: str, where: str, kind: str, names: list[str]) -> InputError:
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    return InputError(
        f"{option} {where}: exists and is not a spin-cache {kind} (it holds {shown}); spin-cache never deletes "
        "what it did not write: choose a new or empty directory"
    )


def prepare_output_dir(path: str | os.PathLike[str], kind: str, *, option: str = "--out") -> Path:
    """Check that a local directory may receive a spin-cache output of `kind` (see the module doc) and create it.

    Parameters
    ----------
    path
        The directory the command will write.
    kind
        One of :data:`MARKERS`' keys; a directory holding that kind's marker file is accepted.
    option
        The option that named the path, for the error message.

    Returns
    -------
    Path
        The directory, created if it was missing.

    Raises
    ------
    InputError
        The path is a file, or a directory that holds anything but a spin-cache output of this kind.
    """
    out = Path(path)
    if out.is_symlink() and not out.exists():
        raise InputError(f"{option} {out}: is a dangling symbolic link; choose a new or empty directory")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out}: is a file, not a directory; choose a new or empty directory")
    if out.is_dir():
        names = [p.name for p in out.iterdir()]
        if names and MARKERS[kind] not in names:
            raise _foreign(option, str(out), kind, names)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_output_file(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Check, before any work, that a single output file can be written: its folder exists, it is not a folder.

    An existing file is replaced (the user named it); a missing folder is an error rather than created, so a typo
    in the folder does not scatter outputs.
    """
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{option} {out}: is a directory; name a file to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{option} {out}: folder {parent} does not exist; create it first")
    return out


def is_spin_cache_store(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """Whether `root` holds a zarr.json carrying a spin-cache manifest (complete or not)."""
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except (FileNotFoundError, ValueError, OSError):
        return False
    return isinstance(meta, dict) and "spin_cache" in (meta.get("attributes") or {})


def check_store_destination(fs: fsspec.AbstractFileSystem, root: str, url: str, *, option: str = "--out") -> bool:
    """Check that a store may be written at `root` (on any fsspec filesystem).

    Returns
    -------
    bool
        True when a spin-cache store is already there (the caller decides between resume, cache hit, refusal and
        ``--overwrite``), False when the place is free (missing or an empty directory).

    Raises
    ------
    InputError
        `root` is a file, or a directory holding anything but a spin-cache store.
    """
    if not fs.exists(root):
        return False
    if not fs.isdir(root):
        raise InputError(f"{option} {url}: is a file, not a directory; choose a new or empty directory")
    if is_spin_cache_store(fs, root):
        return True
    names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    if names:
        raise _foreign(option, url, "store", names)
    return False


def finite_or_null(obj: object) -> object:
    """`obj` with every NaN or infinity replaced by None, tuples and arrays as lists: for strict JSON."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [finite_or_null(v) for v in obj.tolist()]
    return obj
