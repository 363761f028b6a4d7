"""Per-episode stats parts as columns (`meta/stats_parts/`): what the ingest workers sample from the frames
they encode (`stats.sampled_frames_part`), kept so that the stats pass, `recompute-stats`, `verify` and the
edits never read those frames back.

    meta/stats_parts/<first>.parquet   one row per episode and frame field, episodes `first, first + 1, ...`
                                       (12 digits; one file per commit group while a writer runs, compacted
                                       into one file starting at 0 when it finishes)

Columns: episode (int64, store index), field (string), frame_stride, pixel_stride (int32: the sampling the
part was made with), count (int64), sum, m2, min, max (list<float64>, F features), hist (list<int64>, F x B
counts on the field's unit bins from `unit_from`, int32, B = `bins`), part (string: the part's JSON when it is
not of that fixed layout, else null). A store of 10^6 episodes keeps them in row groups of 4,096 rows: the
stats pass folds one row group at a time (`PartTable.blocks`), so its memory does not grow with the store.

Format version 1 kept the same parts as JSON per commit group (`<first>.json`, 8 digits, keyed by episode key),
2.5 kB per episode, read whole by every pass; `LegacyParts` reads those, and `tools.upgrade` converts them.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardyard.stores.episode_table import READ, ROW_GROUP, WRITE, atomic_parquet
from shardyard.stores.manifest import read_json

__all__ = ["PartBlock", "PartTable", "LegacyParts", "compact_parts", "convert_legacy_parts", "drop_parts_after",
           "parts_table", "write_parts"]

PART_SCHEMA = pa.schema([("episode", pa.int64()), ("field", pa.string()), ("frame_stride", pa.int32()),
                    ("pixel_stride", pa.int32()), ("count", pa.int64()), ("sum", pa.list_(pa.float64())),
                    ("m2", pa.list_(pa.float64())), ("min", pa.list_(pa.float64())),
                    ("max", pa.list_(pa.float64())), ("hist", pa.list_(pa.int64())), ("unit_from", pa.int32()),
                    ("bins", pa.int32()), ("part", pa.string())])
_MOMENTS = ("sum", "m2", "min", "max")


def _name(first: int) -> str:
    return f"{first:012d}.parquet"


def _row(episode: int, field: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """One table row of a worker's stats part dict (`sampled_frames_part`)."""
    part = value.get("part") or {}
    edges = part.get("edges")
    dense = (not part.get("sparse") and isinstance(edges, dict) and part.get("hist") is not None
             and "unit_bins_from" in edges)
    row = {"episode": int(episode), "field": field, "frame_stride": int(value.get("frame_stride") or 0),
           "pixel_stride": int(value.get("pixel_stride") or 0), "count": int(part.get("count", 0)),
           "unit_from": None, "bins": None, "hist": None, "part": None}
    row.update({k: None for k in _MOMENTS})
    if dense:
        row.update({k: part[k] for k in _MOMENTS})
        row.update(hist=part["hist"], unit_from=int(edges["unit_bins_from"]), bins=int(edges["bins"]))
    else:
        row["part"] = json.dumps(part)
    return row


def _list_column(values: list[Any], dtype: Any, arrow_type: pa.DataType) -> pa.Array:
    """A list<arrow_type> column from per-row arrays (None: null), built from one concatenated buffer."""
    arrays = [np.asarray(v, dtype=dtype).ravel() if v is not None else None for v in values]
    lengths = np.array([0 if a is None else len(a) for a in arrays], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = [a for a in arrays if a is not None]
    data = pa.array(np.concatenate(flat) if flat else np.zeros(0, dtype), arrow_type)
    mask = pa.array([a is None for a in arrays], pa.bool_())
    return pa.ListArray.from_arrays(offsets, data, mask=mask)


def parts_table(parts: Sequence[tuple[int, str, Mapping[str, Any]]]) -> pa.Table:
    """The parts `(episode, field, stats part dict)` as rows of a table (`PART_SCHEMA`), in their order."""
    rows = [_row(e, f, v) for e, f, v in parts]
    cols: dict[str, Any] = {name: pa.array([r[name] for r in rows], PART_SCHEMA.field(name).type)
                            for name in PART_SCHEMA.names if name not in _MOMENTS + ("hist",)}
    cols.update({k: _list_column([r[k] for r in rows], np.float64, pa.float64()) for k in _MOMENTS})
    cols["hist"] = _list_column([r["hist"] for r in rows], np.int64, pa.int64())
    return pa.table(cols, schema=PART_SCHEMA)


def write_parts(folder: str | os.PathLike, first: int,
                parts: Sequence[tuple[int, str, Mapping[str, Any]]] | pa.Table) -> None:
    """Write the parts of one commit group whose first episode is `first` (atomically: temp file renamed into
    place): `(episode, field, stats part dict)` tuples, or rows already in a table (`PART_SCHEMA`, e.g. another
    store's `PartTable.rows` renumbered: copied as they are)."""
    table = parts if isinstance(parts, pa.Table) else parts_table(parts)
    atomic_parquet(Path(folder) / _name(first), lambda tmp: pq.write_table(table, tmp, **WRITE))


def _files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted((int(f.stem), f) for f in folder.glob("*.parquet") if f.stem.isdigit())


def drop_parts_after(folder: str | os.PathLike, num_episodes: int) -> None:
    """On a writer's resume: delete the rows of episodes at or past `num_episodes` (a group killed before its
    commit, or a finished store cut back to its commit log), whole files or the tail of one."""
    for first, f in _files(Path(folder)):
        if first >= num_episodes:
            f.unlink()
            continue
        table = pq.read_table(f, **READ)
        keep = np.asarray(table.column("episode").to_numpy()) < num_episodes
        if not keep.all():
            kept = table.filter(pa.array(keep))
            atomic_parquet(f, lambda tmp, t=kept: pq.write_table(t, tmp, **WRITE))


def compact_parts(folder: str | os.PathLike) -> None:
    """Merge every parts file into one starting at episode 0 (row groups of `ROW_GROUP` rows), streamed: one
    input file in memory at a time."""
    folder = Path(folder)
    files = _files(folder)
    if len(files) <= 1:
        return

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, PART_SCHEMA, **WRITE) as w:
            for _, f in files:
                w.write_table(pq.read_table(f, schema=PART_SCHEMA, **READ), row_group_size=ROW_GROUP)

    atomic_parquet(folder / _name(0), write)
    for first, f in files:
        if first != 0:
            f.unlink()


def convert_legacy_parts(folder: str | os.PathLike, keys: Sequence[str]) -> int:
    """Rewrite format-1 parts files (`<first>.json`, by episode key) in `folder` as Parquet files, episodes
    numbered by their index in `keys` (parts of keys not in `keys` are dropped); returns the files converted."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return 0
    index = {k: i for i, k in enumerate(keys)}
    for f in files:
        group = read_json(str(f)).get("episodes", {})
        parts = sorted((index[k], name, part) for k, fields in group.items() if k in index
                       for name, part in fields.items())
        if parts:
            write_parts(folder, parts[0][0], parts)
        f.unlink()
    return len(files)


def _part_dict(table: pa.Table, i: int) -> dict[str, Any]:
    """The stats part dict (`sampled_frames_part`'s form, numpy arrays) of row `i` of a parts table."""
    def value(name: str) -> Any:
        return table.column(name)[i].as_py()

    if value("part") is not None:
        part = json.loads(value("part"))
    else:
        arrays = {k: table.column(k)[i].values.to_numpy(zero_copy_only=False) for k in _MOMENTS + ("hist",)}
        f = len(arrays["sum"])
        part = {"count": value("count"), **{k: arrays[k] for k in _MOMENTS},
                "hist": arrays["hist"].reshape(f, -1), "edges": {"unit_bins_from": value("unit_from"),
                                                                  "bins": value("bins")}}
    return {"frame_stride": value("frame_stride"), "pixel_stride": value("pixel_stride"), "part": part}


def _renamed(table: pa.Table, start: int, fields: Mapping[str, str]) -> pa.Table:
    """The rows of `table` whose field is a key of `fields`, renamed to its value, episodes less `start`."""
    codes = pc.index_in(table.column("field"), value_set=pa.array(list(fields), pa.string()))
    table, codes = table.filter(pc.is_valid(codes)), codes.filter(pc.is_valid(codes))
    table = table.set_column(table.schema.get_field_index("field"), "field",
                             pa.array(list(fields.values()), pa.string()).take(codes))
    return table.set_column(table.schema.get_field_index("episode"), "episode",
                            pc.subtract(table.column("episode"), start))


class PartBlock:
    """The dense parts of one field in one row group, as arrays: `episodes (k,) int64` (increasing),
    `strides (k, 2) int32` (frame, pixel), `count (k,) int64`, `sum`, `m2`, `min`, `max` `(k, F) float64`,
    `hist (k, F, B) int64` on unit bins from `unit_from`."""

    def __init__(self, table: pa.Table) -> None:
        k = table.num_rows
        self.episodes = np.asarray(table.column("episode").to_numpy(), dtype=np.int64)
        self.strides = np.stack([table.column("frame_stride").to_numpy(), table.column("pixel_stride").to_numpy()],
                                axis=1) if k else np.zeros((0, 2), np.int32)
        self.count = np.asarray(table.column("count").to_numpy(), dtype=np.int64)

        def flat(name: str, dtype: Any) -> np.ndarray:
            values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return np.asarray(values, dtype=dtype).reshape(k, -1) if k else np.zeros((0, 0), dtype)

        self.sum, self.m2, self.min, self.max = (flat(n, np.float64) for n in _MOMENTS)
        f = self.sum.shape[1]
        self.hist = flat("hist", np.int64).reshape(k, f, -1) if k else np.zeros((0, 0, 0), np.int64)
        self.unit_from = int(table.column("unit_from")[0].as_py()) if k else 0


class PartTable:
    """The parts of a store (`meta/stats_parts/*.parquet`), read on demand: one episode's part (`get`, its
    row group kept until another is needed) or a field's dense parts block by block (`blocks`).

    folder: the local `meta/stats_parts` folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._pid = -1
        self._index: list[tuple[int, Path, list[int], pq.ParquetFile]] = []
        self._cached: tuple[tuple[Path, int], dict[tuple[int, str], int], pa.Table] | None = None
        self._end = 0  # past the last episode the files listed hold
        self._groups: dict[tuple[Path, int], pa.Table] = {}  # row groups `rows` read last

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_pid": -1, "_index": [], "_cached": None, "_end": 0, "_groups": {}}

    def _files(self, episode: int | None = None) -> list[tuple[int, Path, list[int], pq.ParquetFile]]:
        """(first episode, path, first episode of each row group, file) per file; listed again in a new
        process, for a pass over every file, and when `episode` lies past the last file known (a writer's
        folder grows), not at every lookup."""
        if self._pid == os.getpid() and self._index and episode is not None and episode < self._end:
            return self._index
        found = _files(self.folder)
        if self._pid != os.getpid() or [f for f, _ in found] != [x[0] for x in self._index]:
            self._index = []
            for first, path in found:
                pf = pq.ParquetFile(path, memory_map=True, **READ)
                starts = []
                for g in range(pf.num_row_groups):
                    stats = pf.metadata.row_group(g).column(0).statistics  # the episode column's
                    starts.append(int(stats.min) if stats is not None and stats.has_min_max else first)
                    self._end = int(stats.max) + 1 if stats is not None and stats.has_min_max else first
                self._index.append((first, path, starts, pf))
            self._pid, self._cached = os.getpid(), None
        return self._index

    def __bool__(self) -> bool:
        return bool(_files(self.folder))

    def get(self, episode: int, field: str) -> dict[str, Any] | None:
        """The stats part dict of `field` in `episode` (`sampled_frames_part`'s form), or None."""
        files = self._files(episode)
        at = bisect.bisect_right([f[0] for f in files], episode) - 1
        if at < 0:
            return None
        _, path, starts, pf = files[at]
        g = max(bisect.bisect_right(starts, episode) - 1, 0)
        # an episode's rows (one per field) may straddle two row groups: look in the one before too
        for group in (g, g - 1) if g > 0 and starts[g] == episode else (g,):
            if not pf.num_row_groups:
                return None
            if self._cached is None or self._cached[0] != (path, group):
                table = pf.read_row_group(group)
                rows = zip(table.column("episode").to_pylist(), table.column("field").to_pylist())
                self._cached = ((path, group), {k: i for i, k in enumerate(rows)}, table)
            at = self._cached[1].get((episode, field))
            if at is not None:
                return _part_dict(self._cached[2], at)
        return None

    def rows(self, start: int, stop: int, fields: Mapping[str, str] | None = None) -> pa.Table:
        """The rows of episodes `[start, stop)` in file order (`PART_SCHEMA`), without turning them into dicts:
        every field's, or with `fields` (stored name -> name to give) those fields' renamed, their `episode`
        counted from `start`. The row groups read are kept until a later range has passed them, so a copy that
        walks the store in consecutive ranges decodes each row group once."""
        files = self._files(stop - 1) if stop > start else []
        out, groups = [], {}
        for k, (first, path, starts, pf) in enumerate(files):
            if first >= stop or (k + 1 < len(files) and files[k + 1][0] < start):
                continue
            for g in range(pf.num_row_groups):
                if starts[g] >= stop or (g + 1 < len(starts) and starts[g + 1] < start):
                    continue
                table = self._groups.get((path, g))
                if table is None:
                    table = pf.read_row_group(g)
                groups[(path, g)] = table
                ep = table.column("episode").to_numpy()  # in increasing order, as every writer wrote them
                lo, hi = np.searchsorted(ep, [start, stop])
                out.append(table.slice(int(lo), int(hi - lo)))  # a view, where a filter would copy
        self._groups = groups
        # as PART_SCHEMA names the list items: Parquet reads them back as `element`, in the file's Arrow schema
        table = pa.concat_tables(out).cast(PART_SCHEMA) if out else PART_SCHEMA.empty_table()
        return table if fields is None else _renamed(table, start, fields)

    def blocks(self, field: str) -> Iterator[PartBlock]:
        """`PartBlock`s of `field`'s dense parts in episode order, one row group at a time."""
        for _, _, _, pf in self._files():
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                mask = np.asarray(table.column("field").to_numpy(zero_copy_only=False) == field) \
                    & np.asarray(table.column("part").is_null().to_numpy(zero_copy_only=False))
                if mask.any():
                    yield PartBlock(table.filter(pa.array(mask)))
        pa.default_memory_pool().release_unused()  # ~100s of MB of decoded row groups at 10^6 episodes


class LegacyParts:
    """Format version 1 parts (`meta/stats_parts/<first>.json`, `{"episodes": {key: {field: part}}}`) through
    `PartTable`'s `get`, for a store read without upgrading. folder: the local folder; keys: the store's
    episode keys in order."""

    def __init__(self, folder: str | os.PathLike | None, keys: Sequence[str]) -> None:
        self.folder, self.keys = None if folder is None else Path(folder), keys
        self._cache: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def of_mapping(cls, parts: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> "LegacyParts":
        """Parts given as a mapping episode key -> field -> part dict (the API before the columns)."""
        out = cls(None, keys)
        out._cache = parts
        return out

    def __bool__(self) -> bool:
        if self.folder is None:
            return bool(self._cache)
        return self.folder.is_dir() and any(self.folder.glob("*.json"))

    def by_key(self) -> Mapping[str, Mapping[str, Any]]:
        """Every part: key -> field -> part dict (read whole: version-1 stores are the small ones)."""
        if self._cache is None:
            cache: dict[str, Any] = {}
            for f in sorted(self.folder.glob("*.json")) if self.folder is not None and self.folder.is_dir() else []:
                cache.update(read_json(str(f)).get("episodes", {}))
            self._cache = cache
        return self._cache

    def get(self, episode: int, field: str) -> dict[str, Any] | None:
        """The part of `field` in `episode`, or None."""
        return self.by_key().get(self.keys[episode], {}).get(field)

    def blocks(self, field: str) -> Iterator[PartBlock]:
        """None: a version-1 store's parts are taken episode by episode."""
        return iter(())
