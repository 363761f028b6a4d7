"""Snapshot reads: a reader keeps the version of a store it opened, or raises `StoreChangedError`.

`shardyard edit --in-place` and `recode` write the new store beside the old one and swap it in with renames,
`pull` rewrites a store's files under it (after removing its manifest), a resumed writer appends to it. A
reader that opened the old version must never serve a sample made of both versions (labels of one, images
of the other), nor the new version's bytes at the old version's indices.

How: every `manifest.json` carries a `generation` (a random id, new for every store a writer makes;
`stores.manifest`), and every read is a seqlock read section (`StoreSnapshot.reading`): bytes are read
first, then the section checks that the manifest now at the store's path is still the generation the
reader opened; if not, the data just read is dropped and `StoreChangedError` raised, then and at every
later read, until the store is opened again. A swap moves the manifest with the data (one directory
rename; `pull` removes it before touching any data file and writes it last), so any byte read from the new
version was read after the manifest changed, and the check after the read sees it. A section that fails
(a file gone mid-swap, an index past the new store's end) raises `StoreChangedError` from that error when
the store changed. Whatever a reader caches (low-dim arrays loaded whole, `episode_ends`, shard indexes,
`episodes.json`) is loaded inside a section, so a cache is either of the opened version or never used.

The check is one `os.stat` of `manifest.json` per section (its inode, size and times; the generation is
re-read only when they differ, so a manifest rewritten for the same data, e.g. a new split, is not a
change). `EpisodeDataset.fetch` and `TokenDataset` make a whole batch one section: one stat per batch.
For a store at an fsspec URL the check is one small GET of `manifest.json` per section (a batch, a
`read`), and a `ClipStream` over remote shards checks as it opens each shard.

The snapshot is part of the store object's pickled state, so DataLoader workers, which open their file
handles lazily in their own process (after fork or spawn), check against the generation the parent opened,
not the one they find: a worker that starts after a swap raises instead of silently reading the new store.

Why a generation check and not versioned data directories behind a pointer that readers pin: that would
change the store layout every writer, `verify`, `push` and `pull` know, and need a reader registry (or a
grace period) to decide when an old version may be deleted; with the check the store format is unchanged,
old versions are deleted at once (disk use stays one store), and the cost is a stat per batch. The price
is that a long-running reader stops at the swap instead of finishing on the old version: it reopens the
store (a new `EpisodeDataset`) to continue on the new one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from typing import Any, Callable, TypeVar

from shardyard.errors import StoreChangedError
from shardyard.stores.manifest import MANIFEST, Manifest
from shardyard.stores.remote_fs import ProcessLocalFS, is_remote

__all__ = ["StoreSnapshot", "generation_of", "open_snapshot", "reads_snapshot", "source_snapshot"]

F = TypeVar("F", bound=Callable[..., Any])
Stamp = tuple[int, int, int, int, int]


def generation_of(manifest: dict[str, Any], raw: bytes) -> str:
    """The store version a manifest names: its `generation`, or, for a store written before generations
    existed, the sha256 of the manifest's bytes."""
    gen = manifest.get("generation")
    return str(gen) if gen else "sha256:" + hashlib.sha256(raw).hexdigest()


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_manifest(path: str, fs: ProcessLocalFS | None) -> tuple[dict[str, Any], str, Stamp | None]:
    """The manifest at `path`, its generation and (local files) the stat of the very file read (fstat of
    the open handle, so stamp and content cannot come from two versions). Raises FileNotFoundError."""
    if fs is not None:
        raw, stamp = fs.cat_file(path), None
    else:
        with open(path, "rb") as f:
            stamp = _stamp(os.fstat(f.fileno()))
            raw = f.read()
    d = json.loads(raw)
    return d, generation_of(d, raw), stamp


class StoreSnapshot:
    """The version of one store a reader opened (module docstring), and its read sections.

    url: the store, as errors name it. manifest_path: its `manifest.json` (local path, or path inside
    `fs`). generation: the opened version (None: untracked, every check passes: a store given its manifest
    by its own writer, or a source that is not a store). stamp: `os.stat` identity of the opened local
    manifest. Sections nest per thread; only the outermost one checks.
    """

    def __init__(self, url: str, manifest_path: str = "", fs: ProcessLocalFS | None = None,
                 generation: str | None = None, stamp: Stamp | None = None) -> None:
        self.url, self.manifest_path, self.fs = url, manifest_path, fs
        self.generation, self.stamp = generation, stamp
        self.changed: str | None = None  # why the store is no longer the opened version (sticky)
        self._depth: dict[tuple[int, int], int] = {}

    @classmethod
    def untracked(cls, url: str) -> "StoreSnapshot":
        """A snapshot that never reports a change."""
        return cls(url)

    @property
    def is_remote(self) -> bool:
        """True when the store is at an fsspec URL (a check is a network round trip)."""
        return self.fs is not None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"_depth": {}}

    def __repr__(self) -> str:
        return f"StoreSnapshot({self.url!r}, generation={self.generation!r})"

    # -- checks ------------------------------------------------------------------------------------------
    def _fail(self, why: str) -> None:
        self.changed = why
        raise StoreChangedError(f"the store changed since it was opened ({why}); its data is not served "
                                "mixed: open it again to read the new version", path=self.url)

    def check(self) -> None:
        """Raise `StoreChangedError` if the manifest at the store's path is no longer the opened generation
        (or is gone); a no-op for an untracked snapshot."""
        if self.generation is None:
            return
        if self.changed is not None:
            self._fail(self.changed)
        if self.fs is None:
            try:
                if _stamp(os.stat(self.manifest_path)) == self.stamp:
                    return
            except FileNotFoundError:
                self._fail("its manifest.json is gone: the store is being replaced or rewritten")
        try:
            _, gen, stamp = _read_manifest(self.manifest_path, self.fs)
        except FileNotFoundError:
            self._fail("its manifest.json is gone: the store is being replaced or rewritten")
        except ValueError:
            self._fail("its manifest.json is being rewritten")
        if gen != self.generation:
            self._fail(f"generation {self.generation} is now {gen}")
        self.stamp = stamp  # the same version's manifest, rewritten (e.g. `shardyard stats` with a new split)

    def check_local(self) -> None:
        """`check` for a local store (a stat); nothing for a remote one, whose reader checks less often."""
        if self.fs is None:
            self.check()

    def check_remote(self) -> None:
        """`check` for a store at a URL; nothing for a local one, whose reader checks every read."""
        if self.fs is not None:
            self.check()

    # -- sections ----------------------------------------------------------------------------------------
    def reading(self) -> "StoreSnapshot":
        """A read section (`with snapshot.reading(): ...`): the outermost one of this thread checks on exit,
        after the reads; when the body raised and the store changed, `StoreChangedError` replaces the error."""
        return self

    def __enter__(self) -> "StoreSnapshot":
        if self.generation is not None:
            key = (os.getpid(), threading.get_ident())
            self._depth[key] = self._depth.get(key, 0) + 1
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.generation is None:
            return False
        key = (os.getpid(), threading.get_ident())
        depth = self._depth.get(key, 1) - 1
        if depth:
            self._depth[key] = depth
            return False
        self._depth.pop(key, None)
        if exc_type is None:
            self.check()
        elif issubclass(exc_type, Exception) and not issubclass(exc_type, StoreChangedError):
            try:
                self.check()
            except StoreChangedError as changed:  # the read failed because the store was swapped under it
                raise changed from exc
        return False

    def carried(self, fn: F) -> F:
        """`fn` for a helper thread working inside the calling thread's section (a pool of ranged reads):
        it runs as a nested section, not checked at its end, as the caller's section checks after it."""
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            key = (os.getpid(), threading.get_ident())
            self._depth[key] = self._depth.get(key, 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth = self._depth.get(key, 1) - 1
                if depth:
                    self._depth[key] = depth
                else:
                    self._depth.pop(key, None)
        return run  # type: ignore[return-value]


def open_snapshot(url: str, manifest_path: str, fs: ProcessLocalFS | None,
                  given: Manifest | None = None) -> tuple[StoreSnapshot, dict[str, Any]]:
    """Read a store's manifest for opening it: `(snapshot of that version, manifest dict)`. With `given`
    (a writer opening its own store before or while it writes the manifest) the snapshot is untracked and
    `given` is returned as the dict. Raises FileNotFoundError when there is no manifest."""
    if given is not None:
        return StoreSnapshot.untracked(url), given.to_dict()
    manifest, gen, stamp = _read_manifest(manifest_path, fs)
    return StoreSnapshot(url, manifest_path, fs, gen, stamp), manifest


def source_snapshot(source: Any) -> StoreSnapshot:
    """The snapshot of a shard store given as a stream's `source` (a directory or URL holding
    `manifest.json`); untracked for `.tar` files, folders of them and lists."""
    if isinstance(source, (list, tuple)) or str(source).endswith(".tar"):
        return StoreSnapshot.untracked(str(source))
    url = str(source).rstrip("/")
    fs: ProcessLocalFS | None = None
    path = os.path.join(url, MANIFEST)
    if is_remote(url):
        fs, root = ProcessLocalFS.for_url(url)
        path = f"{root}/{MANIFEST}"
    try:
        return open_snapshot(url, path, fs)[0]
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return StoreSnapshot.untracked(url)  # not a store: `list_shards` says what it is


def reads_snapshot(*stores: str) -> Callable[[F], F]:
    """Decorator making a reader method one read section: of `self.snapshot` (no arguments), or of the
    snapshots of the stores at `self.<name>` for each name (a missing store, or one without a snapshot, is
    skipped). Raises what the sections raise (`StoreChangedError`)."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            owners = [self] if not stores else [getattr(self, name, None) for name in stores]
            snaps = [s for s in (getattr(o, "snapshot", None) for o in owners) if isinstance(s, StoreSnapshot)]
            if len(snaps) == 1:
                with snaps[0]:
                    return method(self, *args, **kwargs)
            with contextlib.ExitStack() as stack:
                for s in snaps:
                    stack.enter_context(s)
                return method(self, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
