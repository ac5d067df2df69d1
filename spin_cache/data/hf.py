"""Hugging Face datasets as input: a hub dataset ``NAME[:CONFIG]`` (from the local cache when HF_HUB_OFFLINE=1), a
``save_to_disk`` folder, or ``datasets.Dataset`` / ``DatasetDict`` objects.

Every split goes through the same validation as a file's rows (:mod:`spin_cache.data.loading`), so the same
content gives the same dataset fingerprint as the equivalent file: the fingerprint covers texts, labels, label
names, ids and splits, never where they came from. Where they came from is kept in
:attr:`LabelledDataset.source` for the manifest.

- Splits: ``train``; ``validation`` (or ``dev``, ``valid``, ``val``) -> dev; ``test``. Other splits (imdb's
  ``unsupervised``) and splits without labels (GLUE's test sets, labelled -1) are left out and recorded.
- No dev split: ``dev_split=FRACTION, seed=N`` carves one from train (stratified by label, file order kept
  within each split); recorded in ``source["dev_split"]``.
- ClassLabel features keep their names as label names, in the ClassLabel's order.
- Columns: the text and label columns named, or when the default name is absent, the only string column and
  the only ClassLabel column; anything ambiguous is a one-line InputError naming the candidates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spin_cache.errors import InputError

from .loading import (
    SPLIT_ALIASES,
    SPLITS,
    LabelledDataset,
    _build,
    _canonical_split,
    _Columns,
    _first_line,
    _Raw,
    _Row,
    _rows_of,
    _short,
)

DEFAULT_TEXT = "text"
DEFAULT_LABEL = "label"
# label columns as commonly named, tried in this order when no ClassLabel column settles it
_LABEL_NAMES = ("label", "labels", "target", "class", "category")


def is_hf_object(obj: Any) -> bool:
    """Whether `obj` is a ``datasets.Dataset`` or ``DatasetDict`` (without importing datasets unless loaded)."""
    import sys

    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, mod.Dataset | mod.DatasetDict)


def is_saved_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and (
        (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())
    )


def looks_like_hub_id(data: str) -> bool:
    """``NAME``, ``ORG/NAME`` or either with ``:CONFIG``: no file extension we read, no path separators beyond
    the one of ORG/NAME."""
    name = data.split(":", 1)[0]
    return bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~")) and " " not in name


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise InputError(
            "Hugging Face datasets need the 'datasets' package; pip install datasets (it is a dependency of "
            "spin-cache: reinstall spin-cache)"
        ) from None
    return datasets


def load_from_hub(data: str, revision: str | None = None) -> Any:
    """``NAME[:CONFIG]`` from the hub (downloaded when online, from the cache when HF_HUB_OFFLINE=1)."""
    datasets = _import_datasets()
    name, _, config = data.partition(":")
    try:
        return datasets.load_dataset(name, config or None, revision=revision)
    except Exception as exc:
        from ..model.identity import hub_offline

        offline = hub_offline()
        where = "in the local cache (HF_HUB_OFFLINE=1)" if offline else "on the Hugging Face hub"
        raise InputError(
            f"{data}: file not found (the only built-in dataset is 'sst2'), and not a Hugging Face dataset "
            f"{where} ({type(exc).__name__}: "
            f"{_short(_first_line(exc), 160)}); check the path or the dataset name (NAME or NAME:CONFIG)"
        ) from None


def load_from_disk(path: str | os.PathLike[str]) -> Any:
    """The dataset saved with ``save_to_disk`` at `path`; InputError naming the path when it cannot be read."""
    datasets = _import_datasets()
    try:
        return datasets.load_from_disk(os.fspath(path))
    except Exception as exc:
        raise InputError(
            f"{os.fspath(path)}: cannot read as a saved Hugging Face dataset ({type(exc).__name__}: "
            f"{_short(_first_line(exc), 160)})"
        ) from None


def _string_columns(features: Mapping[str, Any]) -> list[str]:
    return [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]


def _class_label(feature: Any) -> bool:
    return type(feature).__name__ == "ClassLabel"


def _pick_columns(
    where: str, features: Mapping[str, Any], text: str | None, label: str | None, id_column: str, split_column: str
) -> tuple[str, str]:
    """The text and label columns: as named when present; when the default name is absent, inferred."""
    present = list(features)
    shown = ", ".join(_short(c, 40) for c in present) or "none"

    def pick(what: str, given: str | None, default: str, candidates: list[str], flag: str) -> str:
        if given is not None and given in present:
            return given
        if given is not None and given != default:
            raise InputError(
                f"{where}: no {what} column {given!r} (columns present: {shown}); pass {flag} with the right name"
            )
        if len(candidates) == 1:
            return candidates[0]
        why = f"several candidates ({', '.join(candidates)})" if candidates else f"no candidate (columns: {shown})"
        raise InputError(f"{where}: cannot tell the {what} column: no column {default!r} and {why}; pass {flag}")

    skip = {id_column, split_column}
    text_col = pick("text", text, DEFAULT_TEXT, [c for c in _string_columns(features) if c not in skip],
                    "--text-column")  # fmt: skip
    labels = [c for c, f in features.items() if _class_label(f) and c != text_col]
    if not labels:
        labels = [c for c in _LABEL_NAMES if c in present and c != text_col][:1]
    label_col = pick("label", label, DEFAULT_LABEL, labels, "--label-column")
    if label_col == text_col:
        raise InputError(f"{where}: the text and label columns are both {text_col!r}; pass --label-column")
    return text_col, label_col


def _split_raw(where: str, ds: Any, text_col: str, label_col: str, cols: _Columns) -> tuple[_Raw, bool]:
    """One split as raw columns (ClassLabel ints as their names; -1 as a missing label) and whether it holds any
    label at all."""
    wanted = [c for c in dict.fromkeys([text_col, label_col, cols.id, cols.split]) if c in ds.column_names]
    data = ds.select_columns(wanted).to_dict()
    labels = data[label_col]
    feature = ds.features[label_col]
    if _class_label(feature):
        names = feature.names
        labels = [names[v] if isinstance(v, int) and 0 <= v < len(names) else None for v in labels]
    labelled = any(v is not None for v in labels)
    raw = _Raw(
        path=where,
        n=len(data[text_col]),
        columns=list(ds.column_names),
        text=data[text_col],
        label=labels,
        split=data.get(cols.split),
        ids=data.get(cols.id),
        locate=lambda i: f"row {i + 1}",
        text_col=text_col,
        label_col=label_col,
    )
    return raw, labelled


def _carve_dev(rows: list[_Row], fraction: float, seed: int) -> int:
    """Move a stratified `fraction` of train's rows (at least one, never a class's last) to dev; returns how many."""
    train = [i for i, r in enumerate(rows) if r.split == "train"]
    by_label: dict[Any, list[int]] = {}
    for i in train:
        by_label.setdefault(rows[i].label, []).append(i)
    rng = np.random.default_rng(seed)
    moved = []
    for label in sorted(by_label, key=lambda v: (isinstance(v, str), str(v) if isinstance(v, str) else v)):
        idx = np.array(by_label[label])
        k = min(round(fraction * len(idx)), len(idx) - 1)
        moved.extend(rng.permutation(idx)[:k].tolist())
    if not moved:
        raise InputError(
            f"--dev-split {fraction}: carves no row from a train split of {len(train)} rows; give a larger fraction"
        )
    for i in moved:
        rows[i].split = "dev"
    return len(moved)


def _check_dev_split(dev_split: float | None, seed: int) -> None:
    if dev_split is None:
        return
    if isinstance(dev_split, bool) or not isinstance(dev_split, int | float) or not 0 < dev_split < 1:
        raise InputError(f"--dev-split {_short(dev_split)}: give a fraction of train between 0 and 1, e.g. 0.1")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InputError(f"--data-seed {_short(seed)}: give an integer")


def load_hf(
    obj: Any,
    *,
    name: str,
    origin: dict[str, Any],
    text_column: str | None = None,
    label_column: str | None = None,
    split_column: str = "split",
    id_column: str = "id",
    dev_split: float | None = None,
    seed: int = 0,
) -> LabelledDataset:
    """A ``Dataset`` or ``DatasetDict`` as a validated :class:`LabelledDataset` (see the module docstring).

    `name` names the source in messages (``imdb``, a folder); `origin` is recorded in ``source``.
    """
    datasets = _import_datasets()
    _check_dev_split(dev_split, seed)
    if isinstance(obj, datasets.DatasetDict):
        parts = dict(obj.items())
    elif isinstance(obj, datasets.Dataset):
        parts = {None: obj}  # one table: its split column, or all train
    else:
        raise InputError(f"{name}: not a datasets.Dataset or DatasetDict ({type(obj).__name__})")
    if not parts:
        raise InputError(f"{name}: the dataset has no splits")

    mapping: dict[str, str] = {}
    ignored: dict[str, str] = {}
    chosen: list[tuple[str | None, Any]] = []
    for key, ds in parts.items():
        if key is None:
            chosen.append((None, ds))
            continue
        canonical = _canonical_split(str(key))
        if canonical is None:
            allowed = ", ".join(SPLITS + tuple(SPLIT_ALIASES))
            ignored[str(key)] = f"not a split spin-cache uses ({allowed})"
            continue
        if canonical in mapping:
            raise InputError(
                f"{name}: splits {mapping[canonical]!r} and {key!r} are both the {canonical} split; keep one"
            )
        mapping[canonical] = str(key)
        chosen.append((str(key), ds))

    if not chosen:
        raise InputError(f"{name}: no train, validation or test split (splits: {', '.join(map(str, parts))})")
    first = chosen[0][1]
    where0 = name if chosen[0][0] is None else f"{name}[{chosen[0][0]}]"
    text_col, label_col = _pick_columns(where0, first.features, text_column, label_column, id_column, split_column)
    cols = _Columns(text=text_col, label=label_col, split=split_column, id=id_column)
    label_feature = first.features[label_col]

    rows: list[_Row] = []
    for key, ds in chosen:
        where = name if key is None else f"{name}[{key}]"
        for col in (text_col, label_col):
            if col not in ds.column_names:
                raise InputError(f"{where}: no column {col!r} (columns present: {', '.join(ds.column_names)})")
        raw, labelled = _split_raw(where, ds, text_col, label_col, cols)
        if key is None:
            split = None if raw.split is not None else "train"
            if split == "train":
                mapping["train"] = "(all rows)"
        else:
            split = _canonical_split(key)
            if not labelled and split != "train":
                ignored[key] = "no labels (every label missing or -1)"
                del mapping[split]  # type: ignore[arg-type]
                continue
        if raw.n == 0:
            if split == "train":
                raise InputError(f"{where}: the train split has no rows")
            ignored[str(key)] = "no rows"
            mapping.pop(split, None)  # type: ignore[arg-type]
            continue
        rows.extend(_rows_of(raw, split, cols))

    present = {r.split for r in rows}
    if "train" not in present:
        raise InputError(f"{name}: no train split (splits: {', '.join(map(str, parts))}); name one 'train'")
    carved = None
    if dev_split is not None:
        if "dev" in present:
            raise InputError(
                f"{name}: --dev-split {dev_split} carves a dev split from train only when there is none, but the "
                f"dataset has one ({mapping.get('dev', 'dev')!r}); leave --dev-split out"
            )
        n = _carve_dev(rows, float(dev_split), int(seed))
        carved = {"fraction": float(dev_split), "seed": int(seed), "from": "train", "rows": n, "stratified": True}
        mapping["dev"] = f"{dev_split:g} of train (seed {int(seed)})"
    elif "dev" not in present:
        raise InputError(
            f"{name}: no validation split (splits: {', '.join(map(str, parts))}); carve one from train with "
            "--dev-split 0.1 (and --seed N)"
        )

    dataset = _build(name, rows, builtin=False, train_path=f"{name}[{mapping.get('train', 'train')}]",
                     id_flag=id_column)  # fmt: skip
    if _class_label(label_feature):
        dataset = _in_class_label_order(dataset, list(label_feature.names))
    source = {
        **origin,
        "format": "huggingface",
        "splits": {s: mapping[s] for s in SPLITS if s in mapping},
        "ignored_splits": ignored,
        "columns": {"text": text_col, "label": label_col},
        "class_label": list(label_feature.names) if _class_label(label_feature) else None,
        "dev_split": carved,
    }
    return dataclasses.replace(dataset, source=source)


def _in_class_label_order(dataset: LabelledDataset, names: list[str]) -> LabelledDataset:
    """The classes in the ClassLabel's order (the dataset author's), not sorted: label names as they were."""
    order = [n for n in names if n in dataset.label_names]
    if sorted(order) != sorted(dataset.label_names) or order == list(dataset.label_names):
        return dataset  # names that the file rules rewrote (numeric names): keep the file order
    new_index = np.array([order.index(n) for n in dataset.label_names], dtype=np.int64)
    return dataclasses.replace(dataset, labels=new_index[dataset.labels], label_names=tuple(order))
