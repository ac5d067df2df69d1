"""Synthetic activation stores: Gaussian noise with a known, planted class signal, written in the same layout and
manifest format as a real extraction (so `spin-cache info/verify/probe/sweep` work on them) but without a model.

Every value is N(0, 1). In the chosen layers, `n` neurons per (kind, layer), at seeded random positions, also carry
`signal * pattern[label]`: +1 for class 1 and -1 for class 0 with two classes, a seeded ±1 pattern per class
otherwise. The planted positions are recorded in manifest["synthetic"]["planted"] = {kind: {"layer": [neurons]}}
(JSON object keys, so layers are strings there; `planted_neurons(store)` returns them with int keys).

Values are generated one row block at a time from a seed derived from (seed, block, kind, pooling, layer), so
memory stays at one block whatever the store's size, a rerun resumes after the last committed block, and the same
arguments give byte-identical arrays. The store fingerprint is a hash of the generator's parameters.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from . import __version__
from .errors import InputError, StoreMismatchError
from .outputs import check_store_destination
from .representations import KINDS, POOLINGS
from .store.access import _fs
from .store.activation_store import ActivationStore
from .store.layout import STORE_DTYPES, Layout, canonical_hash, default_block_rows, dtype_bytes
from .store.manifest import Manifest, describe_differences

SPLITS = ("train", "dev", "test")
GENERATOR = "spin-cache-synthetic"
GENERATOR_VERSION = 1  # bump when the values for given parameters change
DEFAULT_INFORMATIVE = {3: 4, 5: 4}
DEFAULT_CHUNK_COLS = 64

# Stream tags: distinct seed sequences for labels, planted positions, class patterns and noise.
_TAG_LABELS, _TAG_PLANTED, _TAG_PATTERN, _TAG_NOISE = 1, 2, 3, 4


def make_synthetic_store(
    out: str | os.PathLike[str],
    *,
    n_rows: int = 10000,
    n_layers: int = 6,
    width: int = 512,
    ffn_width: int | None = None,
    kinds: Sequence[str] = KINDS,
    poolings: Sequence[str] = ("mean",),
    informative: Mapping[int, int] | Mapping[str, Mapping[int, int]] | None = None,
    n_classes: int = 2,
    split_shares: Sequence[float] = (0.7, 0.15, 0.15),
    signal: float = 1.0,
    dtype: str = "float16",
    block_rows: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ActivationStore:
    """Write a complete synthetic store at `out` and return it (opened read-only).

    `width`: neurons per layer; `ffn_width`: the FFN layers' own width where it differs (as in real models, whose
    FFN is 2.75-4x the hidden width; default: `width`).
    `informative` is {layer: n_neurons}, planted in every kind that has that layer (default {3: 4, 5: 4}), or
    {kind: {layer: n_neurons}} per kind. Layers are hidden 0..n_layers and ffn 1..n_layers, as in real stores.
    An existing complete store made from the same arguments is returned as is; an incomplete one is finished; one
    made from other arguments is refused unless `overwrite`.
    """
    kinds, poolings = tuple(kinds), tuple(poolings)
    # the same store as without it where it changes nothing
    ffn_width = None if ffn_width == width or "ffn" not in tuple(kinds) else ffn_width
    _check(n_rows, n_layers, width, kinds, poolings, n_classes, split_shares, signal, dtype, block_rows)
    if ffn_width is not None and ffn_width < 1:
        raise InputError(f"ffn_width {ffn_width}: must be at least 1")
    layers = {"hidden": list(range(n_layers + 1)), "ffn": list(range(1, n_layers + 1))}
    layers = {k: layers[k] for k in kinds}
    widths = {k: ffn_width if k == "ffn" and ffn_width is not None else width for k in kinds}
    planted_counts = _normalise_informative(DEFAULT_INFORMATIVE if informative is None else informative, layers, widths)
    row_bytes = sum(widths[k] * len(layers[k]) for k in kinds) * len(poolings) * dtype_bytes(dtype)
    layout = Layout(
        kinds=kinds,
        poolings=poolings,
        layers=layers,
        widths=widths,
        n_rows=n_rows,
        dtype=dtype,
        block_rows=block_rows or default_block_rows(row_bytes, DEFAULT_CHUNK_COLS * dtype_bytes(dtype)),
        chunk_cols=DEFAULT_CHUNK_COLS,
    )
    params = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "n_rows": n_rows,
        "n_layers": n_layers,
        "width": width,
        **({"ffn_width": ffn_width} if ffn_width is not None else {}),
        "kinds": list(kinds),
        "poolings": list(poolings),
        "informative": {k: {str(layer): n for layer, n in v.items()} for k, v in planted_counts.items()},
        "n_classes": n_classes,
        "split_shares": [float(s) for s in split_shares],
        "signal": float(signal),
        "dtype": dtype,
        "block_rows": layout.block_rows,  # values are drawn per block, so they depend on it
        "seed": seed,
    }
    params_hash = canonical_hash(params)
    counts = _split_counts(n_rows, split_shares)
    labels, splits = _labels_and_splits(counts, n_classes, seed)
    planted = {
        kind: {layer: _planted_positions(seed, kind, layer, n, widths[kind]) for layer, n in per_layer.items()}
        for kind, per_layer in planted_counts.items()
    }
    patterns = {
        kind: {layer: _class_patterns(seed, kind, layer, len(pos), n_classes) for layer, pos in per_layer.items()}
        for kind, per_layer in planted.items()
    }
    label_names = [str(c) for c in range(n_classes)]
    model_info = {
        "name": "synthetic",
        "path": "",
        "model_type": "synthetic",
        "config_sha256": canonical_hash({"part": "config", **params}),
        "weights_sha256": canonical_hash({"part": "weights", **params}),
        "tokenizer_sha256": canonical_hash({"part": "tokenizer", **params}),
        "family": "synthetic",
        "is_decoder": False,
        "num_layers": n_layers,
    }
    dataset_info = {
        "name": f"synthetic-{params_hash[:12]}",
        "fingerprint": canonical_hash({"part": "dataset", **params}),
        "n_rows": n_rows,
        "rows_per_split": {s: c for s, c in zip(SPLITS, counts, strict=True) if c},
        "label_names": label_names,
    }
    settings = {
        "kinds": list(kinds),
        "poolings": list(poolings),
        "max_length": 0,  # no tokens: there is no text
        "dtype": dtype,
        "compute_dtype": "float32",
    }
    synthetic = {
        "params": params,
        "planted": {k: {str(layer): [int(i) for i in pos] for layer, pos in v.items()} for k, v in planted.items()},
    }
    manifest = Manifest.new(
        model=model_info, dataset=dataset_info, extraction=settings, layout=layout, synthetic=synthetic
    )

    url = str(out)
    store = _existing(url, manifest, overwrite, storage_options)
    if store is not None and store.is_complete:
        return ActivationStore.open(url, storage_options=storage_options)
    if store is None:
        examples = _examples_table(labels, splits, label_names)
        store = ActivationStore.create(url, manifest, examples, overwrite=overwrite, storage_options=storage_options)

    todo = [b for b in range(layout.n_blocks) if b not in store.committed_blocks()]
    _write_blocks(store, todo, labels, planted, patterns, float(signal), seed, progress)
    store.mark_complete(
        {
            "spin_cache_version": __version__,
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "overflow": 0,
            "n_truncated": 0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return ActivationStore.open(url, storage_options=storage_options)


def planted_neurons(store: ActivationStore) -> dict[str, dict[int, list[int]]]:
    """The planted (informative) neurons of a synthetic store: {kind: {layer: [neuron indices]}}."""
    synth = store.manifest_record.synthetic
    if not synth:
        raise InputError(f"{store.url}: not a synthetic store (no 'synthetic' entry in its manifest)")
    return {k: {int(layer): list(pos) for layer, pos in v.items()} for k, v in synth["planted"].items()}


def synthetic_block(
    layout: Layout,
    block: int,
    labels: np.ndarray,
    planted: Mapping[str, Mapping[int, np.ndarray]],
    patterns: Mapping[str, Mapping[int, np.ndarray]],
    signal: float,
    seed: int,
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[tuple[str, str, int], np.ndarray]:
    """float32 values of one row block of every array (passed through `encode` one array at a time, so only one
    float32 array is alive at once); depends only on its arguments, not on other blocks."""
    start, stop = layout.block_range(block)
    y = labels[start:stop]
    out = {}
    for kind, pooling, layer in layout.array_keys():
        key = [_TAG_NOISE, seed, block, KINDS.index(kind), POOLINGS.index(pooling), layer]
        rng = np.random.default_rng(key)
        values = rng.standard_normal((stop - start, layout.widths[kind]), dtype=np.float32)
        pos = planted.get(kind, {}).get(layer)
        if pos is not None and len(pos):
            values[:, pos] += np.float32(signal) * patterns[kind][layer][y]
        out[(kind, pooling, layer)] = values if encode is None else encode(values)
    return out


# ------------------------------------------------------------------------------------------------------------


def _write_blocks(
    store: ActivationStore,
    blocks: list[int],
    labels: np.ndarray,
    planted: dict[str, Any],
    patterns: dict[str, Any],
    signal: float,
    seed: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    layout = store.layout
    n = sum(layout.block_range(b)[1] - layout.block_range(b)[0] for b in blocks)
    with tqdm(total=n, desc="synth", unit="ex", disable=not progress) as bar:
        for block in blocks:
            values = synthetic_block(layout, block, labels, planted, patterns, signal, seed, encode=store.encode)
            store.write_block(block, values, {"overflow": 0})
            start, stop = layout.block_range(block)
            bar.update(stop - start)


def _check(
    n_rows: int,
    n_layers: int,
    width: int,
    kinds: tuple[str, ...],
    poolings: tuple[str, ...],
    n_classes: int,
    split_shares: Sequence[float],
    signal: float,
    dtype: str,
    block_rows: int | None,
) -> None:
    if n_rows < 1:
        raise InputError(f"n_rows {n_rows}: must be at least 1")
    if n_layers < 1:
        raise InputError(f"n_layers {n_layers}: must be at least 1")
    if width < 1:
        raise InputError(f"width {width}: must be at least 1")
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad or len(set(kinds)) != len(kinds):
        raise InputError(f"kinds {list(kinds)}: give distinct kinds from {', '.join(KINDS)}")
    bad = [p for p in poolings if p not in POOLINGS]
    if not poolings or bad or len(set(poolings)) != len(poolings):
        raise InputError(f"poolings {list(poolings)}: give distinct poolings from {', '.join(POOLINGS)}")
    if n_classes < 2:
        raise InputError(f"n_classes {n_classes}: must be at least 2")
    if len(split_shares) != 3 or any(s < 0 for s in split_shares) or split_shares[0] <= 0:
        raise InputError(f"split_shares {list(split_shares)}: give three shares (train, dev, test), train > 0")
    if not np.isfinite(signal):
        raise InputError(f"signal {signal}: must be finite")
    if dtype not in STORE_DTYPES:
        raise InputError(f"dtype {dtype}: choose from {', '.join(STORE_DTYPES)}")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"block_rows {block_rows}: must be at least 1")


def _normalise_informative(
    informative: Mapping[Any, Any], layers: dict[str, list[int]], widths: dict[str, int]
) -> dict[str, dict[int, int]]:
    """{kind: {layer: n}} with only n > 0, from either {layer: n} (every kind having the layer) or per kind."""
    out: dict[str, dict[int, int]] = {k: {} for k in layers}
    if informative and all(isinstance(v, Mapping) for v in informative.values()):
        for kind, per_layer in informative.items():
            if kind not in layers:
                raise InputError(f"informative: kind {kind!r} is not among the store's kinds {list(layers)}")
            for layer, n in per_layer.items():
                if int(layer) not in layers[kind]:
                    raise InputError(f"informative: {kind} has no layer {layer}; its layers are {layers[kind]}")
                out[kind][int(layer)] = int(n)
    else:
        for layer, n in informative.items():
            having = [k for k in layers if int(layer) in layers[k]]
            if not having:
                raise InputError(f"informative: layer {layer} is in none of the kinds {list(layers)}")
            for kind in having:
                out[kind][int(layer)] = int(n)
    for kind, per_layer in out.items():
        for layer, n in per_layer.items():
            if not 0 <= n <= widths[kind]:
                raise InputError(f"informative: {n} neurons in {kind} layer {layer}; give 0..{widths[kind]}")
    return {k: {layer: n for layer, n in sorted(v.items()) if n > 0} for k, v in out.items()}


def _split_counts(n_rows: int, shares: Sequence[float]) -> list[int]:
    total = float(sum(shares))
    n_train = round(n_rows * shares[0] / total)
    n_dev = round(n_rows * shares[1] / total)
    n_train = max(1, min(n_train, n_rows))
    n_dev = min(n_dev, n_rows - n_train)
    return [n_train, n_dev, n_rows - n_train - n_dev]


def _labels_and_splits(counts: list[int], n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows in split order (train, dev, test); each split balanced over the classes and shuffled."""
    rng = np.random.default_rng([_TAG_LABELS, seed])
    labels = np.concatenate([rng.permutation(np.arange(c, dtype=np.int64) % n_classes) for c in counts])
    splits = np.repeat(np.array(SPLITS), counts)
    return labels, splits


def _planted_positions(seed: int, kind: str, layer: int, n: int, width: int) -> np.ndarray:
    rng = np.random.default_rng([_TAG_PLANTED, seed, KINDS.index(kind), layer])
    return np.sort(rng.choice(width, size=n, replace=False)).astype(np.int64)


def _class_patterns(seed: int, kind: str, layer: int, n: int, n_classes: int) -> np.ndarray:
    """(n_classes, n) float32 of ±1: -1/+1 for classes 0/1 when binary; otherwise seeded, with every column taking
    both signs (each planted neuron informative) and, where 2**n allows, distinct rows (classes separable)."""
    if n_classes == 2:
        return np.repeat(np.array([[-1.0], [1.0]], dtype=np.float32), n, axis=1)
    rng = np.random.default_rng([_TAG_PATTERN, seed, KINDS.index(kind), layer])
    want_distinct = n < 62 and n_classes <= 2**n
    for _ in range(100):
        p = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n_classes, n))
        mixed = bool(np.all(p.min(axis=0) < p.max(axis=0)))
        if mixed and (not want_distinct or len(np.unique(p, axis=0)) == n_classes):
            return p
    for j in range(n):  # last resort: make every column take both signs
        if p[:, j].min() == p[:, j].max():
            p[j % n_classes, j] *= -1
    return p


def _examples_table(labels: np.ndarray, splits: np.ndarray, label_names: list[str]) -> pl.DataFrame:
    n = len(labels)
    digits = max(6, len(str(n - 1)))
    ids = [f"synth-{i:0{digits}d}" for i in range(n)]
    return pl.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "example_id": ids,
            "split": [str(s) for s in splits],
            "label": labels.astype(np.int64),
            "label_name": [label_names[i] for i in labels],
            "text_sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids],  # no text: the id stands in
            "n_tokens": np.zeros(n, dtype=np.int64),
            "truncated": np.zeros(n, dtype=bool),
        }
    )


def _existing(
    url: str, manifest: Manifest, overwrite: bool, storage_options: dict[str, Any] | None
) -> ActivationStore | None:
    """The store already at `url` if it was made from the same parameters; None if there is none (or overwrite)."""
    fs, root = _fs(url, storage_options)
    if not check_store_destination(fs, root, url, option="--out"):  # refuses a file or a foreign directory
        return None
    if overwrite:
        return None
    store = ActivationStore.open(url, mode="a", storage_options=storage_options)
    if store.fingerprint != manifest.fingerprint:
        diffs = describe_differences(store.manifest_record.fingerprint_inputs(), manifest.fingerprint_inputs())
        raise StoreMismatchError(
            f"{url} holds a store made from other inputs ({'; '.join(diffs[:4])}); "
            "pass another out, or overwrite=True to replace it"
        )
    store.check_reusable()  # reused as is only when complete and consistent
    return store
