"""Channels-last frames as channels-first planes, the layout PyTorch models take.

A frame codec decodes interleaved `(H, W, C)` pixels (libjpeg-turbo and swscale's RGB output), and a model
wants `(C, H, W)`. The conversion is a deinterleave, and how it is done decides much of a loader's worker
time: per 640x480 RGB frame on the 2-core CI machine (a microbenchmark, median of 5 batches of 32 G1
frames), torch's transposing `stack` (what DataLoader's collate does to channels-last views) 0.7-0.9
ms, numpy's transposing copy 0.53 ms, OpenCV's SIMD `cv2.split` 0.085 ms. A JPEG frame decodes in 0.75 ms,
so the transposing copy was half a `jpeg` sample's worker time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_planes"]


def to_planes(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`frames (N, H, W, C)` (any dtype OpenCV splits, e.g. uint8) as `(N, C, H, W)`, the same values, written
    into `out` (a C-contiguous array of that shape and dtype) when given, else into a new array; returns it.

    Each frame is split by OpenCV's `cv2.split` straight into its planes of `out` (no intermediate arrays).
    Raises ValueError when `frames` is not 4-D or `out` has another shape or dtype, or is not C-contiguous."""
    if frames.ndim != 4:
        raise ValueError(f"to_planes takes (N, H, W, C) frames, got shape {frames.shape}")
    n, h, w, c = frames.shape
    if out is None:
        out = np.empty((n, c, h, w), dtype=frames.dtype)
    elif out.shape != (n, c, h, w) or out.dtype != frames.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {(n, c, h, w)} {frames.dtype} array, got {out.shape} "
                         f"{out.dtype} (contiguous: {out.flags.c_contiguous})")
    if c == 1 or n == 0:
        np.copyto(out.reshape(n, h, w), frames.reshape(n, h, w))
        return out
    import cv2  # imported on first use: ~0.1 s, which `import shardyard.cli` must not pay

    src = np.ascontiguousarray(frames)
    for i in range(n):  # `out` was checked above, so OpenCV writes into its planes rather than new arrays
        cv2.split(src[i], list(out[i]))
    return out
