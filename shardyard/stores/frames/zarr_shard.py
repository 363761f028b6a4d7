"""The zarr v3 `sharding_indexed` layout as shardyard writes it, read and appended directly.

A sharded array stores rows along axis 0; each shard file `c/<s>/0/...` holds its inner chunks back to back,
then the `(chunks_per_shard, 2) uint64` index of (offset, length) and its crc32c (index at the end). The
files are that codec's format exactly, so zarr-python reads every store; this module only does it faster.

Reading (`ShardReader`): zarr-python spends about 1 ms of Python per `arr[i]` (issue 7's measurement), which
caps single-frame reads near 400/s. The reader parses each shard's index once per process, reads the byte
range of the wanted inner chunks with one ranged read per run of adjacent chunks, and decodes with the
field's chunk codec. Only the layouts shardyard writes are taken on this path (sharded along axis 0, inner
chunks spanning the other axes whole, the inner chunks of a frame codec of `stores.frames.registry`: `bytes`
then at most one of blosc/zstd, or one frame per chunk of an image codec such as `shardyard_jpeg`); anything else
returns None from `ShardReader.maybe_for` and the caller uses zarr-python.

Appending (`stores.frames.shard_append.ShardAppender`): with one frame per inner chunk, a chunk's encoded bytes do
not depend on where it lands, so reader workers compress frames in parallel (`stores.frames.encoding`) and
leave them in spill files; the single writer only copies byte ranges into shard files (`ChunkRef`:
`copy_file_range`, in the kernel). A shard file is only appended to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from shardyard.stores.frames.codec import ChunkCodec
from shardyard.stores.frames.registry import chunk_codec_for_chain
from shardyard.stores.read_checks import crc32c, crc_mismatch, damaged_file

EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written (fill value)

__all__ = ["EMPTY", "ShardReader", "index_nbytes", "load_array_meta", "read_shard_index", "shard_file"]


def shard_file(array_dir: str, s: int, ndim: int) -> str:
    """Path of shard `s` of an array with `ndim` dimensions sharded along axis 0 (`c/<s>/0/...`)."""
    return "/".join([str(array_dir), "c", str(s)] + ["0"] * (ndim - 1))


def index_nbytes(chunks_per_shard: int, crc: bool = True) -> int:
    """Bytes of a shard index of `chunks_per_shard` entries (16 each) and its crc32c (4)."""
    return 16 * chunks_per_shard + (4 if crc else 0)


def read_shard_index(path: str | os.PathLike, chunks_per_shard: int) -> np.ndarray | None:
    """The `(chunks_per_shard, 2) uint64` (offset, length) index at the end of a local shard file (crc32c
    after it), or None when the file is absent. `EMPTY` marks chunks never written."""
    try:
        with open(path, "rb") as f:
            f.seek(-index_nbytes(chunks_per_shard), os.SEEK_END)
            raw = f.read(16 * chunks_per_shard)
    except FileNotFoundError:
        return None
    return np.frombuffer(raw, dtype="<u8").reshape(chunks_per_shard, 2)

def _decoder(codecs: list[dict[str, Any]], row_shape: tuple[int, ...], dtype: np.dtype,
             chunk_rows: int) -> tuple[Callable[..., Any] | None, ChunkCodec | None]:
    """A decoder of one inner chunk (bytes -> a buffer of the chunk's rows) for the inner codec chain, from its
    frame codec (`stores.frames.registry`), and that codec; (None, None) when it is not one we handle. An
    image codec (JPEG, PNG) decodes one frame per chunk, straight into the row when given `out=`."""
    codec = chunk_codec_for_chain(codecs)
    if codec is None:
        return None, None
    decode = codec.buffer_decoder()
    if decode is None and chunk_rows == 1:
        decode = codec.decoder(row_shape, dtype)
    return decode, codec


@dataclass
class ShardReader:
    """Reader of one sharded zarr v3 array stored on a local path or an fsspec filesystem.

    Rows are along axis 0; each inner chunk holds `chunk_rows` whole rows. Per-process state (open file
    handles, cached shard indexes) is rebuilt after a fork, so one reader can be shared with DataLoader
    workers.
    """

    root: str  # array directory (local path, or path inside `fs`)
    shape: tuple[int, ...]
    dtype: np.dtype
    shard_rows: int
    chunk_rows: int
    decode: Callable[..., Any]  # one inner chunk -> a buffer of its rows' bytes
    index_at_end: bool
    has_crc: bool
    fs: Any = None  # fsspec filesystem for remote stores; None = local file system
    fill_value: Any = 0
    raw: bool = False  # inner chunks are stored uncompressed (codec chain is `bytes` alone)
    crc: np.ndarray | None = None  # (shape[0],) uint32: recorded crc32c of each one-row chunk, checked as read
    fill_ok: bool = True  # a chunk never written (index EMPTY, shard absent) reads as fill_value; False: damage
    damaged: Callable[..., Exception] = damaged_file  # (reason, row=, file=) -> the error (read_checks.FieldNamer)
    decodes_into: bool = False  # `decode(chunk, out=row)` writes the row itself (JPEG): no intermediate image
    _pid: int = field(default=-1, repr=False)
    _files: dict[int, Any] = field(default_factory=dict, repr=False)
    _indexes: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def maybe_for(cls, root: str, meta: dict[str, Any], fs: Any = None, **checks: Any) -> "ShardReader | None":
        """Return a reader for the array whose `zarr.json` content is `meta`, or None if its layout is not
        one this fast path handles. `checks`: `crc`, `fill_ok`, `damaged` (integrity on read, fields above)."""
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        if meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") != "/":
            return None
        conf = codecs[0]["configuration"]
        shape = tuple(meta["shape"])
        outer = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        inner = tuple(conf["chunk_shape"])
        if outer[1:] != shape[1:] or inner[1:] != shape[1:] or outer[0] % inner[0]:
            return None
        index_codecs = [c["name"] for c in conf.get("index_codecs", [])]
        try:
            dtype = np.dtype(meta["data_type"])
        except TypeError:
            return None
        decode, codec = _decoder(conf["codecs"], shape[1:], dtype, inner[0])
        if decode is None or codec is None or index_codecs not in (["bytes"], ["bytes", "crc32c"]):
            return None
        return cls(root=root, shape=shape, dtype=dtype, shard_rows=outer[0], chunk_rows=inner[0],
                   decode=decode, index_at_end=conf.get("index_location", "end") == "end",
                   has_crc="crc32c" in index_codecs, fs=fs, fill_value=meta.get("fill_value", 0),
                   raw=codec.stores_raw, decodes_into=codec.decodes_into, **checks)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one decoded row."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._files, self._indexes, self._pid = {}, {}, os.getpid()

    def _shard_path(self, s: int) -> str:
        return shard_file(self.root, s, len(self.shape))

    def _read_range(self, s: int, start: int, length: int) -> bytes | None:
        """`length` bytes at `start` of shard `s` (start < 0 counts from the end; fewer when the file is
        shorter), or None when the file is absent."""
        if self.fs is not None:
            path = self._shard_path(s)
            try:
                data = self.fs.cat_file(path, start=start, end=None if start < 0 else start + length)
            except FileNotFoundError:
                return None
            # A server that ignores Range answers with the whole file: cut the asked range out of it.
            if start < 0 and len(data) > -start:
                data = data[start:]
            elif start >= 0 and len(data) > length:
                data = data[start:start + length]
            return data
        fd = self._files.get(s)
        if fd is None:
            try:
                fd = os.open(self._shard_path(s), os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._files[s] = fd
        if start < 0:  # a file shorter than asked (truncated) gives what it has
            start = max(os.fstat(fd).st_size + start, 0)
        return os.pread(fd, length, start)

    def _damage(self, reason: str, row: int, s: int) -> Exception:
        return self.damaged(reason, row=row, file=self._shard_path(s))

    def _index(self, s: int) -> np.ndarray | None:
        """Shard `s`'s `(chunks, 2)` index, checked against its crc32c; None when there is no file."""
        idx = self._indexes.get(s)
        if idx is None:
            n = self.shard_rows // self.chunk_rows
            nbytes = index_nbytes(n, self.has_crc)
            raw = self._read_range(s, -nbytes if self.index_at_end else 0, nbytes)
            if raw is None:
                return None  # shard absent: every chunk is fill_value (or damage, without fill_ok)
            if len(raw) < nbytes or (self.has_crc and crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little")):
                raise self._damage("shard index fails its crc32c (damaged or truncated file)", s * self.shard_rows, s)
            idx = self._indexes[s] = np.frombuffer(raw[: 16 * n], dtype="<u8").reshape(n, 2)
        return idx

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `[start, stop)` as one `(stop - start, *shape[1:])` array (`out`, that shape, when given; a
        JPEG frame decodes straight into it). Raises `StoreDamagedError` for a chunk whose crc32c differs from
        the recorded one, a missing chunk (without `fill_ok`), a truncated file or a chunk that does not
        decode."""
        self._check_pid()
        if out is None:
            out = np.empty((stop - start,) + self.shape[1:], dtype=self.dtype)
        elif out.shape != (stop - start,) + self.shape[1:] or out.dtype != self.dtype:
            raise ValueError(f"out is {out.dtype}{out.shape}; rows [{start}, {stop}) are "
                             f"{self.dtype}{(stop - start,) + self.shape[1:]}")
        if stop <= start:
            return out
        c0, c1 = start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1
        per_shard = self.shard_rows // self.chunk_rows
        c = c0
        while c < c1:
            s = c // per_shard
            run_end = min(c1, (s + 1) * per_shard)
            chunks = list(range(c, run_end))
            for cc, piece in zip(chunks, self._pieces(s, chunks)):
                self._place(out, start, stop, cc, piece, s)
            c = run_end
        return out

    def _pieces(self, s: int, chunks: list[int]) -> list[bytes | None]:
        """The stored bytes of `chunks` (all in shard `s`; None: never written), with one ranged read when
        they lie back to back."""
        idx = self._index(s)
        if idx is None:
            return [None] * len(chunks)
        entries = idx[np.array(chunks) - s * (self.shard_rows // self.chunk_rows)]
        written = entries[:, 0] != EMPTY
        if np.all(written) and np.all(entries[1:, 0] == entries[:-1, 0] + entries[:-1, 1]):
            base, total = int(entries[0, 0]), int(entries[-1, 0] + entries[-1, 1] - entries[0, 0])
            blob = self._read_range(s, base, total)
            if blob is None or len(blob) != total:
                raise self._damage("short read: shard file truncated", chunks[0] * self.chunk_rows, s)
            return [blob[int(o) - base: int(o) - base + int(n)] for o, n in entries]
        pieces: list[bytes | None] = []
        for k, cc in enumerate(chunks):
            piece = self._read_range(s, int(entries[k, 0]), int(entries[k, 1])) if written[k] else None
            if written[k] and (piece is None or len(piece) != int(entries[k, 1])):
                raise self._damage("short read: shard file truncated", cc * self.chunk_rows, s)
            pieces.append(piece)
        return pieces

    def _place(self, out: np.ndarray, start: int, stop: int, cc: int, piece: bytes | None, s: int) -> None:
        """Check chunk `cc`'s bytes (`piece`), decode them and copy its rows inside `[start, stop)` into `out`."""
        r0 = cc * self.chunk_rows
        lo, hi = max(r0, start), min(r0 + self.chunk_rows, stop, self.shape[0])
        crc = self.crc if self.chunk_rows == 1 else None
        if piece is None:
            if not self.fill_ok or (crc is not None and int(crc[cc]) != 0):
                raise self._damage("chunk missing (the shard file or its index lacks it; zarr would give the "
                                   "fill value)", r0, s)
            out[lo - start: hi - start] = self.fill_value
            return
        if crc is not None and (why := crc_mismatch(piece, int(crc[cc]))):
            raise self._damage(why, r0, s)
        rb = self.row_nbytes
        try:
            if self.decodes_into and self.chunk_rows == 1 and out[lo - start].flags.c_contiguous:
                self.decode(piece, out=out[lo - start])  # a JPEG frame: no intermediate image
                return
            src = np.frombuffer(self.decode(piece), dtype=np.uint8)
            out[lo - start: hi - start].reshape(-1).view(np.uint8)[:] = src[(lo - r0) * rb: (hi - r0) * rb]
        except Exception as e:  # noqa: BLE001 - any codec error on stored bytes is damage
            raise self._damage(f"chunk does not decode ({type(e).__name__}: {e})", r0, s) from e

    def pread_rows(self, indices: np.ndarray) -> np.ndarray | None:
        """Rows at `indices` (any order, repeats allowed) as `(len(indices), *shape[1:])`, each `pread`
        straight into the output buffer with no intermediate copy. Only for uncompressed, one-row-per-chunk
        arrays on the local file system; returns None for other layouts (use `read` on runs instead)."""
        if self.fs is not None or self.chunk_rows != 1 or not self.raw:
            return None
        self._check_pid()
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx),) + self.shape[1:], dtype=self.dtype)
        flat = out.reshape(len(idx), -1).view(np.uint8)
        rb = self.row_nbytes
        for j, i in enumerate(idx.tolist()):
            s, k = divmod(i, self.shard_rows)
            index = self._index(s)  # also opens the shard file
            if index is None or index[k, 0] == EMPTY or int(index[k, 1]) != rb \
                    or os.preadv(self._files[s], [flat[j]], int(index[k, 0])) != rb:
                out[j] = self.read(i, i + 1)[0]  # the general path: fill value or damage, checked
            elif self.crc is not None and (why := crc_mismatch(flat[j], int(self.crc[i]))):
                raise self._damage(why, i, s)
        return out

    def close(self) -> None:
        """Close this process's open shard files."""
        for fd in self._files.values():
            if self.fs is None:
                os.close(fd)
        self._files = {}


def load_array_meta(path: str, fs: Any = None) -> dict[str, Any]:
    """Parse the `zarr.json` of the array at `path`."""
    if fs is not None:
        return json.loads(fs.cat_file(f"{path}/zarr.json"))
    with open(os.path.join(path, "zarr.json"), "rb") as f:
        return json.load(f)
