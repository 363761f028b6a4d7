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

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_json, to_jsonable
from shardyard.stores.manifest import read_json

PROGRESS = "progress.json"
PROGRESS_DIR = "progress"

__all__ = ["PROGRESS", "PROGRESS_DIR", "CommitLog", "committed_episodes"]


def _record_name(first: int) -> str:
    return f"{first:012d}.json"


@dataclass
class CommitLog:
    """The commit log of the episodic store at `root`: `header` (format and schema), the committed episodes'
    `keys` and `lengths` (steps) in store order, and the committed `shard_bytes` of each frame field's
    partial last shard. Per-episode metadata stays on disk (`episodes()` reads it back record by record), so
    a writer holds ~100 bytes per episode, not its ~1 kB of metadata (10^6 episodes: ~0.1 GB, not ~5 GB of
    Python objects); `roles` are the camera roles any committed episode names (the columns of the episode
    table, `stores.episode_table`, are fixed before its rows are written)."""

    root: Path
    header: dict[str, Any]
    keys: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shard_bytes: dict[str, int] = field(default_factory=dict)
    roles: set[str] = field(default_factory=set)

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
            log._add(episodes)
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
        record = {"first": first, "episodes": episodes, "shard_bytes": shard_bytes}  # numpy values: as lists
        # No fsync: the protocol is against the process dying (the page cache outlives it, and the chunk
        # files a record refers to are not fsynced either); flushing each group cost ~50 ms here.
        atomic_write_json(folder / _record_name(first), record, fsync=False, indent=None)
        self._add(episodes)
        self.shard_bytes = dict(shard_bytes)

    def _add(self, episodes: list[dict[str, Any]]) -> None:
        self.keys += [e["key"] for e in episodes]
        self.lengths += [int(e["length"]) for e in episodes]
        for e in episodes:
            cams = e.get("meta", {}).get("cameras")
            if isinstance(cams, dict):
                self.roles.update(cams)


def committed_episodes(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Episodes committed so far in the (possibly unfinished) episodic store at `root`: `{key, length,
    meta}` in store order; empty when it has no log."""
    log = CommitLog.read(root)
    return list(log.episodes()) if log is not None else []
