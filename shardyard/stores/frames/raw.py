"""The raw-pixel frame codecs: `lz4` (blosc-lz4, the fastest to read), `zstd` and `none` (uncompressed).

Each stores a row's bytes, compressed or not, as one inner chunk through zarr's own codecs (`bytes`, then
`blosc` or `zstd`), so any zarr v3 reader opens the field. They hold any dtype and shape, which makes `lz4` the
fallback of a field an image codec cannot hold, and `zstd` (level 1) the codec of depth and token fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from shardyard.stores.frames.codec import ChunkCodec, blosc_shuffle, bytes_then

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Lz4Frames", "RawFrames", "ZstdFrames"]


class _BytesCodec(ChunkCodec):
    """A raw-pixel codec: its token is its name alone, and a stored field is this codec when its inner chain is
    `bytes` then the zarr compressor `compressor` (`""`: `bytes` alone), read with that compressor's stored
    settings."""

    compressor: ClassVar[str] = ""

    @classmethod
    def parse(cls, args: str) -> "Self":
        """The codec takes no arguments: ValueError when there are some."""
        if args:
            raise ValueError(f"{cls.name} takes no arguments")  # type: ignore[attr-defined]
        return cls()

    def token(self) -> str:
        """The codec's name."""
        return self.name  # type: ignore[attr-defined]

    @classmethod
    def from_inner(cls, inner: list[dict[str, Any]]) -> "Self | None":
        """`bytes`, then `compressor` when there is one, with its stored configuration."""
        rest = bytes_then(inner)
        if rest is None or len(rest) != bool(cls.compressor):
            return None
        if not cls.compressor:
            return cls()
        if rest[0].get("name") != cls.compressor:
            return None
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (rest[0].get("configuration") or {}).items() if k in names})


@dataclass(frozen=True)
class Lz4Frames(_BytesCodec):
    """Raw pixels through blosc (lz4, level 5, no shuffle when written by shardyard); a stored field with any
    blosc settings reads as this codec, with those settings."""

    name: ClassVar[str] = "lz4"
    help: ClassVar[str] = "raw pixels, lz4 (fastest reads)"
    compressor: ClassVar[str] = "blosc"
    cname: str = "lz4"
    clevel: int = 5
    shuffle: str = "noshuffle"
    typesize: int | None = None
    blocksize: int = 0

    def zarr_args(self) -> dict[str, Any]:
        """A blosc compressor of these settings."""
        extra = {} if self.typesize is None else {"typesize": self.typesize}
        from zarr.codecs import BloscCodec  # here: listing the codecs (the CLI's help) does not import zarr

        return {"compressors": BloscCodec(cname=self.cname, clevel=self.clevel, shuffle=self.shuffle,
                                          blocksize=self.blocksize, **extra)}

    def buffer_codec(self) -> Any:
        """The numcodecs Blosc of these settings (decoding reads the settings from the chunk's header)."""
        import numcodecs

        return numcodecs.Blosc(cname=self.cname, clevel=self.clevel, shuffle=blosc_shuffle(self.shuffle),
                               blocksize=self.blocksize)


@dataclass(frozen=True)
class ZstdFrames(_BytesCodec):
    """Raw pixels through zstd: level 3 for image fields, level 1 for depth and token fields."""

    name: ClassVar[str] = "zstd"
    help: ClassVar[str] = "raw pixels, zstd"
    compressor: ClassVar[str] = "zstd"
    level: int = 3
    checksum: bool = False

    def zarr_args(self) -> dict[str, Any]:
        """A zstd compressor of this level."""
        from zarr.codecs import ZstdCodec

        return {"compressors": ZstdCodec(level=self.level, checksum=self.checksum)}

    def buffer_codec(self) -> Any:
        """The numcodecs Zstd of this level."""
        import numcodecs

        return numcodecs.Zstd(level=self.level, checksum=self.checksum)


@dataclass(frozen=True)
class RawFrames(_BytesCodec):
    """Raw pixels, uncompressed: a chunk is the row's bytes (read with one `pread` per frame)."""

    name: ClassVar[str] = "none"
    help: ClassVar[str] = "raw pixels, uncompressed"
    stores_raw: ClassVar[bool] = True

    def zarr_args(self) -> dict[str, Any]:
        """No compressor."""
        return {"compressors": None}
