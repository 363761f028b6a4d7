"""Reading an episodic store's episode metadata by row and by column, without parsing the rest: the Parquet
tables of format version 2 (`stores.episode_table`) or, for a store written before them, `meta/episodes.json`.

`EpisodeTable` (version 2) opens its files lazily in each process (memory-mapped locally; by byte range
through fsspec for a store at a URL) and pickles as its path alone, so a DataLoader worker never receives a
table: it opens the columns it needs. One episode's row is read from its 4,096-row group (the last group read
is kept), a column is read whole once per process when a caller needs all of it (keys, lengths). `LegacyTable`
serves a version-1 store from its parsed `episodes.json` through the same interface.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardyard.errors import StoreDamagedError
from shardyard.stores.episode_table import (
    CAMERA_FIXED,
    CAMERAS,
    EPISODES,
    READ,
    SPLIT,
    TASKS,
    camera_column,
    read_split,
)

__all__ = ["EpisodeKeys", "EpisodeTable", "LegacyTable", "MetaTable"]


class EpisodeKeys(Sequence):
    """The store's episode keys in order, read from the key column on demand: `keys[i]` reads one row, any
    whole-sequence use (iteration, `index`, `in`, `==` with a list) reads the column once. Compares equal to
    a list of the same keys; `+` with a list gives a list."""

    def __init__(self, table: "MetaTable") -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.num_episodes

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.to_list()[i]
        return self._table.key(int(i))

    def to_list(self) -> list[str]:
        """Every key, as a list."""
        return self._table.key_list()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_list())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._index_of(key) >= 0

    def _index_of(self, key: str) -> int:
        return int(self._table.indices_of([key])[0])

    def index(self, key: Any, start: int = 0, stop: int | None = None) -> int:
        """Index of `key` (the keys are unique). Raises ValueError when absent."""
        i = self._index_of(key) if isinstance(key, str) else -1
        if i < 0 or i < start or (stop is not None and i >= stop):
            raise ValueError(f"{key!r} is not an episode key of the store")
        return i

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (EpisodeKeys, list, tuple)):
            return self.to_list() == list(other)
        return NotImplemented

    def __add__(self, other: Iterable[str]) -> list[str]:
        return self.to_list() + list(other)

    def __radd__(self, other: Iterable[str]) -> list[str]:
        return list(other) + self.to_list()

    def __repr__(self) -> str:
        return f"EpisodeKeys({len(self)} episodes)"

    __hash__ = None  # type: ignore[assignment]


class MetaTable:
    """What the store reads of its episode metadata (both layouts). Subclasses give `key`, `record`,
    `key_list`, `column`, `tasks` and `num_episodes`."""

    num_episodes: int

    def key(self, i: int) -> str:
        """Key of episode `i`."""
        raise NotImplementedError

    def key_list(self) -> list[str]:
        """Every key, in store order."""
        raise NotImplementedError

    def record(self, i: int) -> dict[str, Any]:
        """Episode `i`'s metadata as stored (JSON values: key, length, task, fps, cameras, ...)."""
        raise NotImplementedError

    def column(self, name: str) -> tuple[Any, np.ndarray] | None:
        """`(values, present)`: a metadata entry for every episode (a pyarrow array or a list of Python values)
        and `(E,) bool` where the episode has it; None when it is not a column (an `extra` entry)."""
        raise NotImplementedError

    def entries(self, name: str) -> list[Any]:
        """Entry `name` of every episode's metadata, None where absent (any entry; slow for non-columns)."""
        return [self.record(i).get(name) for i in range(self.num_episodes)]

    def lengths(self) -> np.ndarray:
        """`(E,) int64` the length each episode's metadata records."""
        return np.asarray(self.entries("length"), dtype=np.int64)

    def indices_of(self, keys: Sequence[str]) -> np.ndarray:
        """`(len(keys),) int64` store index of each key, -1 where the store has none (vectorised)."""
        wanted = list(dict.fromkeys(keys))
        where = pc.index_in(self.key_array(), value_set=pa.array(wanted, pa.string()))
        rows = np.flatnonzero(pc.is_valid(where).to_numpy(zero_copy_only=False))
        found = np.full(len(wanted), -1, dtype=np.int64)
        found[where.take(pa.array(rows)).to_numpy(zero_copy_only=False).astype(np.int64)] = rows
        pos = {k: j for j, k in enumerate(wanted)}
        return np.asarray([found[pos[k]] for k in keys], dtype=np.int64)

    def key_array(self) -> pa.Array:
        """The key column as a pyarrow string array."""
        return pa.array(self.key_list(), pa.string())

    def tasks_of(self, episodes: np.ndarray) -> list[str]:
        """The task of each of `episodes` ("" where none)."""
        return [str(self.record(int(e)).get("task") or "") for e in episodes]

    def records(self, start: int, stop: int) -> list[dict[str, Any]]:
        """`record(i)` of each episode `i` in `[start, stop)`."""
        return [self.record(i) for i in range(start, stop)]

    def split_codes(self) -> tuple[list[str], np.ndarray]:
        """(split names, `(E,) int8` index of each episode's, -1: none) of `meta/split.parquet`; no names when
        the store has none (format version 1 keeps its split in the manifest)."""
        return [], np.zeros(0, np.int8)


class LegacyTable(MetaTable):
    """Format version 1: `meta/episodes.json`, parsed whole (by the store, on first use)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.num_episodes = len(records)

    def key(self, i: int) -> str:
        """Key of episode `i`."""
        return self.records[i]["key"]

    def key_list(self) -> list[str]:
        """Every key, in store order."""
        return [r["key"] for r in self.records]

    def record(self, i: int) -> dict[str, Any]:
        """Episode `i`'s metadata as stored."""
        return dict(self.records[i])

    def column(self, name: str) -> tuple[Any, np.ndarray] | None:
        """`(values, present)` of a column, or None."""
        return None

    def entries(self, name: str) -> list[Any]:
        """Entry `name` of every episode, None where absent."""
        return [r.get(name) for r in self.records]


class EpisodeTable(MetaTable):
    """Format version 2: the Parquet tables of `stores.episode_table`, opened lazily in each process.

    root: the store's path (inside `fs` for a store at a URL). fs: `ProcessLocalFS` or None (local).
    num_episodes: rows expected (the manifest's count)."""

    def __init__(self, root: str, fs: Any, num_episodes: int) -> None:
        self.root, self.fs, self.num_episodes = root, fs, int(num_episodes)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._files: dict[str, pq.ParquetFile] = {}
        self._starts: dict[str, list[int]] = {}
        self._groups: dict[str, list[Any]] = {}  # table -> [group, pa.Table, hits, columns as lists or None]
        self._columns: dict[str, Any] = {}
        self._cameras: dict[int, str] = {}  # camera index -> its metadata as JSON (few distinct cameras)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "fs": self.fs, "num_episodes": self.num_episodes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def open(self) -> None:
        """Open the episode table now: later reads go through this handle, so they see this version of the
        file even after the store is replaced (a reader opens it inside a read section, `stores.snapshot`)."""
        self._file(EPISODES)

    def _file(self, rel: str) -> pq.ParquetFile:
        if self._pid != os.getpid():
            self._reset()
        f = self._files.get(rel)
        if f is None:
            with self._named(rel):
                f = self._open(rel)
        return f

    @contextlib.contextmanager
    def _named(self, rel: str) -> Iterator[None]:
        """Errors of a table that is missing or fails its page checksums, as `StoreDamagedError` naming it."""
        try:
            yield
        except (OSError, pa.ArrowException) as e:
            path = f"{self.root}/{rel}" if self.fs is not None else os.path.join(self.root, rel)
            raise StoreDamagedError(f"episode table does not read ({type(e).__name__}: {e})", store=self.root,
                                    path=path) from e

    def _open(self, rel: str) -> pq.ParquetFile:
        if self.fs is None:
            f = pq.ParquetFile(os.path.join(self.root, rel), memory_map=True, **READ)
        else:
            f = pq.ParquetFile(self.fs.open(f"{self.root}/{rel}", "rb"), **READ)
        meta = f.metadata
        self._starts[rel] = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]).tolist()
        self._files[rel] = f
        return f

    def _group_of(self, rel: str, i: int) -> tuple[pa.Table, int]:
        """(row group holding row `i` of table `rel`, `i`'s row in it); the group is kept until another is
        needed."""
        f = self._file(rel)
        starts = self._starts[rel]
        if not 0 <= i < starts[-1]:
            raise IndexError(f"row {i} out of range [0, {starts[-1]}) of {rel}")
        g = bisect.bisect_right(starts, i) - 1
        cached = self._groups.get(rel)
        if cached is None or cached[0] != g:
            with self._named(rel):
                cached = self._groups[rel] = [g, f.read_row_group(g), 0, None]
        return cached[1], i - starts[g]

    def row(self, rel: str, i: int) -> dict[str, Any]:
        """Row `i` of table `rel` as Python values. A row group read once is taken value by value; one read
        row after row (an edit, a scan) is turned into Python lists once, after a few rows."""
        table, j = self._group_of(rel, i)
        cached = self._groups[rel]
        cached[2] += 1
        if cached[3] is None and cached[2] > 16:
            cached[3] = table.to_pydict()
        if cached[3] is not None:
            return {name: col[j] for name, col in cached[3].items()}
        return {name: table.column(name)[j].as_py() for name in table.column_names}

    def whole(self, rel: str, name: str) -> pa.Array:
        """Column `name` of table `rel`, read once per process."""
        self._file(rel)
        ident = f"{rel}:{name}"
        if ident not in self._columns:
            with self._named(rel):
                self._columns[ident] = self._file(rel).read(columns=[name]).column(0).combine_chunks()
        return self._columns[ident]

    @property
    def roles(self) -> list[str]:
        """Camera roles with a column."""
        if "roles" not in self._columns:
            names = self._file(EPISODES).schema_arrow.names
            self._columns["roles"] = [n[len("camera."):] for n in names if n.startswith("camera.")]
        return self._columns["roles"]

    def key(self, i: int) -> str:
        """Key of episode `i`."""
        ident = f"{EPISODES}:key"
        if ident in self._columns and self._pid == os.getpid():
            return self._columns[ident][i].as_py()
        table, j = self._group_of(EPISODES, i)
        return table.column("key")[j].as_py()

    def key_array(self) -> pa.Array:
        """The key column."""
        return self.whole(EPISODES, "key")

    def key_list(self) -> list[str]:
        """Every key, in store order."""
        return self.key_array().to_pylist()

    def tasks(self) -> list[str]:
        """The task table: index -> task text."""
        return self.whole(TASKS, "task").to_pylist()

    def camera(self, j: int) -> dict[str, Any]:
        """Camera `j` of the camera table as its metadata dict (JSON values; a new dict each call)."""
        if j not in self._cameras:
            if len(self._cameras) >= 4096:
                self._cameras.clear()
            self._cameras[j] = json.dumps(self._camera(j))
        return json.loads(self._cameras[j])

    def _camera(self, j: int) -> dict[str, Any]:
        row = self.row(CAMERAS, j)
        cam: dict[str, Any] = {}
        for name in CAMERA_FIXED:
            v = row[name]
            if v is None:
                continue
            if name in ("K", "T_world_cam"):
                n = 3 if name == "K" else 4
                v = [list(v[r * n:(r + 1) * n]) for r in range(n)]
            cam[name] = v
        cam.update(json.loads(row["extra"]) if row["extra"] else {})
        return cam

    def record(self, i: int) -> dict[str, Any]:
        """Episode `i`'s metadata as stored."""
        row = self.row(EPISODES, i)
        rec: dict[str, Any] = {"key": row["key"], "length": row["length"]}
        if row["task"] >= 0:
            rec["task"] = self.tasks()[row["task"]]
        for name in ("fps", "source_path"):
            if row[name] is not None:
                rec[name] = row[name]
        cams = {role: self.camera(row[camera_column(role)]) for role in self.roles
                if row[camera_column(role)] >= 0}
        if cams:
            rec["cameras"] = cams
        rec.update(json.loads(row["extra"]) if row["extra"] else {})
        return rec

    def records(self, start: int, stop: int) -> list[dict[str, Any]]:
        """`record(i)` of each episode `i` in `[start, stop)`, from one read of their row groups (kept for the
        next range) and one conversion of their rows; episodes with the same camera share its dict."""
        self._file(EPISODES)
        starts = self._starts[EPISODES]
        groups = (bisect.bisect_right(starts, start) - 1, bisect.bisect_left(starts, stop))
        cached = self._columns.get("records")
        if cached is None or cached[0] != groups:
            with self._named(EPISODES):
                cached = self._columns["records"] = (groups, self._file(EPISODES).read_row_groups(range(*groups)))
        cols = cached[1].slice(start - starts[groups[0]], stop - start).to_pydict()
        tasks, cams, out = self.tasks(), {}, []
        for j, (key, length, task, extra) in enumerate(zip(cols["key"], cols["length"], cols["task"], cols["extra"])):
            rec: dict[str, Any] = {"key": key, "length": length}
            if task >= 0:
                rec["task"] = tasks[task]
            rec.update({name: cols[name][j] for name in ("fps", "source_path") if cols[name][j] is not None})
            roles = [(role, cols[camera_column(role)][j]) for role in self.roles]
            cameras = {role: cams[c] if c in cams else cams.setdefault(c, self.camera(c))
                       for role, c in roles if c >= 0}
            if cameras:
                rec["cameras"] = cameras
            rec.update(json.loads(extra) if extra else {})
            out.append(rec)
        return out

    def column(self, name: str) -> tuple[Any, np.ndarray] | None:
        """`(values, present)` of a column, or None."""
        if name in ("key", "length", "fps", "source_path"):
            values = self.whole(EPISODES, name)
            return values, pc.is_valid(values).to_numpy(zero_copy_only=False)
        if name == "task":
            codes = self.whole(EPISODES, "task").to_numpy()
            tasks = pa.array(self.tasks() + [""], pa.string())
            return tasks.take(pa.array(np.where(codes >= 0, codes, len(tasks) - 1))), codes >= 0
        return None

    def entries(self, name: str) -> list[Any]:
        """Entry `name` of every episode, None where absent."""
        if name == "cameras" or not name.isidentifier():
            return super().entries(name)
        got = self.column(name)
        if got is not None:
            values, present = got
            return [v if p else None for v, p in zip(values.to_pylist(), present)]
        extras = self.whole(EPISODES, "extra").to_pylist()
        return [json.loads(x).get(name) if x else None for x in extras]

    def tasks_of(self, episodes: np.ndarray) -> list[str]:
        """The task of each of `episodes` ("" where none)."""
        codes = self.whole(EPISODES, "task").to_numpy()[np.asarray(episodes, dtype=np.int64)]
        tasks = self.tasks() + [""]
        return [tasks[c] for c in np.where(codes >= 0, codes, len(tasks) - 1)]

    def lengths(self) -> np.ndarray:
        """`(E,) int64` the length column."""
        return np.asarray(self.whole(EPISODES, "length").to_numpy(), dtype=np.int64)

    def split_codes(self) -> tuple[list[str], np.ndarray]:
        """(split names, `(E,) int8` codes) of `meta/split.parquet`, or no names when it is absent."""
        path = f"{self.root}/{SPLIT}" if self.fs is not None else os.path.join(self.root, SPLIT)
        try:
            with self._named(SPLIT):
                if self.fs is None:
                    return read_split(path)
                with self.fs.open(path, "rb") as f:
                    return read_split(f)
        except StoreDamagedError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return [], np.zeros(0, np.int8)
            raise

    def fps(self) -> np.ndarray:
        """`(E,) float64` fps of every episode, NaN where it has none."""
        return np.asarray(self.whole(EPISODES, "fps").to_numpy(zero_copy_only=False), dtype=np.float64)
