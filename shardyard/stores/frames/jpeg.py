"""The `shardyard_jpeg` zarr v3 codec: one JPEG per chunk of `(1, H, W, C)` uint8 frames (C = 3 RGB or 1 gray).

A frame field stored with `--frame-codec jpeg` is a standard sharded zarr v3 array whose inner codec chain is
this one array -> bytes codec. zarr-python finds it by name in its codec registry: an installed shardyard
declares it under the `zarr.codecs` entry point (so `zarr.open_group(STORE)["data/obs.rgb.top"][i]` works in
any process), and importing `shardyard` (or this module) registers it as well. Encoding and decoding go through
libjpeg-turbo (simplejpeg), with the same decoder options everywhere, so the worker's stats sample, the fast
shard reader and zarr-python see the same pixels.

Quality 85 with 4:2:0 chroma is the default: on the real G1 camera frames
(`../shared/data/lerobot/unitree_g1_inspire_v2.1`, already 4:2:0 video) it keeps ~42 dB PSNR to the decoded
video at ~35 KB per 640x480 frame, 5.7x the source video's bytes (`benchmarks/frame_codecs.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import simplejpeg
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

NAME = "shardyard_jpeg"
DEFAULT_QUALITY = 85
SUBSAMPLINGS = ("420", "422", "444")

__all__ = ["DEFAULT_QUALITY", "NAME", "JpegCodec", "check_frame_shape", "decode_frame", "encode_frame"]


def check_frame_shape(shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a frame of per-step `shape` and `dtype` cannot be JPEG-encoded (None when it can: uint8
    `(H, W, 3)`, `(H, W, 1)` or `(H, W)`)."""
    if np.dtype(dtype) != np.uint8:
        return f"JPEG holds uint8 frames, not {dtype}"
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
        return None
    return f"JPEG holds (H, W, 3), (H, W, 1) or (H, W) frames, not {shape}"


def encode_frame(frame: np.ndarray, quality: int = DEFAULT_QUALITY, subsampling: str = "420") -> bytes:
    """One `(H, W, 3)` RGB, `(H, W, 1)` or `(H, W)` gray uint8 frame as JPEG bytes (libjpeg-turbo)."""
    img = frame.reshape(frame.shape[0], frame.shape[1], -1)
    if img.shape[2] == 1:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="GRAY")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB",
                                  colorsubsampling=subsampling)


def decode_frame(data: bytes | memoryview, channels: int = 3, out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes -> `(H, W, channels)` uint8 (accurate DCT and upsampling: the same pixels in every reader),
    decoded straight into `out` (a C-contiguous uint8 array of the frame's size) when given. Raises ValueError
    for bytes that are not a JPEG, or not one of `out`'s size."""
    img = simplejpeg.decode_jpeg(bytes(data), colorspace="RGB" if channels == 3 else "GRAY", fastdct=False,
                                 fastupsample=False, buffer=out)
    if out is not None and img.size != out.size:
        raise ValueError(f"JPEG holds a {img.shape} frame, not {out.shape}")
    return img


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """zarr v3 array -> bytes codec for chunks of `(1, H, W[, C])` uint8 frames: each chunk is one JPEG.

    Configuration: `quality` (1-100), `subsampling` ("420", "422" or "444"; ignored for gray)."""

    is_fixed_size = False
    quality: int = DEFAULT_QUALITY
    subsampling: str = "420"

    def __post_init__(self) -> None:
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {self.quality}")
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(f"JPEG subsampling must be one of {SUBSAMPLINGS}, got {self.subsampling!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Self":
        """From the `{"name": "shardyard_jpeg", "configuration": {...}}` entry of a `zarr.json`."""
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        """The entry written to `zarr.json`."""
        return {"name": NAME, "configuration": {"quality": int(self.quality), "subsampling": self.subsampling}}

    def _check(self, chunk_spec: "ArraySpec") -> tuple[int, ...]:
        shape = tuple(chunk_spec.shape)
        why = check_frame_shape(shape[1:], str(chunk_spec.dtype.to_native_dtype()))
        if shape[0] != 1 or why is not None:
            raise ValueError(f"{NAME} encodes one frame per chunk: chunk shape {shape}: {why or 'not 1 frame'}")
        return shape

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: "ArraySpec") -> NDBuffer:
        shape = self._check(chunk_spec)
        img = decode_frame(chunk_bytes.as_numpy_array().tobytes(), 1 if len(shape) == 3 or shape[3] == 1 else 3)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(img.reshape(shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: "ArraySpec") -> Buffer | None:
        shape = self._check(chunk_spec)
        frame = np.asarray(chunk_array.as_numpy_array()).reshape(shape[1:])
        data = encode_frame(frame, int(self.quality), self.subsampling)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: "ArraySpec") -> int:
        """Not known ahead (variable size)."""
        raise NotImplementedError


register_codec(NAME, JpegCodec)
