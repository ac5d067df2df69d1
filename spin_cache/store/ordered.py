"""A probe run's ordered copy (`ordered.zarr` in the run's folder): each probed layer's salient columns of the
store, most salient first, so that any eta or top-k selection of a layer is a contiguous prefix of its array and a
sweep reads only (about) the bytes of the columns it uses.

Format: a Zarr v3 group whose attribute "store_fingerprint" is the fingerprint of the store it copies. One array
per (kind, pooling, layer), named as in the store (`access.array_name`): every row of the store (in the store's
order), one column per kept neuron, in the store's dtype and encoding (`ActivationStore.encode`), sharded like the
store (one shard per row block) with ORDERED_CHUNK_COLS columns per chunk. Its attributes: "kind", "pooling",
"layer", "neurons" (the store's neuron id of each column, in column order: the probe's rank order of the neurons
with non-zero saliency, at least one) and "store_fingerprint". A layer whose array is missing (a probe that kept no
column, an older run) is read from the store instead.

Written by the probe run (`spin_cache.loop.probe`: the group by `run_probes`, one array per task by
`write_ordered_columns`); read by the sweep (`spin_cache.loop.sweep`, through `open_ordered` / `OrderedCopy`,
which count the bytes read). A damaged part is an IntegrityError naming it (and the chunk) and the way out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from ..errors import IntegrityError
from .access import CountingStore, array_name, array_stored_bytes
from .activation_store import ActivationStore
from .shards import create_array

ORDERED_DIR = "ordered.zarr"
ORDERED_CHUNK_COLS = 16
ORDERED_DAMAGED = "probe again into a new --out, or delete {url} to read the store instead"


def ordered_damage(url: str, name: str, detail: object, chunk: str | None = None) -> IntegrityError:
    """The one-line error for a damaged part of a probe run's ordered copy."""
    where = f"{url}/{name}" if name else url
    text = " ".join(str(detail).split())[:200]
    return IntegrityError(
        f"{where}: {'chunk ' + chunk + ' ' if chunk else ''}is damaged ({text}); {ORDERED_DAMAGED.format(url=url)}"
    )


def open_ordered_group(url: str, mode: str, *, store: object = None, **kwargs: object) -> zarr.Group:
    """The ordered copy's group (at `url`, or through `store`); IntegrityError when its zarr.json is damaged."""
    try:
        return zarr.open_group(store or url, mode=mode, **kwargs)  # type: ignore[arg-type]
    except Exception as exc:
        raise ordered_damage(url, "zarr.json", f"{type(exc).__name__}: {exc}") from None


def find_damaged_chunk(arr: zarr.Array[Any], rows: slice, cols: slice, block_rows: int) -> str:
    """The key (c/BLOCK/0) of the first shard in `rows` whose read of `cols` fails, for an error message."""
    lo = rows.start or 0
    hi = arr.shape[0] if rows.stop is None else rows.stop
    for block in range(lo // block_rows, -(-hi // block_rows)):
        start, stop = max(lo, block * block_rows), min(hi, (block + 1) * block_rows)
        try:
            arr[start:stop, cols]
        except Exception:
            return f"c/{block}/0 (rows {block * block_rows}-{min(arr.shape[0], (block + 1) * block_rows) - 1})"
    return "(shard index)"


def write_ordered_columns(
    url: str,
    store: ActivationStore,
    kind: str,
    pooling: str,
    layer: int,
    neurons: np.ndarray,
    values: np.ndarray | None = None,
) -> None:
    """Write one layer's array: the store's columns `neurons` (the writer's choice, in that order; the probe passes
    the neurons with non-zero saliency, most salient first, so any eta or top-k selection is then a contiguous
    prefix of this array and a sweep reads only (about) the bytes of the columns it uses). `values`: the layer's
    float32 values (every row, every neuron) when already in memory; otherwise read from the store a shard at a
    time."""
    keep = np.asarray(neurons)
    group = open_ordered_group(url, mode="a")
    arr = create_array(
        group,
        array_name(kind, pooling, layer),
        shape=(store.layout.n_rows, len(keep)),
        block_rows=store.layout.block_rows,
        chunk_cols=ORDERED_CHUNK_COLS,
        dtype=store.layout.dtype,
        attributes={"kind": kind, "pooling": pooling, "layer": layer,
                    "neurons": [int(i) for i in keep], "store_fingerprint": store.fingerprint},
    )  # fmt: skip
    if values is not None:
        arr[:] = store.encode(values[:, keep])
        return
    ascending = np.sort(keep)
    back = np.searchsorted(ascending, keep)
    for block in range(store.layout.n_blocks):  # one shard per write: one writer per shard
        start, stop = store.layout.block_range(block)
        read = store.read(kind, pooling, layer, rows=np.arange(start, stop), columns=ascending)
        arr[start:stop] = store.encode(read[:, back])


class OrderedCopy:
    """A probe run's saliency-ordered columns (see write_ordered_columns), with read counting."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counter = CountingStore(LocalStore(url, read_only=True))
        self.group = open_ordered_group(url, mode="r", store=self.counter)
        self._stored_bytes: dict[tuple[str, str, int], int] = {}

    @property
    def bytes_read(self) -> int:
        """Bytes the copy's reads have returned so far (as stored, compressed; metadata included)."""
        return self.counter.bytes_read

    def array(self, kind: str, pooling: str, layer: int) -> tuple[zarr.Array[Any], np.ndarray] | None:
        """One layer's ordered array and the neuron id of each of its columns, or None when the copy does not hold
        the layer; IntegrityError when its metadata is damaged or does not describe its columns."""
        name = array_name(kind, pooling, layer)
        if not Path(self.url, name, "zarr.json").exists():
            return None  # not in the copy (a probe that kept no column, an older run): read the store
        try:
            arr = self.group[name]
            neurons = np.asarray(arr.attrs["neurons"], dtype=np.int64)
        except Exception as exc:
            raise ordered_damage(self.url, f"{name}/zarr.json", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(arr, zarr.Array) or neurons.ndim != 1 or len(neurons) != arr.shape[1]:
            raise ordered_damage(self.url, f"{name}/zarr.json", "its metadata does not describe its columns")
        return arr, neurons

    def read(self, arr: zarr.Array[Any], rows: slice, cols: slice, block_rows: int) -> np.ndarray:
        """arr[rows, cols]; IntegrityError naming the array and the damaged chunk when a chunk does not decode."""
        try:
            return np.asarray(arr[rows, cols])
        except Exception as exc:
            chunk = find_damaged_chunk(arr, rows, cols, block_rows)
            raise ordered_damage(self.url, arr.path, f"{type(exc).__name__}: {exc}", chunk) from None

    def stored_bytes(self, kind: str, pooling: str, layer: int) -> int:
        """Bytes on disk of one array, listed once (streamed fits ask once per block and pass)."""
        key = (kind, pooling, layer)
        if key not in self._stored_bytes:
            self._stored_bytes[key] = array_stored_bytes(self.url, array_name(kind, pooling, layer))
        return self._stored_bytes[key]


def open_ordered(url: str) -> OrderedCopy | None:
    """The probe run's ordered copy at the local folder `url`, or None when there is none (no zarr.json there)."""
    return OrderedCopy(url) if Path(url, "zarr.json").exists() else None
