"""The shape of a store: kinds, poolings, layers, widths, row blocks (= shards) and inner chunks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, IntegrityError
from ..representations import KINDS, POOLINGS

#: The store format spin-cache writes. Format 2 keeps the side files (the examples table, the commit markers) in the
#: folder of an empty array node, `spin_cache/`, where zarr never lists them; format 1 kept them at the top level,
#: where zarr 3.1 warns, for each, that it "is not recognized as a component of a Zarr hierarchy" whenever a
#: group's members are listed (`members()`, `tree()`, consolidation). Both formats are read.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
#: The encoding of the stored values in each format. The fingerprint hashes this, not the format, so a change of
#: layout that leaves the values alone (format 2) keeps fingerprints: a format-1 store is still a cache hit for the
#: same inputs, and the probes and sweeps recorded against it still match.
VALUES_ENCODING = {1: 1, 2: 1}
STORE_DTYPES = ("float16", "bfloat16", "float32")
FLOAT16_MAX = 65504.0
#: The array node whose folder holds the side files (format 2 on); it holds no values (shape (0,)).
SIDE_NODE = "spin_cache"


@dataclass(frozen=True)
class SideFiles:
    """Where a store of one format keeps its side files, as paths relative to the store's root."""

    examples: str  # the examples table (Parquet)
    commits: str  # the folder of commit markers, one JSON file per committed row block
    node: str | None  # the array node whose folder holds both (None: format 1, at the top level)

    @classmethod
    def of(cls, format_version: int) -> SideFiles:
        """The side files of a store of `format_version`: top level in format 1, under `SIDE_NODE` from format 2."""
        if format_version == 1:
            return cls(examples="examples.parquet", commits="commits", node=None)
        return cls(examples=f"{SIDE_NODE}/examples.parquet", commits=f"{SIDE_NODE}/commits", node=SIDE_NODE)

    @property
    def top_level(self) -> tuple[str, ...]:
        """The top-level names they take: with the kinds' folders and zarr.json, all that `--overwrite` removes."""
        return (self.node,) if self.node else (self.examples, self.commits)


#: Format 2's side files (what a new store has); `SideFiles.of(version)` for a store of another format.
SIDE_FILES = SideFiles.of(FORMAT_VERSION)
EXAMPLES_FILE = SIDE_FILES.examples
COMMITS_DIR = SIDE_FILES.commits


def check_format_version(version: Any) -> int:
    """A manifest's `format_version`, if this spin-cache reads that format: `InputError` for a format written by a
    newer spin-cache, `IntegrityError` for anything else."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IntegrityError(f"manifest format_version {version!r} is not a store format; the store is damaged")
    if version not in READABLE_FORMATS:
        raise InputError(
            f"store format {version} was written by a newer spin-cache (this one reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}); upgrade spin-cache to use it"
        )
    return version


def canonical_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()


def dtype_bytes(dtype: str) -> int:
    """Bytes per stored value (bfloat16 is stored as its raw 16 bits)."""
    return 4 if dtype == "float32" else 2


def compressor_config(dtype: str) -> dict[str, Any]:
    """Blosc(zstd, level 1, byte shuffle, 256 KiB blocks): the smallest of the codecs compared on MiniLM
    activations, and barely slower end to end than lz4 (BENCHMARKS.md, "Compression ratio and codec"). A whole
    float16 inner chunk (2,048 rows x 64 neurons) is one Blosc block, so zstd's entropy tables are built once per
    chunk: smaller and faster than with Blosc's default blocks."""
    return {"name": "blosc", "cname": "zstd", "clevel": 1, "shuffle": "shuffle", "typesize": dtype_bytes(dtype),
            "blocksize": 256 * 2**10}  # fmt: skip


def default_block_rows(
    row_bytes: int, chunk_row_bytes: int = 128, target_bytes: int = 160 * 2**20, max_bytes: int = 2**30
) -> int:
    """Rows per block (= shard rows = the rows of every inner chunk): a power of two up to 4,096 that keeps one
    block's buffer near `target_bytes`; for wide rows, as many more as inner chunks (rows x `chunk_row_bytes`)
    need to reach 128 KiB while a block stays within `max_bytes`. Blosc and zarr pay per chunk: a 1B model's
    ~1 MB rows would otherwise get 128-row blocks, whose 16 KiB chunks compress at half the speed of 256 KiB
    ones and starve a GPU's feeding thread of the GIL (BENCHMARKS.md, GPU)."""
    rows = 4096
    while rows > 64 and rows * row_bytes > target_bytes:
        rows //= 2
    while rows < 4096 and rows * chunk_row_bytes < 128 * 2**10 and 2 * rows * row_bytes <= max_bytes:
        rows *= 2
    return rows


@dataclass(frozen=True)
class Layout:
    """What arrays a store holds and how they are chunked."""

    kinds: tuple[str, ...]
    poolings: tuple[str, ...]
    layers: dict[str, list[int]]  # kind -> layer indices
    widths: dict[str, int]  # kind -> neurons per layer
    n_rows: int
    dtype: str
    block_rows: int
    chunk_cols: int

    @property
    def n_blocks(self) -> int:
        """How many row blocks (shards) the rows take; the last may be short."""
        return -(-self.n_rows // self.block_rows)

    def block_range(self, block: int) -> tuple[int, int]:
        """The rows of `block` as (start, stop), stop exclusive and at most `n_rows`."""
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)

    def array_keys(self) -> list[tuple[str, str, int]]:
        """Every array as (kind, pooling, layer): kinds, then poolings, then layers, each in the layout's order."""
        return [(k, p, layer) for k in self.kinds for p in self.poolings for layer in self.layers[k]]

    @property
    def row_bytes(self) -> int:
        """Stored bytes of one row across every array."""
        return sum(self.widths[k] for k, _, _ in self.array_keys()) * dtype_bytes(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """The layout as the manifest's "layout" holds it (lists, not tuples; fresh containers)."""
        return {
            "kinds": list(self.kinds),
            "poolings": list(self.poolings),
            "layers": {k: list(v) for k, v in self.layers.items()},
            "widths": dict(self.widths),
            "n_rows": self.n_rows,
            "dtype": self.dtype,
            "block_rows": self.block_rows,
            "chunk_cols": self.chunk_cols,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        """Read a manifest's layout, refusing names that could point outside the store (they build paths)."""
        try:
            kinds, poolings = list(d["kinds"]), list(d["poolings"])
            layers = {k: [int(x) for x in v] for k, v in d["layers"].items()}
            widths = {k: int(v) for k, v in d["widths"].items()}
            n_rows, dtype = int(d["n_rows"]), d["dtype"]
            block_rows, chunk_cols = int(d["block_rows"]), int(d["chunk_cols"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"manifest layout is malformed ({exc}); the store is damaged") from exc
        bad = [k for k in kinds if k not in KINDS] + [p for p in poolings if p not in POOLINGS]
        bad += [k for k in layers if k not in KINDS]
        if bad or any(x < 0 for v in layers.values() for x in v):
            raise IntegrityError(f"manifest layout names {bad or 'negative layers'}; refusing to open the store")
        return cls(
            kinds=tuple(kinds),
            poolings=tuple(poolings),
            layers=layers,
            widths=widths,
            n_rows=n_rows,
            dtype=dtype,
            block_rows=block_rows,
            chunk_cols=chunk_cols,
        )


def iter_blocks(layout: Layout, skip: Iterable[int] = ()) -> list[int]:
    """Every row block of `layout` not in `skip` (e.g. the committed ones), ascending."""
    done = set(skip)
    return [b for b in range(layout.n_blocks) if b not in done]
