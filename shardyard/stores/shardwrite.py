"""Writing sharded zarr v3 arrays from pre-encoded one-row chunks.

Why not zarr-python's writer: with one frame per inner chunk, a chunk's encoded bytes do not depend on
where it lands, so reader workers can compress frames in parallel, each as soon as it is decoded
(`FrameEncoding`, `FrameSink`), and leave the compressed chunks in a spill file; the single writer then only
copies byte ranges into shard files (`ShardAppender`, `ChunkRef`: `copy_file_range`, in the kernel). That
keeps ingest near decode speed. The files are the `sharding_indexed` codec's format exactly (chunks, then the
`(n, 2) uint64` offset/length index and its crc32c, index at the end), so zarr-python reads them; a shard
file is only appended to (see `ShardAppender`).
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


@dataclass(frozen=True)
class ChunkRef:
    """The bytes of one encoded chunk, `length` at `offset` of an open file descriptor `fd` (a reader
    worker's spill file): appended by an in-kernel copy, never through Python memory."""

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


def _write_pieces(fd: int, pieces: Sequence[Piece], start: int = 0) -> int:
    """Write `pieces` back to back from offset `start` of `fd`; runs of adjacent refs into one file become
    one copy, runs of bytes one `pwritev`. Returns the bytes written."""
    out = start
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
    return out - start


@dataclass
class ShardAppender:
    """Appends encoded one-row chunks to a sharded array directory.

    A shard file is only ever appended to: new chunks go after its current end, then a new index (with its
    crc32c) covering every chunk so far, so the file always ends with a valid index for zarr, and bytes
    already written are never rewritten (the old index stays behind as a few KiB of dead space). No temp
    file and rename: replacing a file on ext4 flushes it to disk (auto_da_alloc), which cost more than the
    ingest's own work. A kill mid-append leaves rows past the committed ones; `load(n_rows, shard_bytes)`
    cuts the partial last shard back to its committed size (which the writer's commit log records,
    `shard_bytes`), and the writer deletes shard files past it (`drop_shards_after`). The array's
    `zarr.json` shape is the caller's business.
    """

    array_dir: Path
    shard_rows: int
    ndim: int
    n_rows: int = 0
    _index: list[tuple[int, int]] = field(default_factory=list)  # (offset, nbytes) in the partial last shard
    _size: int = 0  # bytes in the partial last shard's file, its index included (0: no partial shard)
    _made_dirs: set[Path] = field(default_factory=set)

    def _shard_path(self, s: int) -> Path:
        return self.array_dir.joinpath("c", str(s), *["0"] * (self.ndim - 1))

    @property
    def _index_nbytes(self) -> int:
        return 16 * self.shard_rows + 4

    @property
    def shard_bytes(self) -> int:
        """Size of the partial last shard's file (0 when every shard is full): for the commit log."""
        return self._size

    def load(self, n_rows: int, shard_bytes: int | None = None) -> None:
        """Position at `n_rows` committed rows and index the partial last shard's chunks. Its file is cut to
        `shard_bytes` (its size at the commit) when a valid index (crc32c) ends there; otherwise the index at
        the file's end is used (a file some other writer replaced whole). Raises ValueError if no valid index
        holds the committed chunks, OSError if the file is missing."""
        import google_crc32c

        self.n_rows = n_rows
        s, k = divmod(n_rows, self.shard_rows)
        self._index, self._size = [], 0
        if k == 0:
            return
        nbytes = self._index_nbytes
        with open(self._shard_path(s), "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            ends = ([shard_bytes] if shard_bytes is not None and nbytes <= shard_bytes < size else []) + [size]
            for end in ends:
                f.seek(end - nbytes)
                raw = f.read(nbytes)
                if len(raw) < nbytes or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
                    continue
                idx = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.shard_rows, 2)
                if np.any(idx[:k, 0] == _EMPTY) or np.any(idx[:k, 0] + idx[:k, 1] > end):
                    continue
                if end < size:
                    f.truncate(end)
                self._index, self._size = [(int(o), int(n)) for o, n in idx[:k]], end
                return
        raise ValueError(f"shard {self._shard_path(s)} lacks a committed chunk")

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
        """Append rows (chunk bytes, or `ChunkRef`s to them) to the shard files they fall in."""
        import google_crc32c

        pos = 0
        while pos < len(chunks):
            s = self.n_rows // self.shard_rows
            take = list(chunks[pos:pos + self.shard_rows - len(self._index)])
            path = self._shard_path(s)
            if path.parent not in self._made_dirs:  # a mkdir costs ~0.7 ms here, even of an existing folder
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                start = self._size  # a new shard starts at 0 (over any stale file of a killed run)
                end = start + _write_pieces(fd, take, start)
                lengths = np.array([_piece_len(c) for c in take], dtype=np.int64)
                offsets = start + np.concatenate([[0], np.cumsum(lengths)[:-1]])
                self._index += [(int(o), int(n)) for o, n in zip(offsets, lengths)]
                idx = np.full((self.shard_rows, 2), _EMPTY, dtype="<u8")
                idx[:len(self._index)] = np.asarray(self._index, dtype=np.uint64)
                index = idx.tobytes()
                os.pwrite(fd, index + np.uint32(google_crc32c.value(index)).tobytes(), end)
                os.ftruncate(fd, end + self._index_nbytes)
            finally:
                os.close(fd)
            pos += len(take)
            self.n_rows += len(take)
            if len(self._index) == self.shard_rows:
                self._index, self._size = [], 0
            else:
                self._size = end + self._index_nbytes
