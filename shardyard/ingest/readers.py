"""Readers shared by the source adapters: `.npy` and JSON files and timestamp matching, each raising a
`SourceError` that names the file, the episode (`key`) and the field.

Nothing is unpickled: `.npy` files are loaded with `allow_pickle=False`, so an object array is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import SourceError

__all__ = ["load_npy", "nearest_frames", "open_npy", "read_json"]


def open_npy(path: Path | str, key: str | None = None, field: str | None = None, *, mmap: bool = False) -> np.ndarray:
    """The array in `path` as stored, memory-mapped read-only when `mmap`; never unpickled. Raises
    `SourceError(path=, key=, field=)` when it is missing, unreadable or an object array."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise SourceError("file missing", path=str(path), key=key, field=field) from None
    except Exception as e:  # truncated header or payload, or an object array (pickle refused)
        what = "an object array, refused: .npy files are never unpickled" if (
            "allow_pickle" in str(e) or "Python objects" in str(e)) else str(e)
        raise SourceError(f"cannot read .npy: {what}", path=str(path), key=key, field=field) from e


def load_npy(path: Path, key: str, field: str, *, ndim: int | None = None) -> np.ndarray:
    """The array in `path`, checked: present, readable without pickle, of numbers (bool, int, float), `ndim`-D
    when given, and finite when it is float. Raises `SourceError(path=, key=, field=)` naming the first
    non-finite step."""
    arr = open_npy(path, key, field)
    if arr.dtype.kind not in "biuf":  # strings, bytes, complex, structured: not a recording of numbers
        raise SourceError(f"array of dtype {arr.dtype}, expected numbers", path=str(path), key=key, field=field)
    if ndim is not None and arr.ndim != ndim:
        raise SourceError(f"expected {ndim}-D array, got shape {arr.shape}", path=str(path), key=key, field=field)
    if arr.dtype.kind == "f" and arr.ndim and not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0, 0])
        raise SourceError(f"NaN or inf at step {bad}", path=str(path), key=key, field=field)
    return arr


def read_json(path: Path, key: str, field: str | None = None) -> dict[str, Any]:
    """The parsed JSON object in file `path` of episode `key`; raises `SourceError` when it is missing, not
    UTF-8, invalid, or not an object (a list, a number)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError("file missing", path=str(path), key=key, field=field) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SourceError(f"invalid JSON: {e}", path=str(path), key=key, field=field) from e
    except OSError as e:
        raise SourceError(f"cannot read: {e}", path=str(path), key=key, field=field) from e
    if not isinstance(value, dict):
        raise SourceError(f"JSON {type(value).__name__}, expected an object", path=str(path), key=key, field=field)
    return value


def nearest_frames(step_times: np.ndarray, frame_times: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Index `(n,) int64` of the frame nearest in time to each step and the absolute gaps `(n,)` seconds.

    step_times `(n,)` and frame_times `(m,)` are seconds, frame_times sorted; a tie goes to the earlier frame.
    `tolerance` is the caller's limit on the gaps (not applied here: the caller names the step in its error).
    """
    pos = np.clip(np.searchsorted(frame_times, step_times), 1, max(len(frame_times) - 1, 1))
    left, right = frame_times[pos - 1], frame_times[np.minimum(pos, len(frame_times) - 1)]
    idx = np.where(np.abs(step_times - left) <= np.abs(right - step_times), pos - 1, pos)
    idx = np.clip(idx, 0, len(frame_times) - 1)
    return idx, np.abs(frame_times[idx] - step_times)
