"""The `jpeg` frame codec (`JpegFrames`) and its zarr v3 codec `shardyard_jpeg` (`JpegCodec`): one JPEG per chunk
of `(1, H, W, C)` uint8 frames (C = 3 RGB or 1 gray).

A frame field stored with `--frame-codec jpeg` is a standard sharded zarr v3 array whose inner codec chain is
this one array -> bytes codec. zarr-python finds it by name in its codec registry: an installed shardyard
declares it under the `zarr.codecs` entry point (so `zarr.open_group(STORE)["data/obs.rgb.top"][i]` works in
any process), and importing this module (every shardyard reader and writer does) registers it as well.
Encoding and decoding go through libjpeg-turbo (simplejpeg), with the same decoder options everywhere, so the
worker's stats sample, the fast shard reader and zarr-python see the same pixels.

Quality 85 with 4:2:0 chroma is the default: on the real G1 camera frames
(`../shared/data/lerobot/unitree_g1_inspire_v2.1`, already 4:2:0 video) it keeps ~42 dB PSNR to the decoded
video at ~35 KB per 640x480 frame, 5.7x the source video's bytes (`benchmarks/frame_codecs.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import simplejpeg

from shardyard.stores.frames.codec import ChunkCodec, check_image_shape

if TYPE_CHECKING:
    from typing import Self

NAME = "shardyard_jpeg"
DEFAULT_QUALITY = 85
SUBSAMPLINGS = ("420", "422", "444")

__all__ = ["DEFAULT_QUALITY", "NAME", "JpegFrames", "check_frame_shape", "decode_frame", "encode_frame",
           "zarr_codec_class"]


def check_frame_shape(shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a frame of per-step `shape` and `dtype` cannot be JPEG-encoded (None when it can: uint8
    `(H, W, 3)`, `(H, W, 1)` or `(H, W)`)."""
    return check_image_shape(shape, dtype, "JPEG")


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
class JpegFrames(ChunkCodec):
    """The `jpeg` frame codec (`jpeg`, `jpeg:QUALITY` 1-100): one JPEG per frame, chroma `subsampling` 4:2:0
    unless a stored field says otherwise; uint8 RGB or gray fields only (others fall back to lz4)."""

    name: ClassVar[str] = "jpeg"
    help: ClassVar[str] = f"JPEG per frame (default; jpeg:Q sets the quality, {DEFAULT_QUALITY})"
    lossy: ClassVar[bool] = True
    decodes_into: ClassVar[bool] = True
    quality: int = DEFAULT_QUALITY
    subsampling: str = "420"

    @classmethod
    def parse(cls, args: str) -> "Self":
        """`jpeg` or `jpeg:QUALITY` (1-100)."""
        if args and not (args.isdigit() and 1 <= int(args) <= 100):
            raise ValueError("jpeg:QUALITY takes a quality 1-100")
        return cls(quality=int(args or DEFAULT_QUALITY))

    def token(self) -> str:
        """`jpeg:QUALITY`."""
        return f"{self.name}:{self.quality}"

    def why_not(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """JPEG holds uint8 RGB and gray frames."""
        return check_frame_shape(shape, dtype)

    @classmethod
    def from_inner(cls, inner: list[dict[str, Any]]) -> "Self | None":
        """The `shardyard_jpeg` codec alone."""
        if len(inner) != 1 or inner[0].get("name") != NAME:
            return None
        conf = inner[0].get("configuration") or {}
        return cls(quality=int(conf.get("quality", DEFAULT_QUALITY)), subsampling=str(conf.get("subsampling", "420")))

    def zarr_args(self) -> dict[str, Any]:
        """The `shardyard_jpeg` serializer, no compressor."""
        codec = zarr_codec_class()(quality=self.quality, subsampling=self.subsampling)
        return {"serializer": codec, "compressors": None}

    def buffer_decoder(self) -> None:
        """None: a JPEG decodes to a frame, not to its bytes."""
        return None

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """`encode(frame) -> JPEG bytes` (libjpeg-turbo)."""
        quality, subsampling = self.quality, self.subsampling
        return lambda row: encode_frame(row, quality, subsampling)

    def decoder(self, row_shape: tuple[int, ...], dtype: np.dtype | str = np.uint8) -> Callable[..., np.ndarray]:
        """`decode(chunk, out=None) -> frame (row_shape)`, straight into `out` when given."""
        channels = 3 if len(row_shape) == 3 and row_shape[2] == 3 else 1
        return lambda chunk, out=None: decode_frame(chunk, channels, out).reshape(row_shape)


@functools.cache
def zarr_codec_class() -> type:
    """`JpegCodec`, the zarr v3 codec `shardyard_jpeg` (`stores.frames.zarr_codec`), defined and registered
    with zarr on first use: the codec modules are imported to list the codecs (the CLI's help), which must not
    import zarr."""
    from zarr.registry import register_codec

    from shardyard.stores.frames.zarr_codec import FrameChunkZarrCodec

    @dataclass(frozen=True)
    class JpegCodec(FrameChunkZarrCodec):
        """zarr v3 array -> bytes codec for chunks of `(1, H, W[, C])` uint8 frames: each chunk is one JPEG.

        Configuration: `quality` (1-100), `subsampling` ("420", "422" or "444"; ignored for gray)."""

        codec_name: ClassVar[str] = NAME
        quality: int = DEFAULT_QUALITY
        subsampling: str = "420"

        def __post_init__(self) -> None:
            if not 1 <= int(self.quality) <= 100:
                raise ValueError(f"JPEG quality must be in [1, 100], got {self.quality}")
            if self.subsampling not in SUBSAMPLINGS:
                raise ValueError(f"JPEG subsampling must be one of {SUBSAMPLINGS}, got {self.subsampling!r}")

        def configuration(self) -> dict[str, Any]:
            """`quality` and `subsampling`."""
            return {"quality": int(self.quality), "subsampling": self.subsampling}

        def frame_codec(self) -> JpegFrames:
            """The `JpegFrames` of these settings."""
            return JpegFrames(quality=int(self.quality), subsampling=self.subsampling)

    # pickles and the entry point find the class by this name (`__getattr__` below)
    JpegCodec.__module__, JpegCodec.__qualname__ = __name__, "JpegCodec"
    register_codec(NAME, JpegCodec)
    return JpegCodec


def __getattr__(name: str) -> Any:
    """`JpegCodec` on first access (the `zarr.codecs` entry point and pickles name it here)."""
    if name == "JpegCodec":
        return zarr_codec_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
