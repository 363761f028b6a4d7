"""Image and depth files of the NYU Depth V2 layouts, decoded to `rgb (H, W, 3) uint8` and `depth (H, W) float32`
metres (0 = invalid): 8/16-bit depth PNGs and raw Kinect `.pgm` disparity (NYU toolbox conversion). Errors are
`SourceError`s naming the file, the episode (`key`) and the field.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shardyard.errors import SourceError

__all__ = ["KINECT_A", "KINECT_B", "KINECT_INVALID", "kinect_depth", "png_depth", "read_pgm_disparity", "rgb_image"]

KINECT_A, KINECT_B, KINECT_INVALID = 351.3, 1092.5, 2047


def rgb_image(path: str, key: str) -> np.ndarray:
    """An image file as `(H, W, 3) uint8` RGB; raises `SourceError` naming it (field `obs.rgb`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise SourceError(f"cannot read RGB image: {e}", path=path, key=key, field="obs.rgb") from e


def png_depth(path: str, key: str, *, scale8: float | None = 10.0 / 255.0) -> np.ndarray:
    """Depth png -> metres: 16-bit is millimetres (/1000); 8-bit is DenseDepth's `255 = 10 m` (x scale8).
    `scale8=None`: the layout's depth is 16-bit millimetres, and an 8-bit png is a `SourceError` (its values
    are not millimetres, and no scale for them is known)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except Exception as e:
        raise SourceError(f"cannot read depth png: {e}", path=path, key=key, field="obs.depth") from e
    if arr.ndim == 3:
        raise SourceError(f"depth png has {arr.shape[2]} channels (mode {mode}), expected one", path=path,
                          key=key, field="obs.depth")
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        if scale8 is None:
            raise SourceError(f"8-bit depth png (mode {mode}) where this layout's depth is uint16 millimetres: "
                              "its values cannot be metres (DenseDepth's 255 = 10 m applies to nyu2_train only); "
                              "re-save it as 16-bit millimetres", path=path, key=key, field="obs.depth")
        return arr.astype(np.float32) * np.float32(scale8)
    return arr.astype(np.float32) / np.float32(1000.0)


def read_pgm_disparity(path: str, key: str) -> np.ndarray:
    """Raw Kinect `.pgm` (P5, maxval 65535) -> `(H, W) uint16` disparity. The NYU dumps store the payload
    little-endian (the toolbox swaps bytes after imread); the byte order is taken as the one whose values fit
    in 11 bits, so a spec-conforming big-endian file reads too."""
    data = Path(path).read_bytes()
    tokens, pos = [], 0
    while len(tokens) < 4:
        m = re.compile(rb"\s*(#[^\n]*\n\s*)*(\S+)").match(data, pos)
        if m is None:
            raise SourceError("truncated PGM header", path=path, key=key, field="obs.depth")
        tokens.append(m.group(2))
        pos = m.end()
    if tokens[0] != b"P5":
        raise SourceError(f"not a binary PGM (magic {tokens[0]!r})", path=path, key=key, field="obs.depth")
    w, h, maxval = (int(t) for t in tokens[1:])
    payload = data[pos + 1: pos + 1 + w * h * (2 if maxval > 255 else 1)]
    if maxval <= 255 or len(payload) < w * h * 2:
        raise SourceError(f"expected a 16-bit {w}x{h} payload, got maxval {maxval}, {len(payload)} bytes",
                          path=path, key=key, field="obs.depth")
    little = np.frombuffer(payload, dtype="<u2").reshape(h, w)
    if little.max() <= KINECT_INVALID:
        return little.copy()
    big = np.frombuffer(payload, dtype=">u2").reshape(h, w)
    if big.max() <= KINECT_INVALID:
        return big.astype(np.uint16)
    raise SourceError("PGM values exceed 11 bits in both byte orders: not Kinect disparity", path=path, key=key,
                      field="obs.depth")


def kinect_depth(raw: np.ndarray, max_depth: float = 10.0) -> np.ndarray:
    """NYU toolbox `depth_rel2depth_abs`: `351.3 / (1092.5 - raw)` metres; 2047 and negatives -> 0 (invalid);
    values beyond `max_depth` are clamped to it, as the toolbox does."""
    raw = raw.astype(np.float64)
    with np.errstate(divide="ignore"):
        d = KINECT_A / (KINECT_B - raw)
    d[(raw >= KINECT_INVALID) | ~np.isfinite(d) | (d < 0)] = 0.0
    return np.minimum(d, max_depth).astype(np.float32)


