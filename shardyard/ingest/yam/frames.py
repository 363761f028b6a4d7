"""Frames of a YAM episode: videos (through `shardyard.video`) and image files, resized on ingest, with errors
naming the episode and field. A `FrameReader` is an explicit input of the layout readers; the schema probe
passes one with `first_only=True` instead of flipping a flag on the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shardyard.errors import SourceError
from shardyard.stores.frames.encoding import EncodedRows, FrameEncoding
from shardyard.video import VideoReader, open_video

__all__ = ["FrameReader"]


@dataclass(frozen=True)
class FrameReader:
    """Reads frames as the store keeps them: `(n, H, W, 3) uint8` RGB.

    image_size: `(W, H)` pixels to resize to (area filter), or None to keep the recorded size.
    video_backend: `shardyard.video` backend ("pyav" or "decord"). first_only: read one frame per stream,
    enough to learn the field specs (the schema probe).
    """

    image_size: tuple[int, int] | None = None
    video_backend: str = "pyav"
    first_only: bool = False

    def open(self, path: Path, key: str, field: str) -> VideoReader:
        """Open a video once (its packet table is read here); raises `SourceError` naming episode and field."""
        try:
            return open_video(path, self.video_backend)
        except SourceError as e:
            raise SourceError(e.reason, path=str(path), key=key, field=field) from None

    def video_frames(self, video: VideoReader, indices: np.ndarray, key: str, field: str,
                     encoding: FrameEncoding | None = None) -> np.ndarray | EncodedRows:
        """Frames `indices (n,)` of an open video as `(n, H, W, 3) uint8`, or `EncodedRows` of that shape when
        an `encoding` is given (each frame compressed as it is decoded); only the first with `first_only`.
        Raises `SourceError` for an index past the video's end or a frame that does not decode."""
        try:
            if len(indices) and int(indices.max()) >= video.num_frames:
                raise SourceError(f"video has {video.num_frames} frames, step needs frame {int(indices.max())}")
            if self.first_only:
                indices = indices[:1]
            if encoding is None or self.first_only:
                return video.read(indices, size=self.image_size)
            w, h = self.image_size or (video.width, video.height)
            sink = encoding.sink(len(indices))
            video.decode_each(indices, sink, size=self.image_size)
            return sink.rows((h, w, 3))
        except SourceError as e:
            raise SourceError(e.reason, path=video.path, key=key, field=field) from None

    def images(self, files: list[Path], key: str, field: str) -> np.ndarray:
        """Image files (PNG/JPEG) as `(n, H, W, 3) uint8` (the first only with `first_only`). Raises
        `SourceError` for an unreadable file or frames of different sizes."""
        from PIL import Image

        out = []
        for f in files[:1] if self.first_only else files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if self.image_size is not None:
                        im = im.resize(self.image_size, Image.Resampling.BOX)
                    out.append(np.asarray(im))
            except Exception as e:
                raise SourceError(f"cannot read image: {e}", path=str(f), key=key, field=field) from e
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise SourceError(f"frames differ in size: {sorted(shapes)}", path=str(files[0].parent), key=key,
                              field=field)
        return np.stack(out)
