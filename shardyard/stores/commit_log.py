"""The episodic writer's commit log: what is committed, kept so that a commit costs the same at the millionth
episode as at the first.

    progress.json             header, written once when the store is created: {"format", "schema", "log"}
    progress/<first>.json     one record per committed group, named by the index of its first episode
                              (12 digits): {"first": i, "episodes": [{key, length, meta}, ...],
                              "shard_bytes": {field: committed size of its partial last shard}}

Each commit writes one new record (atomically: a temp file renamed into place), so a commit costs the size of
its own group, never of the whole log (rewriting one growing `progress.json` per commit made an ingest
quadratic in its episode count), and a staged upload to a bucket sends only the new record. The record is the
commit point: a group whose record is not on disk is not committed. Stores written before this layout keep
their episodes in the header itself (`"episodes"`, `"shard_bytes"`); they are read as the first record, and
new groups are appended as records after them.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_json, chmod_as_umask, to_jsonable
from shardyard.stores.manifest import read_json

PROGRESS = "progress.json"
PROGRESS_DIR = "progress"

__all__ = ["PROGRESS", "PROGRESS_DIR", "CommitLog", "GroupFiles", "committed_episodes"]


def _record_name(first: int) -> str:
    return f"{first:012d}.json"


@dataclass
class CommitLog:
    """The commit log of the episodic store at `root`: `header` (format and schema), the committed episodes'
    `keys` and `lengths` (steps) in store order, and the committed `shard_bytes` of each frame field's
    partial last shard. Per-episode metadata stays on disk (`episodes()` reads it back record by record), so
    a writer holds ~100 bytes per episode, not its ~1 kB of metadata (10^6 episodes: ~0.1 GB, not ~5 GB of
    Python objects)."""

    root: Path
    header: dict[str, Any]
    keys: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shard_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, root: str | os.PathLike, fmt: str, schema: dict[str, Any]) -> "CommitLog":
        """Start an empty log in `root` (writes the header)."""
        log = cls(Path(root), {"format": fmt, "schema": to_jsonable(schema), "log": PROGRESS_DIR})
        atomic_write_json(log.root / PROGRESS, log.header, fsync=False)
        return log

    @classmethod
    def read(cls, root: str | os.PathLike) -> "CommitLog | None":
        """The log in `root`, or None when it has none. Raises `StoreError` naming the record when the
        records do not follow each other (one missing, or one that overlaps the previous)."""
        root = Path(root)
        if not (root / PROGRESS).exists():
            return None
        header = read_json(str(root / PROGRESS))
        log = cls(root, {k: v for k, v in header.items() if k not in ("episodes", "shard_bytes")},
                  shard_bytes=dict(header.get("shard_bytes", {})))
        for episodes, shard_bytes in log._records(header):
            log.keys += [e["key"] for e in episodes]
            log.lengths += [int(e["length"]) for e in episodes]
            if shard_bytes is not None:
                log.shard_bytes = shard_bytes
        return log

    def _records(self, header: dict[str, Any] | None = None) -> Iterator[tuple[list[dict[str, Any]], Any]]:
        """(episodes, shard_bytes) of each record in order, the old layout's header episodes first."""
        header = read_json(str(self.root / PROGRESS)) if header is None else header
        n = len(header.get("episodes", []))
        if n:
            yield header["episodes"], None
        folder = self.root / PROGRESS_DIR
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = read_json(str(f))
            if record.get("first") != n:
                raise StoreError(f"commit log: record starts at episode {record.get('first')}, expected "
                                 f"{n} (a record is missing or was copied in)", path=str(f))
            n += len(record["episodes"])
            yield record["episodes"], dict(record.get("shard_bytes", {}))

    def episodes(self) -> Iterator[dict[str, Any]]:
        """Every committed episode's `{key, length, meta}`, in store order, read from the records."""
        for episodes, _ in self._records():
            yield from episodes

    def append(self, episodes: list[dict[str, Any]], shard_bytes: dict[str, int]) -> None:
        """Commit `episodes` (`{key, length, meta}`; one record: the commit point of their group) with the
        shard sizes after them."""
        folder = self.root / PROGRESS_DIR
        folder.mkdir(exist_ok=True)
        first = len(self.keys)
        record = {"first": first, "episodes": to_jsonable(episodes), "shard_bytes": shard_bytes}
        # No fsync: the protocol is against the process dying (the page cache outlives it, and the chunk
        # files a record refers to are not fsynced either); flushing each group cost ~50 ms here.
        atomic_write_json(folder / _record_name(first), record, fsync=False, indent=None)
        self.keys += [e["key"] for e in episodes]
        self.lengths += [int(e["length"]) for e in episodes]
        self.shard_bytes = dict(shard_bytes)

    def write_episodes_json(self, path: str | os.PathLike) -> None:
        """Write `meta/episodes.json` (`[{key, length, **meta}, ...]`) from the records, one record in memory
        at a time, atomically (a temp file renamed into place)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            chmod_as_umask(fd)
            with os.fdopen(fd, "w") as f:
                f.write("[")
                for i, e in enumerate(self.episodes()):
                    f.write(("," if i else "") + "\n" + json.dumps({"key": e["key"], "length": e["length"],
                                                                   **e["meta"]}))
                f.write("\n]\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def committed_episodes(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Episodes committed so far in the (possibly unfinished) episodic store at `root`: `{key, length,
    meta}` in store order; empty when it has no log."""
    log = CommitLog.read(root)
    return list(log.episodes()) if log is not None else []


class GroupFiles(Mapping):
    """Episode key -> the value that per-group files `folder/<first>.json` (`{"episodes": {key: value}}`,
    `first` the store index of the group's first episode, 8 digits) hold for it, read on demand with one file
    in memory at a time: the ingest workers' stats parts (`meta/stats_parts`) of a store of 10^6 episodes
    are gigabytes of JSON, which a dict of them all would hold in memory. `keys` are the store's episode keys
    in order (a growing list is fine: lookups use its current contents). A key with no entry maps to
    nothing (`get` gives the default)."""

    def __init__(self, folder: str | os.PathLike, keys: list[str]) -> None:
        self.folder, self._keys = Path(folder), keys
        self._index: dict[str, int] = {}
        self._starts: list[int] = []
        self._cached: tuple[int, dict[str, Any]] = (-1, {})

    def _list(self) -> list[int]:
        return sorted(int(f.stem) for f in self.folder.glob("*.json")) if self.folder.is_dir() else []

    def __getitem__(self, key: str) -> Any:
        if len(self._index) != len(self._keys):
            self._index.update((k, i) for i, k in enumerate(self._keys[len(self._index):], len(self._index)))
        i = self._index[key]  # KeyError for a key the store does not have
        if key not in self._cached[1]:
            at = bisect.bisect_right(self._starts, i) - 1
            if at == len(self._starts) - 1:  # at or past the last file known: files may have been added
                self._starts = self._list()
                at = bisect.bisect_right(self._starts, i) - 1
            if at < 0:
                raise KeyError(key)
            if self._starts[at] != self._cached[0]:
                self._cached = (self._starts[at],
                                read_json(str(self.folder / f"{self._starts[at]:08d}.json")).get("episodes", {}))
        return self._cached[1][key]

    def __iter__(self) -> Iterator[str]:
        for start in self._list():
            yield from read_json(str(self.folder / f"{start:08d}.json")).get("episodes", {})

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return bool(self._list())
