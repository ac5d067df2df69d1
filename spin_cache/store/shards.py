"""Arrays and shards: array creation, and the writer's own shard encoder (byte for byte what zarr writes)."""

from __future__ import annotations

from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .layout import compressor_config


def create_array(
    group: zarr.Group,
    name: str,
    *,
    shape: tuple[int, int],
    block_rows: int,
    chunk_cols: int,
    dtype: str,
    attributes: dict[str, Any],
) -> zarr.Array[Any]:
    """A (rows, neurons) array sharded by row block, inner chunks of `chunk_cols` neurons, each chunk
    compressed and checksummed (crc32c), so damage is detected on read."""
    comp = compressor_config(dtype)
    is_bf16 = dtype == "bfloat16"
    inner = max(1, min(chunk_cols, shape[1]))
    return group.create_array(
        name,
        shape=shape,
        shards=(block_rows, -(-shape[1] // inner) * inner),  # a whole number of inner chunks
        chunks=(block_rows, inner),
        # bfloat16 has no Zarr v3 data type yet: stored as its raw 16 bits, said in the attributes.
        dtype="uint16" if is_bf16 else dtype,
        compressors=[
            BloscCodec(
                cname=comp["cname"],
                clevel=comp["clevel"],
                shuffle=comp["shuffle"],
                typesize=comp["typesize"],
                blocksize=comp["blocksize"],
            ),
            Crc32cCodec(),
        ],
        fill_value=0,
        attributes=attributes | ({"encoding": "bfloat16-bits"} if is_bf16 else {}),
        overwrite=True,
    )


class RowShardEncoder:
    """Encodes one row block of an array into the bytes of its shard, exactly as zarr's sharding codec lays them
    out: every inner chunk through bytes -> Blosc -> crc32c, then the chunk index (offset, length per chunk)
    with its crc32c, at the end. zarr-python spends Python time (holding the GIL) on every inner chunk, and
    extraction writes hundreds of inner chunks per block on a background thread that shares the cores with the
    model, so the writer encodes whole shards itself (Blosc and crc32c in C, without the GIL; BENCHMARKS.md,
    "Writing: the writer's core"). Reading stays plain zarr; a test checks the bytes equal zarr's own."""

    def __init__(self, shard_shape: tuple[int, int], inner_cols: int, dtype: np.dtype, blosc: BloscCodec) -> None:
        import numcodecs

        self.shard_shape = shard_shape
        self.inner_cols = inner_cols
        self.dtype = np.dtype(dtype).newbyteorder("<")  # the bytes codec is little endian
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}
        shuffle["bitshuffle"] = numcodecs.Blosc.BITSHUFFLE
        self.blosc = numcodecs.Blosc(
            cname=blosc.cname.value,
            clevel=blosc.clevel,
            shuffle=shuffle[blosc.shuffle.value],
            blocksize=blosc.blocksize,
            typesize=blosc.typesize,
        )

    @classmethod
    def for_array(cls, array: zarr.Array[Any]) -> RowShardEncoder | None:
        """An encoder for arrays laid out as `create_array` makes them (one shard spans every column, little
        endian, Blosc + crc32c, index with crc32c at the end, fill value 0); None for any other layout."""
        from zarr.codecs import BytesCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        meta: Any = array.metadata  # v3 metadata (zarr's types span v2 and v3)
        codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or array.ndim != 2:
            return None
        sharding: Any = codecs[0]
        inner = [type(c) for c in sharding.codecs]
        shard_shape = tuple(meta.chunk_grid.chunk_shape)
        chunk_rows, inner_cols = sharding.chunk_shape
        if (
            inner != [BytesCodec, BloscCodec, Crc32cCodec]
            or [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec]
            or sharding.index_location != ShardingCodecIndexLocation.end
            or getattr(sharding.codecs[0].endian, "value", "little") != "little"
            or chunk_rows != shard_shape[0]
            or shard_shape[1] < array.shape[1]
            or shard_shape[1] % inner_cols
            or float(meta.fill_value) != 0
        ):
            return None
        return cls((int(shard_shape[0]), int(shard_shape[1])), int(inner_cols), array.dtype, sharding.codecs[1])

    def encode(self, values: np.ndarray) -> bytes:
        """The shard of a block whose rows are `values` (a short last block is padded with the fill value, as
        zarr stores edge chunks whole)."""
        return b"".join(self.encode_parts(values))

    def encode_parts(self, values: np.ndarray, row_index: np.ndarray | None = None) -> list[bytes]:
        """The shard's bytes as consecutive pieces, to be written one after another (joining them would copy
        the whole shard once more). With `row_index`, the shard's rows are `values[row_index]`."""
        rows, cols = self.shard_shape
        if values.shape != (rows, cols):
            padded = np.zeros((rows, cols), dtype=self.dtype)
            padded[: values.shape[0], : values.shape[1]] = values if row_index is None else values[row_index]
            values, row_index = padded, None
        n_chunks = cols // self.inner_cols
        index = np.full((1, n_chunks, 2), 2**64 - 1, dtype="<u8")  # all ones: chunk absent (= fill value)
        parts: list[bytes] = []
        offset = 0
        for j in range(n_chunks):
            columns = values[:, j * self.inner_cols : (j + 1) * self.inner_cols]
            # np.take of whole rows of the column view: cheaper than values[row_index, columns] (BENCHMARKS.md)
            picked = columns if row_index is None else np.take(columns, row_index, axis=0)
            chunk = np.ascontiguousarray(picked, dtype=self.dtype)
            compressed = self.blosc.encode(chunk)
            # Like zarr, a chunk equal to the fill value (0) is not stored; only one that compressed to under an
            # eighth can be (all zeros compress to a few bytes), so only such are tested.
            if len(compressed) <= chunk.nbytes // 8 and self._all_zero(chunk):
                continue
            parts += [compressed, np.uint32(google_crc32c.value(compressed)).tobytes()]
            index[0, j] = (offset, len(compressed) + 4)
            offset += len(compressed) + 4
        index_bytes = index.tobytes()
        return [*parts, index_bytes, np.uint32(google_crc32c.value(index_bytes)).tobytes()]

    @staticmethod
    def _all_zero(chunk: np.ndarray) -> bool:
        """Every bit zero, as zarr 3.1 compares a chunk with the fill value (bit for bit: a chunk of -0.0 is
        stored); tested on 64-bit words, a quarter as many values as `not chunk.any()` compares on float16."""
        flat = chunk.reshape(-1)
        return not (flat.view(np.uint8) if flat.nbytes % 8 else flat.view("<u8")).any()
