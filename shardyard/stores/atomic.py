"""Atomic file writes: write a temp file beside the target, fsync, then rename over it, so a reader or a
resumed job sees the old content or the new, never a torn file.

A temp file from `tempfile.mkstemp` is created 0600; renamed into a store as it is, only its writer could
read it. Every file renamed into place here (and the writers' spill files, `chmod_as_umask`) gets the mode
an ordinary `open` would give: 0666 less the process umask (0644 under the usual umask 022), so a store on a
shared file system is readable by whoever the umask says.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SPILL", "atomic_path", "atomic_write_bytes", "atomic_write_json", "chmod_as_umask", "default_file_mode",
           "process_umask", "remove_leftovers", "remove_stale_temps", "to_jsonable"]

# A store's folder of reader workers' encoded frames, until the writer has copied them into shard files.
SPILL = ".spill"


@functools.cache
def _umask_by_setting() -> int:
    # Setting the umask to read it is racy (a thread creating a file meanwhile would get the temporary
    # one): done once, where the kernel does not show it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_umask() -> int:
    """The process umask (e.g. `0o022`), read without changing it on Linux (`Umask:` in
    `/proc/self/status`); elsewhere set and restored once, then remembered."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _umask_by_setting()


def default_file_mode() -> int:
    """The mode `open()` gives a new file: `0o666` less the process umask (0o644 under umask 022)."""
    return 0o666 & ~process_umask()


def chmod_as_umask(target: str | os.PathLike | int) -> None:
    """Give the file at path `target` (or the open file descriptor `target`) `default_file_mode()`: for a
    temp file (created 0600) that is about to be renamed into a store."""
    if isinstance(target, int):
        os.fchmod(target, default_file_mode())
    else:
        os.chmod(target, default_file_mode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Sequence) and not isinstance(o, (str, bytes)):  # e.g. a store's `episode_keys`
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for the block to write whole (by any library that takes a path), renamed
    over `path` when the block ends: a process that dies mid-write leaves `path` as it was and a `.*.tmp`
    file that `remove_stale_temps` deletes. The file gets `default_file_mode()`, as if `open` had created
    it; the temp file is removed when the block raises. No fsync (the writers that need one flush their
    own handle, as `atomic_write_bytes` does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        chmod_as_umask(fd)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and `os.replace`; the file gets
    `default_file_mode()`, as if `open` had created it. `fsync=False` skips
    flushing to the device: the rename is still atomic for any process that dies (SIGKILL included), as
    the page cache outlives it; only a power loss could then lose the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        chmod_as_umask(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = True, indent: int | None = 2) -> None:
    """Write `obj` as JSON (numpy arrays become lists) atomically (`atomic_write_bytes`)."""
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def to_jsonable(obj: Any) -> Any:
    """Deep-convert numpy arrays and scalars in `obj` to lists and Python numbers."""
    return json.loads(json.dumps(obj, default=_json_default, allow_nan=True))


def remove_stale_temps(root: str | os.PathLike) -> int:
    """Delete temp files left by a killed writer (ours `.*.tmp`, zarr's `*.partial`); returns the count."""
    n = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
                Path(dirpath, name).unlink(missing_ok=True)
                n += 1
    return n


def remove_leftovers(root: str | os.PathLike) -> list[str]:
    """Delete what killed jobs leave in the store at `root`: spill folders (`.spill/`, reader workers'
    encoded frames and MP4s) and temp files (`remove_stale_temps`). Returns the removed paths relative to
    `root`, sorted. Only for a store no job is writing (a running writer's spill files would go too)."""
    root = Path(root)
    removed = []
    for dirpath, dirs, files in os.walk(root):
        for d in [d for d in dirs if d == SPILL]:
            shutil.rmtree(Path(dirpath, d))
            removed.append(Path(dirpath, d).relative_to(root).as_posix() + "/")
            dirs.remove(d)
        for name in files:
            if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
                Path(dirpath, name).unlink(missing_ok=True)
                removed.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(removed)
