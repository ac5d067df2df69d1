"""A probe run's saliency-ordered copy of the columns (`ordered.zarr`): the one module that writes and reads it.

Per (kind, pooling, layer), the layer's neurons with non-zero saliency, most salient first, as one array of the
store's dtype and row blocks (attribute "neurons" = the store's neuron index of every column). Any eta or top-k
selection is then a contiguous prefix of this array, so a sweep reads only (about) the bytes of the columns it uses.
Written by the probes (`write_ordered_columns`), read by the sweep (`OrderedCopy`, `read_columns`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..errors import IntegrityError
from .access import array_name, array_stored_bytes
from .activation_store import ActivationStore
from .shards import create_array

ORDERED_DIR = "ordered.zarr"
ORDERED_CHUNK_COLS = 16
ORDERED_DAMAGED = "probe again into a new --out, or delete {url} to read the store instead"


def rank_order(saliency: np.ndarray) -> np.ndarray:
    """Neuron indices from most to least salient; ties broken by the lower index (the selection rules' order)."""
    s = np.asarray(saliency, dtype=np.float64)
    return np.lexsort((np.arange(len(s)), -s))


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


def find_damaged_chunk(arr: zarr.Array, rows: slice, cols: slice, block_rows: int) -> str:
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
    saliency: np.ndarray,
    values: np.ndarray | None = None,
) -> None:
    """Write one layer's salient columns in rank order. `values`: the layer's every row and column, when the
    caller holds them; else they are read from the store one row block (one shard) at a time."""
    order = rank_order(saliency)
    keep = order[: max(1, int(np.count_nonzero(saliency)))]
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
        part = store.read(kind, pooling, layer, rows=np.arange(start, stop), columns=ascending)
        arr[start:stop] = store.encode(part[:, back])


class OrderedCopy:
    """A probe run's saliency-ordered columns, opened for reading, with read counting."""

    def __init__(self, url: str) -> None:
        from zarr.storage import LocalStore

        from .access import CountingStore

        self.url = url
        self.counter = CountingStore(LocalStore(url, read_only=True))
        self.group = open_ordered_group(url, mode="r", store=self.counter)
        self._stored_bytes: dict[tuple[str, str, int], int] = {}

    @property
    def bytes_read(self) -> int:
        return self.counter.bytes_read

    def array(self, kind: str, pooling: str, layer: int) -> tuple[zarr.Array, np.ndarray] | None:
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

    def read(self, arr: zarr.Array, rows: slice, cols: slice, block_rows: int) -> np.ndarray:
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
    """The ordered copy at `url`, or None when there is none (the sweep then reads the store)."""
    return OrderedCopy(url) if Path(url, "zarr.json").exists() else None


def read_columns(
    store: ActivationStore,
    ordered: OrderedCopy | None,
    kind: str,
    pooling: str,
    layer: int,
    cols: np.ndarray,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Float32 values of `cols` (sorted neuron ids; `rows`, a sorted run, or all) and the stored bytes those
    columns occupy: from the ordered copy when it holds every column (a contiguous prefix read), else the store."""
    found = ordered.array(kind, pooling, layer) if ordered else None
    if found is not None:
        arr, neurons = found
        position = {int(n): i for i, n in enumerate(neurons)}
        if all(int(c) in position for c in cols):
            idx = np.array([position[int(c)] for c in cols], dtype=np.int64)
            span = slice(None) if rows is None else slice(int(rows[0]), int(rows[-1]) + 1)
            prefix = ordered.read(arr, span, slice(0, int(idx.max()) + 1), store.layout.block_rows)  # type: ignore[union-attr]
            if rows is not None:
                prefix = prefix[rows - rows[0]]
            values = store.decode(prefix)[:, idx]
            stored = ordered.stored_bytes(kind, pooling, layer)  # type: ignore[union-attr]
            return values, stored / arr.shape[1] * len(cols)
    values = store.read(kind, pooling, layer, columns=cols, rows=rows)
    return values, store.array_nbytes_stored(kind, pooling, layer) / store.width(kind) * len(cols)
