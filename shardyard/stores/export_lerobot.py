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

Field keys map to feature names with `shardyard.ingest.lerobot.feature_from_field` (`obs.rgb.cam` ->
`observation.images.cam`, `obs.state` -> `observation.state`), so `ingest lerobot` reads the export back into
the same fields. Frames go through x264 (`crf`, yuv420p): video is lossy, every other array is exact.
The episode's frame times are `frame_index / fps`; a store field `timestamp` is written as stored.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import ConfigError
from shardyard.ingest.lerobot import feature_from_field

log = logging.getLogger(__name__)

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


@dataclass
class ExportConfig:
    """out: dataset folder. crf: x264 quality (0 lossless in luma; 10 default). overwrite: replace `out`.
    fps: frame rate when episodes carry none (Hz). robot_type: written to info.json."""

    out: Path
    crf: int = 10
    overwrite: bool = False
    fps: float | None = None
    robot_type: str | None = None


def _feature(spec, fps: float) -> dict[str, Any]:
    if spec.kind == "image":
        h, w = spec.shape[:2]
        return {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
    shape = list(spec.shape) or [1]
    return {"dtype": spec.dtype, "shape": shape, "names": list(spec.names) if spec.names else None}


def _column(arr: np.ndarray):
    import pyarrow as pa

    if arr.ndim == 1:
        return pa.array(arr)
    flat = arr.reshape(len(arr), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _stats(arr: np.ndarray, image: bool) -> dict[str, Any]:
    if image:  # LeRobot: per channel, (3, 1, 1), scaled to [0, 1]
        x = arr.reshape(-1, 3).astype(np.float64) / 255.0
        f = lambda v: v.reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": f(x.min(0)), "max": f(x.max(0)), "mean": f(x.mean(0)), "std": f(x.std(0)),
                "count": [len(arr)]}
    x = arr.reshape(len(arr), -1).astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(arr)]}


def export_lerobot(store_path: str, cfg: ExportConfig) -> dict[str, Any]:
    """Write the store at `store_path` to `cfg.out` as LeRobot v3.0 and return the info.json dict.

    Raises `StoreError` for an incomplete store and `ConfigError` when `out` exists (without overwrite) or
    episodes differ in fps.
    """
    import av
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardyard import open_store
    from shardyard.stores.atomic import atomic_write_json

    store = open_store(store_path)
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
    others = [k for k in store.schema.keys() if k not in images and store.schema[k].kind not in ("pose", "text")]
    tasks: dict[str, int] = {}
    for m in metas:
        tasks.setdefault(str(m.get("task") or ""), len(tasks))

    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (out / "data" / "chunk-000").mkdir(parents=True)
    writers, streams = {}, {}
    for k in images:
        vkey = feature_from_field(k)
        vpath = out / VIDEO_PATH.format(video_key=vkey, chunk_index=0, file_index=0)
        vpath.parent.mkdir(parents=True)
        c = av.open(str(vpath), mode="w")
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.height, s.width = store.schema[k].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(cfg.crf), "preset": "fast"}
        writers[k], streams[k] = c, s
    columns: dict[str, list[np.ndarray]] = {feature_from_field(k): [] for k in others}
    book: dict[str, list[np.ndarray]] = {n: [] for n in ("frame_index", "episode_index", "index", "task_index")}
    if "timestamp" not in store.schema:
        book["timestamp"] = []
    img_stats: dict[str, list] = {k: [] for k in images}
    episodes, start = [], 0
    for e, m in enumerate(metas):
        n = store.episode_length(e)
        data = store.read(e, others)
        for k in others:
            columns[feature_from_field(k)].append(data[k])
        book["frame_index"].append(np.arange(n, dtype=np.int64))
        book["episode_index"].append(np.full(n, e, np.int64))
        book["index"].append(np.arange(start, start + n, dtype=np.int64))
        book["task_index"].append(np.full(n, tasks[str(m.get("task") or "")], np.int64))
        if "timestamp" in book:
            book["timestamp"].append((np.arange(n) / fps).astype(np.float32))
        row = {"episode_index": e, "tasks": [str(m.get("task") or "")], "length": n,
               "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
               "dataset_to_index": start + n}
        for k in images:
            frames = store.read(e, [k])[k]
            for img in frames:
                for packet in streams[k].encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    writers[k].mux(packet)
            img_stats[k].append(frames[:: max(1, n // 8)])
            v = feature_from_field(k)
            row.update({f"videos/{v}/chunk_index": 0, f"videos/{v}/file_index": 0,
                        f"videos/{v}/from_timestamp": start / fps, f"videos/{v}/to_timestamp": (start + n) / fps})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episodes.append(row)
        start += n
    for k in images:
        for packet in streams[k].encode():
            writers[k].mux(packet)
        writers[k].close()

    arrays = {name: np.concatenate(parts) for name, parts in {**columns, **book}.items()}
    pq.write_table(pa.table({name: _column(a) for name, a in arrays.items()}),
                   out / DATA_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(pa.Table.from_pylist(episodes), out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
        out / "meta" / "tasks.parquet")
    features = {feature_from_field(k): _feature(store.schema[k], fps) for k in others + images}
    for name in book:
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    stats = {feature_from_field(k): _stats(arrays[feature_from_field(k)], False) for k in others}
    stats.update({feature_from_field(k): _stats(np.concatenate(img_stats[k]), True) for k in images})
    atomic_write_json(out / "meta" / "stats.json", stats)
    info = {"codebase_version": "v3.0", "robot_type": cfg.robot_type or (metas[0].get("robot_type") if metas else None),
            "total_episodes": len(metas), "total_frames": start, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(metas)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if images else None, "features": features}
    atomic_write_json(out / "meta" / "info.json", info)
    log.info("exported %d episodes (%d frames) to %s", len(metas), start, out)
    return info
