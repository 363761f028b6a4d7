"""Writing sharded zarr v3 arrays from pre-encoded one-row chunks.

Why not zarr-python's writer: with one frame per inner chunk, a chunk's encoded bytes do not depend on
where it lands, so reader workers can compress frames in parallel, each as soon as it is decoded
(`FrameEncoding`, `FrameSink`), and leave the compressed chunks in a spill file; the single writer then only
copies byte ranges into shard files (`ShardAppender`, `ChunkRef`: `copy_file_range`, in the kernel). That
keeps ingest near decode speed. The files are the `sharding_indexed` codec's format exactly (chunks, then the
`(n, 2) uint64` offset/length index and its crc32c, index at the end), so zarr-python reads them, and each
shard file is replaced whole (temp + rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numcodecs
import numpy as np

_EMPTY = np.uint64(2**64 - 1)


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


@dataclass(frozen=True)
class ChunkRef:
    """The bytes of one encoded chunk, `length` at `offset` of an open file descriptor `fd` (a reader
    worker's spill file, or a shard file): appended by an in-kernel copy, never through Python memory."""

    fd: int
    offset: int
    length: int


Piece = Union[bytes, ChunkRef]


def _piece_len(p: Piece) -> int:
    return p.length if isinstance(p, ChunkRef) else len(p)


def _copy_range(src: int, dst: int, offset: int, length: int, dst_offset: int) -> None:
    """Copy `length` bytes at `offset` of `src` to `dst_offset` of `dst` (`copy_file_range`, with a
    read/write fallback where the kernel or file system cannot)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done, dst_offset + done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        pass
    while done < length:
        buf = os.pread(src, min(length - done, 8 << 20), offset + done)
        if not buf:
            raise OSError(f"short read: {length - done} bytes missing at offset {offset + done} of fd {src}")
        os.pwrite(dst, buf, dst_offset + done)
        done += len(buf)


def _write_pieces(fd: int, pieces: Sequence[Piece]) -> int:
    """Write `pieces` back to back from offset 0 of `fd`; runs of adjacent refs into one file become one
    copy, runs of bytes one `pwritev`. Returns the bytes written."""
    out = 0
    i = 0
    while i < len(pieces):
        p = pieces[i]
        if isinstance(p, ChunkRef):
            j, end = i + 1, p.offset + p.length
            while j < len(pieces) and isinstance(pieces[j], ChunkRef) and pieces[j].fd == p.fd \
                    and pieces[j].offset == end:
                end += pieces[j].length
                j += 1
            _copy_range(p.fd, fd, p.offset, end - p.offset, out)
            out += end - p.offset
        else:
            j = i
            while j < len(pieces) and j - i < 1024 and not isinstance(pieces[j], ChunkRef):
                j += 1
            bufs = list(pieces[i:j])
            want = sum(map(len, bufs))
            n = os.pwritev(fd, bufs, out)
            if n != want:  # a short vectored write: finish it piece by piece
                os.pwrite(fd, b"".join(bufs)[n:], out + n)
            out += want
        i = j
    return out


@dataclass
class ShardAppender:
    """Appends encoded one-row chunks to a sharded array directory, rewriting only the shard files touched.

    Each touched shard file is written whole to a temp file and renamed over the old one; the partial last
    shard's committed chunks are carried over by an in-kernel copy from the previous file (held open), so
    appending costs one copy of the new bytes. `load(n_rows)` (on open or resume) indexes the committed rows
    of the partial last shard; rows past `n_rows` in it (a killed episode) are dropped. The array's
    `zarr.json` shape is the caller's business. `close()` releases the open shard file.
    """

    array_dir: Path
    shard_rows: int
    ndim: int
    n_rows: int = 0
    _tail: list[Piece] = field(default_factory=list)
    _tail_fd: int | None = None
    _made_dirs: set[Path] = field(default_factory=set)

    def _shard_path(self, s: int) -> Path:
        return self.array_dir.joinpath("c", str(s), *["0"] * (self.ndim - 1))

    def _set_tail(self, fd: int | None, tail: list[Piece]) -> None:
        if self._tail_fd is not None and self._tail_fd != fd:
            os.close(self._tail_fd)
        self._tail_fd, self._tail = fd, tail

    def close(self) -> None:
        self._set_tail(None, [])

    def load(self, n_rows: int) -> None:
        """Position at `n_rows` committed rows, indexing the partial last shard's chunks (its file stays open
        until the next append replaces it). Raises ValueError if a committed chunk is missing."""
        self.n_rows = n_rows
        s, k = divmod(n_rows, self.shard_rows)
        self._set_tail(None, [])
        if k == 0:
            return
        fd = os.open(self._shard_path(s), os.O_RDONLY)
        nbytes = 16 * self.shard_rows + 4
        raw = os.pread(fd, nbytes, os.fstat(fd).st_size - nbytes)
        idx = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.shard_rows, 2)
        if np.any(idx[:k, 0] == _EMPTY):
            os.close(fd)
            raise ValueError(f"shard {self._shard_path(s)} lacks a committed chunk")
        self._set_tail(fd, [ChunkRef(fd, int(o), int(n)) for o, n in idx[:k]])

    def drop_shards_after(self, n_rows: int) -> None:
        """Delete shard files that lie wholly past row `n_rows` (left by a group killed before its commit,
        and invisible to zarr's shape-based truncation when the shape was not yet grown)."""
        s, k = divmod(n_rows, self.shard_rows)
        first_stale = s + (1 if k else 0)
        folder = self.array_dir / "c"
        for d in folder.iterdir() if folder.is_dir() else []:
            if d.name.isdigit() and int(d.name) >= first_stale:
                if d.is_dir():
                    shutil.rmtree(d)
                else:  # a 1-D array's shard is the file c/<s> itself
                    d.unlink()
        self._made_dirs.clear()

    def append(self, chunks: Sequence[Piece]) -> None:
        """Append rows (chunk bytes, or `ChunkRef`s to them); each shard file they touch is written whole,
        by temp file and rename."""
        import google_crc32c

        pos = 0
        while pos < len(chunks):
            s = self.n_rows // self.shard_rows
            take = list(chunks[pos:pos + self.shard_rows - len(self._tail)])
            rows = self._tail + take
            lengths = np.array([_piece_len(c) for c in rows], dtype=np.uint64)
            idx = np.full((self.shard_rows, 2), _EMPTY, dtype="<u8")
            idx[:len(rows), 1] = lengths
            idx[:len(rows), 0] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
            index = idx.tobytes()
            crc = np.uint32(google_crc32c.value(index)).tobytes()
            path = self._shard_path(s)
            if path.parent not in self._made_dirs:  # a mkdir costs ~0.7 ms here, even of an existing folder
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                end = _write_pieces(fd, rows)
                os.pwrite(fd, index + crc, end)
                os.replace(tmp, path)
            except BaseException:
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
                raise
            pos += len(take)
            self.n_rows += len(take)
            if len(rows) == self.shard_rows:
                os.close(fd)
                self._set_tail(None, [])
            else:  # the new file (now at `path`) holds the tail
                self._set_tail(fd, [ChunkRef(fd, int(o), int(n)) for o, n in idx[:len(rows)]])
