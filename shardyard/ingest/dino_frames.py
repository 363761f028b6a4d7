"""Frames of a shard store of videos for `ingest dino --fps F` (issues 3 and 6; seed 004's patch study).

A shard store made by `ingest webvid` (webdataset tars, `<key>.<container>/.txt/.json`, `manifest.json` with the
sha256 of every shard) becomes a list of *units*, one per video, in manifest order then tar order. Each unit
is sampled at `fps` Hz by presentation time: frame `k` is the last frame shown at `t0 + k / fps`, for every
`k` with `t0 + k / fps <= t_last` (the rule of `ClipStream`), decoded frame-exact through `shardyard.video`.
Rows of the feature store are the sampled frames of every unit, concatenated; a unit is an "episode"
(`episode_ends` = cumulative sampled-frame counts).

A video that cannot be opened (an image stored as `.mp4`, a truncated or corrupt file) keeps one row, marked
missing and reported; frames that fail to decode later are masked the same way, so nothing crashes the job
and the rows stay a pure function of the shard bytes and `fps`.

The reader is picklable (plain data; bytes are re-read from the tars by offset), so Ray actors can use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shardyard.errors import ConfigError, SourceError, StoreError
from shardyard.stores import store_format
from shardyard.stores.manifest import MANIFEST, read_manifest_dict, sha256_file
from shardyard.stores.wds import FORMAT as SHARD_FORMAT
from shardyard.stores.wds import list_shards, split_key_ext
from shardyard.video import VIDEO_EXTS, open_video_bytes
from shardyard.video_memory import IMAGE_MAGIC

__all__ = ["IMAGE_MAGIC", "ShardFrameReader", "ShardFramesConfig", "VIDEO_INDEX", "VideoUnit", "is_shard_source",
           "sample_times"]

log = logging.getLogger(__name__)

VIDEO_INDEX = "videos.json"


def is_shard_source(store: str) -> bool:
    """True when `store` is a shard store (manifest format `shards-webdataset`), a folder holding only
    `.tar` files, or a `.tar` path."""
    p = Path(store)
    if (p / MANIFEST).exists():
        return store_format(store) == SHARD_FORMAT
    return str(store).endswith(".tar") or (p.is_dir() and any(p.rglob("*.tar")))


def sample_times(timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the frames shown at `t0 + k / fps` (k = 0, 1, ... while <= the last timestamp).

    timestamps `(T,)` float64 seconds, ascending -> `(n,) int64` frame indices (repeats when fps exceeds the
    video's rate). `n = floor((t_last - t0) * fps) + 1`.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    n = int(np.floor((ts[-1] - ts[0]) * fps + 1e-6)) + 1
    targets = ts[0] + np.arange(n) / fps
    return np.clip(np.searchsorted(ts, targets + 1e-6, side="right") - 1, 0, len(ts) - 1).astype(np.int64)


@dataclass
class ShardFramesConfig:
    """store: shard store path (or folder of tars). fps: sampling rate in Hz (> 0). field: video member
    extension (`mp4`, ...) or "video" for the first video member of each sample (any non-extension name,
    such as the episodic default `obs.rgb.top`, means "video"). size_hw: `(H, W)` every frame is resized to
    (bilinear, antialiased: the backbone's own resize, which then is a no-op), so videos of different sizes
    share a batch."""

    store: str
    fps: float
    field: str = "video"
    size_hw: tuple[int, int] = (224, 224)

    def __post_init__(self) -> None:
        if not self.fps or self.fps <= 0:
            raise ConfigError(f"--fps must be > 0 for a shard store of videos, got {self.fps}", path=self.store)
        if self.field not in VIDEO_EXTS:
            self.field = "video"
        self.size_hw = tuple(int(v) for v in self.size_hw)


@dataclass
class VideoUnit:
    """One video: where its bytes are (`shard`, `offset`, `size` in the tar), its caption, the sampled
    source frame `indices` and their `times` (s), or the `error` that made it unreadable."""

    key: str
    shard: str
    offset: int = 0
    size: int = 0
    ext: str = ""
    caption: str = ""
    indices: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    source_fps: float | None = None
    source_num_frames: int | None = None
    error: str | None = None

    @property
    def num_rows(self) -> int:
        """Rows in the feature store: the sampled frames, or 1 masked row for an unreadable video."""
        return len(self.indices) if self.error is None else 1


class ShardFrameReader:
    """Frames of a shard store of videos, sampled at `fps`, with the `FrameReader` contract of
    `ingest/dino.py`: `num_frames`, `fingerprint()`, `read(a, b)` -> `(x (n, 3, H, W) float32 in [0, 1],
    missing (n,) bool, error rows)`; plus `units`, `keys()`, `episode_ends`, `key_extra()`.

    Raises `StoreError` when no shard is found, `ConfigError` for a bad fps. Scanning opens every video once
    (packet table only) to plan its frames.
    """

    def __init__(self, config: ShardFramesConfig) -> None:
        self.config = config
        self.shards = list_shards(config.store)
        self.checksums = self._checksums()
        self.units: list[VideoUnit] = [u for s in self.shards for u in self._scan(s)]
        counts = np.asarray([u.num_rows for u in self.units], dtype=np.int64)
        self.episode_ends = np.cumsum(counts)
        self.episode_starts = self.episode_ends - counts
        log.info("%d video(s) in %d shard(s): %d frame(s) at %g Hz, %d unreadable", len(self.units),
                 len(self.shards), self.num_frames, config.fps, sum(u.error is not None for u in self.units))

    # ---- planning -----------------------------------------------------------------------------------
    def _checksums(self) -> list[dict[str, Any]]:
        p = Path(self.config.store)
        if (p / MANIFEST).exists():
            files = read_manifest_dict(p).get("files", [])
            return [{"name": f["name"], "bytes": f["bytes"], "sha256": f["sha256"]} for f in files]
        return [{"name": Path(s).name, "bytes": Path(s).stat().st_size, "sha256": sha256_file(s)}
                for s in self.shards]

    def _scan(self, shard: str) -> list[VideoUnit]:
        units: dict[str, VideoUnit] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = split_key_ext(info.name)
                    u = units.setdefault(key, VideoUnit(key=key, shard=shard))
                    if ext == "txt":
                        u.caption = tar.extractfile(info).read().decode("utf-8", "replace")
                    elif ext in VIDEO_EXTS and not u.ext and self.config.field in ("video", ext):
                        u.ext, u.offset, u.size = ext, info.offset_data, info.size
        except (tarfile.TarError, OSError) as e:
            raise StoreError(f"shard is not a readable tar: {e}", path=shard) from e
        out = [u for u in units.values() if u.ext]
        for u in out:
            self._plan(u)
        return out

    def _bytes(self, u: VideoUnit) -> bytes:
        with open(u.shard, "rb") as f:
            f.seek(u.offset)
            return f.read(u.size)

    def _plan(self, u: VideoUnit) -> None:
        data = self._bytes(u)
        if data.startswith(IMAGE_MAGIC):
            u.error = f"member {u.key}.{u.ext} is an image, not a video"
            return
        try:
            with open_video_bytes(data, suffix=f".{u.ext}") as r:
                ts = r.timestamps()
                idx = sample_times(ts, self.config.fps)
                u.indices, u.times = idx.tolist(), [round(float(ts[i] - ts[0]), 6) for i in idx]
                u.source_fps, u.source_num_frames = r.fps, r.num_frames
        except SourceError as e:
            u.error = str(e)

    # ---- the FrameReader contract -------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Frames sampled over every video (the feature store's sample count)."""
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    def keys(self) -> list[str]:
        """Sample keys of the videos, in shard then member order (one episode each)."""
        return [u.key for u in self.units]

    def fingerprint(self) -> str:
        """sha256 of the shard checksums (names, bytes, sha256 from the manifest)."""
        return hashlib.sha256(json.dumps(self.checksums, sort_keys=True).encode()).hexdigest()

    def key_extra(self) -> dict[str, Any]:
        """Additions to the provenance key: the sampling rate and every shard's checksum."""
        return {"fps": float(self.config.fps), "frame_field": self.config.field, "shards": self.checksums}

    def source_info(self) -> dict[str, Any]:
        """Per-video metadata for the feature store's manifest (`source`)."""
        return {"format": SHARD_FORMAT, "fps": float(self.config.fps), "episode_keys": self.keys(),
                "captions": [u.caption for u in self.units]}

    def write_index(self, out: Path) -> None:
        """`videos.json` in the feature store: per video its key, caption, shard, rows `[start, stop)`,
        sampled source frame indices and times, source fps and frame count, and error."""
        from shardyard.stores.atomic import atomic_write_json

        rows = [asdict(u) | {"start": int(a), "stop": int(b)} for u, a, b in
                zip(self.units, self.episode_starts, self.episode_ends)]
        for r in rows:
            r["shard"] = Path(r["shard"]).name
        atomic_write_json(Path(out) / VIDEO_INDEX, {"fps": self.config.fps, "videos": rows})

    def _error(self, i: int, ep: int, reason: str) -> dict[str, Any]:
        u = self.units[ep]
        return {"error": "SourceError", "index": int(i), "key": u.key, "step": int(i - self.episode_starts[ep]),
                "field": u.ext, "path": u.shard, "reason": reason[:300]}

    def frames(self, unit: int, steps: np.ndarray) -> torch.Tensor:
        """Frames `steps` (row offsets within the unit) of video `unit`: `(n, 3, H, W)` float32 in [0, 1]
        at `size_hw`. Raises `SourceError` when the video (or a frame) does not decode."""
        u = self.units[unit]
        if u.error is not None:
            raise SourceError(u.error, path=u.shard, key=u.key)
        idx = np.asarray(u.indices, dtype=np.int64)[steps]
        try:
            with open_video_bytes(self._bytes(u), suffix=f".{u.ext}") as r:
                img = r.read(idx)                                                   # (n, H0, W0, 3) uint8
        except IndexError as e:
            raise SourceError(str(e), path=u.shard, key=u.key) from e
        x = torch.from_numpy(img).permute(0, 3, 1, 2).float().div_(255.0)          # (n, 3, H0, W0)
        if tuple(x.shape[-2:]) != self.config.size_hw:
            x = F.interpolate(x, size=self.config.size_hw, mode="bilinear", align_corners=False, antialias=True)
        return x

    def read(self, a: int, b: int) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]]]:
        """Rows `[a, b)` (may span videos) -> `(x (n, 3, H, W), missing (n,), error rows)`."""
        h, w = self.config.size_hw
        x = torch.zeros(b - a, 3, h, w)
        missing = np.zeros(b - a, dtype=bool)
        errors: list[dict[str, Any]] = []
        rows = np.arange(a, b)
        units = np.searchsorted(self.episode_ends, rows, side="right")
        for k in np.unique(units):
            sel = np.flatnonzero(units == k)
            steps = rows[sel] - self.episode_starts[k]
            try:
                x[sel] = self.frames(int(k), steps)
            except SourceError as e:
                missing[sel] = True
                errors += [self._error(int(rows[j]), int(k), str(e)) for j in sel]
                log.warning("video %s: %d frame(s) masked missing: %s", self.units[k].key, len(sel), e)
        return x, missing, errors
