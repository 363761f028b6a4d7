"""Stores in object storage: `push` / `pull` a finished store to or from any fsspec URL, and `StagedStore`, which
lets a job write a store at a URL through a local staging directory.

Object stores have no rename and no append, so a job never writes into the bucket directly: it writes the
store on local disk as usual, and after each commit `StagedStore.sync` uploads the files the commit added or
changed, then the commit records (`progress.json` and `progress/*.json`: one new small file per commit group),
snapshotted before the data so that a record never reaches the bucket ahead of the bytes it vouches for.
`finish` removes remote files the job deleted (a resume truncates past the last commit), uploads
`checksums.json` and, last, `manifest.json`. A kill loses at most the group in flight; rerunning the same
command resumes from the staging directory, or, on a machine without it, from what the bucket holds.

`push` uploads every file of a complete local store, then `checksums.json` (stores/checksums.py), then the
manifest; files already at the destination with the same size are skipped (a resumed push). `pull` downloads
and checks each file against `checksums.json`, skipping local files that already match, manifest last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_bytes, atomic_write_json
from shardyard.stores.checksums import CHECKSUMS, file_entry, list_store_files, store_checksums, verify_bytes
from shardyard.stores.hub import HUB_OWN, CommitLimits, HubTarget, push_store
from shardyard.stores.manifest import MANIFEST, sha256_file
from shardyard.stores.remote_fs import ProcessLocalFS
from shardyard.stores.safe_paths import safe_join, safe_relatives

log = logging.getLogger(__name__)

__all__ = ["StagedStore", "TransferResult", "default_staging_dir", "pull", "push"]

PROGRESS_FILE, PROGRESS_FOLDER = "progress.json", "progress/"


@dataclass
class TransferResult:
    """Files copied and skipped (already there and equal), and bytes copied, of one `push` or `pull`."""

    copied: int = 0
    skipped: int = 0
    bytes: int = 0


def _is_record(name: str) -> bool:
    return name == PROGRESS_FILE or name.startswith(PROGRESS_FOLDER)


def _remote_sizes(fs: ProcessLocalFS, root: str) -> dict[str, int]:
    """Relative name -> size of every file under `root` on `fs` (empty when absent)."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    prefix = root.rstrip("/") + "/"
    # A Hub repo's own files at its root (`.gitattributes`, the card) are not the store's: never deleted
    repo = HubTarget.of_repo(root) if fs.protocol == "hf" else None
    own = HUB_OWN if repo is not None and repo.path == "" else ()
    return {p[len(prefix):]: int(info.get("size") or 0) for p, info in found.items()
            if p.startswith(prefix) and info.get("type", "file") != "directory" and p[len(prefix):] not in own}


def _put(fs: ProcessLocalFS, local: Path, remote: str, data: bytes | None = None) -> None:
    """Upload a file (or `data`); a file-system destination may first need the parent folders that object
    stores do not have."""
    for attempt in (0, 1):
        try:
            if data is None:
                fs.put_file(str(local), remote)
            else:
                fs.pipe_file(remote, data)
            return
        except FileNotFoundError:
            if attempt or not local.exists():
                raise
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)


def push(store: str | os.PathLike, url: str, *, storage_options: dict[str, Any] | None = None,
         on_file: Callable[[str], None] | None = None, hub_limits: CommitLimits | None = None,
         on_commit: Callable[[int], None] | None = None) -> TransferResult:
    """Copy the complete local store at `store` to `url` (any fsspec URL: `s3://`, `gs://`, `hf://datasets/...`,
    a local path), with `checksums.json` and, last, `manifest.json`. Resumable: files already at `url` with
    the right size are skipped. Raises `StoreError` when `store` has no manifest.

    To `hf://` (`stores.hub`): the repo is made when missing, the files go up in a few commits within
    `hub_limits` (a `stores.hub.CommitLimits`; `on_commit(n)` after the n-th), files already there with the
    same content (git blob id or LFS sha256) are skipped, and a dataset card is written."""
    local = Path(store)
    sums = store_checksums(local)
    atomic_write_json(local / CHECKSUMS, sums, fsync=False)
    fs, root = ProcessLocalFS.for_url(str(url), storage_options)
    target = HubTarget.of_repo(root, fs.fs.endpoint, fs.fs.token) if fs.protocol == "hf" else None
    if target is not None:  # a commit per file would get the repo throttled: few batched commits instead
        r = push_store(local, sums, target, limits=hub_limits, on_commit=on_commit)
        return TransferResult(copied=r.uploaded, skipped=r.skipped, bytes=r.bytes)
    there = _remote_sizes(fs, root)
    if MANIFEST in there:  # replacing a store: it must not look complete while its files change
        fs.rm_file(f"{root}/{MANIFEST}")
    result = TransferResult()
    for f in sums["files"] + [{"name": CHECKSUMS}]:
        name = f["name"]
        if name == MANIFEST:
            continue
        size = (local / name).stat().st_size
        if name != CHECKSUMS and there.get(name) == size:
            result.skipped += 1
            continue
        _put(fs, local / name, f"{root}/{name}")
        result.copied += 1
        result.bytes += size
        if on_file:
            on_file(name)
    _put(fs, local / MANIFEST, f"{root}/{MANIFEST}")
    result.copied += 1
    return result


def _checked_entries(sums: Any, local: Path, where: str) -> list[tuple[dict[str, Any], Path]]:
    """The entries of a downloaded `checksums.json`, manifest last, each with its local path, every name
    checked to stay inside `local` (`where` names the file in errors). Raises `UnsafePathError` for a name
    that would leave it, `StoreError` for entries that are not `{name, bytes, sha256}`."""
    files = sums.get("files") if isinstance(sums, dict) else None
    if not isinstance(files, list) or not isinstance(sums.get("manifest_sha256"), (str, type(None))) or not all(
            isinstance(f, dict) and isinstance(f.get("bytes"), int) and isinstance(f.get("sha256"), str)
            for f in files):
        raise StoreError("malformed: expected {manifest_sha256, files: [{name, bytes, sha256}, ...]}", path=where)
    names = safe_relatives([f.get("name") for f in files], source=where)
    entries = [(f | {"name": n}, safe_join(local, n, source=where)) for f, n in zip(files, names)]
    return sorted(entries, key=lambda e: e[0]["name"] == MANIFEST)


def pull(url: str, store: str | os.PathLike, *, storage_options: dict[str, Any] | None = None,
         on_file: Callable[[str], None] | None = None) -> TransferResult:
    """Copy the store at `url` to the local directory `store`, checking every file against the store's
    `checksums.json` (manifest last). Resumable: local files that already match are kept. Raises
    `StoreError` naming the file when a download does not match, or when `url` has no `checksums.json`;
    `UnsafePathError` (nothing written) when a name in `checksums.json` would land outside `store`."""
    fs, root = ProcessLocalFS.for_url(str(url), storage_options)
    try:
        sums = json.loads(fs.cat_file(f"{root}/{CHECKSUMS}"))
    except FileNotFoundError:
        raise StoreError(f"no {CHECKSUMS}: not a pushed store (write it with `shardyard push`)", path=url) from None
    local = Path(store)
    entries = _checked_entries(sums, local, f"{url.rstrip('/')}/{CHECKSUMS}")  # all, before the first write
    if (local / MANIFEST).exists() and sha256_file(local / MANIFEST) != sums["manifest_sha256"]:
        # another version: incomplete until every file matches, and, before any data file changes, the
        # signal to readers of the old version that it is going (`stores.snapshot`)
        (local / MANIFEST).unlink()
    result = TransferResult()
    for f, path in entries:
        if path.exists() and path.stat().st_size == f["bytes"] and sha256_file(path) == f["sha256"]:
            result.skipped += 1
            continue
        data = fs.cat_file(f"{root}/{f['name']}")
        verify_bytes(data, f, url)
        atomic_write_bytes(path, data, fsync=False)
        result.copied += 1
        result.bytes += len(data)
        if on_file:
            on_file(f["name"])
    atomic_write_json(local / CHECKSUMS, sums, fsync=False)
    return result


def default_staging_dir(url: str) -> Path:
    """`$XDG_CACHE_HOME/shardyard/staging/<sha256(url)[:16]>` (or under `~/.cache`): where a job writing to
    `url` keeps its local copy, the same for every rerun of the job on this machine."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "shardyard" / "staging" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


@dataclass
class StagedStore:
    """A store at `url` written through the local directory `local` (see the module docstring).

    Call `prepare()` before the job (it fetches a resumable remote state the staging directory lacks),
    `sync()` after each commit, `finish()` after the job (manifest last). `storage_options` go to the fsspec
    filesystem of `url` (else fsspec's configuration applies).
    """

    url: str
    local: Path
    storage_options: dict[str, Any] = field(default_factory=dict)
    _sent: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.local = Path(self.local)
        self.fs, self.root = ProcessLocalFS.for_url(self.url, self.storage_options)

    def prepare(self, *, overwrite: bool = False) -> None:
        """Make the staging directory the job's starting point: emptied with `overwrite` (the remote store is
        deleted too); else, when it holds no job but the bucket does, the bucket's files are downloaded. A
        remote manifest is removed until `finish` (the job may change the store). Raises `UnsafePathError`
        (nothing downloaded) when an object key would land outside the staging directory."""
        there = _remote_sizes(self.fs, self.root)
        if overwrite:
            if there:
                self.fs.rm(self.root, recursive=True)
            if self.local.exists():
                import shutil

                shutil.rmtree(self.local)
            return
        if not (self.local.exists() and any(self.local.iterdir())) and there:
            log.info("resuming %s from the %d file(s) in the bucket", self.url, len(there))
            # object keys may hold `..` or a leading `/`: every one checked before the first is written
            paths = {name: safe_join(self.local, name, source=self.url) for name in sorted(there)}
            for name, path in paths.items():
                data = self.fs.cat_file(f"{self.root}/{name}")
                atomic_write_bytes(path, data, fsync=False)
                st = path.stat()
                self._sent[path.relative_to(self.local).as_posix()] = (st.st_size, st.st_mtime_ns)
        if MANIFEST in there:  # as a resumed writer does locally: incomplete until the job ends
            self.fs.rm_file(f"{self.root}/{MANIFEST}")

    def _changed(self, names: list[str]) -> list[str]:
        out = []
        for name in names:
            try:
                st = (self.local / name).stat()
            except FileNotFoundError:  # deleted meanwhile (a temp file renamed away)
                continue
            if self._sent.get(name) != (st.st_size, st.st_mtime_ns):
                out.append(name)
        return out

    def _upload(self, name: str, snapshot: tuple[tuple[int, int], bytes] | None = None) -> None:
        """Upload `name` (or its `snapshot`: the stat taken before its bytes were read, and the bytes)."""
        path = self.local / name
        if snapshot is None:
            st = path.stat()
            stamp, data = (st.st_size, st.st_mtime_ns), None
        else:
            stamp, data = snapshot
        _put(self.fs, path, f"{self.root}/{name}", data)
        self._sent[name] = stamp

    def _snapshot(self, name: str) -> tuple[tuple[int, int], bytes]:
        st = (self.local / name).stat()  # before the read: a change after it is seen by the next sync
        return (st.st_size, st.st_mtime_ns), (self.local / name).read_bytes()

    def sync(self) -> int:
        """Upload what changed since the last sync: data files first, then the commit records as they were
        before the data was read. Returns the number of files uploaded."""
        if not self.local.is_dir():
            return 0
        names = [n for n in list_store_files(self.local) if n != MANIFEST]
        records = {n: self._snapshot(n) for n in self._changed([n for n in names if _is_record(n)])}
        data = self._changed([n for n in names if not _is_record(n)])
        for name in data:
            self._upload(name)
        for name, snap in sorted(records.items()):
            self._upload(name, snap)
        return len(data) + len(records)

    def finish(self) -> None:
        """After a job that ended cleanly: last sync, delete remote files the job removed, upload
        `checksums.json`, then `manifest.json`. Raises `StoreError` when the local store has no manifest."""
        if not (self.local / MANIFEST).exists():
            raise StoreError("the job wrote no manifest.json; nothing to publish", path=str(self.local))
        self.sync()
        keep = set(list_store_files(self.local)) | {CHECKSUMS}
        for name in _remote_sizes(self.fs, self.root):
            if name not in keep:
                self.fs.rm_file(f"{self.root}/{name}")
        sums = {"version": 1, "manifest_sha256": sha256_file(self.local / MANIFEST),
                "files": [file_entry(self.local, n) for n in sorted(keep - {CHECKSUMS})]}
        atomic_write_json(self.local / CHECKSUMS, sums, fsync=False)
        self._upload(CHECKSUMS)
        self._upload(MANIFEST)
