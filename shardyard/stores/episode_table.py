"""Columnar episode metadata of an episodic store (format version 2), and how it is written.

    meta/episodes.parquet         one row per episode, in store order: key (string), length (int64), task
                                  (int32 index into episode_tasks, -1: none), fps (float64, null: none),
                                  source_path (string, null: none), camera.<role> (int32 index into
                                  episode_cameras, -1: the episode has no such camera), extra (string: JSON of
                                  every other metadata entry, null when there is none)
    meta/episode_tasks.parquet    task (string): the distinct tasks, in order of first use
    meta/episode_cameras.parquet  the distinct cameras: K (9 float64, row-major), T_world_cam (16 float64),
                                  width, height (int64), moving (bool), extra (JSON of the camera's other
                                  entries, e.g. a `T_world_cam` of None for a moving camera); null: absent
    meta/split.parquet            split (int8 index into the names in its schema metadata, -1: in none)

An entry goes to its column only when it has the column's type (`task` a string, `fps` a number, `K` 3x3, ...);
anything else is kept verbatim in `extra`, so `EpisodicStore.episode_record` gives back the very JSON values
the source gave. Cameras and tasks repeat across episodes (one rig, a few tasks), so each episode row holds
their indices: a row is ~100 bytes before compression, and a million rows are a few MB on disk.

Why Parquet (pyarrow) and not zarr arrays, measured on 10^6 rows of this layout (2-core machine, loaded):
one episode's metadata read from a cold row group of 4,096 rows costs 0.5-0.6 ms in Parquet, against ~10 ms
in zarr arrays (one zarr-python call per column, ~1 ms each, whatever the chunk); the key column is 30-60 ms
in both; a vectorised filter (`length < 5`) ~10 ms in both; the file is 3 MB against ~3 MB. Parquet also
holds strings and fixed-size lists natively (zarr v3 strings are still flagged unstable), reads a column or
a row group without touching the rest (memory-mapped locally, by byte range from a bucket), and is what
LeRobot v3 and the tabular tools read. Row groups are 4,096 rows: smaller groups make a cold row faster but
the footer (read at open) larger: 1,024 rows doubled the open time for 0.1 ms less per row.

The split is in its own file because `shardyard stats --val-fraction` rewrites it after ingest; the
manifest's `split` is left empty (a manifest that does name a split, an old store's or one given in memory,
still wins: `EpisodicStore.split`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardyard.stores.atomic import atomic_path, chmod_as_umask

EPISODES = "meta/episodes.parquet"
TASKS = "meta/episode_tasks.parquet"
CAMERAS = "meta/episode_cameras.parquet"
SPLIT = "meta/split.parquet"
EPISODES_JSON = "meta/episodes.json"  # format version 1
ROW_GROUP = 4096
FIXED = ("key", "length", "task", "fps", "source_path")
CAMERA_FIXED = ("K", "T_world_cam", "width", "height", "moving")
_FLUSH_ROWS = 16 * ROW_GROUP
# Every page carries a CRC32 written with it and checked when it is read: a damaged table raises, never
# serves wrong metadata (the files are also in checksums.json, for `verify`).
WRITE: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
READ: dict[str, Any] = {"page_checksum_verification": True}

__all__ = ["CAMERAS", "EPISODES", "EPISODES_JSON", "FIXED", "READ", "ROW_GROUP", "SPLIT", "TASKS", "WRITE",
           "EpisodeTableBuilder", "atomic_parquet", "camera_column", "read_split", "roles_of", "split_meta",
           "write_episode_table", "write_split"]


def camera_column(role: str) -> str:
    """Name of the column of camera `role`'s index."""
    return f"camera.{role}"


def atomic_parquet(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` to make a file at a temp path beside `path`, then rename it into place (atomic for any
    process that dies; the file gets the umask's mode, as if `open` had created it)."""
    with atomic_path(path) as tmp:
        write(str(tmp))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _matrix(v: Any, n: int) -> list[float] | None:
    """`v` as n*n floats (row-major) when it is an n x n matrix of finite numbers, else None."""
    if not isinstance(v, (list, tuple, np.ndarray)):
        return None
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a.ravel().tolist() if a.shape == (n, n) and np.all(np.isfinite(a)) else None


def _split_camera(cam: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """(K, T_world_cam, width, height, moving) of a camera dict (None where absent or not of the column's
    type) and the entries left for its `extra`."""
    extra = {k: v for k, v in cam.items() if k not in CAMERA_FIXED}
    K, T = _matrix(cam.get("K"), 3), _matrix(cam.get("T_world_cam"), 4)
    w, h, moving = cam.get("width"), cam.get("height"), cam.get("moving")

    def whole(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    fixed = (K, T, whole(w), whole(h), moving if isinstance(moving, bool) else None)
    for name, value in zip(CAMERA_FIXED, fixed):
        if name in cam and value is None:
            extra[name] = cam[name]
    return fixed, extra


def split_meta(meta: Mapping[str, Any], roles: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any],
                                                                       dict[str, Any]]:
    """Episode metadata -> (fixed column values: task, fps, source_path; cameras by role; extra entries).
    `cameras` goes to the camera columns when it is a dict of dicts whose roles are all in `roles`."""
    fixed: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    cams: dict[str, Any] = {}
    for k, v in meta.items():
        if (k in ("task", "source_path") and isinstance(v, str)) or (k == "fps" and _number(v)):
            fixed[k] = v
        elif k == "cameras" and isinstance(v, dict) and v and all(isinstance(c, dict) for c in v.values()) \
                and set(v) <= set(roles):
            cams = v
        else:
            extra[k] = v
    return fixed, cams, extra


def _fsl(values: list[list[float] | None], n: int) -> pa.Array:
    flat = [x for v in values for x in (v if v is not None else [0.0] * n)]
    mask = pa.array([v is None for v in values], pa.bool_())
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float64()), n, mask=mask)


class EpisodeTableBuilder:
    """Writes `meta/episodes.parquet` and its task and camera tables (module docstring) from episodes added in
    store order, `ROW_GROUP` rows per row group, holding at most `16 x ROW_GROUP` rows in memory (plus the
    distinct tasks and cameras). Each file is written to a temp file and renamed into place by `close`.

    root: the store folder. roles: every camera role any episode has (the columns are fixed up front).
    """

    def __init__(self, root: str | os.PathLike, roles: Iterable[str]) -> None:
        self.root = Path(root)
        self.roles = sorted(set(roles))
        self.tasks: dict[str, int] = {}
        self.cameras: dict[str, int] = {}
        self._camera_rows: list[tuple[tuple, dict[str, Any]]] = []
        self._cols: dict[str, list[Any]] = {}
        self._reset()
        fields = [("key", pa.string()), ("length", pa.int64()), ("task", pa.int32()), ("fps", pa.float64()),
                  ("source_path", pa.string())]
        fields += [(camera_column(r), pa.int32()) for r in self.roles] + [("extra", pa.string())]
        self.schema = pa.schema(fields, metadata={"shardyard": json.dumps({"layout": 1, "roles": self.roles})})
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=".episodes.parquet.", suffix=".tmp", dir=self.root / "meta")
        chmod_as_umask(fd)
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **WRITE,
                                        use_dictionary=["task", "fps"] + [camera_column(r) for r in self.roles])
        self.num_rows = 0

    def _reset(self) -> None:
        self._cols = {name: [] for name in ("key", "length", "task", "fps", "source_path", "extra")}
        self._cols.update({camera_column(r): [] for r in self.roles})

    def _camera(self, cam: Mapping[str, Any]) -> int:
        ident = json.dumps(cam, sort_keys=True, default=str)
        index = self.cameras.get(ident)
        if index is None:
            index = self.cameras[ident] = len(self._camera_rows)
            self._camera_rows.append(_split_camera(cam))
        return index

    def add(self, key: str, length: int, meta: Mapping[str, Any]) -> None:
        """Append one episode (`meta`: its JSON-able metadata, as the commit log holds it)."""
        fixed, cams, extra = split_meta(meta, self.roles)
        task = fixed.get("task")
        c = self._cols
        c["key"].append(key)
        c["length"].append(int(length))
        c["task"].append(-1 if task is None else self.tasks.setdefault(task, len(self.tasks)))
        c["fps"].append(float(fixed["fps"]) if "fps" in fixed else None)
        c["source_path"].append(fixed.get("source_path"))
        c["extra"].append(json.dumps(extra) if extra else None)
        for role in self.roles:
            c[camera_column(role)].append(self._camera(cams[role]) if role in cams else -1)
        if len(c["key"]) >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._cols["key"]:
            return
        table = pa.table({f.name: pa.array(self._cols[f.name], f.type) for f in self.schema}, schema=self.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self.num_rows += table.num_rows
        self._reset()

    def close(self) -> None:
        """Write the last rows and the task and camera tables; rename the files into place."""
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.root / EPISODES)
        tasks = pa.table({"task": pa.array(list(self.tasks), pa.string())})
        atomic_parquet(self.root / TASKS, lambda tmp: pq.write_table(tasks, tmp, **WRITE))
        rows = self._camera_rows
        cams = pa.table({"K": _fsl([r[0][0] for r in rows], 9), "T_world_cam": _fsl([r[0][1] for r in rows], 16),
                         "width": pa.array([r[0][2] for r in rows], pa.int64()),
                         "height": pa.array([r[0][3] for r in rows], pa.int64()),
                         "moving": pa.array([r[0][4] for r in rows], pa.bool_()),
                         "extra": pa.array([json.dumps(r[1]) if r[1] else None for r in rows], pa.string())})
        atomic_parquet(self.root / CAMERAS,
                       lambda tmp: pq.write_table(cams, tmp, **WRITE, row_group_size=ROW_GROUP))

    def abort(self) -> None:
        """Drop the half-written table (an error while building it)."""
        self._writer.close()
        Path(self._tmp).unlink(missing_ok=True)


def roles_of(metas: Iterable[Mapping[str, Any]]) -> set[str]:
    """Camera roles named by any of `metas` (episode metadata dicts)."""
    out: set[str] = set()
    for meta in metas:
        cams = meta.get("cameras")
        if isinstance(cams, dict):
            out.update(cams)
    return out


def write_episode_table(root: str | os.PathLike, episodes: Iterable[tuple[str, int, Mapping[str, Any]]],
                        roles: Iterable[str]) -> int:
    """Write the episode tables of the store at `root` from `(key, length, meta)` in store order (streamed);
    `roles`: every camera role among them. Returns the number of episodes."""
    builder = EpisodeTableBuilder(root, roles)
    try:
        for key, length, meta in episodes:
            builder.add(key, length, meta)
    except BaseException:
        builder.abort()
        raise
    builder.close()
    return builder.num_rows


def write_split(root: str | os.PathLike, split: Mapping[str, Iterable[int]], num_episodes: int) -> bool:
    """Write `meta/split.parquet` from `{name: episode indices}`. Returns False (nothing written) when the
    split is not a partition (an episode in two names): the caller keeps it in the manifest then."""
    codes = np.full(num_episodes, -1, dtype=np.int8)
    names = list(split)
    if len(names) > 127:
        return False
    for code, name in enumerate(names):
        idx = np.asarray(list(split[name]), dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= num_episodes or np.any(codes[idx] != -1)
                         or len(np.unique(idx)) != len(idx)):
            return False
        codes[idx] = code
    table = pa.table({"split": pa.array(codes, pa.int8())},
                     schema=pa.schema([("split", pa.int8())], metadata={"names": json.dumps(names)}))
    atomic_parquet(Path(root) / SPLIT, lambda tmp: pq.write_table(table, tmp, **WRITE))
    return True


def read_split(source: Any) -> tuple[list[str], np.ndarray]:
    """(names, `(E,) int8` codes: index into names, -1 for none) of a `meta/split.parquet` (a path or an open
    file)."""
    table = pq.read_table(source, **READ)
    names = json.loads((table.schema.metadata or {}).get(b"names", b"[]"))
    return names, np.asarray(table.column("split").to_numpy(), dtype=np.int8)
