"""Writing sharded zarr v3 arrays from pre-encoded one-row chunks.

Why not zarr-python's writer: with one frame per inner chunk, a chunk's encoded bytes do not depend on
where it lands, so reader workers can compress frames in parallel (`ChunkCodec.encode_rows`) and ship the
small compressed chunks; the single writer then only concatenates bytes into shard files
(`ShardAppender`). That keeps ingest near decode speed. The files are the `sharding_indexed` codec's
format exactly (chunks, then the `(n, 2) uint64` offset/length index and its crc32c, index at the end), so
zarr-python reads them, and each shard file is replaced whole (temp + rename).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def encode_rows(self, arr: np.ndarray) -> "EncodedRows":
        """Encode each row of `(T, *shape)` `arr` as one inner chunk."""
        codec = self._codec()
        arr = np.ascontiguousarray(arr)
        chunks = [bytes(codec.encode(row)) if codec is not None else row.tobytes() for row in arr]
        return EncodedRows(chunks=chunks, shape=arr.shape, dtype=arr.dtype)


@dataclass
class EncodedRows:
    """Rows of one field already encoded as inner chunks; quacks like an array for schema checks
    (`shape`, `dtype`, `ndim`, `len`)."""

    chunks: list[bytes]
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.chunks)


@dataclass
class ShardAppender:
    """Appends encoded one-row chunks to a sharded array directory, rewriting only the shard files touched.

    `load(n_rows)` (on open or resume) reads back the committed rows of the partial last shard; rows past
    `n_rows` in it (a killed episode) are dropped. The array's `zarr.json` shape is the caller's business.
    """

    array_dir: Path
    shard_rows: int
    ndim: int
    n_rows: int = 0
    _tail: list[bytes] = field(default_factory=list)

    def _shard_path(self, s: int) -> Path:
        return self.array_dir.joinpath("c", str(s), *["0"] * (self.ndim - 1))

    def load(self, n_rows: int) -> None:
        self.n_rows = n_rows
        s, k = divmod(n_rows, self.shard_rows)
        self._tail = []
        if k == 0:
            return
        data = self._shard_path(s).read_bytes()
        nbytes = 16 * self.shard_rows + 4
        idx = np.frombuffer(data[-nbytes:-4], dtype="<u8").reshape(self.shard_rows, 2)
        for off, n in idx[:k]:
            if off == _EMPTY:
                raise ValueError(f"shard {self._shard_path(s)} lacks a committed chunk")
            self._tail.append(data[int(off):int(off) + int(n)])

    def append(self, chunks: list[bytes]) -> None:
        """Append rows; each shard file they touch is written whole, by temp file and rename."""
        import google_crc32c

        pos = 0
        while pos < len(chunks):
            s = self.n_rows // self.shard_rows
            room = self.shard_rows - len(self._tail)
            take = chunks[pos:pos + room]
            self._tail.extend(take)
            pos += len(take)
            self.n_rows += len(take)
            idx = np.full((self.shard_rows, 2), _EMPTY, dtype="<u8")
            lengths = np.array([len(c) for c in self._tail], dtype=np.uint64)
            idx[:len(self._tail), 1] = lengths
            idx[:len(self._tail), 0] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
            index = idx.tobytes()
            crc = np.uint32(google_crc32c.value(index)).tobytes()
            path = self._shard_path(s)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.writelines(self._tail)
                    f.write(index)
                    f.write(crc)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if len(self._tail) == self.shard_rows:
                self._tail = []
