"""Export an episodic store as a LeRobot v3.0 dataset (the layout LeRobot's `LeRobotDataset` reads).

Written under `out/`:

    meta/info.json                               codebase_version "v3.0", fps, features, paths, totals
    meta/tasks.parquet                           task (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet     per episode: tasks, length, data/video file indices,
                                                 dataset_from/to_index, videos/<key>/from/to_timestamp
    meta/stats.json                              per feature: min, max, mean, std, count (images per channel, [0, 1])
    data/chunk-000/file-000.parquet              one row per step: features + timestamp, frame_index,
                                                 episode_index, index, task_index
    videos/<observation.images.cam>/chunk-000/file-000.mp4   all episodes' frames back to back (H.264)

Field keys map to feature names with `shardyard.lerobot_names.feature_from_field` (`obs.rgb.cam` ->
`observation.images.cam`, `obs.state` -> `observation.state`), so `ingest lerobot` reads the export back into
the same fields. Frames are encoded with LeRobot's own defaults (lerobot 0.4.4,
`lerobot.datasets.video_utils.encode_video_frames`: `vcodec="libsvtav1"`, `pix_fmt="yuv420p"`, `g=2`, `crf=30`,
SVT-AV1 `preset=12`): AV1 through PyAV's SVT-AV1 when PyAV has it, H.264 (libx264, same `g` and `crf`)
otherwise. The short GOP (a keyframe every 2 frames) is what makes LeRobot's random access fast: a decoder seeks
to the keyframe at or before the frame it wants. Video is lossy; every other array is exact.
The episode's frame times are `frame_index / fps`, LeRobot's `timestamp` (it finds a step's frame by it); a
store field `timestamp` is written as that column when it equals them (within LeRobot's 1e-4 s), else (capture
times, say) as the feature `observation.timestamp`, exact either way.

Every field is exported: image fields as video, every other one as a per-step parquet column of its dtype and
shape (pose fields `obs.T_world_cam.<role>` as `observation.T_world_cam.<role>` of shape `[4, 4]`, nested
lists as LeRobot's `Array2D` reads them), but for kinds a LeRobot dataset cannot hold (`text`, `tokens`,
`video`: named in a warning). LeRobot numbers episodes `0..E-1` by position, so export episode `i` is store
episode `i`; `meta/shardyard.json` (`stores.export_meta`) records what LeRobot's metadata cannot: each
episode's store key and metadata (task, fps, cameras with `K` and `T_world_cam`, its own `episode_index`, ...),
every field's unit, kind and description, and the split. `ingest lerobot` reads it back, so an export ingested
again gives the store's fields, keys and per-episode metadata back; `meta/episodes` also carries each
episode's store key as `shardyard/key`. SVT-AV1's banner is silenced (`SVT_LOG=1`: errors only) while an
encoder opens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import ConfigError
from shardyard.lerobot_names import feature_from_field
from shardyard.stores.export_meta import EXPORT_META, NOT_EXPORTED_KINDS, export_meta

__all__ = ["CODEC_NAMES", "DATA_PATH", "ExportConfig", "VIDEO_PATH", "VideoWriter", "codec_options",
           "export_lerobot", "resolve_vcodec"]

log = logging.getLogger(__name__)

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


TIMESTAMP_FEATURE = "observation.timestamp"  # a store `timestamp` that is not the frame times

# PyAV encoder name -> the codec name LeRobot's info.json records (`video.codec`, from the stream's codec).
CODEC_NAMES = {"libsvtav1": "av1", "libx264": "h264"}


@dataclass
class ExportConfig:
    """How `export_lerobot` writes a dataset; the video defaults are LeRobot's `encode_video_frames` defaults.

    out: dataset folder. vcodec: PyAV encoder, "libsvtav1" or "libx264", or "auto" (SVT-AV1 when PyAV has it,
    else libx264). crf: quality (lower = closer to the stored frames; LeRobot: 30). g: GOP size in frames, i.e.
    a keyframe every `g` frames (LeRobot: 2). pix_fmt: encoder pixel format (LeRobot: "yuv420p"). preset:
    SVT-AV1 speed preset (LeRobot: 12; ignored by libx264). overwrite: replace `out`. fps: frame rate when
    episodes carry none (Hz). robot_type: written to info.json.
    """

    out: Path
    vcodec: str = "auto"
    crf: int = 30
    g: int = 2
    pix_fmt: str = "yuv420p"
    preset: int = 12
    overwrite: bool = False
    fps: float | None = None
    robot_type: str | None = None

    def __post_init__(self) -> None:
        """Raise ConfigError for a GOP under 1 frame or a crf outside 0..63 (SVT-AV1's range; x264 takes 0..51)."""
        if self.g < 1:
            raise ConfigError(f"g (GOP size) must be at least 1 frame, got {self.g}", field="g")
        if not 0 <= self.crf <= 63:
            raise ConfigError(f"crf must be in 0..63, got {self.crf}", field="crf")


def resolve_vcodec(vcodec: str) -> str:
    """The PyAV encoder to use for `vcodec` ("auto", "libsvtav1" or "libx264").

    Raises `ConfigError` for another name, or for a named encoder this PyAV build lacks.
    """
    import av

    def available(name: str) -> bool:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # av.codec.codec.UnknownCodecError
            return False
        return True

    if vcodec == "auto":
        return "libsvtav1" if available("libsvtav1") else "libx264"
    if vcodec not in CODEC_NAMES:
        raise ConfigError(f"unknown video codec {vcodec!r}; use auto, {' or '.join(CODEC_NAMES)}", field="vcodec")
    if not available(vcodec):
        raise ConfigError(f"this PyAV build has no {vcodec} encoder; use auto", field="vcodec")
    return vcodec


def codec_options(vcodec: str, cfg: ExportConfig) -> dict[str, str]:
    """Encoder options of `vcodec` for `cfg`, as LeRobot's `_get_codec_options` builds them (g, crf, preset)."""
    options = {"g": str(cfg.g), "crf": str(cfg.crf)}
    if vcodec == "libsvtav1":
        options["preset"] = str(cfg.preset)
    return options


def _feature(spec, fps: float, codec: str, pix_fmt: str) -> dict[str, Any]:
    if spec.kind == "image":
        h, w = spec.shape[:2]
        return {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": pix_fmt,
                         "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
    shape = list(spec.shape) or [1]
    return {"dtype": spec.dtype, "shape": shape, "names": list(spec.names) if spec.names else None}


def _column(arr: np.ndarray):
    import pyarrow as pa

    if arr.ndim == 1:
        return pa.array(arr)
    col = pa.array(arr.reshape(-1))
    for size in reversed(arr.shape[1:]):  # (N, 4, 4): list of 4 lists of 4, as `datasets.Array2D` stores it
        col = pa.FixedSizeListArray.from_arrays(col, size)
    return col


def _stats(arr: np.ndarray, image: bool) -> dict[str, Any]:
    if image:  # LeRobot: per channel, (3, 1, 1), scaled to [0, 1]
        x = arr.reshape(-1, 3).astype(np.float64) / 255.0
        f = lambda v: v.reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": f(x.min(0)), "max": f(x.max(0)), "mean": f(x.mean(0)), "std": f(x.std(0)),
                "count": [len(arr)]}
    x = arr.astype(np.float64)  # reduced over steps: each stat has the feature's shape, as LeRobot's
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(arr)]}


class VideoWriter:
    """One mp4 of RGB frames `(T, H, W, 3) uint8`, encoded with `vcodec` and `codec_options(vcodec, cfg)` at
    `fps` (Hz); a context manager that flushes the encoder and closes the file on exit."""

    def __init__(self, path: Path, vcodec: str, cfg: ExportConfig, fps: float, height: int, width: int):
        """Open `path` for writing (its folder must exist)."""
        import av

        self._av = av
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000),
                                                options=codec_options(vcodec, cfg))
        self.stream.height, self.stream.width = height, width
        self.stream.pix_fmt = cfg.pix_fmt
        # SVT-AV1 prints a ~25-line banner on stderr when an encoder opens, unless its SVT_LOG level says
        # otherwise; it reads the variable then, so it is set only while this encoder opens
        saved = os.environ.get("SVT_LOG")
        os.environ["SVT_LOG"] = saved or "1"
        try:
            self.stream.codec_context.open()
        finally:
            if saved is None:
                del os.environ["SVT_LOG"]

    def write(self, frames: np.ndarray) -> None:
        """Append `frames` `(T, H, W, 3) uint8` after the frames written so far."""
        for img in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def __enter__(self) -> VideoWriter:
        """The writer itself."""
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Flush the encoder (unless an exception is on its way) and close the file."""
        try:
            if exc_type is None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()


def _feature_names(store, fields: list[str], fps: float) -> dict[str, str]:
    """Store field -> feature name (`feature_from_field`), but a `timestamp` field that is not each step's frame
    time `frame_index / fps` (capture times) goes to `observation.timestamp`. Raises ConfigError when that
    name is taken."""
    names = {k: feature_from_field(k) for k in fields}
    if "timestamp" in names and store.num_steps:
        ts = np.asarray(store.read_rows("timestamp", 0, store.num_steps), dtype=np.float64)
        frame_t = np.concatenate([np.arange(store.episode_length(e)) / fps for e in range(store.num_episodes)])
        if ts.shape != frame_t.shape or not np.allclose(ts, frame_t, rtol=0, atol=1e-4):  # LeRobot's tolerance_s
            if TIMESTAMP_FEATURE in names.values():
                raise ConfigError(f"the store's timestamp is not frame_index / fps and {TIMESTAMP_FEATURE} is "
                                  "taken by another field", field="timestamp")
            names["timestamp"] = TIMESTAMP_FEATURE
    return names


def _write_steps(store, metas: list[dict], tasks: dict[str, int], writers: dict[str, VideoWriter],
                 names: dict[str, str], fps: float):
    """Encode every episode's frames into `writers` (field -> writer) and gather the per-step columns of the
    fields `names` maps to their features, the bookkeeping columns and the per-episode rows of
    `meta/episodes`, with a sample of the frames for the image stats."""
    others = list(names)
    columns: dict[str, list[np.ndarray]] = {names[k]: [] for k in others}
    book: dict[str, list[np.ndarray]] = {n: [] for n in ("frame_index", "episode_index", "index", "task_index")}
    if "timestamp" not in columns:
        book["timestamp"] = []
    img_stats: dict[str, list] = {k: [] for k in writers}
    episodes, start = [], 0
    for e, m in enumerate(metas):
        n = store.episode_length(e)
        data = store.read(e, others)
        for k in others:
            columns[names[k]].append(data[k])
        book["frame_index"].append(np.arange(n, dtype=np.int64))
        book["episode_index"].append(np.full(n, e, np.int64))
        book["index"].append(np.arange(start, start + n, dtype=np.int64))
        book["task_index"].append(np.full(n, tasks[str(m.get("task") or "")], np.int64))
        if "timestamp" in book:
            book["timestamp"].append((np.arange(n) / fps).astype(np.float32))
        row = {"episode_index": e, "tasks": [str(m.get("task") or "")], "length": n,
               "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
               "dataset_to_index": start + n, "shardyard/key": str(m["key"])}
        for k, writer in writers.items():
            frames = store.read(e, [k])[k]
            writer.write(frames)
            img_stats[k].append(frames[:: max(1, n // 8)])
            v = feature_from_field(k)
            row.update({f"videos/{v}/chunk_index": 0, f"videos/{v}/file_index": 0,
                        f"videos/{v}/from_timestamp": start / fps, f"videos/{v}/to_timestamp": (start + n) / fps})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episodes.append(row)
        start += n
    return columns, book, episodes, img_stats


def export_lerobot(store_path: str, cfg: ExportConfig) -> dict[str, Any]:
    """Write the store at `store_path` to `cfg.out` as LeRobot v3.0 and return the info.json dict.

    Each image field becomes one mp4 per camera holding all episodes back to back, encoded with `cfg.vcodec`
    (see `ExportConfig`; LeRobot's defaults). Raises `StoreError` for an incomplete store and `ConfigError` when
    `out` exists (without overwrite), episodes differ in fps, or the codec is unknown or missing.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardyard import open_store
    from shardyard.stores.atomic import atomic_write_json

    store = open_store(store_path)
    vcodec = resolve_vcodec(cfg.vcodec)
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise ConfigError("output folder exists; use overwrite", path=str(out))
        shutil.rmtree(out)
    metas = [store.episode_meta(i) for i in range(store.num_episodes)]
    fps_set = {float(m["fps"]) for m in metas if m.get("fps")}
    if len(fps_set) > 1:
        raise ConfigError(f"episodes differ in fps {sorted(fps_set)}; LeRobot needs one", path=store_path)
    fps = fps_set.pop() if fps_set else float(cfg.fps or 30.0)
    images = store.schema.of_kind("image")
    others = [k for k in store.schema.keys() if k not in images and store.schema[k].kind not in NOT_EXPORTED_KINDS]
    left_out = [k for k in store.schema.keys() if store.schema[k].kind in NOT_EXPORTED_KINDS]
    if left_out:
        log.warning("fields %s are not exported: a LeRobot dataset holds no %s fields", left_out,
                    "/".join(NOT_EXPORTED_KINDS))
    tasks: dict[str, int] = {}
    for m in metas:
        tasks.setdefault(str(m.get("task") or ""), len(tasks))

    names = _feature_names(store, others, fps)
    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (out / "data" / "chunk-000").mkdir(parents=True)
    with contextlib.ExitStack() as videos:
        writers = {}
        for k in images:
            vpath = out / VIDEO_PATH.format(video_key=feature_from_field(k), chunk_index=0, file_index=0)
            vpath.parent.mkdir(parents=True)
            writers[k] = videos.enter_context(VideoWriter(vpath, vcodec, cfg, fps, *store.schema[k].shape[:2]))
        columns, book, episodes, img_stats = _write_steps(store, metas, tasks, writers, names, fps)
    names.update({k: feature_from_field(k) for k in images})
    total = sum(e["length"] for e in episodes)

    arrays = {name: np.concatenate(parts) for name, parts in {**columns, **book}.items()}
    pq.write_table(pa.table({name: _column(a) for name, a in arrays.items()}),
                   out / DATA_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.Table.from_pylist(episodes), out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
        out / "meta" / "tasks.parquet")
    features = {names[k]: _feature(store.schema[k], fps, CODEC_NAMES[vcodec], cfg.pix_fmt) for k in others + images}
    for name in book:
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    stats = {names[k]: _stats(arrays[names[k]], False) for k in others}
    stats.update({names[k]: _stats(np.concatenate(img_stats[k]), True) for k in images})
    atomic_write_json(out / "meta" / "stats.json", stats)
    info = {"codebase_version": "v3.0", "robot_type": cfg.robot_type or (metas[0].get("robot_type") if metas else None),
            "total_episodes": len(metas), "total_frames": total, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(metas)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if images else None, "features": features}
    atomic_write_json(out / EXPORT_META, export_meta(store, {k: names[k] for k in store.schema.keys() if k in names}))
    atomic_write_json(out / "meta" / "info.json", info)
    log.info("exported %d episodes (%d frames) to %s", len(metas), total, out)
    return info
