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

import google_crc32c
import numpy as np

from shardyard.stores.frames.codec import VIDEO, EncodedRows, FrameCodec
from shardyard.stores.frames.video import EncodedVideo, VideoEncoder

__all__ = ["EncodedRows", "EncodedVideo", "FrameEncoding", "FrameSink"]

log = logging.getLogger(__name__)

# Bytes of encoded chunks a `FrameSink` gathers before one write to its spill file: one write per chunk (a
# few KB each for LIBERO's 128x128 frames) cost ~8 % of a reader worker's time in system calls.
SPILL_BATCH_BYTES = 1 << 20


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

    codec: FrameCodec
    sample_every: int = 0
    pixel_stride: int = 1
    spill_dir: str | None = None

    def sink(self, num_rows: int) -> "FrameSink | VideoEncoder":
        """A `decode_each` callback for an episode of `num_rows` steps (`rows(row_shape)` ends it)."""
        if self.codec.layout == VIDEO:
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
