"""Encoding frame fields into store chunks, one row per inner chunk, in the reader workers.

Why here and not in zarr-python's writer: a one-row chunk's encoded bytes do not depend on where it lands,
so each reader worker compresses frames as soon as they are decoded (`FrameEncoding`, `FrameSink`) and leaves
the chunks in a spill file; the single writer then only copies byte ranges into shard files
(`stores.frames.shard_append.ShardAppender`). That keeps ingest near decode speed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import google_crc32c
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, ZstdCodec

from shardyard.errors import ConfigError
from shardyard.stores.frames.byte_ranges import ChunkRef, Piece
from shardyard.stores.frames.jpeg import DEFAULT_QUALITY, JpegCodec, check_frame_shape, decode_frame, encode_frame
from shardyard.stores.frames.jpeg import NAME as JPEG_NAME
from shardyard.stores.frames.names import DEFAULT_FRAME_CODEC, FRAME_CODECS
from shardyard.stores.frames.video import EncodedVideo, VideoCodec, VideoEncoder

__all__ = ["DEFAULT_FRAME_CODEC", "FRAME_CODECS", "ChunkCodec", "EncodedRows", "EncodedVideo", "FrameEncoding",
           "FrameSink", "frame_codec_args", "parse_frame_codecs"]

log = logging.getLogger(__name__)

# Bytes of encoded chunks a `FrameSink` gathers before one write to its spill file: one write per chunk (a
# few KB each for LIBERO's 128x128 frames) cost ~8 % of a reader worker's time in system calls.
SPILL_BATCH_BYTES = 1 << 20


# the names, with their help lines, live in `codec_names` (imported by the CLI without zarr)


def parse_frame_codecs(text: str) -> dict[str, str]:
    """`--frame-codec` text -> {"": default codec, field: codec}: one codec for every image field
    ("jpeg", "jpeg:90" with a JPEG quality, "video", "video:23" with an H.264 CRF, "video:23:8" with a CRF and
    a GOP in frames, "lz4", "zstd", "none"),
    then any `FIELD=CODEC` overrides, comma separated ("jpeg:90,obs.rgb.wrist=lz4"). Raises ConfigError
    naming the bad entry."""
    out: dict[str, str] = {"": DEFAULT_FRAME_CODEC}
    for i, item in enumerate(p.strip() for p in str(text).split(",")):
        field_name, _, codec = item.rpartition("=")
        if not codec or (i == 0) != (not field_name):
            raise ConfigError(f"--frame-codec {text!r}: expected CODEC[,FIELD=CODEC...], got {item!r}")
        name, _, quality = codec.partition(":")
        quality, _, gop = quality.partition(":") if name == "video" else (quality, "", "")
        top = 100 if name == "jpeg" else 51
        if name not in FRAME_CODECS or (quality and (name not in ("jpeg", "video") or not quality.isdigit()
                                                     or not int(name == "jpeg") <= int(quality) <= top)) \
                or (gop and not (gop.isdigit() and 1 <= int(gop) <= 600)):
            raise ConfigError(f"--frame-codec {text!r}: unknown codec {codec!r}; expected one of "
                              f"{', '.join(FRAME_CODECS)} (jpeg:QUALITY 1-100, video:CRF 0-51, "
                              "video:CRF:GOP with GOP 1-600 frames)")
        out[field_name] = codec
    return out


def frame_codec_args(codec: str, key: str, spec) -> dict[str, Any]:
    """`zarr.create_array` keyword arguments (serializer, compressors) of image field `key` (a `FieldSpec`)
    for one codec token of `parse_frame_codecs` other than video;
    a field JPEG cannot hold (not uint8 RGB/gray) falls back to lz4, with a warning."""
    name, _, quality = codec.partition(":")
    if name == "jpeg":
        why = check_frame_shape(spec.shape, spec.dtype)
        if why is None:
            return {"serializer": JpegCodec(quality=int(quality or DEFAULT_QUALITY)), "compressors": None}
        log.warning("field %s: %s; stored with lz4 instead", key, why)
        name = "lz4"
    if name == "lz4":
        return {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")}
    if name == "zstd":
        return {"compressors": ZstdCodec(level=3)}
    return {"compressors": None}


@dataclass(frozen=True)
class ChunkCodec:
    """Encoder of one inner chunk for an array's `sharding_indexed` inner codec chain (`bytes` then at most
    one of blosc / zstd, or the `shardyard_jpeg` array -> bytes codec alone). Picklable, so it can travel to
    reader processes."""

    name: str                      # "blosc" | "zstd" | "none" | "jpeg"
    config: tuple[tuple[str, Any], ...] = ()

    @property
    def lossy(self) -> bool:
        """True when decoding does not give the encoder's input back (JPEG)."""
        return self.name == "jpeg"

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
        if len(inner) == 1 and inner[0]["name"] == JPEG_NAME:
            return cls("jpeg", tuple(sorted(inner[0].get("configuration", {}).items())))
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
        if self.name == "jpeg":
            c = dict(self.config)
            quality, subsampling = int(c.get("quality", 85)), str(c.get("subsampling", "420"))
            return lambda row: encode_frame(row, quality, subsampling)
        codec = self._codec()
        if codec is None:
            return lambda row: row.tobytes()
        return lambda row: bytes(codec.encode(row))

    def decoder(self, row_shape: tuple[int, ...], dtype: np.dtype | str) -> Callable[[bytes], np.ndarray]:
        """`decode(chunk) -> row` of `row_shape` and `dtype`: the inverse of `encoder` (for a lossy codec, the
        stored frame, as every reader of the store decodes it)."""
        if self.name == "jpeg":
            channels = 3 if len(row_shape) == 3 and row_shape[2] == 3 else 1
            return lambda chunk: decode_frame(chunk, channels).reshape(row_shape)
        codec = self._codec()
        if codec is None:
            return lambda chunk: np.frombuffer(chunk, dtype=dtype).reshape(row_shape)
        return lambda chunk: np.frombuffer(bytes(codec.decode(chunk)), dtype=dtype).reshape(row_shape)

    def encode_rows(self, arr: np.ndarray) -> "EncodedRows":
        """Encode each row of `(T, *shape)` `arr` (any strides: a flipped view is copied row by row, in
        cache, rather than whole) as one inner chunk."""
        encode = self.encoder()
        chunks = [encode(np.ascontiguousarray(row)) for row in arr]
        return EncodedRows(chunks=chunks, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype),
                           crc32c=[google_crc32c.value(c) for c in chunks])


@dataclass(frozen=True)
class FrameEncoding:
    """How a reader worker turns one frame field into store chunks: the chunk codec, and the stats sample
    it keeps on the way (every `sample_every`-th step of the episode, every `pixel_stride`-th pixel in y
    and x; `sample_every=0` keeps none). For a lossy codec (JPEG) the sample is of the stored frames (the
    sampled chunks decoded again), so the stats equal those `shardyard stats` recomputes from the store.
    With `spill_dir` (a folder on the writer's machine) the chunks go
    to a spill file there as they are made, and only their offsets travel back to the writer, which
    copies them into shard files in the kernel (`ChunkRef`): no pickling of frame bytes through a pipe.
    Picklable; `sink(n)` serves `VideoReader.decode_each`."""

    codec: ChunkCodec | VideoCodec
    sample_every: int = 0
    pixel_stride: int = 1
    spill_dir: str | None = None

    def sink(self, num_rows: int) -> "FrameSink | VideoEncoder":
        """A `decode_each` callback for an episode of `num_rows` steps (`rows(row_shape)` ends it)."""
        if isinstance(self.codec, VideoCodec):
            return VideoEncoder(self.codec, num_rows, self.sample_every, self.pixel_stride, self.spill_dir)
        return FrameSink(self, num_rows)

    def encode_array(self, arr: np.ndarray) -> "EncodedRows | EncodedVideo":
        """`(T, H, W, C)` frames (any strides) -> `EncodedRows` (or `EncodedVideo`) with the stats sample."""
        sink = self.sink(len(arr))
        for t, row in enumerate(arr):
            sink(row, [t])
        return sink.rows(tuple(arr.shape[1:]), arr.dtype)


class FrameSink:
    """Callback `(frame, positions)` that encodes each distinct frame once, while it is in cache, places
    the chunk at every position it fills (in memory, or appended to a spill file), and keeps the
    pixel-subsampled stats sample. The crc32c of each chunk is taken here too, in the worker, while the
    chunk is in cache (`EncodedRows.crc32c`), so that `verify` can find a flipped byte inside a chunk."""

    def __init__(self, encoding: FrameEncoding, num_rows: int) -> None:
        self._encoding = encoding
        self._encode = encoding.codec.encoder()
        self._chunks: list[bytes | tuple[int, int] | None] = [None] * num_rows
        self._crc = [0] * num_rows
        self._sample: dict[int, np.ndarray] = {}
        self._spill: str | None = None
        self._fd: int | None = None
        self._end = 0
        self._pending: list[bytes] = []  # chunks not yet written to the spill file (`SPILL_BATCH_BYTES`)
        self._pending_bytes = 0
        if encoding.spill_dir is not None and num_rows:
            self._fd, self._spill = tempfile.mkstemp(suffix=".spill", dir=encoding.spill_dir)

    def __call__(self, frame: np.ndarray, positions: list[int]) -> None:
        """Encode `frame (H, W, C)` once and place it at each of `positions` (steps of the episode)."""
        frame = np.ascontiguousarray(frame)  # a decoder's rows may be padded
        chunk = self._encode(frame)
        crc = google_crc32c.value(chunk)
        if self._fd is not None:
            ref: bytes | tuple[int, int] = (self._end, len(chunk))
            self._end += len(chunk)
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes >= SPILL_BATCH_BYTES:
                self._flush()
        else:
            ref = chunk
        every, ps = self._encoding.sample_every, self._encoding.pixel_stride
        stored = None
        for pos in positions:
            self._chunks[pos] = ref
            self._crc[pos] = crc
            if every and pos % every == 0:
                if stored is None:  # a lossy codec's stats describe the stored frames, as `shardyard stats`
                    stored = self._stored(frame, chunk)  # recomputes them from the store
                self._sample[pos] = stored[::ps, ::ps].copy()

    def _flush(self) -> None:
        """Append the gathered chunks to the spill file, in one write where the kernel takes it all."""
        view = memoryview(b"".join(self._pending))
        while view:
            view = view[os.write(self._fd, view):]
        self._pending.clear()
        self._pending_bytes = 0

    def _stored(self, frame: np.ndarray, chunk: bytes) -> np.ndarray:
        """The frame as the store will give it back: `frame` itself, or the decoded chunk (lossy codec)."""
        codec = self._encoding.codec
        if not codec.lossy:
            return frame
        return codec.decoder(frame.shape, frame.dtype)(chunk)

    def rows(self, row_shape: tuple[int, ...], dtype: np.dtype | str = np.uint8) -> "EncodedRows":
        """The encoded rows `(num_rows, *row_shape)`; raises ValueError if a position was never filled."""
        if self._fd is not None:
            try:
                self._flush()
            finally:
                os.close(self._fd)
                self._fd = None
        missing = [i for i, c in enumerate(self._chunks) if c is None]
        if missing:
            if self._spill:
                Path(self._spill).unlink(missing_ok=True)
            raise ValueError(f"{len(missing)} of {len(self._chunks)} rows were not decoded (first: {missing[0]})")
        sample = np.stack([self._sample[k] for k in sorted(self._sample)]) if self._sample else None
        return EncodedRows(chunks=list(self._chunks), shape=(len(self._chunks),) + tuple(row_shape),  # type: ignore[arg-type]
                           dtype=np.dtype(dtype), sample=sample, spill=self._spill, crc32c=self._crc)


@dataclass
class EncodedRows:
    """Rows of one field already encoded as inner chunks; quacks like an array for schema checks
    (`shape`, `dtype`, `ndim`, `len`). Each chunk is its bytes, or `(offset, length)` in the file
    `spill`. `sample` is the stats sample kept while encoding (see `FrameEncoding`); the worker turns it
    into `stats_part`, an opaque JSON-able dict that the writer stores per episode for the stats pass
    (`stores/stats`, `sampled_frames_part`). `crc32c` is each chunk's crc32c (Castagnoli, as zarr's
    `crc32c` codec), taken where the chunk was encoded; None when the maker did not take it (`checksums`
    takes it then)."""

    chunks: list[bytes] | list[tuple[int, int]]
    shape: tuple[int, ...]
    dtype: np.dtype
    sample: np.ndarray | None = None
    stats_part: dict[str, Any] | None = None
    spill: str | None = None
    crc32c: list[int] | None = None

    @property
    def ndim(self) -> int:
        """Dimensions, the leading T included."""
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

    def checksums(self, fd: int | None) -> np.ndarray:
        """`(T,) uint32` crc32c of each chunk: the recorded ones, else computed from the chunks (`fd` is the
        spill file opened for reading, if any)."""
        if self.crc32c is not None:
            return np.asarray(self.crc32c, dtype=np.uint32)
        if self.spill is None:
            return np.array([google_crc32c.value(c) for c in self.chunks], dtype=np.uint32)
        return np.array([google_crc32c.value(os.pread(fd, n, o)) for o, n in self.chunks],  # type: ignore[arg-type, misc]
                        dtype=np.uint32)
