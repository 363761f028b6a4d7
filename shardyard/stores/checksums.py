"""`checksums.json`: size and sha256 of every file of a store, written beside its manifest by `shardyard push`
and checked by `shardyard pull` (episodic and feature manifests carry no per-file checksums of their own).

Layout: `{"version": 1, "manifest_sha256": ..., "files": [{"name": "data/obs.eef_pos/c/0/0", "bytes": n,
"sha256": hex}, ...]}`, names relative to the store root with `/` separators, sorted; `manifest.json` is listed
too, `checksums.json` itself is not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from shardyard.errors import StoreError
from shardyard.stores.manifest import MANIFEST, sha256_file

CHECKSUMS = "checksums.json"
# Work files of a running job that are never part of a finished store.
_SKIP_DIRS = {".spill"}

__all__ = ["CHECKSUMS", "file_entry", "list_store_files", "store_checksums", "verify_bytes"]


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
