"""One small video interface: open, frame count, timestamps, frames by index.

PyAV is the default backend: it demuxes the packet table first, so frame indices are exact (the n-th
presented frame, by pts), it decodes AV1 and H.264 alike, and ships FFmpeg inside its wheel. decord is an
optional backend (unmaintained since 2022, with reported wrong-frame and hang bugs); `tests/test_video.py`
proves, for the access pattern each backend serves, that it returns PyAV's frames.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from shardyard.errors import SourceError
from shardyard.video_decode import FrameCallback, checked_decode, collect, rgb_converter

__all__ = ["BACKENDS", "CONTAINER_EXTS", "DecordReader", "PTS_FORMATS", "PyAVReader", "VIDEO_EXTS", "VideoReader",
           "container_ext", "open_video", "open_video_bytes", "write_video"]

log = logging.getLogger(__name__)

# Demuxers (FFmpeg's names, first of the list) whose packets carry each frame's own presentation time.
PTS_FORMATS = ("mov", "matroska")
# File extension of each container FFmpeg's demuxer names; MP4/MOV and Matroska/WebM share a demuxer and
# are told apart by the MP4 brand and the EBML DocType.
CONTAINER_EXTS = {"mp4": "mp4", "mov": "mov", "matroska": "mkv", "webm": "webm", "avi": "avi", "mpegts": "ts",
                  "flv": "flv", "mpeg": "mpg", "ogg": "ogv", "asf": "wmv", "h264": "h264", "hevc": "h265",
                  "m4v": "m4v", "ivf": "ivf", "nut": "nut", "dv": "dv", "mxf": "mxf", "rm": "rm",
                  "yuv4mpegpipe": "y4m"}
VIDEO_EXTS = tuple(dict.fromkeys(CONTAINER_EXTS.values()))


class VideoReader(Protocol):
    """Random access to the frames of one video file."""

    path: str
    container: str  # extension naming the container: "mp4", "mov", "mkv", "webm", "avi", ...
    num_frames: int
    fps: float     # average frame rate, Hz
    width: int
    height: int

    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, `(num_frames,) float64` seconds from the stream start."""
        ...

    def read(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` as `(len(indices), H, W, 3) uint8` RGB; `size=(W, H)` resizes (area)."""
        ...

    def decode_each(self, indices: Sequence[int], on_frame: FrameCallback,
                    size: tuple[int, int] | None = None) -> None:
        """Decode the frames at `indices` in stream order and call `on_frame(frame, positions)` once per
        distinct frame: `frame (H, W, 3) uint8` RGB (valid only during the call), `positions` the places in
        `indices` it fills. Lets ingest compress each frame while it is in cache instead of holding a
        `(T, H, W, 3)` array. Raises as `read`."""
        ...

    def close(self) -> None:
        """Release the file (the reader is unusable afterwards)."""
        ...


@dataclass
class PyAVReader:
    """Frame-exact reader on PyAV: frame `i` is the i-th frame a front-to-back decode of the file outputs.
    Raises `SourceError(path=...)` when the file cannot be opened, has no video stream, or a frame cannot be
    decoded (truncated or corrupt file).

    Where the container stores presentation times (MP4/MOV, Matroska/WebM) and every packet has its own,
    frame `i` is the one with the i-th smallest pts, and a read seeks to the keyframe before its first
    frame. Elsewhere (AVI, whose demuxer numbers packets in decode order, so with B-frames a packet's pts is
    not its frame's; raw streams without pts; repeated pts; B-frames whose pts rise in decode order, as
    when a muxer lost the composition offsets) frames are counted as the decoder outputs them, from the
    last restart point before the first frame read (a keyframe after which no frame is shown before it:
    any keyframe of a codec without B-frames, an H.264 IDR), or from the start where there is none.
    `container` is the file extension naming the container ("mp4", "mov", "mkv", "webm", "avi", ...)."""

    path: str
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    container: str = ""
    _pts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _keyframe: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    _time_base: float = 0.0
    _start_pts: int = 0
    _by_pts: bool = False
    _restarts: dict[int, int] = field(default_factory=dict, repr=False)   # pts label -> frame index
    _seek_ts: dict[int, int] = field(default_factory=dict, repr=False)    # frame index -> seek target
    # FFmpeg frame threads help a lone reader; ingest runs one reader process per core, where they
    # only oversubscribe the CPU.
    threads: bool = False

    def __post_init__(self) -> None:
        import av

        self.path = str(self.path)
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise SourceError("no video stream", path=self.path)
                stream = container.streams.video[0]
                self.container = _container_ext(container.format.name, dict(container.metadata), self.path)
                reorders = bool(stream.codec_context.has_b_frames)
                h264 = stream.codec_context.name == "h264"
                # Packets flagged discard (before an MP4 edit list's start) are decoded but never output;
                # empty ones (AVI's dropped-frame markers, PyAV's end-of-stream flush) hold no frame.
                # (pts, dts, keyframe, restart): a restart is a keyframe no frame after it in decode order is
                # shown before: any keyframe when the codec does not reorder, else an H.264 IDR.
                packets = [(p.pts, p.dts, p.is_keyframe,
                            p.is_keyframe and (not reorders or (h264 and _has_idr(bytes(p)))))
                           for p in container.demux(stream) if p.size > 0 and not p.is_discard]
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                self._time_base = float(stream.time_base) if stream.time_base else 0.0
                self._start_pts = stream.start_time or 0
                timed = container.format.name.split(",")[0] in PTS_FORMATS
        except SourceError:
            raise
        except Exception as e:  # PyAV raises several FFmpeg error types for unreadable files
            raise SourceError(f"cannot open video: {type(e).__name__}: {e}", path=self.path) from e
        self.num_frames = len(packets)
        if self.num_frames == 0:
            raise SourceError("video has no frames", path=self.path)
        pts = [p[0] for p in packets]
        has_pts = all(p is not None for p in pts)
        unique = has_pts and len(set(pts)) == len(pts)
        # A codec that reorders frames (B-frames) but pts that rise in decode order: the muxer wrote decode
        # times as pts (lost composition offsets), so the pts say nothing about presentation order.
        decode_order_pts = has_pts and reorders and all(a < b for a, b in zip(pts, pts[1:]))
        self._by_pts = timed and unique and not decode_order_pts
        if self._by_pts:
            order = np.argsort(pts, kind="stable")
            self._pts = np.asarray(pts, dtype=np.int64)[order]
            self._keyframe = np.asarray([p[2] for p in packets], dtype=bool)[order]
            return
        if has_pts:
            self._pts = np.sort(np.asarray(pts, dtype=np.int64))
            self._start_pts = int(self._pts[0])
        if unique:  # a restart's pts labels the first frame decoded after seeking to it (checked then)
            self._restarts = {p[0]: j for j, p in enumerate(packets) if p[3] and j > 0}
            self._seek_ts = {j: p[1] if p[1] is not None else p[0] for j, p in enumerate(packets) if p[3] and j}

    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, `(num_frames,) float64` seconds from the stream start: from the
        packets' pts, or `i / fps` when some packet has none. Raises `SourceError` when it has neither."""
        if len(self._pts) == self.num_frames and self._time_base:
            return (self._pts - self._start_pts) * self._time_base
        if not self.fps:
            raise SourceError("video has neither timestamps nor a frame rate", path=self.path)
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def read(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` as `(len(indices), H, W, 3) uint8` RGB; `size=(W, H)` resizes (area)."""
        w, h = size if size else (self.width, self.height)
        out, put = collect(len(indices), h, w)
        self.decode_each(indices, put, size)
        return out

    def decode_each(self, indices: Sequence[int], on_frame: FrameCallback,
                    size: tuple[int, int] | None = None) -> None:
        """See `VideoReader.decode_each`. Raises `IndexError` for an index outside `[0, num_frames)` and
        `SourceError` for a stream that does not decode (`video_decode.checked_decode`)."""
        convert = rgb_converter(size, self.width, self.height)
        decode = self._decode_by_pts if self._by_pts else self._decode_in_order
        checked_decode(self.path, indices, self.num_frames, lambda idx: decode(idx, on_frame, convert))

    def _decode_by_pts(self, idx: np.ndarray, on_frame: FrameCallback, convert: Callable) -> int:
        """Seek to the keyframe before the first wanted frame, decode, match frames by pts; returns how
        many wanted frames never came."""
        import av

        wanted: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            wanted.setdefault(int(self._pts[i]), []).append(pos)
        remaining = set(wanted)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            if self.threads:
                stream.thread_type = "AUTO"
            first = int(idx.min())
            # Seek only when the first wanted frame is past the first keyframe; seeking to 0 is a no-op.
            keys = np.nonzero(self._keyframe[: first + 1])[0]
            if len(keys) and keys[-1] > 0:
                container.seek(int(self._pts[keys[-1]]), stream=stream, backward=True, any_frame=False)
            last_pts = int(self._pts[int(idx.max())])
            for frame in container.decode(stream):
                if frame.pts in remaining:
                    remaining.discard(frame.pts)
                    on_frame(convert(frame), wanted[frame.pts])
                if not remaining or (frame.pts is not None and frame.pts >= last_pts):
                    break
        return len(remaining)

    def _decode_in_order(self, idx: np.ndarray, on_frame: FrameCallback, convert: Callable) -> int:
        """Count the frames as the decoder outputs them, from the last restart point at or before the first
        wanted frame (where the n-th frame decoded is the n-th shown) or from the start; returns how many
        wanted frames the stream ended before."""
        wanted: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            wanted.setdefault(int(i), []).append(pos)
        start = max((j for j in self._seek_ts if j <= int(idx.min())), default=0)
        n = self._count_from(start, wanted, on_frame, convert) if start else None
        if n is None:
            n = self._count_from(0, wanted, on_frame, convert)
        return sum(1 for i in wanted if i >= n)

    def _count_from(self, start: int, wanted: dict[int, list[int]], on_frame: FrameCallback,
                    convert: Callable) -> int | None:
        """Deliver the wanted frames, counting from frame `start` (a restart point, or 0); returns the count
        reached, or None, having delivered nothing, when the seek did not land on `start`."""
        import av

        last, n = max(wanted), start
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            if self.threads:
                stream.thread_type = "AUTO"
            if start:
                container.seek(self._seek_ts[start], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if n == start and start and self._restarts.get(frame.pts) != start:
                    return None
                if n in wanted:
                    on_frame(convert(frame), wanted[n])
                n += 1
                if n > last:
                    break
        return n

    def close(self) -> None:
        """Nothing to release: each read opens the file anew (fork-safe)."""
        pass


@dataclass
class DecordReader:
    """decord backend (optional, `pip install decord`). Faster for sequential reads at native size; only
    used where `tests/test_video.py` shows it equals PyAV for that access pattern."""

    path: str
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    container: str = ""

    def __post_init__(self) -> None:
        try:
            import decord
        except ImportError as e:
            raise SourceError("decord is not installed; use backend='pyav'", path=str(self.path)) from e
        self.path = str(self.path)
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:
            raise SourceError(f"cannot open video: {e}", path=self.path) from e
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        self.height, self.width = self._vr[0].shape[:2] if self.num_frames else (0, 0)
        self.container = container_ext(self.path)

    def timestamps(self) -> np.ndarray:
        """Presentation time of each frame, `(num_frames,) float64` seconds (decord's)."""
        return np.asarray(self._vr.get_frame_timestamp(range(self.num_frames))[:, 0], dtype=np.float64)

    def read(self, indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames at `indices` as `(len(indices), H, W, 3) uint8` RGB, native size only (`SourceError`)."""
        if size is not None and tuple(size) != (self.width, self.height):
            raise SourceError("decord backend reads at native size only (its resize differs from PyAV's)",
                              path=self.path)
        try:
            return self._vr.get_batch(list(map(int, indices))).asnumpy()
        except Exception as e:
            raise SourceError(f"cannot decode video: {e}", path=self.path) from e

    def decode_each(self, indices: Sequence[int], on_frame: FrameCallback,
                    size: tuple[int, int] | None = None) -> None:
        """See `VideoReader.decode_each` (decord decodes the distinct frames as one batch)."""
        wanted: dict[int, list[int]] = {}
        for pos, i in enumerate(np.asarray(indices, dtype=np.int64).tolist()):
            wanted.setdefault(int(i), []).append(pos)
        order = sorted(wanted)
        for i, frame in zip(order, self.read(order, size)):
            on_frame(frame, wanted[i])

    def close(self) -> None:
        """Drop decord's reader."""
        self._vr = None


def _has_idr(data: bytes) -> bool:
    """Whether an H.264 access unit in Annex B form (start codes) holds an IDR slice (NAL type 5)."""
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        if data[i + 3] & 0x1F == 5:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


def _container_ext(format_name: str, metadata: dict[str, str], path: str) -> str:
    """The extension of a container from FFmpeg's demuxer name (`"mov,mp4,m4a,3gp,3g2,mj2"`), its
    metadata (the MP4 `major_brand`) and, for Matroska, the EBML DocType in the file's first bytes."""
    name = format_name.split(",")[0]
    if name == "mov":
        brand = metadata.get("major_brand", "").strip()
        return "mp4" if brand and brand != "qt" else "mov"  # an MP4 opens with its brand; old QuickTime may not
    if name == "matroska":
        with open(path, "rb") as f:
            head = f.read(64)
        return "webm" if b"\x42\x82\x84webm" in head else "mkv"
    return CONTAINER_EXTS.get(name, name)


def container_ext(path: str | Path) -> str:
    """The extension naming the container of the video at `path` ("mp4", "mov", "mkv", "webm", "avi", ...),
    read from its header. Raises `SourceError` when FFmpeg cannot open it."""
    import av

    try:
        with av.open(str(path)) as container:
            return _container_ext(container.format.name, dict(container.metadata), str(path))
    except Exception as e:  # PyAV raises several FFmpeg error types for unreadable files
        raise SourceError(f"cannot open video: {type(e).__name__}: {e}", path=str(path)) from e


BACKENDS = {"pyav": PyAVReader, "decord": DecordReader}


def open_video(path: str | Path, backend: str = "pyav") -> VideoReader:
    """Open `path` with the named backend ("pyav" default, "decord"). Raises `SourceError` if the file is
    missing, unreadable or holds no video, and `ValueError` for an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {sorted(BACKENDS)}")
    if not Path(path).exists():
        raise SourceError("video file missing", path=str(path))
    return BACKENDS[backend](str(path))


@contextmanager
def open_video_bytes(data: bytes, backend: str = "pyav", suffix: str = ".mp4") -> Iterator[VideoReader]:
    """Open in-memory video bytes (a tar member, an HTTP body) with `open_video`, through a temp file deleted on
    exit: the same frame-exact readers serve bytes and paths. Raises as `open_video`, naming `<bytes>`."""
    fd, tmp = tempfile.mkstemp(prefix="shardyard-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        reader = open_video(tmp, backend=backend)
        try:
            yield reader
        finally:
            reader.close()
    except SourceError as e:  # the same bytes, the same message (a report stores it): no temp name in it
        if e.path == tmp:
            raise SourceError(e.reason.replace(tmp, "<bytes>"), key=e.key, field=e.field) from e
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30.0, codec: str = "libx264",
                crf: int = 18) -> None:
    """Encode `(T, H, W, 3) uint8` RGB frames to an H.264 (yuv420p) mp4, as the YAM recorder does."""
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
