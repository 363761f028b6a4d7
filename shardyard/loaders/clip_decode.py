"""One clip out of one video's bytes: the decode shared by `ClipStream` (tar members of a shard store) and
`UrlClipStream` (HTTP bodies), so a clip is the same pixels whichever way its bytes arrived.

Frame `i` is the i-th frame a front-to-back decode outputs, in every container (`shardyard.video`'s
frame-exact readers). The clip's start frame is drawn from `(seed, epoch, crc32(key))`, so a sample gives
the same clip from a shard store and from the URL it was downloaded from, when both use the same key.
"""

from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from typing import Iterator, Protocol

import numpy as np
import torch

from shardyard.errors import ConfigError, SourceError
from shardyard.stores.frames.planes import to_planes
from shardyard.video import VideoReader, open_video_bytes
from shardyard.video_memory import IMAGE_MAGIC, SERVED_EXTS, open_memory_video

__all__ = ["IMAGE_MAGIC", "ClipOptions", "decode_clip"]

log = logging.getLogger(__name__)



class ClipOptions(Protocol):
    """The clip fields `decode_clip` reads (`StreamConfig` and `UrlStreamConfig` both have them)."""

    num_frames: int
    fps: float | None
    size: tuple[int, int] | None
    resize: str
    clip_start: str
    seed: int
    backend: str


@contextmanager
def _open_clip(data: bytes, backend: str, ext: str) -> Iterator[VideoReader]:
    """A reader of video bytes: demuxed in memory where frames are matched by pts (`video_memory`), else the
    `backend` reader through a temp file (AVI, raw streams, repeated pts; decord)."""
    video = open_memory_video(data, ext) if backend == "pyav" and ext in SERVED_EXTS else None
    if video is None:
        with open_video_bytes(data, backend=backend, suffix=f".{ext}") as r:
            yield r
        return
    try:
        yield video
    finally:
        video.close()


def _clip_indices(r: VideoReader, opts: ClipOptions, rng: np.random.Generator) -> np.ndarray | None:
    """The `(T,)` frame indices of the clip of reader `r`, or None when the video is shorter than the clip."""
    if opts.fps:
        ts = r.timestamps()
        span = (opts.num_frames - 1) / opts.fps
        room = float(ts[-1] - ts[0]) - span
        if room < 0:
            return None
        t0 = ts[0] + (rng.uniform(0, room) if opts.clip_start == "random" else 0.0)
        targets = t0 + np.arange(opts.num_frames) / opts.fps
        return np.clip(np.searchsorted(ts, targets + 1e-6, side="right") - 1, 0, r.num_frames - 1)
    room = r.num_frames - opts.num_frames
    if room < 0:
        return None
    start = int(rng.integers(room + 1)) if opts.clip_start == "random" else 0
    return np.arange(start, start + opts.num_frames)


RESIZE_MODES = ("stretch", "crop", "pad")


def checked_clip_options(opts: ClipOptions) -> tuple[int, int] | None:
    """Check the clip fields of a stream config (`StreamConfig`, `UrlStreamConfig`) and return its `size` as
    `(W, H)` px (an int S means (S, S)). Raises `ConfigError` naming the bad field."""
    if opts.num_frames < 1 or (opts.fps is not None and opts.fps <= 0):
        raise ConfigError(f"num_frames must be >= 1 and fps > 0, got {opts.num_frames}, {opts.fps}")
    if opts.clip_start not in ("random", "start"):
        raise ConfigError(f"clip_start must be 'random' or 'start', got {opts.clip_start!r}")
    if opts.resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {opts.resize!r}")
    return (opts.size, opts.size) if isinstance(opts.size, int) else opts.size


def resize_geometry(src: tuple[int, int], size: tuple[int, int], mode: str) -> tuple[tuple[int, int], int, int]:
    """How a `src=(W, H)` frame becomes an output of `size=(w, h)` px under `mode`: the size to scale it to
    (area filter) and the (x, y) offset in px of the scaled frame in the output (negative: cropped).
    "stretch" scales to `size` whatever the aspect ratio (16:9 squashed into a square); "crop" keeps the
    aspect ratio, scales so the frame covers `size` and cuts the centre; "pad" keeps it, scales so the frame
    fits and centres it on black. Raises `ConfigError` for another mode."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    (sw, sh), (w, h) = src, size
    if mode == "stretch" or sw * h == sh * w:
        return (w, h), 0, 0
    scale = max(w / sw, h / sh) if mode == "crop" else min(w / sw, h / sh)
    tw, th = max(1, round(sw * scale)), max(1, round(sh * scale))
    if mode == "crop":   # rounding must never leave the output uncovered
        tw, th = max(tw, w), max(th, h)
    else:
        tw, th = min(tw, w), min(th, h)
    return (tw, th), (w - tw) // 2 if tw <= w else -((tw - w) // 2), (h - th) // 2 if th <= h else -((th - h) // 2)


def decode_clip(data: bytes, key: str, opts: ClipOptions, epoch: int,
                ext: str = "mp4") -> tuple[torch.Tensor | None, str | None]:
    """Frames `(T, 3, H, W) uint8` of the clip of video bytes `data`, or `(None, reason)` with reason
    "not_video" (a still image), "too_short" (fewer frames, or a shorter span at `opts.fps`, than the clip)
    or "undecodable". T = `opts.num_frames`; `(W, H)` = `opts.size` (None keeps the video's size), reached
    as `opts.resize` says (`resize_geometry`: "stretch", "crop" or "pad"); with
    `opts.fps` (Hz) frames are picked by timestamp, else consecutive. `ext` names the container (the temp
    file's suffix where one is needed; PyAV probes the bytes whatever it says). Never raises for bad bytes."""
    if data.startswith(IMAGE_MAGIC):
        return None, "not_video"
    rng = np.random.default_rng([opts.seed, epoch, zlib.crc32(key.encode())])
    try:
        with _open_clip(data, opts.backend, ext) as r:
            idx = _clip_indices(r, opts, rng)
            if idx is None:
                return None, "too_short"
            w, h = opts.size if opts.size else (r.width, r.height)
            scaled, x, y = resize_geometry((r.width, r.height), (w, h), opts.resize if opts.size else "stretch")
            # Each frame goes channel-first into the output while it is in cache: a (T, H, W, 3) array then
            # torch's `permute(...).contiguous()` cost 6 ms of CPU per 16-frame 256 px clip, 3x the scaling;
            # a frame that fills the output is split into its planes (`to_planes`: 6x numpy's transpose).
            out = (np.zeros if x > 0 or y > 0 else np.empty)((len(idx), 3, h, w), dtype=np.uint8)
            ch, cw = min(h, scaled[1]), min(w, scaled[0])                   # the part of the frame kept
            src = (slice(max(0, -y), max(0, -y) + ch), slice(max(0, -x), max(0, -x) + cw))
            dst = (slice(max(0, y), max(0, y) + ch), slice(max(0, x), max(0, x) + cw))
            fills = (ch, cw) == (h, w)

            def put(frame: np.ndarray, positions: list[int]) -> None:
                first = positions[0]
                if fills:
                    to_planes(frame[None, src[0], src[1]], out[first:first + 1])
                else:
                    out[first][:, dst[0], dst[1]] = frame[src].transpose(2, 0, 1)
                for pos in positions[1:]:
                    out[pos] = out[first]
            r.decode_each(idx, put, size=scaled if opts.size else None)
    except (SourceError, IndexError) as e:
        log.debug("sample %s undecodable: %s", key, e)
        return None, "undecodable"
    return torch.from_numpy(out), None  # (T, 3, H, W)
