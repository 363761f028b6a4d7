"""The `FrameCodec` protocol: what a frame codec (`jpeg`, `video`, `lz4`, `zstd`, `none`, `png`) tells the rest of
shardyard, and `ChunkCodec`, the base of the codecs that store one frame per inner chunk of a sharded zarr array.

A codec class parses its own `--frame-codec` token (`"jpeg:90"`: the name, then its arguments), says whether it
is lossy, and gives either its zarr settings and a per-chunk encoder and decoder (layout `CHUNKS`) or says that
its frames live in one file per episode (layout `VIDEO`, `stores.frames.video`). An instance is one setting
(`JpegFrames(quality=90)`), frozen, comparable and picklable, so it travels to reader workers and two fields
with equal codecs hold interchangeable chunks. The classes are listed once, by name, in
`stores.frames.registry.FRAME_CODECS`; nothing else maps a codec name to behaviour. The shape follows MosaicML
Streaming's `base/format/mds/encodings.py`: one class per encoding, one dict.

The zarr v3 side of an image codec (JPEG, PNG) is in `stores.frames.zarr_codec`, built on first use: this module
and the codec modules import neither zarr nor numcodecs, so the CLI builds its `--frame-codec` help from
`FRAME_CODECS` without loading them (0.5 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import google_crc32c
import numpy as np

from shardyard.stores.frames.byte_ranges import ChunkRef, Piece

if TYPE_CHECKING:
    from typing import Self

CHUNKS = "chunks"  # one frame per inner chunk of a sharded zarr array
VIDEO = "video"    # one MP4 per episode beside a zarr frame index (`stores.frames.video`)

__all__ = ["CHUNKS", "VIDEO", "ChunkCodec", "EncodedRows", "FrameCodec",
           "check_image_shape", "one_row_chain"]


class FrameCodec(Protocol):
    """What every frame codec class provides (see the module docstring).

    `name` is its `FRAME_CODECS` key and the first part of its token; `help` its line in `--frame-codec` help;
    `lossy` True when decoding does not give the encoder's input back; `layout` `CHUNKS` or `VIDEO`.
    `parse(args)` builds the codec from the text after `name:` (`""` when there is none) and raises ValueError
    saying what it expects; `token()` is the text that parses back to an equal codec. `why_not(shape, dtype)`
    says why a field of per-step `shape` and `dtype` cannot be held (None when it can). `from_meta(meta)` is
    the codec a stored field was written with (`meta` its `zarr.json` content), or None when it is not this
    codec's. For layout `CHUNKS` only: `zarr_args()` (the `zarr.create_array` keyword arguments: serializer,
    compressors), `encoder()` (`encode(row) -> bytes`) and `decoder(row_shape, dtype)`
    (`decode(chunk, out=None) -> row`)."""

    name: ClassVar[str]
    help: ClassVar[str]
    lossy: ClassVar[bool]
    layout: ClassVar[str]

    @classmethod
    def parse(cls, args: str) -> "FrameCodec":
        """The codec of the token's arguments `args`; raises ValueError saying what they should be."""

    def token(self) -> str:
        """The token that parses back to this codec."""

    def why_not(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """Why a field of per-step `shape` and `dtype` cannot be held; None when it can."""

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "FrameCodec | None":
        """The codec a stored field (`zarr.json` content `meta`) was written with, if it is this codec."""


def check_image_shape(shape: tuple[int, ...], dtype: str, what: str) -> str | None:
    """Why a frame of per-step `shape` and `dtype` is not a uint8 `(H, W, 3)`, `(H, W, 1)` or `(H, W)` image
    (None when it is), naming the codec `what`."""
    if np.dtype(dtype) != np.uint8:
        return f"{what} holds uint8 frames, not {dtype}"
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
        return None
    return f"{what} holds (H, W, 3), (H, W, 1) or (H, W) frames, not {shape}"


def one_row_chain(meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The inner codec chain of an array written with one row per inner chunk (sharded along axis 0, inner
    chunks spanning the other axes whole, a crc32c index at the end: the layout of every frame field), or
    None when `meta` (its `zarr.json` content) is not such an array."""
    codecs = meta.get("codecs", [])
    if meta.get("node_type", "array") != "array" or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0]["configuration"]
    if conf["chunk_shape"][0] != 1 or tuple(conf["chunk_shape"][1:]) != tuple(meta["shape"][1:]):
        return None
    if [c["name"] for c in conf.get("index_codecs", [])] != ["bytes", "crc32c"]:
        return None
    if conf.get("index_location", "end") != "end":
        return None
    return conf["codecs"]


class ChunkCodec:
    """Base of the codecs of layout `CHUNKS`: each row (frame) is one inner chunk, encoded alone, so a reader
    worker can encode it and the writer only copies bytes (`stores.frames.encoding`). A subclass is a frozen
    dataclass whose fields are its settings, and defines `from_inner` (the codec of an inner codec chain, or
    None) and either `buffer_codec` (a numcodecs codec over the row's bytes; None: stored raw) or, for an image
    codec, `encoder` and `decoder` (with `decodes_into` True when `decode(chunk, out=row)` fills `row`)."""

    layout: ClassVar[str] = CHUNKS
    lossy: ClassVar[bool] = False
    decodes_into: ClassVar[bool] = False   # `decoder(...)(chunk, out=row)` writes the row itself
    stores_raw: ClassVar[bool] = False     # a chunk is the row's bytes as they are (`ShardReader.pread_rows`)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Self | None":
        """The codec of a stored array (`zarr.json` content `meta`) with one row per inner chunk, or None."""
        inner = one_row_chain(meta)
        return None if inner is None else cls.from_inner(inner)

    @classmethod
    def from_inner(cls, inner: list[dict[str, Any]]) -> "Self | None":
        """The codec whose inner chunks the `sharding_indexed` inner codec chain `inner` writes, or None."""
        raise NotImplementedError

    def why_not(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """Why this codec cannot hold a field of per-step `shape` and `dtype`: a byte codec holds any."""
        return None

    def buffer_codec(self) -> Any:
        """The numcodecs codec of a chunk's bytes (any number of rows), or None when they are stored raw."""
        return None

    def buffer_decoder(self) -> Callable[[bytes], Any] | None:
        """`decode(chunk) -> bytes-like` of the rows in a chunk, whatever their number (for arrays with many
        rows per chunk too), or None for an image codec (use `decoder`)."""
        codec = self.buffer_codec()
        return (lambda chunk: chunk) if codec is None else codec.decode

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """`encode(row) -> bytes` for one C-contiguous row (the inner chunk's bytes)."""
        codec = self.buffer_codec()
        if codec is None:
            return lambda row: row.tobytes()
        return lambda row: bytes(codec.encode(row))

    def decoder(self, row_shape: tuple[int, ...], dtype: np.dtype | str) -> Callable[..., np.ndarray]:
        """`decode(chunk, out=None) -> row` of `row_shape` and `dtype`: the inverse of `encoder` (for a lossy
        codec, the stored frame, as every reader of the store decodes it). Raises ValueError (or the codec's
        own error) for bytes that are not such a row."""
        raw = self.buffer_decoder()

        def decode(chunk: bytes, out: np.ndarray | None = None) -> np.ndarray:
            row = np.frombuffer(raw(chunk), dtype=dtype).reshape(row_shape)
            if out is not None:
                out[...] = row
                return out
            return row
        return decode

    def encode_rows(self, arr: np.ndarray) -> "EncodedRows":
        """Encode each row of `(T, *shape)` `arr` (any strides: a flipped view is copied row by row, in
        cache, rather than whole) as one inner chunk, with each chunk's crc32c."""
        encode = self.encoder()
        chunks = [encode(np.ascontiguousarray(row)) for row in arr]
        return EncodedRows(chunks=chunks, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype),
                           crc32c=[google_crc32c.value(c) for c in chunks])


def bytes_then(inner: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The codecs after a leading little-endian `bytes` codec in an inner chain (`[]` for `bytes` alone), or
    None when the chain does not start so or holds more than one codec after it."""
    if not inner or inner[0].get("name") != "bytes" or len(inner) > 2:
        return None
    if (inner[0].get("configuration") or {}).get("endian", "little") not in ("little", None):
        return None
    return inner[1:]


def blosc_shuffle(name: str) -> int:
    """The numcodecs number of a zarr v3 blosc `shuffle` name."""
    import numcodecs  # here, not at the top: the CLI lists the codecs without loading numcodecs or zarr

    return {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[name]


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
