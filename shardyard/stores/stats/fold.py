"""The stats pass over many episodes at once: per-episode moments for a block of episodes in a few numpy
calls, folded into a running part exactly as `moments.merge_parts` folds them one by one.

Why: the pass used to make one part per episode and field and merge them in Python (~20 us a merge, ~3 ms an
episode on a five-field store: an hour at 10^6 episodes). Here a block of episodes costs a handful of array
operations, and memory is one block's rows (`BLOCK_ROWS`) plus the running part.

Exactness: `fold_moments` reproduces the left fold of `merge_parts`, bit for bit: running sums are a
sequential `cumsum` (the fold's additions, in its order), the Chan et al. increment of each merge is computed
from the running count and sum before it, and the `m2` additions `(acc + m2_k) + inc_k` are again one
sequential `cumsum` over the interleaved terms. Histograms and bucket counts add exactly in any order. So a
part folded here equals the same episodes' parts merged one at a time, and the result depends on the
episodes and their order only, never on how they are cut into blocks. Per-episode moments of a low-dim
field come from `segment_moments` (sums and squared deviations by `reduceat`, per episode), the one
definition every pass uses.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from shardyard.stores.stats.moments import FieldStatsPart, empty_part
from shardyard.stores.stats.parts import SparsePart, bucket_keys

BLOCK_ROWS = 1 << 19  # steps read per block of a low-dim field (~100 MB of temporaries for 7 features)

__all__ = ["BLOCK_ROWS", "episode_blocks", "episode_rows", "fold_dense", "fold_moments", "gather_rows",
           "lowdim_part", "segment_moments"]


def fold_moments(acc: FieldStatsPart, count: np.ndarray, sums: np.ndarray, m2s: np.ndarray, mins: np.ndarray,
                 maxs: np.ndarray) -> FieldStatsPart:
    """`acc` merged with k parts given as arrays (`count (k,)`, `sums`, `m2s`, `mins`, `maxs` `(k, F)`), in
    order, equal bit for bit to `merge_parts` applied one part at a time. The histogram of `acc` is kept as
    it is (the caller adds the parts' histograms)."""
    c = np.asarray(count, dtype=np.int64)
    if len(c) == 0:
        return acc
    before = acc.count + np.concatenate([[0], np.cumsum(c)[:-1]])
    running = np.cumsum(np.concatenate([acc.sum[None, :], sums]), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = sums / c[:, None] - running[:-1] / before[:, None]
        inc = delta * delta * ((before * c) / (before + c))[:, None]
    inc[(before == 0) | (c == 0)] = 0.0
    terms = np.empty((1 + 2 * len(c), acc.num_features), dtype=np.float64)
    terms[0], terms[1::2], terms[2::2] = acc.m2, m2s, inc
    return FieldStatsPart(count=int(acc.count + c.sum()), sum=running[-1], m2=np.cumsum(terms, axis=0)[-1],
                          min=np.minimum.reduce(np.concatenate([acc.min[None, :], mins])),
                          max=np.maximum.reduce(np.concatenate([acc.max[None, :], maxs])),
                          hist=acc.hist, edges=acc.edges)


def fold_dense(acc: FieldStatsPart, parts: list[FieldStatsPart]) -> FieldStatsPart:
    """`acc` merged with dense `parts` (same edges) in order, as `fold_moments` with their histograms added."""
    if not parts:
        return acc
    out = fold_moments(acc, np.array([p.count for p in parts]), np.stack([p.sum for p in parts]),
                       np.stack([p.m2 for p in parts]), np.stack([p.min for p in parts]),
                       np.stack([p.max for p in parts]))
    if acc.hist is not None:
        out.hist = acc.hist + np.sum([p.hist for p in parts], axis=0)
    return out


def segment_moments(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-episode moments of rows `x (n, F)` (float64) cut into consecutive episodes of `lengths (k,)` steps
    (each > 0, summing to n): `(sums, m2s, mins, maxs)`, each `(k, F)`."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(x, starts, axis=0)
    dev = np.repeat(sums / lengths[:, None], lengths, axis=0)
    np.subtract(x, dev, out=dev)  # in place: two (n, F) arrays at a time, not four
    np.multiply(dev, dev, out=dev)
    return (sums, np.add.reduceat(dev, starts, axis=0), np.minimum.reduceat(x, starts, axis=0),
            np.maximum.reduceat(x, starts, axis=0))


def _add_buckets(keys: np.ndarray, counts: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted bucket keys and counts with the values `new` (keys, already bucketed) added."""
    k, c = np.unique(new, return_counts=True)
    if not len(keys):
        return k, c.astype(np.int64)
    merged, inverse = np.unique(np.concatenate([keys, k]), return_inverse=True)
    out = np.zeros(len(merged), dtype=np.int64)
    np.add.at(out, inverse.ravel(), np.concatenate([counts, c]))
    return merged, out


def episode_blocks(starts: np.ndarray, ends: np.ndarray, block_rows: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """Cut episodes (`starts`, `ends` `(k,)`, increasing) into `[i, j)` runs whose rows span at most
    `block_rows` steps (at least one episode each)."""
    out, i = [], 0
    while i < len(starts):
        j = max(int(np.searchsorted(ends, starts[i] + block_rows, side="right")), i + 1)
        out.append((i, j))
        i = j
    return out


def episode_rows(store: Any, field: str, episodes: np.ndarray,
                 block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
    """`(i, j, rows)` per block of `episodes` (increasing store indices): the rows of `field` of episodes
    `episodes[i:j]`, concatenated in order, read with one `store.read_block` call over their span."""
    starts = np.asarray(store.episode_starts, dtype=np.int64)[episodes]
    ends = np.asarray(store.episode_ends, dtype=np.int64)[episodes]
    lengths = ends - starts
    for i, j in episode_blocks(starts, ends, block_rows):
        a, b = int(starts[i]), int(ends[j - 1])
        x = np.asarray(store.read_block(field, a, b))
        n = int(lengths[i:j].sum())
        if n != b - a:  # episodes not asked for lie in the span: keep the asked ones' rows, in order
            x = x[np.repeat(starts[i:j] - a - (np.cumsum(lengths[i:j]) - lengths[i:j]), lengths[i:j]) + np.arange(n)]
        yield i, j, x


def gather_rows(store: Any, field: str, episodes: Any, block_rows: int = BLOCK_ROWS,
                take: np.ndarray | None = None, column: int | None = None) -> np.ndarray:
    """Rows of `field` of `episodes` concatenated in their order `(n, *shape)`, read a block of episodes at a
    time (`episode_rows`) when they are increasing, else episode by episode. `take`: increasing positions in
    that concatenation, the only rows kept; `column`: the only column kept (`(n,)`). Each block keeps its
    own, so memory is what is kept."""
    eps = np.asarray(episodes, dtype=np.int64)
    if not hasattr(store, "read_block") or np.any(np.diff(eps) <= 0):
        rows = np.concatenate([store.read(int(e), [field])[field] for e in eps])
        rows = rows if take is None else rows[take]
        return rows if column is None else rows[:, column]
    out, at = [], 0
    for _, _, x in episode_rows(store, field, eps, block_rows):
        if take is not None:
            lo, hi = np.searchsorted(take, [at, at + len(x)])
            at, x = at + len(x), x[take[lo:hi] - at]
        out.append(x if column is None else x[:, column].copy())
    return np.concatenate(out)


def lowdim_part(store: Any, field: str, episodes: np.ndarray, num_features: int,
                block_rows: int = BLOCK_ROWS) -> SparsePart:
    """The `stats.parts.SparsePart` of low-dim `field` over `episodes` (increasing store indices): moments
    folded episode by episode (`fold_moments` over `segment_moments`), buckets counted block by block; reads
    `store.read_block`, `block_rows` steps at a time. Raises ValueError naming the episode on NaN or inf."""
    eps = np.asarray(episodes, dtype=np.int64)
    lengths = np.asarray(store.episode_ends, dtype=np.int64)[eps] - np.asarray(store.episode_starts)[eps]
    moments = empty_part(num_features)
    keys: list[np.ndarray] = [np.zeros(0, np.uint64)] * num_features
    counts: list[np.ndarray] = [np.zeros(0, np.int64)] * num_features
    discrete: bool | None = None
    for i, j, x in episode_rows(store, field, eps, block_rows):
        x = x.reshape(len(x), num_features)
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(x), axis=1))[0])
            e = int(eps[i + np.searchsorted(np.cumsum(lengths[i:j]), bad, side="right")])
            raise ValueError(f"field {field}: episode {e} contains NaN or inf")
        if discrete is None:
            discrete = x.dtype.kind in "iub"
            keys = [np.zeros(0, np.int64 if discrete else np.uint64)] * num_features
        moments = fold_moments(moments, lengths[i:j], *segment_moments(x.astype(np.float64, copy=False),
                                                                        lengths[i:j]))
        for f in range(num_features):
            col = x[:, f].astype(np.int64) if discrete else bucket_keys(x[:, f])
            keys[f], counts[f] = _add_buckets(keys[f], counts[f], col)
    return SparsePart(moments, discrete if moments.count else None, keys, counts)
