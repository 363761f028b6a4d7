"""Which episodes and steps an `EpisodeDataset` serves, computed on the store's metadata columns (no Python
object per episode), so that a DataLoader worker can compute them again instead of receiving them: the
dataset pickles its selection as its config (split, episode list) and rebuilds the arrays in the worker
(`loaders.episodes`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from shardyard.errors import ConfigError

__all__ = ["Anchors", "absent_episodes", "select_episodes", "shared_fps"]


def select_episodes(store: Any, split: str | None, episodes: Sequence[int | str] | None) -> np.ndarray:
    """`(M,) int64` increasing episode indices: the store's split `split` (None: every episode), kept to
    `episodes` (indices or keys) when given. Raises ConfigError for an unknown split, key or index."""
    n = store.num_episodes
    if split is None:
        chosen = np.arange(n, dtype=np.int64)
    else:
        indices = getattr(store, "split_indices", None)
        got = indices(split) if indices is not None else (store.split or {}).get(split)
        if got is None:
            raise ConfigError(f"store has no split {split!r}; it has {sorted(store.split)}")
        chosen = np.asarray(got, dtype=np.int64)
    if episodes is None:
        return chosen
    keys = [e for e in episodes if isinstance(e, str)]
    ints = np.asarray([int(e) for e in episodes if not isinstance(e, str)], dtype=np.int64)
    bad = ints[(ints < 0) | (ints >= n)]
    if len(bad):
        raise ConfigError(f"episode {int(bad[0])} out of range [0, {n})")
    if keys:
        found = store.episode_indices(keys) if hasattr(store, "episode_indices") else \
            np.asarray([list(store.episode_keys).index(k) if k in store.episode_keys else -1 for k in keys])
        missing = [k for k, i in zip(keys, found) if i < 0]
        if missing:
            raise ConfigError(f"no episode {missing[0]!r} in the store ({n} episodes)")
        ints = np.concatenate([ints, np.asarray(found, dtype=np.int64)])
    return chosen[np.isin(chosen, ints)]


def shared_fps(store: Any, episodes: np.ndarray) -> float:
    """The one frame rate (Hz) of `episodes` (1.0 when there are none). Raises ConfigError when one has no
    fps or two differ."""
    table = getattr(store, "meta_table", None)
    fps = getattr(table, "fps", None)
    if fps is not None:
        rates = fps()[episodes]
    else:
        rates = np.asarray([store.episode_meta(int(e)).get("fps") or np.nan for e in episodes], dtype=np.float64)
    if np.any(np.isnan(rates)):
        e = int(episodes[np.flatnonzero(np.isnan(rates))[0]])
        raise ConfigError(f"episode {e} ({store.episode_keys[e]}) has no fps: use deltas in steps")
    distinct, first = np.unique(rates, return_index=True)
    if len(distinct) > 1:
        raise ConfigError(f"episodes have different fps {distinct.tolist()} (e.g. episodes "
                          f"{sorted(int(episodes[i]) for i in first)}): delta_timestamps needs one rate; "
                          "use deltas in steps")
    return float(distinct[0]) if len(distinct) else 1.0


def absent_episodes(store: Any, fields: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Served name -> increasing episode indices whose metadata lists the field in `absent_fields` (its source
    had no such data; the stored rows are placeholders, served as padding); names with none are left out."""
    entries = getattr(store, "episode_entries", None)
    if entries is not None:
        absent = entries("absent_fields")
    elif hasattr(store, "episode_record"):
        absent = [store.episode_record(e).get("absent_fields") for e in range(store.num_episodes)]
    else:
        return {}
    listed = [(i, set(a)) for i, a in enumerate(absent) if a]
    out = {}
    for name, field in fields.items():
        eps = np.asarray([i for i, a in listed if field in a], dtype=np.int64)
        if len(eps):
            out[name] = eps
    return out


class Anchors:
    """Anchor (item) `i` -> its global store row and episode, for every step of `episodes` (increasing), kept
    where `anchor_mask (num_steps,) bool` is True. Without a mask nothing is held per step: an item is found
    by a binary search over the episodes' cumulative lengths (`(E,)` arrays), so a store of 10^6 episodes of
    300 steps costs 32 MB, not 4.8 GB. With a mask the kept rows are listed (int32 where they fit)."""

    def __init__(self, store: Any, episodes: np.ndarray, anchor_mask: np.ndarray | None = None) -> None:
        self.episodes = np.asarray(episodes, dtype=np.int64)
        self.starts = np.asarray(store.episode_starts, dtype=np.int64)[self.episodes]
        self.lengths = np.asarray(store.episode_ends, dtype=np.int64)[self.episodes] - self.starts
        self.cum = np.cumsum(self.lengths)
        self._rows: np.ndarray | None = None
        self._episode_of: np.ndarray | None = None
        if anchor_mask is not None:
            rows, episode_of = self._every_step()
            keep = np.asarray(anchor_mask, dtype=bool)[rows]
            self._rows, self._episode_of = rows[keep], episode_of[keep]

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else int(self.cum[-1]) if len(self.cum) else 0

    def _every_step(self) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.int32 if (self.starts[-1] + self.lengths[-1] if len(self.starts) else 0) < 2**31 else np.int64
        episode_of = np.repeat(self.episodes.astype(dtype), self.lengths)
        rows = np.repeat((self.starts - (self.cum - self.lengths)).astype(dtype), self.lengths)
        rows += np.arange(len(rows), dtype=dtype)
        return rows, episode_of

    def lookup(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(rows, episodes)` `(B,) int64` of items `idx (B,)` (in range)."""
        if self._rows is not None:
            return self._rows[idx].astype(np.int64), self._episode_of[idx].astype(np.int64)
        k = np.searchsorted(self.cum, idx, side="right")
        return self.starts[k] + (idx - (self.cum[k] - self.lengths[k])), self.episodes[k]

    @property
    def rows(self) -> np.ndarray:
        """`(A,)` the global row of every item (made on first use when no mask listed them)."""
        if self._rows is None:
            self._rows, self._episode_of = self._every_step()
        return self._rows

    @property
    def episode_of(self) -> np.ndarray:
        """`(A,)` the episode of every item."""
        self.rows
        return self._episode_of  # type: ignore[return-value]

    def digest(self) -> tuple[int, str]:
        """(items, short digest of what they are), compared by a worker that rebuilt them (a split rewritten
        since the dataset was made must not shift its indices silently)."""
        import hashlib

        h = hashlib.sha256(self.episodes.tobytes() + self.lengths.tobytes())
        if self._rows is not None:
            h.update(np.ascontiguousarray(self._rows, dtype=np.int64).tobytes())
        return len(self), h.hexdigest()[:16]
