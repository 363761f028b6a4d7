"""Names read from outside, checked before they become local paths.

A remote listing, a `checksums.json`, a manifest or a tar member names files relative to some root; joined
onto a local folder unchecked, `../../X` or `/abs/path` writes (or reads) outside it. `safe_relative` accepts
only a plain relative POSIX name and returns it normalised; `safe_join` also resolves the joined path (so a
symlink already inside the folder cannot lead out) and checks that it stays inside. Both raise
`UnsafePathError` naming the offending name and where it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from shardyard.errors import UnsafePathError

__all__ = ["safe_join", "safe_relative", "safe_relatives"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def _refusal(name: object) -> str | None:
    """Why `name` is not a plain relative POSIX name, or None when it is."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name:
        return "empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    if name.startswith("/"):
        return "absolute"
    if ".." in name.split("/"):
        return "has a '..' component"
    if not [p for p in name.split("/") if p not in ("", ".")]:
        return "names no file (only '.' or '/')"
    return None


def safe_relative(name: str, *, source: str | os.PathLike | None = None) -> str:
    """`name` as a normalised relative POSIX name (`"./a//b"` -> `"a/b"`). `source` (a file or URL) says where
    the name was read, for the error. Raises `UnsafePathError` when `name` is not a string, is empty, holds a
    NUL or a backslash, starts with a drive letter (`C:`), is absolute, or has a `..` component."""
    why = _refusal(name)
    if why is not None:
        raise UnsafePathError(f"unsafe name {name!r}: {why}", path=None if source is None else str(source))
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def safe_relatives(names: Iterable[str], *, source: str | os.PathLike | None = None) -> list[str]:
    """`safe_relative` of every name, all checked before any is used (so a caller that writes the files
    afterwards writes nothing when one is bad). Raises `UnsafePathError` for the first bad name."""
    return [safe_relative(n, source=source) for n in names]


def safe_join(root: str | os.PathLike, name: str, *, source: str | os.PathLike | None = None) -> Path:
    """`Path(root) / safe_relative(name)`, after checking that the joined path, with symlinks resolved,
    stays inside `root` resolved. Returns the joined (unresolved) path. Raises `UnsafePathError` as
    `safe_relative` does, or when a symlink under `root` leads the path outside it."""
    rel = safe_relative(name, source=source)
    path = Path(root) / rel
    base = Path(root).resolve()
    if not path.resolve().is_relative_to(base):
        raise UnsafePathError(f"unsafe name {name!r}: leads outside {root} through a symbolic link",
                              path=None if source is None else str(source))
    return path
