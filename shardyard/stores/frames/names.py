"""The frame codecs by name, with one line each: what `stores.frames.encoding.parse_frame_codecs` accepts and what
every `--frame-codec` help text lists. A module without imports, so the CLI builds its help without loading zarr
or numpy; `frame_encoding` takes its `FRAME_CODECS` from here, so the two cannot disagree."""

from __future__ import annotations

__all__ = ["DEFAULT_FRAME_CODEC", "FRAME_CODECS", "FRAME_CODEC_HELP", "frame_codec_help"]

# name -> its help: the parser's names, in the order the help lists them
FRAME_CODEC_HELP: dict[str, str] = {
    "jpeg": "JPEG per frame (default; jpeg:Q sets the quality, 85)",
    "video": "H.264 MP4 per episode (video:CRF, video:CRF:GOP; the smallest, slower random reads)",
    "lz4": "raw pixels, lz4 (fastest reads)",
    "zstd": "raw pixels, zstd",
    "none": "raw pixels, uncompressed",
}
FRAME_CODECS: tuple[str, ...] = tuple(FRAME_CODEC_HELP)
DEFAULT_FRAME_CODEC = "jpeg"


def frame_codec_help(subject: str = "Image fields' codec") -> str:
    """The `--frame-codec` help text: `subject`, then every codec with its line, then the override syntax."""
    listed = "; ".join(f"{name}: {text}" for name, text in FRAME_CODEC_HELP.items())
    return f"{subject}, one of {', '.join(FRAME_CODECS)} ({listed}); FIELD=CODEC overrides, comma separated."
