"""The frame codecs by name: `FRAME_CODECS`, the one place that maps a `--frame-codec` name to its class
(`stores.frames.codec.FrameCodec`), and the lookups every caller goes through: a token to a codec
(`parse_frame_codecs`, `frame_codec`, `field_codec`), a stored field to the codec it was written with
(`codec_of`, `chunk_codec_of`, `chunk_codec_for_chain`), and the `--frame-codec` help (`frame_codec_help`).

Adding a codec is one module (a class following `FrameCodec`, as `png.py`) and one entry here.
"""

from __future__ import annotations

import logging
from typing import Any

from shardyard.errors import ConfigError
from shardyard.stores.frames.codec import ChunkCodec, FrameCodec
from shardyard.stores.frames.jpeg import JpegFrames
from shardyard.stores.frames.png import PngFrames
from shardyard.stores.frames.raw import Lz4Frames, RawFrames, ZstdFrames
from shardyard.stores.frames.video import VideoCodec

__all__ = ["DEFAULT_FRAME_CODEC", "FRAME_CODECS", "chunk_codec_for_chain", "chunk_codec_of", "codec_of",
           "field_codec", "frame_codec", "frame_codec_help", "parse_frame_codecs"]

log = logging.getLogger(__name__)

# name -> class, in the order `--frame-codec` help lists them
FRAME_CODECS: dict[str, type[FrameCodec]] = {
    "jpeg": JpegFrames,
    "video": VideoCodec,
    "lz4": Lz4Frames,
    "zstd": ZstdFrames,
    "none": RawFrames,
    "png": PngFrames,
}
DEFAULT_FRAME_CODEC = JpegFrames.name
FALLBACK = Lz4Frames()           # an image field the asked codec cannot hold (float, 4 channels, ...)
NON_IMAGE = ZstdFrames(level=1)  # depth and token fields, whatever `--frame-codec` says


def frame_codec_help(subject: str = "Image fields' codec") -> str:
    """The `--frame-codec` help text: `subject`, then every codec with its line, then the override syntax."""
    listed = "; ".join(f"{name}: {cls.help}" for name, cls in FRAME_CODECS.items())
    return f"{subject}, one of {', '.join(FRAME_CODECS)} ({listed}); FIELD=CODEC overrides, comma separated."


def frame_codec(token: str) -> FrameCodec:
    """The codec of one `NAME[:ARGS]` token (`"jpeg:90"`, `"video:23:8"`, `"lz4"`). Raises ValueError naming
    the codecs when the name is unknown, or saying what the codec's arguments should be."""
    name, _, args = token.partition(":")
    cls = FRAME_CODECS.get(name)
    if cls is None:
        raise ValueError(f"no codec named {name!r}")
    return cls.parse(args)


def parse_frame_codecs(text: str) -> dict[str, str]:
    """`--frame-codec` text -> {"": default token, field: token}: one codec token for every image field
    (`NAME[:ARGS]`, each codec's own syntax: "jpeg", "jpeg:90", "video:23:8", "lz4", "png", ...), then any
    `FIELD=CODEC` overrides, comma separated ("jpeg:90,obs.rgb.wrist=lz4"). Raises ConfigError naming the
    bad entry."""
    out: dict[str, str] = {"": DEFAULT_FRAME_CODEC}
    for i, item in enumerate(p.strip() for p in str(text).split(",")):
        field_name, _, token = item.rpartition("=")
        if not token or (i == 0) != (not field_name):
            raise ConfigError(f"--frame-codec {text!r}: expected CODEC[,FIELD=CODEC...], got {item!r}")
        try:
            frame_codec(token)
        except ValueError as e:
            raise ConfigError(f"--frame-codec {text!r}: unknown codec {token!r} ({e}); expected one of "
                              f"{', '.join(FRAME_CODECS)}") from None
        out[field_name] = token
    return out


def field_codec(token: str, key: str, spec: Any) -> FrameCodec:
    """The codec a new frame field `key` (a `FieldSpec` of a frame kind) is written with: the codec of `token`
    for an image field it can hold, else lz4 (with a warning naming the field and why); zstd level 1 for a
    depth or token field."""
    if spec.kind != "image":
        return NON_IMAGE
    codec = frame_codec(token)
    why = codec.why_not(tuple(spec.shape), spec.dtype)
    if why is None:
        return codec
    log.warning("field %s: %s; stored with %s instead of %s", key, why, FALLBACK.name, codec.name)
    return FALLBACK


def chunk_codec_for_chain(inner: list[dict[str, Any]]) -> ChunkCodec | None:
    """The chunk codec whose inner chunks the `sharding_indexed` inner codec chain `inner` writes, or None."""
    for cls in FRAME_CODECS.values():
        if issubclass(cls, ChunkCodec) and (codec := cls.from_inner(inner)) is not None:
            return codec
    return None


def chunk_codec_of(meta: dict[str, Any]) -> ChunkCodec | None:
    """The chunk codec of a stored array with one row per inner chunk (`meta` its `zarr.json` content: a
    frame field, a feature store's token array), or None for any other array."""
    codec = codec_of(meta)
    return codec if isinstance(codec, ChunkCodec) else None


def codec_of(meta: dict[str, Any]) -> FrameCodec | None:
    """The codec a stored field was written with (`meta` the `zarr.json` content of its array, or of its group
    for a video field), or None when it is not a frame field of a known codec."""
    for cls in FRAME_CODECS.values():
        if (codec := cls.from_meta(meta)) is not None:
            return codec
    return None
