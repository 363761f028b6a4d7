"""Appending encoded one-row chunks to the shard files of a sharded zarr v3 array (the layout of
`stores.frames.zarr_shard`): with one frame per inner chunk, a chunk's encoded bytes do not depend on where it lands,
so reader workers compress frames in parallel and the single writer only copies byte ranges into shard files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from shardyard.stores.frames.byte_ranges import Piece, piece_len, write_pieces
from shardyard.stores.frames.zarr_shard import EMPTY, index_nbytes, read_shard_index, shard_file

__all__ = ["ShardAppender"]


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

    `defer_index`: the index of a partial shard is written by `flush` (and when the shard fills) rather than
    after every `append`: a writer that commits a group of small episodes at once writes one 16 KiB index
    per group, not one per episode (each also a dead copy in the file). Between flushes the file ends in
    chunks that no index lists yet, which only a commit makes part of the store.
    """

    array_dir: Path
    shard_rows: int
    ndim: int
    n_rows: int = 0
    defer_index: bool = False
    _index: list[tuple[int, int]] = field(default_factory=list)  # (offset, nbytes) in the partial last shard
    _size: int = 0  # bytes in the partial last shard's file, its index included (0: no partial shard)
    _end: int = 0  # where the next chunk goes in the partial last shard's file
    _unflushed: bool = False  # chunks appended since the last index was written
    _made_dirs: set[Path] = field(default_factory=set)

    def _shard_path(self, s: int) -> Path:
        return Path(shard_file(str(self.array_dir), s, self.ndim))

    @property
    def _index_nbytes(self) -> int:
        return index_nbytes(self.shard_rows)

    def has_rows_from(self, row: int) -> bool:
        """True when the shard file holding `row` already has a chunk at or after it (so `append` from
        `row` would overwrite another writer's rows)."""
        s, k = divmod(row, self.shard_rows)
        idx = read_shard_index(self._shard_path(s), self.shard_rows)
        return idx is not None and bool(np.any(idx[k:, 0] != EMPTY))

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
        self._index, self._size, self._end, self._unflushed = [], 0, 0, False
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
                if np.any(idx[:k, 0] == EMPTY) or np.any(idx[:k, 0] + idx[:k, 1] > end):
                    continue
                if end < size:
                    f.truncate(end)
                self._index, self._size = [(int(o), int(n)) for o, n in idx[:k]], end
                self._end = end
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
        pos = 0
        while pos < len(chunks):
            s = self.n_rows // self.shard_rows
            take = list(chunks[pos:pos + self.shard_rows - len(self._index)])
            path = self._shard_path(s)
            if path.parent not in self._made_dirs:  # a mkdir costs ~0.7 ms here, even of an existing folder
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open()
            try:
                start = self._end  # a new shard starts at 0 (over any stale file of a killed run)
                end = start + write_pieces(fd, take, start)
                offset = start
                for c in take:
                    n = piece_len(c)
                    self._index.append((offset, n))
                    offset += n
                self._end, self._unflushed = end, True
                if not self.defer_index or len(self._index) == self.shard_rows:
                    self._write_index(fd)
            finally:
                os.close(fd)
            pos += len(take)
            self.n_rows += len(take)
            if len(self._index) == self.shard_rows:
                self._index, self._size, self._end = [], 0, 0

    def _write_index(self, fd: int) -> None:
        """Write the index of the chunks so far (and its crc32c) after them, ending the file there."""
        import google_crc32c

        idx = np.full((self.shard_rows, 2), EMPTY, dtype="<u8")
        idx[:len(self._index)] = np.asarray(self._index, dtype=np.uint64)
        index = idx.tobytes()
        os.pwrite(fd, index + np.uint32(google_crc32c.value(index)).tobytes(), self._end)
        os.ftruncate(fd, self._end + self._index_nbytes)
        self._size = self._end = self._end + self._index_nbytes
        self._unflushed = False

    def flush(self) -> None:
        """Write the partial last shard's index if chunks were appended since (`defer_index`); after it,
        `shard_bytes` is the size to commit."""
        if not self._unflushed or not self._index:
            self._unflushed = False
            return
        fd = os.open(self._shard_path(self.n_rows // self.shard_rows), os.O_RDWR)
        try:
            self._write_index(fd)
        finally:
            os.close(fd)
