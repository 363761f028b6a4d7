r"""The `video` frame codec: one H.264 MP4 per episode and camera, a per-frame index beside it in zarr.

Layout of a field `F` stored as video (a zarr group, so zarr-python opens the store and tells where the
frames are):

    data/F/                    zarr group; attributes: spec, frame_codec {name: "video", codec, crf, gop,
                               pix_fmt, entropy}, videos "video/{episode:06d}.mp4" (episode = index in the
                               store)
    data/F/video/000000.mp4    plain MP4 (yuv420p, constant GOP, no B-frames, CAVLC, a nominal 30 fps: the
                               episode's own rate is in its meta): ffmpeg plays it
    data/F/frame_index         (N, 2) int64 over all steps of all episodes: pts of the step's frame in its
                               episode's file, and the step (within the episode) of its keyframe

Random access (`stores.frames.video_reader.VideoFrameReader`) seeks to the keyframe at or before the first wanted
frame and decodes forward, matching frames by pts, so a read is frame-exact whatever the demuxer's seek lands
on (tested against FFmpeg's own `select=eq(n\,i)` output). Encoding happens in the reader workers
(`VideoEncoder`), decoding through the same PyAV conversion everywhere (`to_rgb`), so the workers' stats
sample equals the frames read back.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from shardyard.stores.atomic import atomic_write_bytes, chmod_as_umask
from shardyard.stores.frames.codec import VIDEO

VIDEO_DIR = "video"
INDEX = "frame_index"
# G1 640x480, all 736 frames (docs/frame-codecs.md): CRF 21 GOP 3 is 0.91x LeRobot's export's bytes at 0.1 dB
# more PSNR (39.2 dB) and a random read decodes in 0.87x the time of CRF 20 GOP 4 (0.84x the bytes, 39.7 dB);
# GOP 2 at CRF 20 reads faster still but is 1.3x LeRobot's bytes, and at CRF 23 falls below its PSNR
DEFAULT_CRF = 21
DEFAULT_GOP = 3
# CAVLC, not CABAC: a random read's decode (keyframe + the P-frames up to the frame) takes about 0.6x the time
# for 1.09x the bytes at the same PSNR; no scene-cut keyframes: a constant GOP. cpu-independent: x264's SIMD
# macroblock-tree propagation uses approximate reciprocals (rcpps) whose last bits are the CPU's own; on a
# loaded virtual machine the same frames gave another file for about 1 episode in 60 (the 1- and 2-worker
# ingests of a store then differ), with the portable C version 360 of 360 were identical. Costs ~1 % bytes
# at the same PSNR on the G1 camera frames.
X264_PARAMS = "cabac=0:scenecut=0:cpu-independent=1"

__all__ = ["DEFAULT_CRF", "DEFAULT_GOP", "INDEX", "VIDEO_DIR", "X264_PARAMS", "EncodedVideo", "VideoCodec",
           "VideoEncoder", "file_crc32c", "to_rgb", "video_name"]


def video_name(episode: int) -> str:
    """File name of episode `episode`'s video inside the field's folder (`video/000007.mp4`)."""
    return f"{VIDEO_DIR}/{episode:06d}.mp4"


def file_crc32c(source: str | bytes | None) -> int:
    """crc32c (Castagnoli) of a file (`source` a path) or of bytes, read in 8 MiB pieces."""
    import google_crc32c

    if not isinstance(source, str):
        return int(google_crc32c.value(source or b""))
    crc = 0
    with open(source, "rb") as f:
        while piece := f.read(8 << 20):
            crc = google_crc32c.extend(crc, piece)
    return int(crc)


def to_rgb(frame: Any, reformatter: Any = None) -> np.ndarray:
    """A decoded PyAV frame as `(H, W, 3) uint8` RGB (the one conversion every reader uses). Pass the
    caller's own `av.video.reformatter.VideoReformatter` to reuse its scaler: `frame.to_ndarray` builds a
    new one per frame, 3.2 ms of a 640x480 frame's 3.5 ms here; the pixels are the same either way.

    One scaler thread: a 640x480 frame converts in 0.1 ms, where waking scaler threads costs more than it
    saves (the readers run one per DataLoader worker), and a threaded scaler must never be freed in a forked
    child (its threads are not there: `sws_freeContext` waits for them forever)."""
    if reformatter is None:
        return frame.to_ndarray(format="rgb24", threads=1)
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


@dataclass(frozen=True)
class VideoCodec:
    """The `video` frame codec (`video`, `video:CRF`, `video:CRF:GOP`) and the encoder settings of a video
    field: `codec` (libx264), `crf` (quality 0-51, lower is better), `gop` (frames per keyframe interval, 1-600:
    a random read decodes at most `gop` frames), `fps` (Hz, for players). The entropy coder is CAVLC
    (`X264_PARAMS`); files written before it was are CABAC and read the same. Layout `VIDEO`: the frames are
    not zarr chunks but one MP4 per episode (`VideoEncoder` writes it, `video_reader.VideoFrameReader` reads
    it); uint8 RGB fields only (others fall back to lz4)."""

    name: ClassVar[str] = "video"
    help: ClassVar[str] = "H.264 MP4 per episode (video:CRF, video:CRF:GOP; the smallest, slower random reads)"
    lossy: ClassVar[bool] = True  # decoded frames differ from the encoder's input
    layout: ClassVar[str] = VIDEO
    codec: str = "libx264"
    crf: int = DEFAULT_CRF
    gop: int = DEFAULT_GOP
    fps: float = 30.0

    @classmethod
    def parse(cls, args: str) -> "VideoCodec":
        """`video`, `video:CRF` (0-51) or `video:CRF:GOP` (GOP 1-600 frames)."""
        crf, _, gop = args.partition(":")
        if (crf and not (crf.isdigit() and int(crf) <= 51)) or (gop and not (gop.isdigit() and 1 <= int(gop) <= 600)):
            raise ValueError("video:CRF takes a CRF 0-51, video:CRF:GOP a GOP of 1-600 frames")
        return cls(crf=int(crf or DEFAULT_CRF), gop=int(gop or DEFAULT_GOP))

    def token(self) -> str:
        """`video:CRF:GOP`."""
        return f"{self.name}:{self.crf}:{self.gop}"

    def why_not(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """The video layout holds uint8 `(H, W, 3)` frames."""
        if np.dtype(dtype) != np.uint8 or len(shape) != 3 or shape[2] != 3:
            return "not (H, W, 3) uint8"
        return None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "VideoCodec | None":
        """The codec of a field whose `zarr.json` content is `meta`, or None if it is not a video field."""
        if meta.get("node_type") != "group":
            return None
        attrs = meta.get("attributes", {}).get("frame_codec") or {}
        return cls.from_attrs(attrs) if attrs.get("name") == cls.name else None

    def to_attrs(self) -> dict[str, Any]:
        """The `frame_codec` attribute of the field's zarr group."""
        return {"name": self.name, "codec": self.codec, "crf": self.crf, "gop": self.gop, "pix_fmt": "yuv420p",
                "entropy": "cavlc"}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "VideoCodec":
        """Inverse of `to_attrs`."""
        return cls(codec=attrs.get("codec", "libx264"), crf=int(attrs.get("crf", DEFAULT_CRF)),
                   gop=int(attrs.get("gop", DEFAULT_GOP)))


@dataclass
class EncodedVideo:
    """One episode of a video field, encoded: the MP4 (`path` of a spill file, or its bytes in `data`),
    `index (T, 2) int64` (pts, keyframe step), `shape` `(T, H, W, 3)`, the stats sample/part of the
    stored frames (as `EncodedRows`), and `crc32c` of the MP4 file (taken in the worker; None: not taken).
    Quacks like an array for schema checks."""

    index: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    path: str | None = None
    data: bytes | None = None
    sample: np.ndarray | None = None
    stats_part: dict[str, Any] | None = None
    crc32c: int | None = None

    @property
    def ndim(self) -> int:
        """Dimensions, the leading T included."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Encoded size in bytes."""
        return len(self.data) if self.data is not None else os.path.getsize(self.path or "")

    def __len__(self) -> int:
        return self.shape[0]


class VideoEncoder:
    """Callback `(frame, positions)` that encodes an episode's frames, in position order, into one MP4
    (in `spill_dir`, or in memory), then decodes the file once to keep the stats sample of the stored frames
    (every `sample_every`-th step, every `pixel_stride`-th pixel). Raises ValueError when positions come out
    of order or one is never filled."""

    def __init__(self, codec: VideoCodec, num_rows: int, sample_every: int = 0, pixel_stride: int = 1,
                 spill_dir: str | None = None) -> None:
        self.codec, self.num_rows = codec, num_rows
        self.sample_every, self.pixel_stride = sample_every, pixel_stride
        self._path: str | None = None
        if spill_dir is not None:
            fd, self._path = tempfile.mkstemp(suffix=".mp4", dir=spill_dir)
            os.close(fd)
        self._buf = io.BytesIO()
        self._container: Any = None
        self._stream: Any = None
        self._next = 0

    def _open(self, h: int, w: int) -> None:
        import av

        self._container = av.open(self._path or self._buf, mode="w", format="mp4")
        s = self._container.add_stream(self.codec.codec, rate=Fraction(self.codec.fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.gop_size = self.codec.gop
        # One thread and no scene-cut keyframes: the same bytes whatever the machine; no B-frames: pts order
        # is decode order, so a seek lands where the index says; CAVLC: see X264_PARAMS.
        s.options = {"crf": str(self.codec.crf), "preset": "veryfast", "bf": "0", "threads": "1",
                     "x264-params": f"keyint={self.codec.gop}:min-keyint={self.codec.gop}:{X264_PARAMS}"}
        self._stream = s

    def __call__(self, frame: np.ndarray, positions: list[int]) -> None:
        """Encode `frame (H, W, 3) uint8` at each of `positions`, which must continue the episode in order."""
        import av

        if self._container is None:
            self._open(frame.shape[0], frame.shape[1])
        img = np.ascontiguousarray(frame.reshape(frame.shape[0], frame.shape[1], 3))
        for pos in positions:
            if pos != self._next:
                raise ValueError(f"video frames must arrive in step order: got step {pos}, expected {self._next}")
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                self._container.mux(packet)
            self._next += 1

    def finish(self, row_shape: tuple[int, ...], dtype: Any = np.uint8) -> EncodedVideo:
        """Flush the encoder, index the file (pts and keyframe of each step), sample the stored frames."""
        if self._next != self.num_rows or self._container is None:
            self.abort()
            raise ValueError(f"{self.num_rows - self._next} of {self.num_rows} rows were not decoded")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        data = None if self._path else self._buf.getvalue()
        index, sample = _index_and_sample(self._path or io.BytesIO(data), self.num_rows, self.sample_every,
                                          self.pixel_stride)
        return EncodedVideo(index=index, shape=(self.num_rows,) + tuple(row_shape), dtype=np.dtype(dtype),
                            path=self._path, data=data, sample=sample, crc32c=file_crc32c(self._path or data))

    rows = finish  # the `FrameSink.rows` name, so sources treat both sinks alike

    def abort(self) -> None:
        """Drop the partial file."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._path and os.path.exists(self._path):
            os.unlink(self._path)


def _index_and_sample(src: Any, num_rows: int, every: int, stride: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an encoded episode once: `(T, 2)` (pts, keyframe step) and the stats sample of its frames."""
    import av
    from av.video.reformatter import VideoReformatter

    pts, keys, sample = [], [], []
    reformatter = VideoReformatter()
    with av.open(src) as c:
        for t, frame in enumerate(c.decode(c.streams.video[0])):
            pts.append(frame.pts)
            keys.append(t if frame.key_frame else keys[-1])
            if every and t % every == 0:
                sample.append(to_rgb(frame, reformatter)[::stride, ::stride].copy())
    if len(pts) != num_rows:
        raise ValueError(f"encoded video holds {len(pts)} frames, expected {num_rows}")
    return np.stack([np.asarray(pts, np.int64), np.asarray(keys, np.int64)], axis=1), \
        (np.stack(sample) if sample else None)


def create_video_field(group: Any, key: str, spec: dict[str, Any], codec: VideoCodec) -> None:
    """Create field `key` of zarr group `group` (the store's `data/`) as a video field: a zarr group whose
    attributes say where the frames are, holding the empty `(0, 2) int64` frame index."""
    from zarr.codecs import ZstdCodec

    sub = group.create_group(key, attributes={
        "spec": spec, "frame_codec": codec.to_attrs(), "videos": f"{VIDEO_DIR}/{{episode:06d}}.mp4",
        "note": "frames are in one MP4 per episode (episode = index in meta/episode_ends); frame_index rows: "
                "(pts in that file, step of its keyframe); read them with shardyard.open_store or ffmpeg"})
    sub.create_array(INDEX, shape=(0, 2), dtype="int64", chunks=(16384, 2), compressors=ZstdCodec(level=3))


@dataclass
class VideoFieldFiles:
    """The MP4 files of one video field (`field_dir/video/<episode>.mp4`), for the writer: each episode's
    file is moved (or written) into place under a temp name and renamed, so a file is whole or absent."""

    field_dir: Any

    def place(self, episode: int, video: EncodedVideo) -> int:
        """Put `video` at episode index `episode` (a spill file is renamed, bytes are written); returns the
        file's crc32c (the worker's, else taken here)."""
        from pathlib import Path

        target = Path(self.field_dir) / video_name(episode)
        target.parent.mkdir(parents=True, exist_ok=True)
        crc = video.crc32c if video.crc32c is not None else file_crc32c(video.path or video.data)
        if video.path is not None:
            chmod_as_umask(video.path)  # a spill file is made 0600 (mkstemp)
            os.replace(video.path, target)
            return crc
        atomic_write_bytes(target, video.data or b"", fsync=False)
        return crc

    def drop_after(self, num_episodes: int) -> None:
        """Delete the files of episodes `>= num_episodes` (not committed) and stray temp files."""
        from pathlib import Path

        folder = Path(self.field_dir) / VIDEO_DIR
        for f in folder.iterdir() if folder.is_dir() else []:
            stem = f.name.split(".")[0]
            if f.name.startswith(".") or not stem.isdigit() or int(stem) >= num_episodes:
                f.unlink()
