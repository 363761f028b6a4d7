"""`shardyard upgrade STORE`: rewrite an episodic store of format version 1 (`meta/episodes.json`, JSON stats
parts, the split in the manifest) to version 2 (`stores.episode_table`, `stores.stats.part_table`). Data
arrays are not touched. An edit does the same on the way: its output is written by `EpisodicWriter`, which
always writes version 2.

Order, so that a kill at any point leaves a store that opens: the new files are written beside the old ones
first; then `manifest.json` (format version 2, a new generation: a reader that opened the version-1 store
raises `StoreChangedError` at its next read rather than look for files that are about to go); then
`checksums.json` (entries of the removed files dropped, of the new files added); last the old files are
deleted. A rerun after a kill finishes the job (it also tidies a version-2 store that still has old files).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_json
from shardyard.stores.checksums import CHECKSUMS, file_entry
from shardyard.stores.episode_table import (
    CAMERAS,
    EPISODES,
    EPISODES_JSON,
    SPLIT,
    TASKS,
    roles_of,
    write_episode_table,
    write_split,
)
from shardyard.stores.episodic import FORMAT, FORMAT_VERSION, STATS_PARTS
from shardyard.stores.manifest import MANIFEST, Manifest, new_generation, read_json, read_manifest_dict
from shardyard.stores.stats.part_table import compact_parts, convert_legacy_parts

log = logging.getLogger(__name__)

__all__ = ["UpgradeResult", "needs_upgrade", "upgrade_store"]


@dataclass
class UpgradeResult:
    """What `upgrade_store` did: the versions before and after, and the files written and removed (relative
    to the store)."""

    path: str
    from_version: int
    to_version: int
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI."""
        if self.from_version == self.to_version and not self.removed:
            return f"{self.path}: already format version {self.to_version}"
        return (f"{self.path}: format version {self.from_version} -> {self.to_version} ({len(self.written)} file(s) "
                f"written, {len(self.removed)} removed)")


def _update_checksums(root: Path, removed: list[str], added: list[str]) -> None:
    """`checksums.json` without the `removed` files' entries and with fresh ones of `added` (and of the manifest
    when it lists it: a pushed store's)."""
    path = root / CHECKSUMS
    if not path.is_file():
        return
    sums = read_json(str(path))
    entries = {f["name"]: f for f in sums.get("files", []) if f["name"] not in removed}
    for name in added:
        if (root / name).is_file():
            entries[name] = file_entry(root, name)
    if sums.get("manifest_sha256"):
        entries[MANIFEST] = file_entry(root, MANIFEST)
        sums["manifest_sha256"] = entries[MANIFEST]["sha256"]
    sums["files"] = [entries[n] for n in sorted(entries)]
    atomic_write_json(path, sums, fsync=False)


def _legacy_files(root: Path) -> list[str]:
    folder = root / STATS_PARTS
    parts = sorted(f.relative_to(root).as_posix() for f in folder.glob("*.json")) if folder.is_dir() else []
    return ([EPISODES_JSON] if (root / EPISODES_JSON).is_file() else []) + parts


def upgrade_store(path: str | os.PathLike) -> UpgradeResult:
    """Rewrite the metadata of the complete local episodic store at `path` to the current format version
    (module docstring). Returns what it did; a store already at the current version is left as it is.
    Raises `StoreError` when `path` is not a complete episodic store."""
    root = Path(path)
    try:
        mdict = read_manifest_dict(root)
    except FileNotFoundError:
        raise StoreError("no manifest.json: not a complete store", path=str(root)) from None
    if mdict.get("format") != FORMAT:
        raise StoreError(f"not an episodic store (format {mdict.get('format')!r})", path=str(root))
    manifest = Manifest.from_dict(mdict)
    before = int(manifest.format_version)
    result = UpgradeResult(str(root), before, max(before, FORMAT_VERSION))
    old = _legacy_files(root)
    if before < FORMAT_VERSION:
        records = read_json(str(root / EPISODES_JSON))
        metas = [{k: v for k, v in r.items() if k not in ("key", "length")} for r in records]
        write_episode_table(root, ((r["key"], r["length"], m) for r, m in zip(records, metas)), roles_of(metas))
        result.written += [EPISODES, TASKS, CAMERAS]
        for f in (root / STATS_PARTS).glob("*.parquet") if (root / STATS_PARTS).is_dir() else []:
            f.unlink()  # an upgrade killed before its manifest: the JSON parts are still the ones to convert
        convert_legacy_parts(root / STATS_PARTS, [r["key"] for r in records])
        compact_parts(root / STATS_PARTS)
        result.written += sorted(f.relative_to(root).as_posix() for f in (root / STATS_PARTS).glob("*.parquet")) \
            if (root / STATS_PARTS).is_dir() else []
        if manifest.split and write_split(root, manifest.split, len(records)):
            manifest.split = {}
            result.written.append(SPLIT)
        manifest.format_version, manifest.generation = FORMAT_VERSION, new_generation()
        atomic_write_json(root / MANIFEST, manifest.to_dict())
        log.info("upgraded %s to format version %d", root, FORMAT_VERSION)
    if old or result.written:
        _update_checksums(root, old, [w for w in result.written if w != SPLIT])
    for name in old:
        (root / name).unlink(missing_ok=True)
    result.removed = old
    return result


def needs_upgrade(manifest: dict[str, Any]) -> bool:
    """True for an episodic store's manifest of an older format version."""
    return manifest.get("format") == FORMAT and int(manifest.get("format_version", 1)) < FORMAT_VERSION
