"""`shardyard verify --repair`: remove what killed jobs left in a store.

A writer that is killed leaves its reader workers' spill folder (`.spill/`, encoded frames and MP4s not
yet copied in) and temp files (`.*.tmp`, zarr's `*.partial`). The next run of the same job removes them
when it opens the store (`EpisodicWriter`, `FeatureWriter`, `ShardWriter`); `repair_store` does it for a
store no job will write again. Nothing a reader uses is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from shardyard.errors import StoreError
from shardyard.stores.atomic import remove_leftovers
from shardyard.stores.commit_log import PROGRESS
from shardyard.stores.manifest import MANIFEST
from shardyard.stores.remote_fs import is_remote

__all__ = ["repair_store"]

# A store, finished or not, has one of these at its root: only then are its temp files ours to delete.
_STORE_MARKERS = (MANIFEST, PROGRESS, "zarr.json", "shards")


def repair_store(path: str | os.PathLike) -> list[str]:
    """Delete the spill folders and temp files under the local store at `path` (run it when no job writes
    the store: a running writer's spill files would go too). Returns the removed paths relative to `path`,
    sorted. Raises `StoreError` for a URL or a folder that holds no store."""
    if is_remote(str(path)):
        raise StoreError("--repair works on a local store only", path=str(path))
    root = Path(path)
    if not any((root / m).exists() for m in _STORE_MARKERS):
        raise StoreError(f"not a store (none of {', '.join(_STORE_MARKERS)} here); nothing removed", path=str(root))
    return remove_leftovers(root)
