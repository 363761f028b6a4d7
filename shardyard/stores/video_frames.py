r"""The `video` frame codec: one H.264 MP4 per episode and camera, a per-frame index beside it in zarr.

Layout of a field `F` stored as video (a zarr group, so zarr-python opens the store and tells where the
frames are):

    data/F/                    zarr group; attributes: spec, frame_codec {name: "video", codec, crf, gop,
                               pix_fmt}, videos "video/{episode:06d}.mp4" (episode = index in the store)
    data/F/video/000000.mp4    plain MP4 (yuv420p, constant GOP, no B-frames, a nominal 30 fps: the
                               episode's own rate is in its meta): ffmpeg plays it
    data/F/frame_index         (N, 2) int64 over all steps of all episodes: pts of the step's frame in its
                               episode's file, and the step (within the episode) of its keyframe

Random access (`VideoFrameReader.read`) seeks to the keyframe at or before the first wanted frame and decodes
forward; a read that continues where the last one ended (consecutive frames) goes on decoding without a seek,
and the files of the last few episodes read stay open. Frames
are matched by pts, so a read is frame-exact whatever the demuxer's seek lands on (tested against FFmpeg's
own `select=eq(n\,i)` output). Encoding happens in the reader workers (`VideoEncoder`), decoding through the
same PyAV conversion everywhere (`to_rgb`), so the workers' stats sample equals the frames read back.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from shardyard.stores.atomic import chmod_as_umask
from shardyard.stores.read_checks import damaged_file

VIDEO_DIR = "video"
INDEX = "frame_index"
DEFAULT_CRF = 20
DEFAULT_GOP = 4  # G1 640x480: 0.70x the source bytes, reads as fast as GOP 2 (1.09x the bytes), 1.6x GOP 8

__all__ = ["DEFAULT_CRF", "DEFAULT_GOP", "INDEX", "VIDEO_DIR", "EncodedVideo", "VideoCodec", "VideoEncoder",
           "VideoFrameReader", "file_crc32c", "to_rgb", "video_name"]


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
    new one per frame, 3.2 ms of a 640x480 frame's 3.5 ms here; the pixels are the same either way."""
    if reformatter is None:
        return frame.to_ndarray(format="rgb24")
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


@dataclass(frozen=True)
class VideoCodec:
    """Encoder settings of a video field: `codec` (libx264), `crf` (quality, lower is better), `gop`
    (frames per keyframe interval: a random read decodes at most `gop` frames), `fps` (Hz, for players)."""

    codec: str = "libx264"
    crf: int = DEFAULT_CRF
    gop: int = DEFAULT_GOP
    fps: float = 30.0
    name: str = "video"

    @property
    def lossy(self) -> bool:
        """Always True: decoded frames differ from the encoder's input."""
        return True

    def to_attrs(self) -> dict[str, Any]:
        """The `frame_codec` attribute of the field's zarr group."""
        return {"name": "video", "codec": self.codec, "crf": self.crf, "gop": self.gop, "pix_fmt": "yuv420p"}

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
        # is decode order, so a seek lands where the index says.
        s.options = {"crf": str(self.codec.crf), "preset": "veryfast", "bf": "0", "threads": "1",
                     "x264-params": f"keyint={self.codec.gop}:min-keyint={self.codec.gop}:scenecut=0"}
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


@dataclass
class _OpenEpisode:
    """One episode's open file: its container and stream, pts -> step, the decode generator and the last
    step it gave."""

    container: Any
    stream: Any
    step_of: dict[int, int]
    frames: Any = None
    last: int = -2  # no frame decoded since the last seek


@dataclass
class VideoFrameReader:
    """Frames of one video field: global rows -> `(n, H, W, 3) uint8`, through the per-episode MP4s.

    `field_dir` is the field's folder (local path or path inside fsspec `fs`); `index` its `(N, 2)`
    frame index; `episode_starts (E,)` the first global row of each episode. The files of the last
    `open_files` episodes read stay open (opening an MP4 probes its stream, which costs about what decoding
    a GOP of 640x480 frames does), so a shuffled sampler over a few episodes pays a seek, not an open, per
    read. Per-process state (the open files) is rebuilt after a fork.

    `crc (E,) uint32`: each MP4's recorded crc32c, checked as the file opens (a local one once per process
    while its inode, size and mtime stay; a remote one is read whole, decoded from memory). A missing, damaged
    or undecodable file raises `damaged(reason, episode=, step=, file=)` (`StoreDamagedError`)."""

    field_dir: str
    index: np.ndarray
    episode_starts: np.ndarray
    row_shape: tuple[int, ...]
    fs: Any = None
    open_files: int = 4
    crc: np.ndarray | None = None
    damaged: Callable[..., Exception] = damaged_file
    _verified: dict[int, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    _pid: int = field(default=-1, repr=False)
    _open: dict[int, _OpenEpisode] = field(default_factory=dict, repr=False)  # in least-recent-first order
    _reformatter: Any = field(default=None, repr=False)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Global rows `[start, stop)` (across episodes)."""
        out = np.empty((max(stop - start, 0),) + tuple(self.row_shape), dtype=np.uint8)
        row = start
        while row < stop:
            ep = int(np.searchsorted(self.episode_starts, row, side="right") - 1)
            base = int(self.episode_starts[ep])
            end = min(stop, int(self.episode_starts[ep + 1]) if ep + 1 < len(self.episode_starts)
                      else len(self.index))
            try:
                self._read_episode(ep, row - base, end - base, out[row - start:end - start])
            except (ValueError, FileNotFoundError, EOFError) as e:  # av's errors subclass these
                self._open.pop(ep, None)
                why = "missing" if isinstance(e, FileNotFoundError) else f"does not decode ({type(e).__name__}: {e})"
                raise self.damaged(f"video file {why}", episode=ep, step=row - base,
                                   file=f"{self.field_dir}/{video_name(ep)}") from e
            row = end
        return out

    def _source(self, ep: int, path: str) -> Any:
        """What `av.open` reads for episode `ep` (local `path`, or a file object), checked against its crc32c."""
        if self.fs is not None:
            if self.crc is None:
                return self.fs.open(path, "rb")
            data = self.fs.cat_file(path)
            self._check(ep, path, file_crc32c(data))
            return io.BytesIO(data)
        if self.crc is not None:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._verified.get(ep) != key:
                self._check(ep, path, file_crc32c(path))
                self._verified[ep] = key
        return path

    def _check(self, ep: int, path: str, got: int) -> None:
        if self.crc is not None and got != int(self.crc[ep]):
            raise self.damaged(f"video file crc32c {got:08x} differs from the recorded {int(self.crc[ep]):08x}",
                               episode=ep, file=path)

    def _episode(self, ep: int) -> _OpenEpisode:
        """Episode `ep`'s open file (opened, and the least recently used one closed, when not open)."""
        import av
        from av.video.reformatter import VideoReformatter

        if self._pid != os.getpid():  # a forked child must not share the parent's demuxers
            self._open, self._pid = {}, os.getpid()
            self._reformatter = VideoReformatter()
        state = self._open.pop(ep, None)
        if state is None:
            while len(self._open) >= max(self.open_files, 1):
                self._open.pop(next(iter(self._open))).container.close()
            path = f"{self.field_dir}/{video_name(ep)}"
            container = av.open(self._source(ep, path))
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one slice per frame (the encoder's): threads add nothing
            step_of = {int(p): t for t, p in enumerate(self._episode_index(ep)[:, 0].tolist())}
            state = _OpenEpisode(container, stream, step_of)
        self._open[ep] = state  # most recent last
        return state

    def _decoder(self, ep: int, first: int) -> _OpenEpisode:
        """Episode `ep`'s open file, positioned so that its next frame is at most `first`: where the last
        read stopped when that is before `first` with no keyframe between, else after a seek to the
        keyframe of `first`."""
        state = self._episode(ep)
        key = int(self.index[int(self.episode_starts[ep]) + first, 1])
        if state.frames is not None and key <= state.last + 1 <= first:
            return state
        state.container.seek(int(self.index[int(self.episode_starts[ep]) + key, 0]), stream=state.stream,
                             backward=True, any_frame=False)
        state.frames, state.last = state.container.decode(state.stream), key - 1
        return state

    def _read_episode(self, ep: int, a: int, b: int, dst: np.ndarray) -> None:
        """Steps `[a, b)` of episode `ep` into `dst`; frames are matched to steps by pts."""
        state = self._decoder(ep, a)
        filled = 0
        for frame in state.frames:
            t = state.step_of.get(frame.pts)
            if t is None:
                continue
            state.last = t
            if a <= t < b:
                dst[t - a] = to_rgb(frame, self._reformatter)
                filled += 1
                if filled == b - a:
                    return
            if t >= b - 1:
                break
        state.frames = None  # exhausted or past the end: the next read seeks
        raise ValueError(f"{b - a - filled} frame(s) of steps [{a}, {b}) not found in {self.field_dir}/"
                         f"{video_name(ep)} (truncated or corrupt file)")

    def _episode_index(self, ep: int) -> np.ndarray:
        base = int(self.episode_starts[ep])
        end = int(self.episode_starts[ep + 1]) if ep + 1 < len(self.episode_starts) else len(self.index)
        return self.index[base:end]

    def close(self) -> None:
        """Close the open files (they are also closed when the reader is collected)."""
        for state in self._open.values():
            state.container.close()
        self._open = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_pid=-1, _open={}, _reformatter=None)
        return state


def create_video_field(group: Any, key: str, spec: dict[str, Any], codec: VideoCodec) -> None:
    """Create field `key` of zarr group `group` (the store's `data/`) as a video field: a zarr group whose
    attributes say where the frames are, holding the empty `(0, 2) int64` frame index."""
    from zarr.codecs import ZstdCodec

    sub = group.create_group(key, attributes={
        "spec": spec, "frame_codec": codec.to_attrs(), "videos": f"{VIDEO_DIR}/{{episode:06d}}.mp4",
        "note": "frames are in one MP4 per episode (episode = index in meta/episode_ends); frame_index rows: "
                "(pts in that file, step of its keyframe); read them with shardyard.open_store or ffmpeg"})
    sub.create_array(INDEX, shape=(0, 2), dtype="int64", chunks=(16384, 2), compressors=ZstdCodec(level=3))


def video_codec_of(meta: dict[str, Any]) -> VideoCodec | None:
    """The `VideoCodec` of a field whose `zarr.json` content is `meta`, or None if it is not a video field."""
    if meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes", {}).get("frame_codec") or {}
    return VideoCodec.from_attrs(attrs) if attrs.get("name") == "video" else None


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
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(video.data or b"")
        os.replace(tmp, target)
        return crc

    def drop_after(self, num_episodes: int) -> None:
        """Delete the files of episodes `>= num_episodes` (not committed) and stray temp files."""
        from pathlib import Path

        folder = Path(self.field_dir) / VIDEO_DIR
        for f in folder.iterdir() if folder.is_dir() else []:
            stem = f.name.split(".")[0]
            if f.name.startswith(".") or not stem.isdigit() or int(stem) >= num_episodes:
                f.unlink()
