"""`FrameChunkZarrCodec`: the zarr v3 side of an image frame codec (`shardyard_jpeg`, `shardyard_png`), an
array -> bytes codec of one frame per chunk that delegates to its `ChunkCodec`, so zarr-python reads such a
field as any other array.

An image codec module builds its subclass on first use (`zarr_codec_class`, cached) and registers it with
zarr; an installed shardyard also declares each under the `zarr.codecs` entry point, so
`zarr.open_group(STORE)["data/obs.rgb.top"][i]` works in any process. Apart from the codec modules so that
listing the codecs (the CLI's help) does not import zarr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

from shardyard.stores.frames.codec import ChunkCodec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

__all__ = ["FrameChunkZarrCodec"]


@dataclass(frozen=True)
class FrameChunkZarrCodec(ArrayBytesCodec):
    """Base of the zarr v3 array -> bytes codecs of one image frame per chunk (`shardyard_jpeg`,
    `shardyard_png`): a subclass names itself (`codec_name`), keeps its configuration as dataclass fields and
    gives `frame_codec()`, the `ChunkCodec` whose encoder and decoder it runs, so zarr-python and shardyard's
    own shard reader decode the same pixels."""

    is_fixed_size = False
    codec_name: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Self":
        """From the `{"name": ..., "configuration": {...}}` entry of a `zarr.json`."""
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        """The entry written to `zarr.json`."""
        return {"name": self.codec_name, "configuration": self.configuration()}

    def configuration(self) -> dict[str, Any]:
        """The `configuration` entry: the dataclass fields."""
        raise NotImplementedError

    def frame_codec(self) -> ChunkCodec:
        """The `ChunkCodec` of these settings."""
        raise NotImplementedError

    def _check(self, chunk_spec: "ArraySpec") -> tuple[int, ...]:
        shape = tuple(chunk_spec.shape)
        why = self.frame_codec().why_not(shape[1:], str(chunk_spec.dtype.to_native_dtype()))
        if shape[0] != 1 or why is not None:
            raise ValueError(f"{self.codec_name} encodes one frame per chunk: chunk shape {shape}: "
                             f"{why or 'not 1 frame'}")
        return shape

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: "ArraySpec") -> NDBuffer:
        shape = self._check(chunk_spec)
        decode = self.frame_codec().decoder(shape[1:], np.uint8)
        img = decode(chunk_bytes.as_numpy_array().tobytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(img.reshape(shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: "ArraySpec") -> Buffer | None:
        shape = self._check(chunk_spec)
        frame = np.ascontiguousarray(np.asarray(chunk_array.as_numpy_array()).reshape(shape[1:]))
        return chunk_spec.prototype.buffer.from_bytes(self.frame_codec().encoder()(frame))

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: "ArraySpec") -> int:
        """Not known ahead (variable size)."""
        raise NotImplementedError
