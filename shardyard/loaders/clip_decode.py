"""One clip out of one video's bytes: the decode shared by `ClipStream` (tar members of a shard store) and
`UrlClipStream` (HTTP bodies), so a clip is the same pixels whichever way its bytes arrived.

Frame `i` is the i-th frame a front-to-back decode outputs, in every container (`shardyard.video`'s
frame-exact readers). The clip's start frame is drawn from `(seed, epoch, crc32(key))`, so a sample gives
the same clip from a shard store and from the URL it was downloaded from, when both use the same key.
"""

from __future__ import annotations

import logging
import zlib
from typing import Protocol

import numpy as np
import torch

from shardyard.errors import SourceError
from shardyard.video import open_video_bytes

__all__ = ["IMAGE_MAGIC", "ClipOptions", "decode_clip"]

log = logging.getLogger(__name__)

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")


class ClipOptions(Protocol):
    """The clip fields `decode_clip` reads (`StreamConfig` and `UrlStreamConfig` both have them)."""

    num_frames: int
    fps: float | None
    size: tuple[int, int] | None
    clip_start: str
    seed: int
    backend: str


def decode_clip(data: bytes, key: str, opts: ClipOptions, epoch: int,
                ext: str = "mp4") -> tuple[torch.Tensor | None, str | None]:
    """Frames `(T, 3, H, W) uint8` of the clip of video bytes `data`, or `(None, reason)` with reason
    "not_video" (a still image), "too_short" (fewer frames, or a shorter span at `opts.fps`, than the clip)
    or "undecodable". T = `opts.num_frames`; `(W, H)` = `opts.size` (None keeps the video's size); with
    `opts.fps` (Hz) frames are picked by timestamp, else consecutive. `ext` names the container of the
    temp file the reader opens (PyAV probes the bytes whatever it says). Never raises for bad bytes."""
    if data.startswith(IMAGE_MAGIC):
        return None, "not_video"
    rng = np.random.default_rng([opts.seed, epoch, zlib.crc32(key.encode())])
    try:
        with open_video_bytes(data, backend=opts.backend, suffix=f".{ext}") as r:
            if opts.fps:
                ts = r.timestamps()
                span = (opts.num_frames - 1) / opts.fps
                room = float(ts[-1] - ts[0]) - span
                if room < 0:
                    return None, "too_short"
                t0 = ts[0] + (rng.uniform(0, room) if opts.clip_start == "random" else 0.0)
                targets = t0 + np.arange(opts.num_frames) / opts.fps
                idx = np.clip(np.searchsorted(ts, targets + 1e-6, side="right") - 1, 0, r.num_frames - 1)
            else:
                room = r.num_frames - opts.num_frames
                if room < 0:
                    return None, "too_short"
                start = int(rng.integers(room + 1)) if opts.clip_start == "random" else 0
                idx = np.arange(start, start + opts.num_frames)
            frames = r.read(idx, size=opts.size)  # (T, H, W, 3) uint8
    except (SourceError, IndexError) as e:
        log.debug("sample %s undecodable: %s", key, e)
        return None, "undecodable"
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), None  # (T, 3, H, W)
