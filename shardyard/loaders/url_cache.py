"""The optional cache of `UrlClipStream` (`--cache DIR`): each block of `block_rows` metadata rows that a
worker downloads whole becomes shard `DIR/shards/{split}-{block:06d}.tar`, written exactly as `ingest webvid`
writes shard `block` of the same metadata (`ingest.webvid.fetch_row` per row, `row_sample` per stored video,
one status row per input row in the `.status.json` sidecar, tar and sidecar committed atomically by
`stores.wds.ShardWriter.write_shard`). So `ingest webvid META --out DIR --retry-failed` (same
`--samples-per-shard` as `block_rows`) finishes the folder into the store a direct ingest would make: it keeps
the cached shards, refetches their failed rows, and downloads the blocks no worker finished.

No manifest is written here (the folder is not a complete store until the ingest finishes it). A cached
shard is read back only after its size and sha256 match its sidecar (`StoreDamagedError` otherwise); a shard
whose sidecar describes another version of it (a rewrite killed before its rename) is not used.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardyard.errors import ConfigError, StoreDamagedError, StoreError
from shardyard.ingest.webvid import row_key, row_sample
from shardyard.stores.atomic import to_jsonable
from shardyard.stores.manifest import MANIFEST, read_json, read_manifest_dict, sha256_file
from shardyard.stores.wds import FORMAT, ShardWriter, ShardWriterConfig, shard_name

__all__ = ["BlockCache", "CachedBlock"]

log = logging.getLogger(__name__)


@dataclass
class CachedBlock:
    """One cached block: `status` maps each key of the block to its status row (`status`, `container`,
    ...); `read(key)` returns the stored video bytes of a `success` row."""

    path: Path
    status: dict[str, dict[str, Any]]

    def __post_init__(self) -> None:
        self._tar = tarfile.open(self.path, "r:")
        self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}

    def read(self, key: str) -> bytes:
        """Video bytes of `key` (member `<key>.<container>`). Raises `StoreDamagedError` when absent."""
        name = f"{key}.{self.status[key].get('container')}"
        info = self._members.get(name)
        f = self._tar.extractfile(info) if info is not None else None
        if f is None:
            raise StoreDamagedError(f"cached shard has no member {name!r} for a success row", path=str(self.path))
        return f.read()

    def close(self) -> None:
        """Close the tar."""
        self._tar.close()


class BlockCache:
    """Cache folder `root` of a URL stream: `has(b)`, `open(b, keys)`, `write(b, keys, results)`.
    Raises `StoreError` when `root` holds another kind of store."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        if (self.root / MANIFEST).exists() and read_manifest_dict(self.root).get("format") != FORMAT:
            raise StoreError(f"cache folder holds a store of another format, not {FORMAT!r}", path=str(self.root))
        self.writer = ShardWriter(self.root, config=ShardWriterConfig(split=split))
        self.writer.shard_dir.mkdir(parents=True, exist_ok=True)

    def path(self, b: int) -> Path:
        """The shard of block `b`."""
        return self.writer.shard_dir / shard_name(self.writer.config.split, b)

    def has(self, b: int) -> bool:
        """Whether block `b` is cached (its tar is there under its final name)."""
        return self.path(b).exists()

    def open(self, b: int, keys: list[str]) -> CachedBlock | None:
        """Block `b`, checked against its sidecar; None when the sidecar describes another version of the tar.
        Raises `StoreDamagedError` for a tar whose sha256 differs from its sidecar, `ConfigError` when the
        shard's keys are not the block's (written with another `block_rows` / `--samples-per-shard`)."""
        tar = self.path(b)
        side = tar.with_suffix(".status.json")
        entry = read_json(str(side)) if side.exists() else {}
        if entry.get("file", {}).get("bytes") != tar.stat().st_size:
            log.warning("cache shard %s: no sidecar of this version; downloading the block again", tar)
            return None
        if sha256_file(tar) != entry["file"]["sha256"]:
            raise StoreDamagedError("cached shard's sha256 differs from its sidecar", path=str(tar))
        status = {str(r.get("key")): r for r in entry.get("samples", [])}
        if set(status) != set(keys):
            raise ConfigError(f"cache shard holds other keys than block {b} ({len(keys)} rows from "
                              f"{keys[0] if keys else '-'}): written with another block_rows / --samples-per-shard",
                              path=str(tar))
        return CachedBlock(tar, status)

    def write(self, b: int, keys: list[str], results: dict[str, tuple[dict[str, Any], bytes | None]]) -> str:
        """Write block `b` from `fetch_row`'s `(info, data)` per key, in key order (what `ingest webvid`
        writes for shard `b`); returns the shard name."""
        name = shard_name(self.writer.config.split, b)
        samples = [row_sample(k, results[k][0], results[k][1]) for k in keys if results[k][1] is not None]
        rows = [to_jsonable(results[k][0] | {"shard": name}) for k in keys]
        return self.writer.write_shard(b, samples, rows)

    @staticmethod
    def keys(start: int, stop: int) -> list[str]:
        """Keys of rows `[start, stop)`, in row order."""
        return [row_key(i) for i in range(start, stop)]
