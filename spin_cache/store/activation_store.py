"""The ActivationStore: one Zarr v3 group per extraction, read by every later stage."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

import fsspec
import numpy as np
import polars as pl
import zarr

from ..errors import InputError, IntegrityError, SpinCacheError
from ..outputs import check_store_destination
from ..representations import KINDS
from .access import ChunkGuard, CountingStore, _fs, array_name, array_stored_bytes, zarr_store
from .folds import Fold
from .layout import FORMAT_VERSION, SideFiles, check_format_version
from .manifest import Manifest
from .shards import RowShardEncoder, create_array

_ZARR_MODES: dict[str, Literal["r", "a"]] = {"r": "r", "a": "a"}


class ActivationStore:
    """A store of pooled activations, opened from a local path or URL.

    Readable without spin-cache too: `zarr.open_group(path)["ffn/mean/layer_03"][:]` and
    `polars.read_parquet(path + "/spin_cache/examples.parquet")` (`/examples.parquet` in a format-1 store).
    `side` says where this store's side files are (its format's layout); `manifest_record` is the manifest, typed,
    and `manifest` the same as the dict zarr.json holds (a copy: changing it changes nothing).
    """

    def __init__(self, url: str, group: zarr.Group, storage_options: dict[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = storage_options or {}
        self._group = group
        manifest = group.attrs.get("spin_cache", {})
        if not manifest:
            raise InputError(f"{url}: not a spin-cache store (no 'spin_cache' manifest in zarr.json)")
        try:
            self.manifest_record = Manifest.from_json(manifest)
        except (InputError, IntegrityError) as exc:
            raise type(exc)(f"{url}: {exc}") from exc
        self.format_version = self.manifest_record.format_version
        self.layout = self.manifest_record.layout
        self.side = SideFiles.of(self.format_version)
        self.counter: CountingStore | None = None
        self.fold: Fold | None = None  # set by open(fold=...): the view of one cross-validation fold
        stored_hash = self.manifest_record.manifest_sha256  # None in a store an older spin-cache wrote: unchecked
        # Checked on every open; a store still being written is exempt (its status and run info change, and the
        # hash is written with them by `mark_complete`; nothing reads an incomplete store's arrays).
        self.manifest_problem: str | None = None
        if self.is_complete and stored_hash is not None and stored_hash != self.manifest_record.expected_hash():
            self.manifest_problem = (
                f"{url}: zarr.json's manifest was edited after extraction (manifest_sha256 does not match); the "
                "store cannot be trusted: restore zarr.json or extract again with --overwrite"
            )
        self._stored_bytes: dict[tuple[str, str, int], int] = {}
        self._writers: dict[str, tuple[zarr.Array[Any], RowShardEncoder | None]] = {}

    # -- opening and creating --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        mode: Literal["r", "a"] = "r",
        storage_options: dict[str, Any] | None = None,
        count_bytes: bool = False,
        fold: Fold | None = None,
    ) -> ActivationStore:
        """Open an existing store; mode "r" (default) never writes. `count_bytes` counts array bytes read. `fold`:
        see the store through a cross-validation fold of its training rows (spin_cache.store.folds: the fold's rows
        are dev, the other training rows train, dev and test set aside); only reading stages take one."""
        if fold is not None:
            if mode != "r":
                raise ValueError("a fold is a read-only view: open the store with mode 'r'")
            fold.check()
        fs, root = _fs(url, storage_options)
        if not fs.exists(f"{root}/zarr.json"):
            raise InputError(f"{url}: no store here (zarr.json missing); run `spin-cache extract` to make one")
        zstore = zarr_store(url, read_only=mode == "r", storage_options=storage_options)
        counter = CountingStore(zstore) if count_bytes else None
        guard = ChunkGuard(counter or zstore, str(url))
        try:
            group = zarr.open_group(guard, mode=_ZARR_MODES[mode])
        except SpinCacheError:
            raise
        except Exception as exc:  # corrupt metadata is a damaged store, not a crash
            if _storage_error(exc, str(url)) is not None:
                raise
            raise IntegrityError(f"{url}: cannot read zarr.json ({exc}); the store is damaged") from exc
        store = cls(url, group, storage_options)
        store.counter = counter
        store.fold = fold
        guard.strict = store.is_complete
        return store

    @classmethod
    def exists(cls, url: str, storage_options: dict[str, Any] | None = None) -> bool:
        """Whether `url` holds a zarr.json (a store, or the start of one); nothing is opened or checked."""
        fs, root = _fs(url, storage_options)
        value: bool = fs.exists(f"{root}/zarr.json")
        return value

    @classmethod
    def create(
        cls,
        url: str,
        manifest: Manifest | dict[str, Any],
        examples: pl.DataFrame,
        *,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        option: str = "--out",
    ) -> ActivationStore:
        """Create an empty, incomplete store with all arrays, the manifest and the examples table.

        `url` must be missing, an empty directory or (with `overwrite`) a spin-cache store; anything else is
        refused (`InputError` naming `option` and the path). Overwriting removes only what a store holds
        (zarr.json, the kinds' folders and the side files where its format keeps them: `spin_cache/`, or
        examples.parquet and commits/ in a format-1 store), zarr.json last, so an interrupted overwrite still
        leaves a store that `--overwrite` may replace. The new store has the manifest's format (`Manifest.new`
        gives the current one); the manifest is checked before anything is removed."""
        record = (manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest)).sealed()
        layout = record.layout
        fs, root = _fs(url, storage_options)
        if check_store_destination(fs, root, str(url), option=option):
            if not overwrite:
                raise InputError(f"{option} {url}: already holds a spin-cache store; pass --overwrite to replace it")
            _remove_store(fs, root)
        # mode "a", not "w": "w" deletes everything under the path, and the path was checked to hold no store.
        group = zarr.open_group(
            zarr_store(str(url), read_only=False, storage_options=storage_options),
            mode="a",
            attributes={"spin_cache": record.to_json()},
        )
        for kind, pooling, layer in layout.array_keys():
            width = layout.widths[kind]
            create_array(
                group,
                array_name(kind, pooling, layer),
                shape=(layout.n_rows, width),
                block_rows=layout.block_rows,
                chunk_cols=layout.chunk_cols,
                dtype=layout.dtype,
                attributes={"kind": kind, "pooling": pooling, "layer": layer},
            )
        store = cls(url, group, storage_options)
        store.write_examples(examples)  # creates the side node first
        return store

    # -- description ---------------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as zarr.json holds it: a deep copy of `manifest_record.to_json()`, for readers of the dict."""
        return copy.deepcopy(self.manifest_record.to_json())

    @property
    def fingerprint(self) -> str:
        """The manifest's fingerprint: sha256 of what decides the stored values (equal fingerprints, equal values)."""
        return self.manifest_record.fingerprint

    @property
    def status(self) -> str:
        """The manifest's status: "incomplete" while row blocks are being written, "complete" once all are."""
        return self.manifest_record.status

    @property
    def is_complete(self) -> bool:
        """Whether every row block is committed (the status is "complete")."""
        return self.status == "complete"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds stored ("hidden", "ffn"), in the layout's order."""
        return self.layout.kinds

    @property
    def poolings(self) -> tuple[str, ...]:
        """The poolings stored, in the layout's order."""
        return self.layout.poolings

    def layers(self, kind: str) -> list[int]:
        """The layers stored for `kind` (a new list); InputError for a kind the store does not have."""
        self._check_kind(kind)
        return list(self.layout.layers[kind])

    def width(self, kind: str) -> int:
        """Neurons per layer of `kind`; InputError for a kind the store does not have."""
        self._check_kind(kind)
        return self.layout.widths[kind]

    @property
    def label_names(self) -> list[str]:
        """The class names in label order: ``label_names[label]`` names the integer label of a row."""
        return self.manifest_record.label_names

    def check_manifest(self) -> None:
        """Raise `IntegrityError` if zarr.json's manifest was edited after extraction (see `manifest_problem`)."""
        if self.manifest_problem:
            raise IntegrityError(self.manifest_problem)

    @property
    def examples(self) -> pl.DataFrame:
        """The examples table: one row per stored row (row, split, label, ...), read once.

        Raises IntegrityError when the manifest was edited after extraction or the table is missing or unreadable.
        """
        self.check_manifest()
        if self.fold is not None:
            return self._fold_examples
        return self._examples

    @cached_property
    def _fold_examples(self) -> pl.DataFrame:
        assert self.fold is not None
        return self.fold.relabel(self._examples)

    @cached_property
    def _examples(self) -> pl.DataFrame:
        fs, root = _fs(self.url, self.storage_options)
        path = f"{root}/{self.side.examples}"
        try:
            with fs.open(path, "rb") as f:
                return pl.read_parquet(f)
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"{self.url}: {self.side.examples} is missing; the store is damaged: extract again with --overwrite"
            ) from exc
        except Exception as exc:
            storage = _storage_error(exc, self.url)
            if storage is not None:
                raise storage from exc
            raise IntegrityError(
                f"{self.url}/{self.side.examples}: unreadable ({_one_line(exc)}); the store is damaged: extract again "
                "with --overwrite"
            ) from exc

    def labels(self, split: str | None = None) -> np.ndarray:
        """The int64 labels of every row, or of `split`'s rows ("train", "dev", "test"), in table order."""
        ex = self.examples if split is None else self.examples.filter(pl.col("split") == split)
        return ex["label"].to_numpy().astype(np.int64)

    def split_rows(self, split: str) -> np.ndarray:
        """The store rows (int64 row indices) of `split`, in table order; empty for a split with no rows."""
        rows = self.examples.filter(pl.col("split") == split)["row"].to_numpy().astype(np.int64)
        return rows

    # -- reading -------------------------------------------------------------------------------------------

    def array(self, kind: str, pooling: str, layer: int) -> zarr.Array[Any]:
        """The zarr array of one (kind, pooling, layer): (rows, neurons) in the store's dtype (bfloat16 as its raw
        uint16 bits; `decode` gives float32). InputError for a kind, pooling or layer the store does not have,
        IntegrityError for an edited manifest or an array that cannot be opened (a storage failure as such)."""
        self.check_manifest()
        self._check_kind(kind)
        if pooling not in self.poolings:
            raise InputError(f"pooling {pooling!r} is not in this store; it has {', '.join(self.poolings)}")
        if layer not in self.layout.layers[kind]:
            raise InputError(f"{kind} layer {layer} is not in this store; it has {self.layout.layers[kind]}")
        name = array_name(kind, pooling, layer)
        try:
            return self._node(name)
        except SpinCacheError:
            raise
        except Exception as exc:
            self._raise_read_error(exc, name, None)
            raise  # not reached

    def read(
        self,
        kind: str,
        pooling: str,
        layer: int,
        columns: Sequence[int] | np.ndarray | None = None,
        split: str | None = None,
        *,
        rows: np.ndarray | None = None,
        allow_incomplete: bool = False,
    ) -> np.ndarray:
        """Pooled values as float32 (rows, columns); only the requested columns' chunks are fetched."""
        if not (self.is_complete or allow_incomplete):
            raise IntegrityError(
                f"{self.url}: the store is incomplete ({self.count_committed()}/{self.layout.n_blocks} blocks "
                "committed); rerun the same `spin-cache extract` command to finish it"
            )
        arr = self.array(kind, pooling, layer)
        if split is not None:
            rows = self.split_rows(split)
        col_sel: Any = slice(None) if columns is None else np.asarray(columns, dtype=np.int64)
        try:
            if rows is None:
                data = np.asarray(arr.oindex[slice(None), col_sel])
            else:
                data = self._read_rows(arr, np.asarray(rows, dtype=np.int64), col_sel)
        except SpinCacheError:
            raise
        except Exception as exc:  # a damaged chunk: name it (as `verify` does), in one line
            self._raise_read_error(exc, array_name(kind, pooling, layer), rows)
        return self.decode(data)

    def _raise_read_error(self, exc: BaseException, name: str, rows: np.ndarray | None) -> None:
        """Turn a failed read of array `name` into one line: a storage failure (permissions, network) as such,
        else `IntegrityError` naming the array and the damaged chunk(s) of the blocks the read covered."""
        storage = _storage_error(exc, self.url)
        if storage is not None:
            raise storage from exc
        blocks = range(self.layout.n_blocks)
        if rows is not None and len(rows):
            first, last = int(np.min(rows)) // self.layout.block_rows, int(np.max(rows)) // self.layout.block_rows
            blocks = range(first, last + 1)
        found: list[str] = []
        try:
            for block in blocks:
                found += self._verify_shard(name, block)
                if found:
                    break
        except Exception:  # the array's own metadata cannot be read
            found = []
        what = found[0] if found else f"{name}: cannot be read ({_one_line(exc)})"
        raise IntegrityError(
            f"{self.url}: {what}; the store is damaged: run `spin-cache verify {self.url}`, then extract again "
            "with --overwrite"
        ) from exc

    def _read_rows(self, arr: zarr.Array[Any], rows: np.ndarray, col_sel: Any) -> np.ndarray:
        # Row subsets are nearly always one contiguous run (splits are stored in order): read the span, then pick.
        if rows.size == 0:
            return np.empty((0, arr.shape[1] if isinstance(col_sel, slice) else len(col_sel)), arr.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        span = np.asarray(arr.oindex[slice(lo, hi), col_sel])
        picked: np.ndarray = span[rows - lo]
        return picked

    def decode(self, data: np.ndarray) -> np.ndarray:
        """Stored values (float16, float32 or bfloat16 bits) -> float32."""
        if self.layout.dtype == "bfloat16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32, copy=False)

    # -- writing (extraction only) ---------------------------------------------------------------------------

    def write_examples(self, examples: pl.DataFrame) -> None:
        """Write the examples table (again, when an extraction resumes a store whose creation was cut short, so the
        side node is made here too if it is missing)."""
        fs, root = _fs(self.url, self.storage_options)
        self._ensure_side_node()  # format 2: the node's folder, where the table goes; format 1: the root
        with fs.open(f"{root}/{self.side.examples}", "wb") as f:
            examples.write_parquet(f)
        self.__dict__.pop("_examples", None)

    def _ensure_side_node(self) -> None:
        """Create the empty array whose folder holds the side files (format 2 on), unless it is there: zarr lists
        a group's folders, never an array's, so it never sees (and warns about) the files kept there."""
        node = self._side_node_missing()
        if node is None:
            return
        self._group.create_array(
            node,
            shape=(0,),
            dtype="uint8",
            attributes={
                "spin_cache_side_files": {
                    "examples.parquet": "the examples table: one row per stored row (split, label, ...)",
                    "commits/": "one JSON marker per committed row block",
                },
                "note": "holds no values: this folder keeps spin-cache's side files where zarr does not list them",
            },
            overwrite=False,  # True would delete the folder, commit markers and all
        )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float32 -> the store's dtype (bfloat16 by round-to-nearest-even on the raw bits)."""
        if self.layout.dtype == "bfloat16":
            bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            return (rounded >> 16).astype(np.uint16)
        return values.astype(self.layout.dtype)

    def _node(self, name: str) -> zarr.Array[Any]:
        """The array `name` of the group; a group where an array belongs is a damaged store."""
        node = self._group[name]
        if not isinstance(node, zarr.Array):
            raise IntegrityError(f"{self.url}/{name}: a group where an array belongs; the store is damaged")
        return node

    def _writer_for(self, name: str) -> tuple[zarr.Array[Any], RowShardEncoder | None]:
        """The array and its shard encoder, looked up once per store (each lookup reads the array's zarr.json)."""
        if name not in self._writers:
            array = self._node(name)
            self._writers[name] = (array, RowShardEncoder.for_array(array))
        return self._writers[name]

    def write_block(
        self,
        block: int,
        arrays: dict[tuple[str, str, int], np.ndarray],
        info: dict[str, Any],
        threads: int = 1,
        row_index: np.ndarray | None = None,
        gate: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        """Write one row block of every array (`threads` arrays at once: compression runs without the GIL),
        then its commit marker (the marker makes the block count). With `row_index`, the block's rows are
        `array[row_index]` (extraction fills its buffer in length order; the gather is folded into chunking).
        Each array is written inside `gate`, if given (extraction's limit on threads while the model runs)."""
        from concurrent.futures import ThreadPoolExecutor

        start, stop = self.layout.block_range(block)
        fs, root = _fs(self.url, self.storage_options)

        def write(key: tuple[str, str, int]) -> None:
            with gate or contextlib.nullcontext():
                write_array(key)

        def write_array(key: tuple[str, str, int]) -> None:
            name = array_name(*key)
            array, encoder = self._writer_for(name)
            if encoder is None:  # not the layout spin-cache creates: let zarr write it
                array[start:stop] = arrays[key] if row_index is None else arrays[key][row_index]
                return
            parts = encoder.encode_parts(arrays[key], row_index)
            fs.makedirs(f"{root}/{name}/c/{block}", exist_ok=True)
            with fs.open(f"{root}/{name}/c/{block}/0", "wb") as f:
                for i in range(0, len(parts), 64):  # a few large writes: each write is a GIL round trip
                    f.write(b"".join(parts[i : i + 64]))

        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(write, arrays))
        fs.makedirs(f"{root}/{self.side.commits}", exist_ok=True)
        marker = {"block": block, "rows": [start, stop], **info}
        with fs.open(f"{root}/{self.side.commits}/block_{block:06d}.json", "w") as f:
            f.write(json.dumps(marker))

    def committed_blocks(self) -> dict[int, dict[str, Any]]:
        """Markers of committed blocks; an unreadable (torn) marker counts as not committed."""
        fs, root = _fs(self.url, self.storage_options)
        out: dict[int, dict[str, Any]] = {}
        try:
            paths = fs.ls(f"{root}/{self.side.commits}", detail=False)
        except FileNotFoundError:
            return out
        for path in paths:
            try:
                with fs.open(path, "r") as f:
                    marker = json.loads(f.read())
                out[int(marker["block"])] = marker
            except (ValueError, KeyError, OSError):
                continue
        return out

    def count_committed(self) -> int:
        """How many row blocks are committed: every block of a complete store, else its readable commit markers."""
        return len(self.committed_blocks()) if not self.is_complete else self.layout.n_blocks

    def mark_complete(self, run_info: dict[str, Any]) -> None:
        """Mark the store complete: write the manifest with status "complete", `run_info` as its "run" and its
        hash (`Manifest.completed`) to zarr.json. It does not check that every block is committed: callers do."""
        record = self.manifest_record.completed(run_info)
        self._group.attrs["spin_cache"] = record.to_json()
        self.manifest_record = record

    # -- inspection ----------------------------------------------------------------------------------------

    def array_nbytes_stored(self, kind: str, pooling: str, layer: int) -> int:
        """Bytes on disk of one array (listed, not read: reads through the byte counter would count them).
        A complete store does not change, so the listing is done once per array (streamed fits ask per block)."""
        key = (kind, pooling, layer)
        if key in self._stored_bytes:
            return self._stored_bytes[key]
        nbytes = array_stored_bytes(self.url, array_name(kind, pooling, layer), self.storage_options)
        if self.is_complete:
            self._stored_bytes[key] = nbytes
        return nbytes

    def nbytes_stored(self) -> dict[str, int]:
        """Bytes on disk per kind, plus the side files."""
        fs, root = _fs(self.url, self.storage_options)
        sizes: dict[str, int] = {}
        for kind in self.kinds:
            sizes[kind] = int(fs.du(f"{root}/{kind}", total=True))
        examples = f"{root}/{self.side.examples}"
        sizes["examples"] = int(fs.size(examples)) if fs.exists(examples) else 0
        return sizes

    def reuse_problems(self) -> list[str]:
        """What keeps a complete store from being used as is (a cache hit): an edited manifest, a missing or
        inconsistent examples table, missing commit markers. Cheap (no chunk is read; `verify` reads them all)."""
        if self.manifest_problem:
            return [self.manifest_problem.removeprefix(f"{self.url}: ")]
        fs, root = _fs(self.url, self.storage_options)
        if not fs.exists(f"{root}/{self.side.examples}"):
            problems = [f"{self.side.examples} is missing"]
        else:
            try:
                problems = self._verify_examples()
            except (KeyError, TypeError, AttributeError) as exc:
                problems = [f"zarr.json: the manifest lacks {exc}"]
            problems = [p.split("; the store is damaged")[0].removeprefix(f"{self.url}/") for p in problems]
        missing = sorted(set(range(self.layout.n_blocks)) - set(self.committed_blocks()))
        if missing:
            shown = ", ".join(f"block_{b:06d}.json" for b in missing[:3]) + (", ..." if len(missing) > 3 else "")
            problems.append(f"{self.side.commits}/: {len(missing)} commit marker(s) missing ({shown})")
        return [p.removeprefix(f"{self.url}: ") for p in problems]

    def check_reusable(self) -> None:
        """Raise `IntegrityError` naming the first problem if a complete store cannot be used as is."""
        if not self.is_complete:
            return
        self.check_manifest()
        problems = self.reuse_problems()
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise IntegrityError(
                f"{self.url}: the store is marked complete but {problems[0]}{more}; it is damaged: extract again "
                "with --overwrite (`spin-cache verify` lists every problem)"
            )

    def info(self) -> dict[str, Any]:
        """Manifest, status and sizes. A complete store that cannot be used as is (`check_reusable`) raises
        `IntegrityError`: `info` is where one looks before using a store, and every command using it would fail."""
        self.check_reusable()
        sizes = self.nbytes_stored()
        n_values = sum(self.layout.widths[k] * len(self.layout.layers[k]) * len(self.poolings) for k in self.kinds)
        return {
            "url": self.url,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "committed_blocks": self.count_committed(),
            "n_blocks": self.layout.n_blocks,
            "bytes_stored": sizes,
            "bytes_float32": n_values * self.layout.n_rows * 4,
            "manifest": self.manifest,
        }

    def verify(self, progress: bool = False) -> list[str]:
        """Re-read every chunk, check the manifest and the examples table; return one line per problem."""
        problems: list[str] = []
        problems += self._verify_manifest()
        problems += self._verify_examples()
        problems += self._verify_side_node()
        committed = set(self.committed_blocks()) if not self.is_complete else set(range(self.layout.n_blocks))
        keys = self.layout.array_keys()
        fs, root = _fs(self.url, self.storage_options)
        bar = _progress(len(keys), "verify", progress)
        for kind, pooling, layer in keys:
            name = array_name(kind, pooling, layer)
            for block in sorted(committed):
                if not fs.exists(f"{root}/{name}/c/{block}/0"):
                    problems.append(f"{name}: chunk c/{block}/0 (rows {self.layout.block_range(block)}) is missing")
                    continue
                problems += self._verify_shard(name, block)
            bar.update(1)
        bar.close()
        return problems

    def _verify_shard(self, name: str, block: int) -> list[str]:
        arr = self._node(name)
        start, stop = self.layout.block_range(block)
        try:
            arr[start:stop]
            return []
        except Exception:
            pass  # find which inner chunks are damaged
        bad = []
        step = min(self.layout.chunk_cols, arr.shape[1])
        for c0 in range(0, arr.shape[1], step):
            try:
                arr[start:stop, c0 : c0 + step]
            except Exception as exc:
                bad.append(
                    f"{name}: chunk c/{block}/0 inner columns {c0}-{c0 + step - 1} is damaged ({_one_line(exc)})"
                )
        return bad or [f"{name}: chunk c/{block}/0 (shard index) is damaged"]

    def _verify_manifest(self) -> list[str]:
        record = self.manifest_record
        try:
            expected = record.expected_fingerprint()
        except KeyError as exc:
            return [f"zarr.json: manifest lacks {exc}; the store is damaged"]
        if expected != self.fingerprint:
            return ["zarr.json: the manifest does not match its fingerprint (edited after extraction?)"]
        stored = record.manifest_sha256  # None in a store an older spin-cache wrote: unchecked
        if stored is not None and stored != record.expected_hash():
            return ["zarr.json: the manifest was edited after extraction (manifest_sha256 does not match)"]
        return []

    def _verify_side_node(self) -> list[str]:
        """The empty array whose folder keeps the side files (format 2 on) must be there: without its zarr.json,
        plain zarr sees a folder it does not know and warns about it."""
        node = self._side_node_missing()
        if node is None:
            return []
        return [f"{node}/zarr.json: missing (plain zarr warns about the folder {node}/); the store is damaged"]

    def _side_node_missing(self) -> str | None:
        """The side node's name when the store's format has one and its zarr.json is not there, else None."""
        node = self.side.node
        fs, root = _fs(self.url, self.storage_options)
        return None if node is None or fs.exists(f"{root}/{node}/zarr.json") else node

    def _verify_examples(self) -> list[str]:
        try:
            ex = self._examples  # an edited manifest is reported by _verify_manifest
        except SpinCacheError as exc:
            return [str(exc)]
        problems = []
        if ex.height != self.layout.n_rows:
            problems.append(f"{self.side.examples}: {ex.height} rows, the manifest says {self.layout.n_rows}")
        want = self.manifest_record.dataset.get("rows_per_split", {})
        got = dict(ex.group_by("split").len().iter_rows()) if ex.height else {}
        if want and got != want:
            problems.append(f"{self.side.examples}: rows per split {got} differ from the manifest's {want}")
        return problems

    def _check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise InputError(f"kind {kind!r} is not in this store; it has {', '.join(self.kinds)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _storage_error(exc: BaseException, url: str) -> SpinCacheError | None:
    """The one-line error for a storage failure (local permissions, remote access, network); None otherwise."""
    from .remote import remote_error

    err = remote_error(exc, url)
    return None if err is None or err is exc else err


def _remove_store(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Remove what a spin-cache store holds at `root` (checked to be one), zarr.json last; other files stay. The
    side files are removed where the store's format keeps them (where both formats do, if its format_version is
    unreadable); a store of a newer format, whose parts this spin-cache does not know, is refused."""
    try:
        manifest = json.loads(fs.cat_file(f"{root}/zarr.json"))["attributes"]["spin_cache"]
        side = SideFiles.of(check_format_version(manifest.get("format_version"))).top_level
    except (KeyError, TypeError, ValueError, IntegrityError, AttributeError):
        side = (*SideFiles.of(1).top_level, *SideFiles.of(FORMAT_VERSION).top_level)
    except InputError as exc:
        raise InputError(f"{root}: {exc}; remove it by hand to replace it") from exc
    for name in (*KINDS, *side):
        path = f"{root}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{root}/zarr.json")
    fs.invalidate_cache(root)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="array")
