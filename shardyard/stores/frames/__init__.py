"""How a frame field is encoded, stored and decoded: the frame codecs (`jpeg`, `video`, `lz4`, `zstd`, `none`,
`png`), one class each behind the `FrameCodec` protocol (`codec`) and listed once in `registry.FRAME_CODECS`;
the sharded chunk files they are appended to and the byte ranges read back from them."""

__all__: list[str] = []
