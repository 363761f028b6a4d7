"""Atomic file writes: write a temp file beside the target, fsync, then rename over it, so a reader or a
resumed job sees the old content or the new, never a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "remove_stale_temps", "to_jsonable"]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and `os.replace`. `fsync=False` skips
    flushing to the device: the rename is still atomic for any process that dies (SIGKILL included), as
    the page cache outlives it; only a power loss could then lose the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
