"""Every extraction option, with its default, in one place (:class:`ExtractSettings`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..data.loading import LabelledDataset
from ..errors import InputError
from ..model.identity import DEFAULT_MODEL
from ..representations import KINDS, POOLINGS
from ..store.layout import STORE_DTYPES
from ..validation import POSITIVE_INT, Constraint, check_all

DEFAULT_CHUNK_COLS = 64
DEFAULT_MAX_LENGTH = 512
DEFAULT_STORES_DIR = "stores"
#: The model dtypes by name; "auto": bfloat16 on CUDA where supported, else float32 (extraction), and in predict
#: the dtype the head's store was extracted in (spin_cache.serve.predict.resolve_compute_dtype).
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ExtractSettings:
    """The options of one extraction (``spin-cache extract``, :func:`spin_cache.extract.run_extraction`).

    Values are checked and normalised when the object is made (InputError naming the first bad one): the
    numbers are positive integers, `kinds` and `poolings` are names from :mod:`spin_cache.representations`
    (a list or a comma-separated string; stored as tuples), `out` and `model` are stored as strings.

    Parameters
    ----------
    model
        A model name or directory (see :func:`spin_cache.model.identity.resolve_model_path`).
    data
        A dataset name or file, or a loaded :class:`~spin_cache.data.loading.LabelledDataset`.
    out
        The store's path or URL (default: ``stores/<first 16 hex digits of the fingerprint>``).
    train, dev, test
        One file per split, instead of `data`.
    text_column, label_column
        The columns to read from tabular files.
    kinds, poolings
        What to store; `poolings=None` follows the paper (encoders first/mean/max, decoders last/mean/max).
    max_length
        Tokens per example, longer ones truncated (default: 512, or less where the model has fewer positions).
    batch_size
        Examples per forward pass.
    device
        ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
    dtype
        The stored dtype (see :data:`spin_cache.store.layout.STORE_DTYPES`).
    compute_dtype
        The model's dtype; ``auto`` is bfloat16 on a CUDA device that supports it, float32 elsewhere.
    block_rows
        Rows per committed block (one shard of every array); default: from the row size, see
        :func:`spin_cache.store.layout.default_block_rows`.
    chunk_cols
        Neurons per inner chunk.
    overwrite
        Replace a store made from other inputs at `out` (a foreign directory is never deleted).
    workers
        Local model processes, each on disjoint row blocks.
    shard
        ``(i, n)``: be worker i of n (launched by hand); exclusive with `workers`.
    storage_options
        fsspec options for a remote `out`.
    progress
        Show progress bars.
    dev_split
        For a Hugging Face dataset without a validation split: the share of train carved out as dev (stratified).
    data_seed
        The seed of that split.
    data_revision
        The Hugging Face dataset revision (branch, tag or commit).
    model_revision
        The Hugging Face model revision, for a hub id (branch, tag or commit; the manifest records the commit).
    """

    model: str = DEFAULT_MODEL
    data: str | LabelledDataset = "sst2"
    out: str | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    kinds: tuple[str, ...] = KINDS
    poolings: tuple[str, ...] | None = None
    max_length: int | None = None
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float16"
    compute_dtype: str = "auto"
    block_rows: int | None = None
    chunk_cols: int = DEFAULT_CHUNK_COLS
    overwrite: bool = False
    workers: int = 1
    shard: tuple[int, int] | None = None
    storage_options: dict[str, Any] | None = None
    progress: bool = True
    dev_split: float | None = None
    data_seed: int = 0
    data_revision: str | None = None
    model_revision: str | None = None

    CONSTRAINTS: ClassVar[dict[str, Constraint]] = {
        "kinds": Constraint("names", choices=KINDS),
        "poolings": Constraint("names", choices=POOLINGS),
        "max_length": POSITIVE_INT,
        "batch_size": POSITIVE_INT,
        "block_rows": POSITIVE_INT,
        "chunk_cols": POSITIVE_INT,
        "workers": POSITIVE_INT,
        "dev_split": Constraint("float", low=0, high=1, low_open=True, high_open=True),
        "data_seed": Constraint("int", low=0),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"dtype": STORE_DTYPES, "compute_dtype": COMPUTE_DTYPES}

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        checked = check_all(values, self.CONSTRAINTS)
        for name, allowed in self.CHOICES.items():
            if values[name] not in allowed:
                raise InputError(f"{name}: expected one of {', '.join(allowed)}, got {values[name]!r}")
        if values["kinds"] is None:
            raise InputError(f"kinds: expected a comma-separated list of {'/'.join(KINDS)}, got None")
        checked["kinds"] = tuple(checked["kinds"])
        if checked["poolings"] is not None:
            checked["poolings"] = tuple(checked["poolings"])
        if values["out"] is not None:
            checked["out"] = str(values["out"])
        if isinstance(values["model"], os.PathLike):
            checked["model"] = str(values["model"])
        if values["shard"] is not None:
            checked["shard"] = _check_shard(values["shard"], checked["workers"])
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of every option (the keyword arguments of the constructor)."""
        return tuple(f.name for f in fields(cls))


def _check_shard(shard: Any, workers: int) -> tuple[int, int]:
    """`shard` as ``(i, n)`` with 0 <= i < n; refused next to several workers."""
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard: expected (I, N), got {shard!r}") from None
    if workers != 1:
        raise InputError("--workers and --shard are exclusive: --shard I/N is one worker of N")
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {i}/{n}: I must be between 0 and N-1")
    return i, n
