"""What every PyAV-based video reader shares (`video.PyAVReader` on files, `video_memory.MemoryVideo` on bytes):
the frames at a list of indices gathered into one array, the RGB conversion of a decoded frame, and the checks
around a decode (indices in range, FFmpeg errors and missing frames as one `SourceError` naming the file)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from shardyard.errors import SourceError

__all__ = ["FrameCallback", "checked_decode", "collect", "rgb_converter"]

# `on_frame(frame (H, W, 3) uint8, positions)`: one call per distinct decoded frame; the array is valid only
# during the call, `positions` are the places of that frame in the requested index list.
FrameCallback = Callable[[np.ndarray, list[int]], None]


def collect(num: int, h: int, w: int) -> tuple[np.ndarray, FrameCallback]:
    """An output array `(num, h, w, 3) uint8` and the `decode_each` callback that fills it."""
    out = np.empty((num, h, w, 3), dtype=np.uint8)

    def put(frame: np.ndarray, positions: list[int]) -> None:
        out[positions] = frame
    return out, put


def rgb_converter(size: tuple[int, int] | None, width: int, height: int) -> Callable[[Any], np.ndarray]:
    """`frame -> (H, W, 3) uint8` RGB at `size=(W, H)` pixels (area filter), or at the native `width` x
    `height` when `size` is None, through one scaler for the call: `frame.to_ndarray(format=...)` builds a new
    one per frame, which was ~90 % of a 640x480 frame's conversion time. One scaler thread: readers run one per
    core, and a threaded scaler must never be freed in a forked child (`stores.frames.video.to_rgb`)."""
    from av.video.reformatter import VideoReformatter

    w, h = size if size else (width, height)
    reformatter = VideoReformatter()
    interpolation = "AREA" if size else None

    def convert(frame: Any) -> np.ndarray:
        return reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation=interpolation,
                                    threads=1).to_ndarray()
    return convert


def checked_decode(path: str, indices: Any, num_frames: int, decode: Callable[[np.ndarray], int]) -> None:
    """Run `decode(idx)` (it delivers the frames at `idx (N,) int64` and returns how many never came) on the
    requested `indices` of the video `path` of `num_frames` frames. Raises `IndexError` for an index outside
    `[0, num_frames)`, and `SourceError` naming `path` for an FFmpeg error (PyAV raises several types for a
    corrupt stream) or frames that could not be decoded (a truncated file)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
        raise IndexError(f"frame index out of range [0, {num_frames}) in {path}")
    if not len(idx):
        return
    try:
        missing = decode(idx)
    except (SourceError, IndexError):
        raise
    except Exception as e:
        raise SourceError(f"cannot decode video: {type(e).__name__}: {e}", path=path) from e
    if missing:
        raise SourceError(f"{missing} of {len(set(idx.tolist()))} requested frames could not be decoded "
                          "(truncated or corrupt file)", path=path)
