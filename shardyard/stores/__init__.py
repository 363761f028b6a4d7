"""Store formats: episodic (zarr v3), features (zarr v3 DINO tokens) and shards (webdataset tar).

`open_store(url)` is the one entry point: it reads `manifest.json` and returns the reader of the format it
names, so no caller has to sniff a directory.
"""

from __future__ import annotations

import os
from typing import Any

from shardyard.errors import StoreError

__all__ = ["open_store", "store_format"]


def store_format(path_or_url: str | os.PathLike) -> str | None:
    """The `format` of the store at `path_or_url` (`"episodic-zarr3"`, `"features-zarr3"`,
    `"shards-webdataset"`), or None when there is no readable `manifest.json` there."""
    import json

    import fsspec

    from shardyard.stores.manifest import MANIFEST

    url = str(path_or_url).rstrip("/")
    try:
        with fsspec.open(f"{url}/{MANIFEST}", "rb") as f:
            return json.load(f).get("format")
    except (OSError, ValueError):
        return None


def open_store(path_or_url: str | os.PathLike, verify_reads: bool = True) -> Any:
    """Open a complete store (local path or fsspec URL) for reading, by its manifest's `format`:
    `EpisodicStore` (episodic-zarr3), `FeatureStore` (features-zarr3) or `ShardStore` (shards-webdataset).
    `verify_reads` (default True): reads are checked against the checksums recorded at write time and raise
    `StoreDamagedError` on damage (`stores.read_checks`; a shard store's tars are checked by `ClipStream`).

    Raises `StoreError` when there is no `manifest.json` (not a store, or a job that never finished) or
    its format is unknown.
    """
    fmt = store_format(path_or_url)
    if fmt is None:
        raise StoreError("no manifest.json: not a store, or its job never finished (rerun the same command "
                         "to resume)", path=str(path_or_url))
    if fmt == "episodic-zarr3":
        from shardyard.stores.episodic import EpisodicStore

        return EpisodicStore(path_or_url, verify_reads=verify_reads)
    if fmt == "features-zarr3":
        from shardyard.stores.features import FeatureStore

        return FeatureStore(path_or_url, verify_reads=verify_reads)
    if fmt == "shards-webdataset":
        from shardyard.stores.wds import ShardStore

        return ShardStore(str(path_or_url))
    raise StoreError(f"unknown store format {fmt!r}", path=str(path_or_url))
