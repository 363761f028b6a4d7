"""Encoding frame fields into store chunks, one row per inner chunk, in the reader workers.

Why here and not in zarr-python's writer: a one-row chunk's encoded bytes do not depend on where it lands,
so each reader worker compresses frames as soon as they are decoded (`FrameEncoding`, `FrameSink`) and leaves
the chunks in a spill file; the single writer then only copies byte ranges into shard files
(`stores.zarr_shard.ShardAppender`). That keeps ingest near decode speed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numcodecs
import numpy as np

from shardyard.stores.zarr_shard import ChunkRef, Piece

__all__ = ["ChunkCodec", "EncodedRows", "FrameEncoding", "FrameSink"]


@dataclass(frozen=True)
class ChunkCodec:
    """Encoder of one inner chunk for an array's `sharding_indexed` inner codec chain (`bytes` then at most
    one of blosc / zstd). Picklable, so it can travel to reader processes."""

    name: str                      # "blosc" | "zstd" | "none"
    config: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def for_array(cls, meta: dict[str, Any]) -> "ChunkCodec | None":
        """The codec of an array written with one row per inner chunk, or None if it is not such an array."""
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        if conf["chunk_shape"][0] != 1 or tuple(conf["chunk_shape"][1:]) != tuple(meta["shape"][1:]):
            return None
        if [c["name"] for c in conf.get("index_codecs", [])] != ["bytes", "crc32c"]:
            return None
        if conf.get("index_location", "end") != "end":
            return None
        inner = conf["codecs"]
        if not inner or inner[0]["name"] != "bytes" or len(inner) > 2:
            return None
        if len(inner) == 1:
            return cls("none")
        name, c = inner[1]["name"], inner[1].get("configuration", {})
        if name not in ("blosc", "zstd"):
            return None
        return cls(name, tuple(sorted(c.items())))

    def _codec(self):
        c = dict(self.config)
        if self.name == "blosc":
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[c.get("shuffle", "noshuffle")]
            return numcodecs.Blosc(cname=c.get("cname", "lz4"), clevel=c.get("clevel", 5), shuffle=shuffle,
                                   blocksize=c.get("blocksize", 0))
        if self.name == "zstd":
            return numcodecs.Zstd(level=c.get("level", 0))
        return None

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """`encode(row) -> bytes` for one C-contiguous row (the inner chunk's bytes)."""
        codec = self._codec()
        if codec is None:
            return lambda row: row.tobytes()
        return lambda row: bytes(codec.encode(row))

    def encode_rows(self, arr: np.ndarray) -> "EncodedRows":
        """Encode each row of `(T, *shape)` `arr` (any strides: a flipped view is copied row by row, in
        cache, rather than whole) as one inner chunk."""
        encode = self.encoder()
        chunks = [encode(np.ascontiguousarray(row)) for row in arr]
        return EncodedRows(chunks=chunks, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype))


@dataclass(frozen=True)
class FrameEncoding:
    """How a reader worker turns one frame field into store chunks: the chunk codec, and the stats sample
    it keeps on the way (every `sample_every`-th step of the episode, every `pixel_stride`-th pixel in y
    and x; `sample_every=0` keeps none). With `spill_dir` (a folder on the writer's machine) the chunks go
    to a spill file there as they are made, and only their offsets travel back to the writer, which
    copies them into shard files in the kernel (`ChunkRef`): no pickling of frame bytes through a pipe.
    Picklable; `sink(n)` serves `VideoReader.decode_each`."""

    codec: ChunkCodec
    sample_every: int = 0
    pixel_stride: int = 1
    spill_dir: str | None = None

    def sink(self, num_rows: int) -> "FrameSink":
        """A `decode_each` callback for an episode of `num_rows` steps."""
        return FrameSink(self, num_rows)

    def encode_array(self, arr: np.ndarray) -> "EncodedRows":
        """`(T, H, W, C)` frames (any strides) -> `EncodedRows` with the stats sample."""
        sink = self.sink(len(arr))
        for t, row in enumerate(arr):
            sink(row, [t])
        return sink.rows(tuple(arr.shape[1:]), arr.dtype)


class FrameSink:
    """Callback `(frame, positions)` that encodes each distinct frame once, while it is in cache, places
    the chunk at every position it fills (in memory, or appended to a spill file), and keeps the
    pixel-subsampled stats sample."""

    def __init__(self, encoding: FrameEncoding, num_rows: int) -> None:
        self._encoding = encoding
        self._encode = encoding.codec.encoder()
        self._chunks: list[bytes | tuple[int, int] | None] = [None] * num_rows
        self._sample: dict[int, np.ndarray] = {}
        self._spill: str | None = None
        self._fd: int | None = None
        self._end = 0
        if encoding.spill_dir is not None and num_rows:
            self._fd, self._spill = tempfile.mkstemp(suffix=".spill", dir=encoding.spill_dir)

    def __call__(self, frame: np.ndarray, positions: list[int]) -> None:
        frame = np.ascontiguousarray(frame)  # a decoder's rows may be padded
        chunk = self._encode(frame)
        if self._fd is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
            ref: bytes | tuple[int, int] = (self._end, len(chunk))
            self._end += len(chunk)
        else:
            ref = chunk
        every, ps = self._encoding.sample_every, self._encoding.pixel_stride
        for pos in positions:
            self._chunks[pos] = ref
            if every and pos % every == 0:
                self._sample[pos] = frame[::ps, ::ps].copy()

    def rows(self, row_shape: tuple[int, ...], dtype: np.dtype | str = np.uint8) -> "EncodedRows":
        """The encoded rows `(num_rows, *row_shape)`; raises ValueError if a position was never filled."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        missing = [i for i, c in enumerate(self._chunks) if c is None]
        if missing:
            if self._spill:
                Path(self._spill).unlink(missing_ok=True)
            raise ValueError(f"{len(missing)} of {len(self._chunks)} rows were not decoded (first: {missing[0]})")
        sample = np.stack([self._sample[k] for k in sorted(self._sample)]) if self._sample else None
        return EncodedRows(chunks=list(self._chunks), shape=(len(self._chunks),) + tuple(row_shape),  # type: ignore[arg-type]
                           dtype=np.dtype(dtype), sample=sample, spill=self._spill)


@dataclass
class EncodedRows:
    """Rows of one field already encoded as inner chunks; quacks like an array for schema checks
    (`shape`, `dtype`, `ndim`, `len`). Each chunk is its bytes, or `(offset, length)` in the file
    `spill`. `sample` is the stats sample kept while encoding (see `FrameEncoding`); the worker turns it
    into `stats_part`, an opaque JSON-able dict that the writer stores per episode for the stats pass
    (`stores/stats`, `sampled_frames_part`)."""

    chunks: list[bytes] | list[tuple[int, int]]
    shape: tuple[int, ...]
    dtype: np.dtype
    sample: np.ndarray | None = None
    stats_part: dict[str, Any] | None = None
    spill: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Encoded size in bytes."""
        return sum(c[1] if isinstance(c, tuple) else len(c) for c in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def pieces(self, fd: int | None) -> list[Piece]:
        """The chunks for `ShardAppender.append`; `fd` is the spill file opened for reading (if any)."""
        if self.spill is None:
            return list(self.chunks)  # type: ignore[arg-type]
        return [ChunkRef(fd, o, n) for o, n in self.chunks]  # type: ignore[arg-type, misc]
