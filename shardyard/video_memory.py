"""Frame-exact reads of video bytes held in memory, for clip streaming: one demux of the bytes, then the decoder
is fed the demuxed packets from the keyframe before the first wanted frame (no temp file, no second open, no
seek), each wanted frame is converted by one scaler and handed over while it is in cache.

It serves the containers where `shardyard.video.PyAVReader` matches frames by pts (MP4/MOV, Matroska/WebM with
a unique pts on every packet, not pts written in decode order) and returns the same frames: frame `i` is the
one with the i-th smallest pts, decoded from the same keyframe. `open_memory_video` returns None for any other
stream (AVI, raw streams, repeated pts), which the caller reads with `PyAVReader` instead.

Why (CPU profile of `ClipStream` workers, `benchmarks/stream_clips.py`): besides the decode itself a clip
cost a temp file, two opens of the container and a seek; these go. Frames before the clip that no other frame
references are not decoded (`NONREF_SKIP_CODECS`): about 20 % of a random clip's decode on the WebVid samples.
Single-threaded scaler and decoder: a stream runs one worker process per core, where FFmpeg's slice threads
only add thread start-up per clip, and PyAV objects without threads are safe to drop in a forked worker
(a scaler with threads, freed there, waits forever for threads the child does not have).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from shardyard.video import PTS_FORMATS
from shardyard.video_decode import FrameCallback, checked_decode, collect, rgb_converter

__all__ = ["IMAGE_MAGIC", "MemoryVideo", "NONREF_SKIP_CODECS", "SERVED_EXTS", "load_decoder", "open_memory_video"]

log = logging.getLogger(__name__)

# Codecs whose decoder drops a non-reference frame on `skip_frame="NONREF"` without touching the frames
# decoded after it (H.264/HEVC: nal_ref_idc / non-reference NAL types); frames before the clip are skipped so.
NONREF_SKIP_CODECS = ("h264", "hevc")
# Extensions of the containers served (MP4/MOV, Matroska/WebM): others are not worth a demux in memory first.
SERVED_EXTS = ("mp4", "mov", "m4v", "mkv", "webm")
# First bytes of the still-image files a video shard may hold instead (JPEG, PNG, GIF): not video, never decoded.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")


@dataclass
class MemoryVideo:
    """One video's bytes, demuxed once (`open_memory_video`). Implements `shardyard.video.VideoReader`:
    `num_frames`, `fps` (Hz), `width`, `height` (px), `timestamps()`, `read(indices, size)` ->
    `(N, H, W, 3) uint8` and `decode_each(indices, on_frame, size)`; `decode_each` raises `IndexError` for
    an index outside `[0, num_frames)` and `SourceError` (path "<bytes>") for frames that do not decode."""

    container: str
    num_frames: int
    fps: float
    width: int
    height: int
    path: str = "<bytes>"
    _handle: Any = field(default=None, repr=False)            # the open PyAV container
    _packets: list = field(default_factory=list, repr=False)  # every packet of the stream, in decode order
    _pts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # frame i's pts
    _keyframe: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    _packet_at: dict[int, int] = field(default_factory=dict, repr=False)  # pts -> index into _packets
    _time_base: float = 0.0
    _start_pts: int = 0

    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, `(num_frames,) float64` seconds from the stream start."""
        return (self._pts - self._start_pts) * self._time_base

    def read(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` as `(len(indices), H, W, 3) uint8` RGB; `size=(W, H)` resizes (area)."""
        w, h = size if size else (self.width, self.height)
        out, put = collect(len(indices), h, w)
        self.decode_each(indices, put, size)
        return out

    def decode_each(self, indices: Sequence[int], on_frame: FrameCallback,
                    size: tuple[int, int] | None = None) -> None:
        """Decode the frames at `indices` and call `on_frame(frame (H, W, 3) uint8, positions)` once per
        distinct frame (the array is valid only during the call)."""
        convert = rgb_converter(size, self.width, self.height)
        checked_decode(self.path, indices, self.num_frames, lambda idx: self._decode(idx, on_frame, convert))

    def _decode(self, idx: np.ndarray, on_frame: FrameCallback, convert: Callable) -> int:
        """Feed the packets from the keyframe before the first wanted frame (as `PyAVReader` seeks to it),
        match output frames by pts; returns how many wanted frames never came."""
        wanted: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            wanted.setdefault(int(self._pts[i]), []).append(pos)
        remaining = set(wanted)
        first = int(idx.min())
        keys = np.nonzero(self._keyframe[: first + 1])[0]
        begin = self._packet_at[int(self._pts[keys[-1]])] if len(keys) and keys[-1] > 0 else 0
        first_pts, last_pts = int(self._pts[first]), int(self._pts[int(idx.max())])
        stream = self._handle.streams.video[0]
        codec = stream.codec_context
        codec.flush_buffers()  # a fresh decoder state, as after a seek (no-op before the first decode)
        skip = codec.name in NONREF_SKIP_CODECS
        for packet in self._packets[begin:]:
            if skip:  # a frame shown before the clip that no other frame references need not be decoded
                codec.skip_frame = "NONREF" if packet.pts is not None and packet.pts < first_pts else "DEFAULT"
            for frame in stream.decode(packet):
                if frame.pts in remaining:
                    remaining.discard(frame.pts)
                    on_frame(convert(frame), wanted[frame.pts])
                if not remaining or (frame.pts is not None and frame.pts >= last_pts):
                    return len(remaining)
        return len(remaining)

    def close(self) -> None:
        """Release the container and the stored packets (the reader is unusable afterwards)."""
        self._packets = []
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def load_decoder() -> None:
    """Import PyAV and its scaler in this process, so DataLoader workers forked from it start without importing
    them (about 30 ms of CPU per worker and epoch). Imports only: no FFmpeg thread or context is created, so
    nothing a forked child could inherit half-held."""
    import av  # noqa: F401
    from av.video.reformatter import VideoReformatter  # noqa: F401


def open_memory_video(data: bytes, container_ext: str) -> MemoryVideo | None:
    """Demux video bytes `data` in memory. Returns a `MemoryVideo` (close it) when the container matches frames
    by pts as `PyAVReader` does, else None (also for bytes FFmpeg cannot open: the caller's `PyAVReader`
    then raises its own error). `container_ext` is the extension `PyAVReader` would report ("mp4", "mkv", ...),
    given by the caller, which knows the member's name."""
    import av

    try:
        handle = av.open(io.BytesIO(data))
    except Exception:  # PyAV raises several FFmpeg error types for unreadable bytes
        return None
    try:
        video = _demux(handle, container_ext)
    except Exception as e:  # a corrupt index or packet: PyAVReader gives the error its caller expects
        log.debug("in-memory demux failed (%s): reading through PyAVReader", e)
        video = None
    if video is None:
        handle.close()
    return video


def _demux(handle: Any, container_ext: str) -> MemoryVideo | None:
    """Every packet of the first video stream, and the frame table `PyAVReader` builds from them (the same
    rules: packets flagged discard or empty hold no frame); None where `PyAVReader` would not match by pts."""
    if not handle.streams.video or handle.format.name.split(",")[0] not in PTS_FORMATS:
        return None
    stream = handle.streams.video[0]
    codec = stream.codec_context
    codec.thread_count = 1
    packets = list(handle.demux(stream))
    frames = [(p.pts, p.is_keyframe, j) for j, p in enumerate(packets) if p.size > 0 and not p.is_discard]
    pts = [f[0] for f in frames]
    if not frames or any(p is None for p in pts) or len(set(pts)) != len(pts):
        return None
    if codec.has_b_frames and all(a < b for a, b in zip(pts, pts[1:])):  # decode times written as pts
        return None
    order = np.argsort(pts, kind="stable")
    rate = stream.average_rate or stream.guessed_rate
    return MemoryVideo(container=container_ext, num_frames=len(frames), fps=float(rate) if rate else 0.0,
                       width=codec.width, height=codec.height, _handle=handle, _packets=packets,
                       _pts=np.asarray(pts, dtype=np.int64)[order],
                       _keyframe=np.asarray([f[1] for f in frames], dtype=bool)[order],
                       _packet_at={f[0]: f[2] for f in frames},
                       _time_base=float(stream.time_base) if stream.time_base else 0.0,
                       _start_pts=stream.start_time or 0)
