"""Random access into a `video` field (`stores.frames.video`): global rows -> RGB frames, frame-exact.

A read seeks to the keyframe at or before its first frame (the frame index gives each step's pts and
keyframe) and decodes forward, matching frames to steps by pts; a read that continues the last one in the
same GOP decodes on without a seek, so a batch read in row order decodes each GOP once. The last few
episodes' files stay open per process, each checked against its recorded crc32c as it opens.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from shardyard.stores.frames.video import file_crc32c, to_rgb, video_name
from shardyard.stores.read_checks import damaged_file

__all__ = ["VideoFrameReader"]


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
    read. Per-process state (the open files, the scaler) is rebuilt after a fork; the parent's stays
    referenced in the child, never freed there (a freed PyAV object may wait for threads the child does not
    have). A one-row read returns the converted frame's own buffer (no copy into a new array); `out` reads
    into the caller's array.

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
    _inherited: list[Any] = field(default_factory=list, repr=False)  # a parent's PyAV objects, after a fork

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Global rows `[start, stop)` (across episodes) as `(n, H, W, 3) uint8`, written into `out` (that
        shape) when given, and returned."""
        shape = (max(stop - start, 0), *self.row_shape)
        if out is None and shape[0] != 1:
            out = np.empty(shape, np.uint8)
        elif out is not None and out.shape != shape:
            raise ValueError(f"out has shape {out.shape}; rows [{start}, {stop}) need {shape}")
        row = start
        while row < stop:
            ep = int(np.searchsorted(self.episode_starts, row, side="right") - 1)
            base = int(self.episode_starts[ep])
            end = min(stop, int(self.episode_starts[ep + 1]) if ep + 1 < len(self.episode_starts)
                      else len(self.index))
            try:
                one = self._read_episode(ep, row - base, end - base, None if out is None else
                                         out[row - start:end - start])
            except (ValueError, FileNotFoundError, EOFError) as e:  # av's errors subclass these
                self._open.pop(ep, None)
                why = "missing" if isinstance(e, FileNotFoundError) else f"does not decode ({type(e).__name__}: {e})"
                raise self.damaged(f"video file {why}", episode=ep, step=row - base,
                                   file=f"{self.field_dir}/{video_name(ep)}") from e
            row = end
        return out if out is not None else np.ascontiguousarray(one)[None]  # padded rows: copied

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

        if self._pid != os.getpid():  # a forked child must not share the parent's demuxers, nor free them
            self._inherited.append((self._open, self._reformatter))
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

    def _read_episode(self, ep: int, a: int, b: int, dst: np.ndarray | None) -> np.ndarray | None:
        """Steps `[a, b)` of episode `ep` into `dst` `(n, H, W, 3)` (None for one step: its frame is
        returned); frames are matched to steps by pts."""
        state = self._decoder(ep, a)
        filled = 0
        for frame in state.frames:
            t = state.step_of.get(frame.pts)
            if t is None:
                continue
            state.last = t
            if a <= t < b:
                if dst is None:
                    return to_rgb(frame, self._reformatter)
                dst[t - a] = to_rgb(frame, self._reformatter)
                filled += 1
                if filled == b - a:
                    return None
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
        state.update(_pid=-1, _open={}, _reformatter=None, _inherited=[])
        return state
