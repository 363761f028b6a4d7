"""Rows of a large low-dim field read a zarr chunk at a time, the chunks kept in a small per-process LRU.

Why: a low-dim field of a store of 10^6 episodes is hundreds of MB (8 x 10^6 steps x 7 float32 = 224 MB for
an action). Read whole into every DataLoader worker, as small fields are (`EpisodicStore` keeps a field under
`LOWDIM_CACHE_BYTES` in memory), it made each worker's RSS grow with the store (0.74 GB at 10^6 episodes) and
its first batch wait for the whole field to be read, decompressed and checked (4.5 s). Here a read touches only
the chunks (`16,384` rows, a few hundred kB) its rows fall in, each checked against `checksums.json` the first
time this process reads it (`check(chunk)`), and at most `max_bytes` of decoded chunks are kept per field.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np

__all__ = ["CHUNK_CACHE_BYTES", "ChunkRows"]

CHUNK_CACHE_BYTES = 32 << 20  # decoded chunks kept per field and process


class ChunkRows:
    """Rows `[start, stop)` of zarr array `array` (chunked along axis 0 by `chunk_rows`), decoded one chunk
    at a time. `check(c)` runs once per chunk `c` before its first read (the integrity check of its file);
    `max_bytes` bounds the decoded chunks kept (least recently used dropped first)."""

    def __init__(self, array: Any, chunk_rows: int, check: Callable[[int], None],
                 max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.array, self.chunk_rows, self.check = array, int(chunk_rows), check
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        row_bytes = max(int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize, 1)
        self.max_chunks = max(1, max_bytes // (row_bytes * self.chunk_rows))
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._checked: set[int] = set()

    def _chunk(self, c: int) -> np.ndarray:
        got = self._chunks.get(c)
        if got is not None:
            self._chunks.move_to_end(c)
            return got
        if c not in self._checked:
            self.check(c)
            self._checked.add(c)
        got = np.asarray(self.array[c * self.chunk_rows:min((c + 1) * self.chunk_rows, self.shape[0])])
        self._chunks[c] = got
        while len(self._chunks) > self.max_chunks:
            self._chunks.popitem(last=False)
        return got

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: Any) -> Any:
        """Row `i` (an int) or rows `i` (a slice, step 1)."""
        if isinstance(i, slice):
            a, b, _ = i.indices(self.shape[0])
            return self.read(a, b)
        i = int(i) + (self.shape[0] if int(i) < 0 else 0)
        return self._chunk(i // self.chunk_rows)[i % self.chunk_rows]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `[start, stop)` as `(stop - start, *shape[1:])` (a copy)."""
        start, stop = max(0, start), min(stop, self.shape[0])
        out = np.empty((max(stop - start, 0),) + self.shape[1:], dtype=self.dtype)
        r = self.chunk_rows
        for c in range(start // r, (stop - 1) // r + 1 if stop > start else 0):
            a, b = max(start, c * r), min(stop, (c + 1) * r)
            out[a - start:b - start] = self._chunk(c)[a - c * r:b - c * r]
        return out
