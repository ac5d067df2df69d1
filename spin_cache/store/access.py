"""Locations: local paths and URLs go through fsspec (side files) and zarr (arrays) alike."""

from __future__ import annotations

from typing import Any

import fsspec
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from ..errors import IntegrityError


def _fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, root.rstrip("/")


class CountingStore(WrapperStore[Any]):
    """Wraps a zarr store and counts the bytes and requests its reads return (for benchmarks and sweeps)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.bytes_read = 0
        self.requests = 0

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        """The wrapped store's `get`, counting one request and the bytes it returns."""
        buf = await super().get(key, prototype, byte_range)
        self._count(buf)
        return buf

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        """The wrapped store's `get_partial_values`, counting one request per range and the bytes returned."""
        bufs = await super().get_partial_values(prototype, key_ranges)
        for buf in bufs:
            self._count(buf)
        return bufs

    def _count(self, buf: Any) -> None:
        self.requests += 1
        if buf is not None:
            self.bytes_read += len(buf)


class ChunkGuard(WrapperStore[Any]):
    """Wraps a zarr store and raises `IntegrityError` naming the chunk when a chunk of a complete store is missing:
    zarr reads a missing chunk as the fill value, so a deleted shard would otherwise read as zeros. Costs nothing:
    the missing key is seen in the answer to the read zarr makes anyway. Off (`strict` False) for stores still
    being written, whose uncommitted blocks are missing by design."""

    def __init__(self, store: Any, url: str) -> None:
        super().__init__(store)
        self.url = url
        self.strict = False

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        """The wrapped store's `get`; when `strict`, a missing chunk (a key with ``/c/``) raises IntegrityError."""
        buf = await super().get(key, prototype, byte_range)
        if buf is None and self.strict and "/c/" in key:
            raise IntegrityError(
                f"{self.url}: chunk {key} is missing; the store is damaged: run `spin-cache verify {self.url}`, "
                "then extract again with --overwrite"
            )
        return buf

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        """The wrapped store's `get_partial_values`; when `strict`, a missing chunk raises IntegrityError."""
        key_ranges = list(key_ranges)
        bufs = await super().get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, bufs, strict=True):
            if buf is None and self.strict and "/c/" in key:
                raise IntegrityError(f"{self.url}: chunk {key} is missing; the store is damaged")
        return bufs


def zarr_store(url: str, *, read_only: bool, storage_options: dict[str, Any] | None = None) -> Any:
    """The zarr store object for a local path or a URL."""
    if "://" not in str(url) or str(url).startswith("file://"):
        return LocalStore(str(url).removeprefix("file://"), read_only=read_only)
    return FsspecStore.from_url(str(url), storage_options=storage_options or None, read_only=read_only)


def array_stored_bytes(url: str, name: str, storage_options: dict[str, Any] | None = None) -> int:
    """Bytes on disk under the array `name` of the store at `url` (its metadata and chunks), listed, not read."""
    fs, root = _fs(url, storage_options)
    return int(fs.du(f"{root}/{name}", total=True))


def array_name(kind: str, pooling: str, layer: int) -> str:
    """The array's path in a store, e.g. ``ffn/mean/layer_03`` (layers zero-padded to two digits)."""
    return f"{kind}/{pooling}/layer_{layer:02d}"
