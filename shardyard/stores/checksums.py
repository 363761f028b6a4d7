"""Checksums of a store's bytes, recorded when they are written and checked by `shardyard verify` and `pull`.

`checksums.json`: size and sha256 of files of a store. Layout: `{"version": 1, "manifest_sha256": ...,
"files": [{"name": "data/obs.eef_pos/c/0/0", "bytes": n, "sha256": hex}, ...]}`, names relative to the store
root with `/` separators, sorted; `checksums.json` itself is never listed. `shardyard push` writes it for
every file, `manifest.json` included. The episodic writer writes it at finalize, before the manifest
(`manifest_sha256` null, `"scope": "ingest"`), for the files that do not change after it: low-dim chunk
files, every `zarr.json`, `meta/*` and `progress.json`; not `manifest.json`, `stats.json`, `report.json` or
`meta/split.parquet` (`shardyard stats` may rewrite those; `verify` recomputes the stats), and not the frame
fields' shard files and MP4s, which have a crc32c per chunk or per file instead (hashing GBs of frames again
at finalize, in one process, would cost what the parallel readers saved):

    meta/chunk_crc32c/<field>   (N,) uint32, row-aligned with a sharded frame field: crc32c of each row's
                                inner chunk as stored in the shard file, taken where it was encoded
    meta/video_crc32c/<field>   (E,) uint32, one per episode: crc32c of the episode's MP4 file

Both grow at each commit of the writer and are cut back to the committed count on resume. A feature store
has `meta/chunk_crc32c/patch_tokens` and `cls_token` (one per sample), gathered at finalize from its batches'
completion records (`stores.feature_rows`). Edits copy the recorded values with the bytes they vouch for.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_json
from shardyard.stores.manifest import MANIFEST, sha256_file

CHECKSUMS = "checksums.json"
CHUNK_CRC = "chunk_crc32c"   # under meta/: per row of a sharded frame field
VIDEO_CRC = "video_crc32c"   # under meta/: per episode of a video field
# Files the ingest checksums leave out: rewritten later by design, or covered by the crc arrays above.
_MUTABLE = {MANIFEST, "stats.json", "report.json", "meta/split.parquet"}  # the split: `shardyard stats` re-splits
# Work files of a running job that are never part of a finished store.
_SKIP_DIRS = {".spill"}

__all__ = ["CHECKSUMS", "CHUNK_CRC", "VIDEO_CRC", "append_crc32c", "file_entry", "list_store_files",
           "read_crc32c", "store_checksums", "truncate_crc32c", "verify_bytes", "write_ingest_checksums"]


def list_store_files(root: str | os.PathLike) -> list[str]:
    """Relative names (`/`-separated, sorted) of the files of the local store at `root`, without
    `checksums.json`, temp files (`.*.tmp`, `*.partial`) and spill folders."""
    root = Path(root)
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in files:
            if name == CHECKSUMS or (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
                continue
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def file_entry(root: str | os.PathLike, name: str) -> dict[str, Any]:
    """`{"name", "bytes", "sha256"}` of the file `name` under the local `root`."""
    path = Path(root) / name
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def store_checksums(root: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The `checksums.json` content of the complete local store at `root`. Raises `StoreError` when it has
    no manifest (an unfinished job is not pushed)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise StoreError("no manifest.json: not a complete store (finish or resume its job first)", path=str(root))
    files = [file_entry(root, n) for n in (list_store_files(root) if names is None else sorted(names))]
    manifest_sha = next(f["sha256"] for f in files if f["name"] == MANIFEST)
    return {"version": 1, "manifest_sha256": manifest_sha, "files": files}


def verify_bytes(data: bytes, entry: dict[str, Any], where: str) -> None:
    """Raise `StoreError` naming `where` and the file when `data` differs from `entry` in size or sha256."""
    if len(data) != entry["bytes"]:
        raise StoreError(f"{entry['name']}: {len(data)} bytes, checksums.json says {entry['bytes']}", path=where)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise StoreError(f"{entry['name']}: sha256 {digest[:12]}... differs from checksums.json "
                         f"({entry['sha256'][:12]}...)", path=where)


def append_crc32c(root: zarr.Group, kind: str, field: str, values: np.ndarray, at: int) -> bool:
    """Write `values (n,) uint32` at rows `[at, at + n)` of `meta/<kind>/<field>` (`kind` CHUNK_CRC or
    VIDEO_CRC), creating it when `at` is 0. Returns False (and writes nothing) when the array does not hold
    exactly `at` rows: a store resumed from before checksums were recorded keeps none for that field."""
    group = root.require_group("meta").require_group(kind)
    if field not in group:
        if at != 0:
            return False
        group.create_array(field, shape=(0,), dtype="uint32", chunks=(1 << 16,), compressors=None)
    arr = group[field]
    if arr.shape[0] != at:
        return False
    arr.resize((at + len(values),))
    arr[at:] = np.asarray(values, dtype=np.uint32)
    return True


def truncate_crc32c(root: zarr.Group, num_steps: int, num_episodes: int) -> None:
    """On resume: cut the crc arrays back to the committed steps (chunk crcs) and episodes (video crcs)."""
    for kind, n in ((CHUNK_CRC, num_steps), (VIDEO_CRC, num_episodes)):
        try:
            group = root[f"meta/{kind}"]
        except KeyError:
            continue
        for _, arr in group.arrays():
            if arr.shape[0] > n:
                arr.resize((n,))


def read_crc32c(root: str | os.PathLike, kind: str, field: str) -> np.ndarray | None:
    """The recorded crc32c array `meta/<kind>/<field>` of the store at `root`, or None if none was recorded."""
    path = Path(root, "meta", kind, field)
    if not (path / "zarr.json").is_file():
        return None
    return np.asarray(zarr.open_array(str(path), mode="r")[:], dtype=np.uint32)


def write_ingest_checksums(root: str | os.PathLike, skip_prefixes: Iterable[str]) -> dict[str, Any]:
    """Write `checksums.json` (ingest scope, see the module docstring) for the files of the store at `root`
    being finalized, leaving out `_MUTABLE` files and names under `skip_prefixes` (the frame fields' shard
    and video folders, e.g. `data/obs.rgb.top/c/`). Returns its content."""
    skip = tuple(skip_prefixes)
    names = [n for n in list_store_files(root) if n not in _MUTABLE and not n.startswith(skip)]
    sums = {"version": 1, "manifest_sha256": None, "scope": "ingest", "files": [file_entry(root, n) for n in names]}
    atomic_write_json(Path(root) / CHECKSUMS, sums, fsync=False)
    return sums
