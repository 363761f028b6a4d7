"""Store formats: episodic (zarr v3), features (zarr v3 DINO tokens) and shards (webdataset tar).

`FORMATS` is the one table from a manifest's `format` to the format's reader; `open_store(url)` reads
`manifest.json` and returns that reader, so no caller has to sniff a directory. The tools that act on a
store (`verify`, `inspect`) find its format here and dispatch on the reader class, never on the name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from shardyard.errors import StoreError

__all__ = ["FORMATS", "StoreFormat", "open_store", "store_format"]


@dataclass(frozen=True)
class StoreFormat:
    """One store format: the `format` its manifest names, its reader, and how the reader is opened.

    `reader` is `"module:Class"`, imported on first use: the readers pull in zarr and torch, which a
    caller that only asks for a store's format should not pay for. `checks_reads` says whether the reader
    takes `verify_reads` (checks every read against the checksums recorded at write time); a shard
    store's tars are checked by its stream instead (`loaders.streaming.ClipStream`).
    """

    name: str
    reader: str
    checks_reads: bool

    def reader_class(self) -> type:
        """The reader class (imported on the first call)."""
        module, _, attr = self.reader.partition(":")
        return getattr(importlib.import_module(module), attr)

    def open(self, path_or_url: str | os.PathLike, verify_reads: bool = True) -> Any:
        """The reader of the store at `path_or_url` (local path or fsspec URL)."""
        cls = self.reader_class()
        if self.checks_reads:
            return cls(path_or_url, verify_reads=verify_reads)
        return cls(str(path_or_url))


FORMATS: dict[str, StoreFormat] = {f.name: f for f in (
    StoreFormat("episodic-zarr3", "shardyard.stores.episodic:EpisodicStore", checks_reads=True),
    StoreFormat("features-zarr3", "shardyard.stores.features:FeatureStore", checks_reads=True),
    StoreFormat("shards-webdataset", "shardyard.stores.wds:ShardStore", checks_reads=False),
)}


def store_format(path_or_url: str | os.PathLike) -> str | None:
    """The `format` of the store at `path_or_url` (a `FORMATS` name, or another a newer writer made), or
    None when there is no readable `manifest.json` there."""
    from shardyard.stores.manifest import read_manifest_dict

    try:
        return read_manifest_dict(path_or_url).get("format")
    except (OSError, ValueError):
        return None


def open_store(path_or_url: str | os.PathLike, verify_reads: bool = True) -> Any:
    """Open a complete store (local path or fsspec URL) for reading, by its manifest's `format` (`FORMATS`):
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
    if fmt not in FORMATS:
        raise StoreError(f"unknown store format {fmt!r}", path=str(path_or_url))
    return FORMATS[fmt].open(path_or_url, verify_reads=verify_reads)
