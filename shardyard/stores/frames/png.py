"""The `png` frame codec (`png`, `png:LEVEL` with a zlib level 0-9, 1 by default): one lossless PNG per frame,
through Pillow, and its zarr v3 codec `shardyard_png` (`PngCodec`, registered when this module is imported).

The whole of adding a codec: this file and its entry in `stores.frames.registry.FRAME_CODECS`. Writer,
readers, verify, edits and recode find it there. For uint8 RGB and gray fields; others fall back to lz4.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from shardyard.stores.frames.codec import ChunkCodec, check_image_shape

if TYPE_CHECKING:
    from typing import Self

NAME = "shardyard_png"
DEFAULT_LEVEL = 1  # zlib level: most of level 9's size for a fraction of its encoding time

__all__ = ["zarr_codec_class", "DEFAULT_LEVEL", "NAME", "PngFrames"]


@dataclass(frozen=True)
class PngFrames(ChunkCodec):
    """The `png` frame codec: each uint8 `(H, W, 3)` RGB or `(H, W[, 1])` gray frame is one PNG, compressed at
    zlib `level`; decoding gives the frame back exactly."""

    name: ClassVar[str] = "png"
    help: ClassVar[str] = f"PNG per frame, lossless (png:LEVEL sets the zlib level 0-9, {DEFAULT_LEVEL})"
    level: int = DEFAULT_LEVEL

    @classmethod
    def parse(cls, args: str) -> "Self":
        """`png` or `png:LEVEL` (0-9)."""
        if args and not (args.isdigit() and 0 <= int(args) <= 9):
            raise ValueError("png:LEVEL takes a zlib level 0-9")
        return cls(level=int(args or DEFAULT_LEVEL))

    def token(self) -> str:
        """`png:LEVEL`."""
        return f"{self.name}:{self.level}"

    def why_not(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """PNG (here) holds uint8 RGB and gray frames."""
        return check_image_shape(shape, dtype, "PNG")

    @classmethod
    def from_inner(cls, inner: list[dict[str, Any]]) -> "Self | None":
        """The `shardyard_png` codec alone."""
        if len(inner) != 1 or inner[0].get("name") != NAME:
            return None
        return cls(level=int((inner[0].get("configuration") or {}).get("level", DEFAULT_LEVEL)))

    def zarr_args(self) -> dict[str, Any]:
        """The `shardyard_png` serializer, no compressor."""
        return {"serializer": zarr_codec_class()(level=self.level), "compressors": None}

    def buffer_decoder(self) -> None:
        """None: a PNG decodes to a frame, not to its bytes."""
        return None

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """`encode(frame) -> PNG bytes`."""
        from PIL import Image  # here: the codec list (the CLI's help) does not load Pillow

        level = self.level

        def encode(row: np.ndarray) -> bytes:
            img = row.reshape(row.shape[0], row.shape[1], -1)
            buf = io.BytesIO()
            Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format="PNG", compress_level=level)
            return buf.getvalue()
        return encode

    def decoder(self, row_shape: tuple[int, ...], dtype: np.dtype | str = np.uint8) -> Callable[..., np.ndarray]:
        """`decode(chunk, out=None) -> frame (row_shape)`. Raises ValueError for a PNG of another shape or
        mode, and Pillow's error for bytes that are not a PNG."""
        from PIL import Image

        mode = "RGB" if len(row_shape) == 3 and row_shape[2] == 3 else "L"

        def decode(chunk: bytes, out: np.ndarray | None = None) -> np.ndarray:
            with Image.open(io.BytesIO(chunk), formats=["PNG"]) as im:
                if im.mode != mode:
                    raise ValueError(f"PNG holds a {im.mode} frame, not {mode}")
                row = np.asarray(im).reshape(row_shape)
            if out is not None:
                out[...] = row
                return out
            return row
        return decode


@functools.cache
def zarr_codec_class() -> type:
    """`PngCodec`, the zarr v3 codec `shardyard_png` (`stores.frames.zarr_codec`), defined and registered
    with zarr on first use: the codec modules are imported to list the codecs (the CLI's help), which must not
    import zarr."""
    from zarr.registry import register_codec

    from shardyard.stores.frames.zarr_codec import FrameChunkZarrCodec

    @dataclass(frozen=True)
    class PngCodec(FrameChunkZarrCodec):
        """zarr v3 array -> bytes codec for chunks of `(1, H, W[, C])` uint8 frames: each chunk is one PNG.
        Configuration: `level` (zlib, 0-9)."""

        codec_name: ClassVar[str] = NAME
        level: int = DEFAULT_LEVEL

        def __post_init__(self) -> None:
            if not 0 <= int(self.level) <= 9:
                raise ValueError(f"PNG level must be in [0, 9], got {self.level}")

        def configuration(self) -> dict[str, Any]:
            """`level`."""
            return {"level": int(self.level)}

        def frame_codec(self) -> PngFrames:
            """The `PngFrames` of this level."""
            return PngFrames(level=int(self.level))

    # pickles and the entry point find the class by this name (`__getattr__` below)
    PngCodec.__module__, PngCodec.__qualname__ = __name__, "PngCodec"
    register_codec(NAME, PngCodec)
    return PngCodec


def __getattr__(name: str) -> Any:
    """`PngCodec` on first access (the `zarr.codecs` entry point and pickles name it here)."""
    if name == "PngCodec":
        return zarr_codec_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
