"""Load and validate labelled text datasets.

A dataset is either the built-in SST-2 (``data/sst2/{train,dev,test}.txt`` in the source checkout), one
file with a split column, or separate train/dev(/test) files. Supported formats: ``.csv``, ``.tsv``
(tab separated, no quoting), ``.jsonl``/``.ndjson`` (JSON Lines), ``.parquet`` and ``.txt`` (one
``LABEL TEXT`` example per line).

Every problem with the input is raised as a one-line :class:`~spin_cache.errors.InputError` that names
the file, the line or row, the column and what to do about it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spin_cache.errors import InputError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "training": "train", "testing": "test"}

BUILTIN_NAME = "sst2"
BUILTIN_LABEL_NAMES = ("negative", "positive")
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".txt")

_FINGERPRINT_VERSION = b"spin_cache.LabelledDataset.v1"
_INT_RE = re.compile(r"[+-]?\d+")
# a decimal number as written in a file: 1, +1, -2, 1.0, .5, 2., 1e3, 1.5E-2 (not nan, inf or hex)
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TXT_LINE_RE = re.compile(r"(\S+)\s+(.*\S)", re.DOTALL)


def _builtin_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "sst2"  # the checkout root: spin_cache/data/loading.py


def _canonical_split(split: str) -> str | None:
    """``split`` (any case, surrounding blanks, or an alias) as one of SPLITS, or None."""
    s = split.strip().lower()
    s = SPLIT_ALIASES.get(s, s)
    return s if s in SPLITS else None


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded repr of a user-supplied value for an error message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class LabelledDataset:
    """An immutable labelled text dataset: rows ordered train, then dev, then test (file order within).

    Two datasets compare equal when their fingerprints (and names) are equal.
    """

    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray
    splits: np.ndarray
    label_names: tuple[str, ...]
    # where the rows came from, beyond the content (not in the fingerprint): for Hugging Face datasets the
    # source, split mapping, ignored splits and a carved dev split (spin_cache.data.hf), for the manifest
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        texts = tuple(self.texts)
        label_names = tuple(self.label_names)
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        splits = np.array(self.splits, dtype=str).reshape(-1)
        n = len(ids)
        if len(texts) != n or labels.shape[0] != n or splits.shape[0] != n:
            raise ValueError(
                f"LabelledDataset: ids, texts, labels and splits must have the same length, got "
                f"{n}, {len(texts)}, {labels.shape[0]}, {splits.shape[0]}"
            )
        if n and (labels.min() < 0 or labels.max() >= len(label_names)):
            raise ValueError(f"LabelledDataset: labels must lie in 0..{len(label_names) - 1}")
        bad = sorted(set(splits.tolist()) - set(SPLITS))
        if bad:
            raise ValueError(f"LabelledDataset: unknown split values {bad}; expected one of {SPLITS}")
        labels.setflags(write=False)
        splits.setflags(write=False)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "label_names", label_names)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "splits", splits)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelledDataset):
            return NotImplemented
        return self.name == other.name and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self.split_indices(s))}" for s in SPLITS)
        return f"LabelledDataset(name={self.name!r}, {counts}, label_names={self.label_names!r})"

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(label_names)``)."""
        return len(self.label_names)

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices (int64, ascending) of ``split`` (one of SPLITS or an alias)."""
        canonical = _canonical_split(split) if isinstance(split, str) else None
        if canonical is None:
            raise InputError(f"unknown split {_short(split)}; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.splits == canonical).astype(np.int64)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of ids, texts, labels, label_names and splits (not the name or file paths).

        Every string is length-prefixed, so no two different datasets share a byte stream.
        """
        cached: str | None = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha256()

        def put_str(s: str) -> None:
            b = s.encode("utf-8", "surrogatepass")
            h.update(struct.pack("<Q", len(b)))
            h.update(b)

        h.update(struct.pack("<Q", len(_FINGERPRINT_VERSION)))
        h.update(_FINGERPRINT_VERSION)
        h.update(struct.pack("<Q", len(self.label_names)))
        for name in self.label_names:
            put_str(name)
        h.update(struct.pack("<Q", len(self.ids)))
        for i in range(len(self.ids)):
            put_str(self.ids[i])
            put_str(self.texts[i])
            h.update(struct.pack("<q", int(self.labels[i])))
            put_str(str(self.splits[i]))
        digest = h.hexdigest()
        object.__setattr__(self, "_fingerprint", digest)
        return digest

    def subset(self, n_per_split: int | dict[str, int]) -> LabelledDataset:
        """The first ``n`` rows of each split, keeping ``label_names``.

        With an int, every split is cut to at most that many rows. With a dict (split or alias ->
        n), the named splits are cut and splits not named are kept whole.
        """
        if isinstance(n_per_split, dict):
            limits: dict[str, int | None] = dict.fromkeys(SPLITS)
            for key, n in n_per_split.items():
                canonical = _canonical_split(key) if isinstance(key, str) else None
                if canonical is None:
                    raise InputError(f"subset: unknown split {_short(key)}; use one of {', '.join(SPLITS)}")
                limits[canonical] = n
        else:
            limits = dict.fromkeys(SPLITS, n_per_split)
        parts = []
        for split in SPLITS:
            idx = self.split_indices(split)
            limit = limits[split]
            if limit is not None:
                if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
                    raise InputError(f"subset: the row count for split {split!r} must be an integer >= 0")
                idx = idx[: int(limit)]
            parts.append(idx)
        keep = np.concatenate(parts)
        return LabelledDataset(
            name=self.name,
            ids=tuple(self.ids[i] for i in keep),
            texts=tuple(self.texts[i] for i in keep),
            labels=self.labels[keep],
            splits=self.splits[keep],
            label_names=self.label_names,
            source=self.source,
        )


# --------------------------------------------------------------------------------------------------
# Reading files into raw columns


@dataclass
class _Raw:
    """One file's rows before validation. ``locate(i)`` names row i as "line N" or "row N"."""

    path: str
    n: int
    columns: list[str]
    text: list[Any]
    label: list[Any]
    split: list[Any] | None
    ids: list[Any] | None
    locate: Callable[[int], str]
    text_col: str
    label_col: str


@dataclass(frozen=True)
class _Columns:
    text: str
    label: str
    split: str
    id: str


def _decode(path: str, raw: bytes) -> str:
    """Decode UTF-8 (a leading BOM is dropped); undecodable bytes raise naming the line and offset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}: line {line} (byte offset {e.start}) is not valid UTF-8; re-save the file as UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror or _first_line(e)}); check the path") from None


def _missing_column(path: str, what: str, column: str, present: list[str], flag: str) -> InputError:
    shown = ", ".join(_short(c, 40) for c in present) or "none"
    return InputError(
        f"{path}: no {what} column {column!r} (columns present: {shown}); "
        f"rename the column or pass {flag} with the right name"
    )


def _read_txt(path: str, cols: _Columns) -> _Raw:
    text = _decode(path, _read_bytes(path))
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    labels: list[Any] = []
    texts: list[Any] = []
    line_nos: list[int] = []
    for i, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            raise InputError(
                f"{path}: line {i} is blank; remove it (each line must be 'LABEL TEXT', e.g. '1 a fine film')"
            )
        m = _TXT_LINE_RE.fullmatch(stripped)
        if m is None:
            raise InputError(
                f"{path}: line {i}: no space separating the label from the text in {_short(stripped)}; "
                "write each line as 'LABEL TEXT', e.g. '1 a fine film'"
            )
        labels.append(m.group(1))
        texts.append(m.group(2))
        line_nos.append(i)
    return _Raw(
        path=path,
        n=len(texts),
        columns=["label", "text"],
        text=texts,
        label=labels,
        split=None,
        ids=None,
        locate=lambda i: f"line {line_nos[i]}",
        text_col="text (after the first space)",
        label_col="label (first field)",
    )


def _delimited_record_lines(text: str, tsv: bool) -> list[int]:
    """1-based starting line of every record after the header, as the csv module sees them."""
    if tsv:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=",")
    starts = []
    while True:
        start = reader.line_num + 1
        try:
            next(reader)
        except StopIteration:
            break
        except csv.Error:
            return []
        starts.append(start)
    return starts[1:]


def _read_delimited(path: str, cols: _Columns, tsv: bool) -> _Raw:
    raw = _read_bytes(path)
    text = _decode(path, raw)
    if not text.strip():
        raise InputError(f"{path}: the file is empty; add a header line and at least one row")
    try:
        df = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            infer_schema=False,
            separator="\t" if tsv else ",",
            quote_char=None if tsv else '"',
        )
    except pl.exceptions.PolarsError as e:
        # Try to point at the offending record: one with more fields than the header.
        where = ""
        starts = _delimited_record_lines(text, tsv)
        if starts:
            reader = csv.reader(
                io.StringIO(text, newline=""),
                delimiter="\t" if tsv else ",",
                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
            )
            rows = list(reader)
            width = len(rows[0])
            for start, row in zip(starts, rows[1:], strict=False):
                if len(row) > width:
                    where = f"line {start} has {len(row)} fields but the header has {width}; "
                    break
        kind = "TSV" if tsv else "CSV"
        raise InputError(
            f"{path}: cannot parse as {kind}: {where}{_first_line(e)}; fix the file"
            + (" (TSV is read without quoting; tabs and newlines cannot appear inside a field)" if tsv else "")
        ) from None

    cache: dict[str, list[int]] = {}

    def locate(i: int) -> str:
        if "starts" not in cache:
            starts = _delimited_record_lines(text, tsv)
            cache["starts"] = starts if len(starts) == df.height else []
        starts = cache["starts"]
        return f"line {starts[i]}" if starts else f"data row {i + 1}"

    return _frame_to_raw(path, df, cols, locate)


def _read_parquet(path: str, cols: _Columns) -> _Raw:
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read as Parquet: {_first_line(e)}; check the file") from None
    return _frame_to_raw(path, df, cols, lambda i: f"row {i + 1}")


def _frame_to_raw(path: str, df: pl.DataFrame, cols: _Columns, locate: Callable[[int], str]) -> _Raw:
    present = list(df.columns)
    for what, column, flag in (("text", cols.text, "--text-column"), ("label", cols.label, "--label-column")):
        if column not in present:
            raise _missing_column(path, what, column, present, flag)
    return _Raw(
        path=path,
        n=df.height,
        columns=present,
        text=df.get_column(cols.text).to_list(),
        label=df.get_column(cols.label).to_list(),
        split=df.get_column(cols.split).to_list() if cols.split in present else None,
        ids=df.get_column(cols.id).to_list() if cols.id in present else None,
        locate=locate,
        text_col=cols.text,
        label_col=cols.label,
    )


def _read_jsonl(path: str, cols: _Columns) -> _Raw:
    text = _decode(path, _read_bytes(path))
    records: list[dict[str, Any]] = []
    line_nos: list[int] = []
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing one) carry no record
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise InputError(
                f"{path}: line {i} is a JSON {type(obj).__name__}, not an object; "
                'write one object per line, e.g. {"text": "...", "label": 1}'
            )
        records.append(obj)
        line_nos.append(i)

    def column(name: str, what: str | None, flag: str) -> list[Any] | None:
        """Values of ``name``; None if the first record lacks it and ``what`` is None (optional)."""
        if not records:
            return [] if what else None
        if name not in records[0]:
            if what is None:
                return None
            raise InputError(
                f"{path}: line {line_nos[0]}: no {what} field {name!r} (fields present: "
                f"{', '.join(_short(k, 40) for k in records[0]) or 'none'}); "
                f"rename the field or pass {flag} with the right name"
            )
        out = []
        for rec, line_no in zip(records, line_nos, strict=True):
            if name not in rec:
                raise InputError(
                    f"{path}: line {line_no}: field {name!r} is missing (the first record has it); add it to every line"
                )
            out.append(rec[name])
        return out

    texts = column(cols.text, "text", "--text-column")
    labels = column(cols.label, "label", "--label-column")
    assert texts is not None and labels is not None
    return _Raw(
        path=path,
        n=len(records),
        columns=list(records[0]) if records else [],
        text=texts,
        label=labels,
        split=column(cols.split, None, ""),
        ids=column(cols.id, None, ""),
        locate=lambda i: f"line {line_nos[i]}",
        text_col=cols.text,
        label_col=cols.label,
    )


def _read_file(path_like: str | os.PathLike[str], cols: _Columns) -> _Raw:
    path = os.fspath(path_like)
    p = Path(path)
    if not p.exists():
        builtin_hint = f" (the only built-in dataset is {BUILTIN_NAME!r})" if not p.suffix else ""
        raise InputError(f"{path}: file not found{builtin_hint}; check the path")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, not a data file; pass a file (or --train/--dev/--test files)")
    ext = p.suffix.lower()
    if ext == ".txt":
        return _read_txt(path, cols)
    if ext in (".csv", ".tsv"):
        return _read_delimited(path, cols, tsv=ext == ".tsv")
    if ext in (".jsonl", ".ndjson"):
        return _read_jsonl(path, cols)
    if ext == ".parquet":
        return _read_parquet(path, cols)
    raise InputError(
        f"{path}: unsupported file type {p.suffix or '(no extension)'!r}; use one of {', '.join(SUPPORTED_EXTENSIONS)}"
    )


# --------------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Row:
    path: str
    index: int  # row index within its file
    locate: Callable[[int], str]
    split: str
    id: str | None
    text: str
    label: int | str  # int when the raw label was an integer, else the stripped string


def _where(raw: _Raw, i: int, column: str) -> str:
    return f"{raw.path}: {raw.locate(i)}, column {column!r}"


def _whole_number(raw: _Raw, i: int, value: float, written: Any) -> int:
    """A numeric label as its class: whole numbers only (1.0 is class 1); anything else looks like a regression
    target, which this tool does not fit."""
    if value.is_integer():
        return int(value)
    what = "not finite" if value != value or value in (float("inf"), float("-inf")) else "not a whole number"
    raise InputError(
        f"{_where(raw, i, raw.label_col)}: the label {_short(written)} is {what}; spin-cache classifies "
        "(regression is not supported): give each row a class, as a whole number or a name"
    )


def _label_value(raw: _Raw, i: int) -> int | str:
    """The row's label as its class: a whole number for numeric labels (so 1, 1.0, "1" and " 1 " are one class,
    named "1"), else the stripped string. Non-integer numbers are refused (regression is not supported)."""
    v = raw.label[i]
    col = raw.label_col
    if v is None or (isinstance(v, float) and v != v):
        raise InputError(f"{_where(raw, i, col)}: the label is missing; fill it in or remove the row")
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return _whole_number(raw, i, v, v)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise InputError(f"{_where(raw, i, col)}: the label is empty; fill it in or remove the row")
        if _INT_RE.fullmatch(s):
            return int(s)
        if _NUMBER_RE.fullmatch(s):
            return _whole_number(raw, i, float(s), s)
        return s
    raise InputError(
        f"{_where(raw, i, col)}: the label must be a number or a string, not {type(v).__name__}; fix the row"
    )


def _rows_of(raw: _Raw, fixed_split: str | None, cols: _Columns) -> list[_Row]:
    rows = []
    for i in range(raw.n):
        t = raw.text[i]
        if t is None:
            raise InputError(f"{_where(raw, i, raw.text_col)}: the text is missing; fill it in or remove the row")
        if not isinstance(t, str):
            raise InputError(
                f"{_where(raw, i, raw.text_col)}: the text must be a string, not {type(t).__name__}; fix the row"
            )
        if not t.strip():
            raise InputError(
                f"{_where(raw, i, raw.text_col)}: the text is empty or whitespace only; fill it in or remove the row"
            )
        label = _label_value(raw, i)
        if fixed_split is not None:
            split = fixed_split
        else:
            assert raw.split is not None
            s = raw.split[i]
            canonical = _canonical_split(s) if isinstance(s, str) else None
            if canonical is None:
                allowed = ", ".join(SPLITS + tuple(SPLIT_ALIASES))
                raise InputError(f"{_where(raw, i, cols.split)}: unknown split {_short(s)}; use one of {allowed}")
            split = canonical
        row_id = None
        if raw.ids is not None:
            v = raw.ids[i]
            if v is None or isinstance(v, bool) or not isinstance(v, str | int | float) or not str(v).strip():
                raise InputError(
                    f"{_where(raw, i, cols.id)}: the id is missing or invalid ({_short(v)}); "
                    "give every row a unique id or drop the column"
                )
            row_id = str(v)
        rows.append(_Row(raw.path, i, raw.locate, split, row_id, t, label))
    return rows


def _build(name: str, rows: list[_Row], builtin: bool, train_path: str, id_flag: str) -> LabelledDataset:
    # Order: train, dev, test; file order within a split. Default ids count within a split.
    ordered: list[_Row] = []
    for split in SPLITS:
        ordered.extend(r for r in rows if r.split == split)
    counters = dict.fromkeys(SPLITS, 0)
    ids: list[str] = []
    seen: dict[str, _Row] = {}
    for r in ordered:
        row_id = r.id if r.id is not None else f"{r.split}-{counters[r.split]:06d}"
        counters[r.split] += 1
        if row_id in seen:
            first = seen[row_id]
            raise InputError(
                f"duplicate id {_short(row_id)}: {first.path} {first.locate(first.index)} and "
                f"{r.path} {r.locate(r.index)}; make the ids unique (column {id_flag!r})"
            )
        seen[row_id] = r
        ids.append(row_id)

    raw_labels = [r.label for r in ordered]
    numeric = all(isinstance(lab, int) for lab in raw_labels)
    # the class of a label: numeric labels compare as numbers; once any label is a name, every label is its name
    key: Callable[[int | str], int | str] = (lambda v: v) if numeric else str

    train_labels = {key(r.label) for r in ordered if r.split == "train"}
    if builtin and train_labels != {0, 1}:
        raise InputError(
            f"{_builtin_dir()}: the built-in SST-2 labels must be 0 and 1, found {sorted(train_labels, key=str)} "
            "in train; restore data/sst2 from the source checkout"
        )
    if len(train_labels) < 2:
        only = next(iter(train_labels))
        raise InputError(
            f"{train_path}: the train split has a single class (label {str(only)!r}); "
            "a classifier needs at least two classes in train — check the label column and the split"
        )
    for r in ordered:
        if key(r.label) not in train_labels:
            shown = ", ".join(str(v) for v in sorted(train_labels))
            shown = shown if len(shown) <= 200 else shown[:197] + "..."
            raise InputError(
                f"{r.path}: {r.locate(r.index)}: label {str(r.label)!r} in the {r.split} split never occurs in "
                f"train (train labels: {shown}); a classifier cannot predict a class it was not trained on — fix "
                "the label, remove the row, or add training rows of that class"
            )

    # every label occurs in train, so the classes are train's: sorted (numbers numerically), indexed from 0
    values = sorted(train_labels)
    index = {v: k for k, v in enumerate(values)}
    label_names = BUILTIN_LABEL_NAMES if builtin else tuple(str(v) for v in values)
    labels = np.array([index[key(r.label)] for r in ordered], dtype=np.int64)

    return LabelledDataset(
        name=name,
        ids=tuple(ids),
        texts=tuple(r.text for r in ordered),
        labels=labels,
        splits=np.array([r.split for r in ordered], dtype=str),
        label_names=label_names,
    )


def _check_nonempty_splits(path_for: dict[str, str], rows: list[_Row], required: tuple[str, ...], hint: str) -> None:
    present = {r.split for r in rows}
    for split in required:
        if split not in present:
            raise InputError(f"{path_for[split]}: the {split} split has no rows; {hint}")


# --------------------------------------------------------------------------------------------------
# Public entry point


def load_dataset(
    data: Any = "sst2",
    *,
    train: str | os.PathLike[str] | None = None,
    dev: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    split_column: str = "split",
    id_column: str = "id",
    dev_split: float | None = None,
    seed: int = 0,
    revision: str | None = None,
) -> LabelledDataset:
    """Load and validate a labelled dataset.

    ``data="sst2"`` (or None with no split files) loads the built-in SST-2. Otherwise ``data`` is one
    file with a ``split_column``, or ``train`` and ``dev`` (and optionally ``test``) are separate files.
    Hugging Face datasets (:mod:`spin_cache.data.hf`): ``data`` is a ``datasets.Dataset`` or ``DatasetDict``, a
    ``save_to_disk`` folder, or ``NAME[:CONFIG]`` of the hub (at `revision`; from the local cache when
    HF_HUB_OFFLINE=1); ``validation`` is the dev split, and ``dev_split=FRACTION`` (with `seed`) carves one from
    train when there is none. Text and label columns default to ``text`` and ``label``; for Hugging Face datasets
    without them, the only string column and the only ClassLabel column are used.
    Numeric labels are classes by value (1, 1.0, "1" and " 1 " are one class, named "1") and are mapped in
    sorted order to 0..n-1 with their whole-number forms as ``label_names``; other labels use the sorted unique
    strings. The classes are those of train: a dev or test label that train lacks is refused, and so is a
    non-integer number (a regression target; spin-cache classifies). Raises InputError (one line, naming file,
    line/row and column) on any problem.
    """
    from . import hf

    def from_hf(obj: Any, name: str, origin: dict[str, str | None]) -> LabelledDataset:
        return hf.load_hf(obj, name=name, origin=origin, text_column=text_column, label_column=label_column,
                          split_column=split_column, id_column=id_column, dev_split=dev_split, seed=seed)  # fmt: skip

    if hf.is_hf_object(data):
        return from_hf(data, type(data).__name__, {"kind": "object"})
    if isinstance(data, str | os.PathLike) and hf.is_saved_dataset(data):
        path = os.fspath(data)
        return from_hf(hf.load_from_disk(path), path, {"kind": "save_to_disk", "path": str(Path(path).resolve())})
    if (
        isinstance(data, str)
        and data != BUILTIN_NAME
        and not any(v is not None for v in (train, dev, test))
        and not Path(data).exists()
        and Path(data.split(":", 1)[0]).suffix.lower() not in SUPPORTED_EXTENSIONS
        and hf.looks_like_hub_id(data)
    ):
        name, _, config = data.partition(":")
        origin = {"kind": "hub", "name": name, "config": config or None, "revision": revision}
        return from_hf(hf.load_from_hub(data, revision), data, origin)
    if dev_split is not None:
        raise InputError("--dev-split carves a dev split from a Hugging Face dataset's train split; files name "
                         "their dev rows (a split column or --dev)")  # fmt: skip
    if data is not None and not isinstance(data, str | os.PathLike):
        raise InputError(f"data: a name, a path or a datasets.Dataset/DatasetDict, not {type(data).__name__}")
    cols = _Columns(text=text_column or "text", label=label_column or "label", split=split_column, id=id_column)
    split_files = {"train": train, "dev": dev, "test": test}
    given = {k: v for k, v in split_files.items() if v is not None}
    # the one data file; None for the built-in dataset
    data_file = None if data is None or (isinstance(data, str) and data == BUILTIN_NAME) else data

    if given:
        if data_file is not None:
            raise InputError(
                f"{os.fspath(data_file)}: pass either one data file with a split column or --train/--dev/--test "
                "files, not both"
            )
        missing = [k for k in ("train", "dev") if k not in given]
        if missing:
            raise InputError(
                f"no --{missing[0]} file given; pass both --train and --dev files (--test is optional), "
                "or one data file with a split column"
            )
        rows: list[_Row] = []
        paths: dict[str, str] = {}
        for split, path_like in given.items():
            raw = _read_file(path_like, cols)
            paths[split] = raw.path
            if raw.n == 0:
                raise InputError(f"{raw.path}: the {split} file has no rows; add examples or leave it out")
            rows.extend(_rows_of(raw, split, cols))
        name = "+".join(Path(paths[s]).name for s in SPLITS if s in paths)
        return _build(name, rows, builtin=False, train_path=paths["train"], id_flag=id_column)

    if data_file is None:
        return _load_builtin(cols)

    raw = _read_file(data_file, cols)
    if raw.n == 0:
        raise InputError(f"{raw.path}: the file has no rows; add examples")
    if raw.split is None:
        raise InputError(
            f"{raw.path}: no split column {split_column!r}; add a {split_column!r} column "
            f"(values {', '.join(SPLITS)}) or pass --train/--dev/--test files"
        )
    rows = _rows_of(raw, None, cols)
    hint = f"give some rows that split in column {split_column!r}"
    _check_nonempty_splits(dict.fromkeys(SPLITS, raw.path), rows, ("train", "dev"), hint)
    return _build(Path(raw.path).name, rows, builtin=False, train_path=raw.path, id_flag=id_column)


def _load_builtin(cols: _Columns) -> LabelledDataset:
    root = _builtin_dir()
    if not (root / "train.txt").is_file() or not (root / "dev.txt").is_file():
        raise InputError(
            f"{root}: the built-in {BUILTIN_NAME!r} dataset is not there; it ships with the source checkout "
            "(data/sst2) — install from a checkout or pass your own --data or --train/--dev files"
        )
    rows: list[_Row] = []
    for split in SPLITS:
        path = root / f"{split}.txt"
        if split == "test" and not path.is_file():
            continue
        raw = _read_txt(str(path), cols)
        if raw.n == 0:
            raise InputError(f"{path}: the built-in {split} file has no rows; restore it from the source checkout")
        rows.extend(_rows_of(raw, split, cols))
    return _build(BUILTIN_NAME, rows, builtin=True, train_path=str(root / "train.txt"), id_flag=cols.id)
