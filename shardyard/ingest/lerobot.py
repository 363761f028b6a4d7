"""LeRobot datasets, codebase v2.1 and v3.0 (`../shared/data/SOURCES.md`, `lerobot/`).

v2.1: `meta/info.json` (`features`, `fps`, `chunks_size`, `data_path`, `video_path`), `meta/episodes.jsonl`
(`episode_index`, `tasks`, `length`), `meta/tasks.jsonl`, one parquet per episode and one mp4 per episode and
camera. v3.0: chunked `data/chunk-*/file-*.parquet` holding many episodes, `meta/episodes/chunk-*/file-*.parquet`
(row ranges, video file and `from_timestamp` per camera), `meta/tasks.parquet`, concatenated videos.

Field mapping (its inverse is used by `shardyard.tools.export_lerobot`): `observation.images.<cam>` ->
`obs.rgb.<cam>` (uint8 `(H, W, 3)`, decoded with PyAV, AV1 included, at each row's timestamp), `observation.state`
-> `obs.state`, `observation.<x>` -> `obs.<x>`, anything else keeps its name (`action`, `timestamp` s, ...).
Bookkeeping columns (`frame_index`, `episode_index`, `index`, `task_index`) are not stored: the episode's meta
has `episode_index`, `task`, `tasks`, `fps`. Features of shape `[1]` are stored as scalars. A dataset written
by `export lerobot` gives back the exported store's keys, field specs and episode metadata (`meta/shardyard.json`,
`stores.export_meta`).

An episode listed in `meta` whose parquet or video is missing, or whose data contradicts `meta/info.json`
(declared shapes, `fps` against the timestamps: `lerobot_checks`), is a `SourceError` (a report row, not
fatal); a camera with no video file at all in the dataset is refused unless left out with `cameras`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.ingest.configs import LeRobotConfig
from shardyard.ingest.episode_ranges import format_ranges, select_episodes
from shardyard.ingest.failures import reading, source_error
from shardyard.ingest.inside import FOLLOW_HINT, check_inside, name_problem, outside_problem
from shardyard.ingest.lerobot_checks import check_timestamps, declared_array, decode_images, skipped_cameras
from shardyard.lerobot_names import BOOKKEEPING, IMAGES, feature_from_field, field_from_feature
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.export_meta import EXPORT_META, read_export_meta

__all__ = ["BOOKKEEPING", "IMAGES", "LeRobotConfig", "LeRobotSource", "column_array", "feature_from_field",
           "field_from_feature", "resolve_root"]

log = logging.getLogger(__name__)

def column_array(table, name: str) -> np.ndarray:
    """A parquet column as `(rows, *shape)`: list columns are flattened and reshaped to rows."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    nested = lambda t: pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)  # noqa: E731
    if nested(col.type):
        flat = col.flatten()
        while nested(flat.type):  # lists of lists: LeRobot's Array2D (an exported pose field), ...
            flat = flat.flatten()
        flat = flat.to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def resolve_root(root: str | Path, revision: str | None = None) -> Path:
    """A dataset folder, or the cached snapshot of a Hub repo id. Raises `ConfigError` when neither exists."""
    p = Path(root)
    if p.is_dir():
        return p
    if str(root).count("/") == 1 and not str(root).startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(root), repo_type="dataset", revision=revision, local_files_only=True))
        except Exception as e:
            raise ConfigError(f"repo id not in the local Hugging Face cache (nothing is downloaded): {e}",
                              path=str(root)) from e
    raise ConfigError("LeRobot dataset folder not found", path=str(root))


def _containment_root(root: Path) -> Path:
    """The folder a dataset's files must resolve into: `root`, or for a Hub cache snapshot
    (`<repo>/snapshots/<revision>`, whose files are links to `<repo>/blobs/`) the repository's cache folder."""
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        return root.parent.parent
    return root


class LeRobotSource:
    """Source over a LeRobot v2.1 or v3.0 dataset; keys are `episode_NNNNNN` in episode order.

    `read(key)` raises `SourceError` (path, key, field) when the episode's parquet or video is missing or
    unreadable, when the parquet row count differs from `meta` `length`, or a frame cannot be matched to a
    row's timestamp within the tolerance; and, without `follow_links`, when its parquet or video resolves
    outside the dataset folder. The constructor raises `ConfigError` when `meta/info.json` is unreadable, its
    `data_path`/`video_path` template is absolute or has a `..` part, or a meta file resolves outside the
    dataset folder (without `follow_links`).
    """

    name: ClassVar[str] = "lerobot"

    def __init__(self, config: LeRobotConfig) -> None:
        self.cfg = config
        self.root = resolve_root(config.root, config.revision)
        self.inside = _containment_root(self.root)
        info_path = self._meta_file(self.root / "meta" / "info.json")
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read meta/info.json: {e}", path=str(self.root)) from e
        for name in ("data_path", "video_path"):
            why = None if config.follow_links or self.info.get(name) is None else name_problem(self.info[name])
            if why:
                raise ConfigError(f"{name} template {why}; {FOLLOW_HINT}", path=str(info_path), field=name)
        self.version = str(self.info.get("codebase_version", ""))
        if not self.version.startswith(("v2", "v3")):
            raise ConfigError(f"unsupported LeRobot codebase_version {self.version!r} (v2.1 or v3.0)",
                              path=str(self.root / "meta" / "info.json"))
        try:
            self.fps = float(self.info["fps"])
            self.episodes = self._load_episodes()
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError too: a ValueError
            raise ConfigError(f"malformed LeRobot meta: {type(e).__name__}: {e}", path=str(self.root / "meta")) from e
        self.export = read_export_meta(self._meta_file(self.root / EXPORT_META))  # keys, specs, metadata
        self.selected = select_episodes(config.episodes, list(self.episodes), str(self.root / "meta"))
        self._absent: list[int] | None = None
        self._tables: dict[str, Any] = {}
        self._schema: Schema | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tables"] = {}
        return state

    # -- meta --------------------------------------------------------------------------------------------
    def _meta_file(self, path: Path) -> Path:
        """`path` (a file under `meta/`), checked to resolve inside the dataset folder unless `follow_links`;
        raises `ConfigError` naming it otherwise (meta concerns the whole dataset)."""
        why = None if self.cfg.follow_links else outside_problem(self.inside, path)
        if why:
            raise ConfigError(why, path=str(path))
        return path

    def _inside(self, path: Path, key: str, field: str) -> Path:
        """An episode's data or video file, checked like `_meta_file` but raising `SourceError` (a report row)."""
        return check_inside(self.inside, path, follow_links=self.cfg.follow_links, key=key, field=field)

    def _load_episodes(self) -> dict[int, dict[str, Any]]:
        meta = self.root / "meta"
        if self.version.startswith("v2"):
            rows = [json.loads(line) for line in self._meta_file(meta / "episodes.jsonl").read_text().splitlines()
                    if line.strip()]
            tasks = {}
            if (meta / "tasks.jsonl").exists():
                for line in self._meta_file(meta / "tasks.jsonl").read_text().splitlines():
                    if line.strip():
                        t = json.loads(line)
                        tasks[int(t["task_index"])] = t["task"]
            self.tasks = tasks
            return {int(r["episode_index"]): r for r in rows}
        import pyarrow.parquet as pq

        files = sorted((meta / "episodes").rglob("*.parquet"))
        if not files:
            raise ConfigError("no meta/episodes/*.parquet", path=str(meta))
        rows: dict[int, dict[str, Any]] = {}
        for f in files:
            for r in pq.read_table(self._meta_file(f)).to_pylist():
                rows[int(r["episode_index"])] = r
        df = pq.read_table(self._meta_file(meta / "tasks.parquet")).to_pandas()
        col = "task" if "task" in df.columns else None
        self.tasks = {int(i): (t if col is None else t) for t, i in zip(df[col] if col else df.index, df["task_index"])}
        return dict(sorted(rows.items()))

    def absent(self) -> list[int]:
        """Selected episodes (`episodes` given) whose data file is not in the folder: a partial download."""
        if self.cfg.episodes is None:
            return []
        if self._absent is None:
            self._absent = [i for i in self.selected if not self._data_path(i).exists()]
            if self._absent:
                log.warning("%d of %d selected episode(s) have no data file in %s (a partial download?), left "
                            "out: %s", len(self._absent), len(self.selected), self.root, format_ranges(self._absent))
        return self._absent

    def keys(self) -> list[str]:
        """`episode_NNNNNN` for each episode listed in meta (or selected, and present), in index order."""
        gone = set(self.absent())
        return [self._key(i) for i in self.selected if i not in gone]

    def _key(self, idx: int) -> str:
        """The store key an `export lerobot` recorded for episode `idx`, else `episode_NNNNNN`."""
        return self.export.keys[idx] if self.export and idx in self.export.keys else f"episode_{idx:06d}"

    def episode_files(self) -> list[str]:
        """Paths, relative to the dataset folder, of the data and video files the selected episodes are read
        from (what a download of those episodes needs besides `meta/`), each once."""
        out: dict[str, None] = {}
        for i in self.selected:
            out[self._data_path(i).relative_to(self.root).as_posix()] = None
            for feature in self._video_features():
                out[self._video(i, feature)[0].relative_to(self.root).as_posix()] = None
        return list(out)

    def _data_path(self, idx: int) -> Path:
        ep = self.episodes[idx]
        if self.version.startswith("v2"):
            chunk = idx // int(self.info.get("chunks_size", 1000))
            return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=idx)
        return self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                         file_index=ep["data/file_index"])

    def _video(self, idx: int, feature: str) -> tuple[Path, float]:
        """(video file, time of the episode's first frame in it, s)."""
        ep = self.episodes[idx]
        if self.version.startswith("v2"):
            chunk = idx // int(self.info.get("chunks_size", 1000))
            return self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=feature,
                                                              episode_index=idx), 0.0
        p = f"videos/{feature}/"
        return (self.root / self.info["video_path"].format(video_key=feature, chunk_index=ep[p + "chunk_index"],
                                                           file_index=ep[p + "file_index"]),
                float(ep[p + "from_timestamp"]))

    def _video_features(self) -> list[str]:
        return [k for k, v in self.info["features"].items() if v.get("dtype") == "video"]

    def missing_videos(self) -> list[str]:
        """Video features with no file at all for any episode (left out of the schema)."""
        return [f for f in self._video_features() if not any(self._video(i, f)[0].exists() for i in self.selected)]

    def report_notes(self) -> list[str]:
        """Notes for report.json: video features without files, and episodes listed without a data file."""
        notes = [f"{f}: listed in meta/info.json but no video file is present; stored without it"
                 for f in self.missing_videos()]
        if self.absent():
            notes.append(f"{len(self.absent())} of {len(self.selected)} selected episode(s) have no data file in "
                         f"the folder (a partial download?), left out: {format_ranges(self.absent())}")
        absent = [i for i in self.selected if not self._data_path(i).exists()] if self.cfg.episodes is None else []
        if absent:
            notes.append(f"{len(absent)} of {len(self.episodes)} episode(s) listed in meta have no data file "
                         f"(see skipped)")
        return notes

    def describe(self) -> dict[str, Any]:
        """Source block of the manifest: root, codebase version, robot type, fps, episodes, missing videos, the
        selection (`episodes`) and, for a download, `hub`: the repo id, the revision asked for and its commit."""
        return {"name": self.name, "root": str(self.root), "codebase_version": self.version,
                "robot_type": self.info.get("robot_type"), "fps": self.fps,
                "total_episodes": self.info.get("total_episodes"), "missing_videos": self.missing_videos(),
                **({"episodes": format_ranges(self.selected, limit=10**6)} if self.cfg.episodes is not None else {}),
                **({"hub": dict(self.cfg.hub)} if self.cfg.hub else {})}

    def episode_path(self, key: str) -> str | None:
        """The parquet file episode `key` is read from (named by a row of an unforeseen failure)."""
        idx = next((i for i in self.selected if self._key(i) == key), None)
        return None if idx is None else str(self._data_path(idx))

    # -- schema ------------------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """Fields from `meta/info.json` features, less the cameras not asked for (`cameras`). Raises
        `ConfigError` for a camera to store with no video file for any episode (`lerobot_checks`)."""
        if self._schema is None:
            missing = skipped_cameras(self._video_features(), self.cfg.cameras, self.missing_videos(),
                                      self.root / "meta" / "info.json")
            fields: dict[str, FieldSpec] = {}
            for feat, spec in self.info["features"].items():
                if feat in BOOKKEEPING or feat in missing:
                    continue
                names = spec.get("names")
                if spec["dtype"] in ("video", "image"):
                    size = self.cfg.image_size
                    h, w = (size[1], size[0]) if size else spec["shape"][:2]
                    fields[field_from_feature(feat)] = FieldSpec("uint8", (h, w, 3), None, "image")
                    continue
                shape = tuple(spec["shape"])
                if isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
                    names = names[0]
                names = tuple(map(str, names)) if isinstance(names, list) and len(names) == int(np.prod(shape)) \
                    and len(shape) == 1 else None
                shape = () if shape == (1,) else shape
                dtype = "bool" if spec["dtype"] == "bool" else spec["dtype"]
                unit = "s" if feat == "timestamp" else None
                kind = "scalar" if not shape else "vector"
                fields[field_from_feature(feat)] = FieldSpec(dtype, shape, unit, kind, names)
            self._schema = Schema(self.export.restore_schema(fields, field_from_feature) if self.export else fields)
        return self._schema

    # -- reading -----------------------------------------------------------------------------------------
    def _table(self, path: Path, key: str):
        import pyarrow.parquet as pq

        if str(path) not in self._tables:
            if not path.exists():
                raise SourceError("data file listed in meta is missing", path=str(path), key=key, field="data")
            try:
                self._tables = {str(path): pq.read_table(path)}  # keep one file: v3.0 files hold many episodes
            except Exception as e:
                raise SourceError(f"cannot read parquet: {e}", path=str(path), key=key, field="data") from e
        return self._tables[str(path)]

    def read(self, key: str) -> Episode:
        """One episode: every schema field, one step per parquet row."""
        import pyarrow.compute as pc

        try:
            by_key = {k: i for i, k in self.export.keys.items()} if self.export else {}
            idx = by_key[key] if key in by_key else int(key.rsplit("_", 1)[1])
            ep = self.episodes[idx]
        except (IndexError, ValueError, KeyError):
            raise SourceError("no such episode in meta", key=key) from None
        path = self._inside(self._data_path(idx), key, "data")
        table = self._table(path, key)
        if self.version.startswith("v3") or "episode_index" in table.column_names:
            table = table.filter(pc.equal(table.column("episode_index"), idx))
        n = table.num_rows
        if n == 0 or int(ep.get("length", n)) != n:
            raise SourceError(f"parquet has {n} rows for the episode, meta length is {ep.get('length')}",
                              path=str(path), key=key, field="length")
        if "timestamp" not in table.column_names:
            raise SourceError("column missing from parquet", path=str(path), key=key, field="timestamp")
        ts = column_array(table, "timestamp").astype(np.float64)
        info_path = self.root / "meta" / "info.json"
        check_timestamps(ts, self.fps, path=str(path), key=key, info_path=info_path)
        steps: dict[str, np.ndarray] = {}
        for fld, spec in self.schema().items():
            feat = self.export.features.get(fld, feature_from_field(fld)) if self.export else feature_from_field(fld)
            if self.info["features"][feat]["dtype"] == "video":
                steps[fld] = self._frames(idx, feat, ts, key, fld)
            elif self.info["features"][feat]["dtype"] == "image":
                steps[fld] = decode_images(table.column(feat).to_pylist(), self.cfg.image_size, path=str(path),
                                           key=key, field=fld)
            else:
                if feat not in table.column_names:
                    raise SourceError("column missing from parquet", path=str(path), key=key, field=fld)
                with reading(path, key, fld):
                    arr = column_array(table, feat)
                steps[fld] = declared_array(arr, n, spec, feat, path=str(path), key=key, field=fld,
                                            info_path=info_path)
        tasks = list(ep.get("tasks") or [])
        if not tasks and "task_index" in table.column_names:
            tasks = [self.tasks.get(int(column_array(table, "task_index")[0]), "")]
        meta = {"task": tasks[0] if tasks else "", "tasks": tasks, "fps": self.fps, "episode_index": idx,
                "source_path": str(path), "robot_type": self.info.get("robot_type"),
                "codebase_version": self.version, "cameras": {}}
        if self.export and idx in self.export.records:  # the exported store's own metadata of the episode
            meta = dict(self.export.records[idx])
        return Episode(key=key, steps=steps, meta=meta)

    def _frames(self, idx: int, feat: str, ts: np.ndarray, key: str, fld: str) -> np.ndarray:
        from shardyard.ingest.readers import nearest_frames
        from shardyard.video import open_video

        vpath, t0 = self._video(idx, feat)
        self._inside(vpath, key, fld)
        if not vpath.exists():
            raise SourceError("video file listed in meta is missing", path=str(vpath), key=key, field=fld)
        try:
            video = open_video(vpath)
            frame_idx, gap = nearest_frames(ts + t0, video.timestamps(), self.cfg.timestamp_tolerance_s)
            if len(gap) and gap.max() > self.cfg.timestamp_tolerance_s:
                bad = int(np.argmax(gap))
                raise SourceError(f"no frame within {self.cfg.timestamp_tolerance_s * 1e3:.1f} ms of row {bad} "
                                  f"(t={ts[bad] + t0:.4f} s, gap {gap[bad] * 1e3:.1f} ms)", path=str(vpath))
            return video.read(frame_idx, size=self.cfg.image_size)
        except Exception as e:  # PyAV's own errors too: the row names the video and the camera
            raise source_error(e, path=str(vpath), key=key, field=fld) from e
