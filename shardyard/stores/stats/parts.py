"""Stats parts that merge exactly whatever the data's range (issue 16, item 3).

Why: the dense histograms of `moments` take their edges from the data's own min/max (pass 1), so the parts
of two stores, or of an episode before and after an edit, have different edges and do not merge; merged
q01/q99 then have to be approximated (LeRobot averages per-source quantiles, weighted by frames, which is
wrong for a bimodal union). Here every value falls into a bucket that does not depend on any data:

- float data: the bucket of x is the top `64 - SHIFT` bits of the order-preserving integer image of its
  float64 bit pattern (sign, 11 exponent bits, the first `MANTISSA_BITS` = 16 mantissa bits). Buckets are
  log-spaced: the bucket of x is `2**-16` of x's power of two wide, so a quantile read from it is within
  `2**-16 |x|` (1.5e-5 relative; finer near 0) of `np.quantile`'s linear value. -0.0 counts as +0.0.
- integer and bool data: one bucket per integer value, so quantiles are exact.

A `SparsePart` keeps moments (a `moments.FieldStatsPart` without histogram: count, sum, m2, min, max) and,
per feature, the sorted non-empty bucket keys with their counts, so its size is bounded by the number of
distinct buckets in the data (at most the rows of an episode), not by a bin count. Merging adds counts key by
key (exact, associative, commutative); moments merge as in `moments.merge_parts`. The quantile rule is
`moments.quantiles_from_hist`'s, bucket for bin: stats of the union of any episode sets are therefore the
same whether computed from scratch or merged from per-episode parts, as long as the parts are folded in the
same order (count, min, max and quantiles do not depend even on the order; sum and m2 are float64 folds).

`uint8`, `int8` and `bool` fields keep `moments.fixed_edges` (dense, already data-independent, and what the
ingest workers precompute for image pixels); `empty`, `of_rows`, `merge`, `finalize_part` and `from_dict`
take either kind of part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from shardyard.stores.stats.moments import (
    QUANTILES,
    FieldStatsPart,
    empty_part,
    finalize,
    interpolate_ranks,
    merge_parts,
    part_from_array,
)

MANTISSA_BITS = 16
SHIFT = 52 - MANTISSA_BITS
_SIGN = np.uint64(1 << 63)

__all__ = ["MANTISSA_BITS", "SparsePart", "AnyPart", "bucket_keys", "bucket_edges", "empty", "of_rows", "merge",
           "finalize_part", "from_dict", "same_layout", "quantiles", "merge_many"]


def bucket_keys(x: np.ndarray) -> np.ndarray:
    """Bucket key `(N,) uint64` of each float value of `x (N,)`: monotone in x (x <= y -> key(x) <= key(y))."""
    v = np.asarray(x, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    bits = v.view(np.uint64)
    u = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    return u >> np.uint64(SHIFT)


def _value_of(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.uint64)
    bits = np.where(u & _SIGN, u & ~_SIGN, ~u)
    return bits.view(np.float64)


def bucket_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(lo, hi)` float64 value range of each float bucket key (lo <= every value in it < hi)."""
    k = np.asarray(keys, dtype=np.uint64)
    with np.errstate(invalid="ignore", over="ignore"):
        lo = _value_of(k << np.uint64(SHIFT))
        hi = _value_of((k + np.uint64(1)) << np.uint64(SHIFT))
    return lo, hi


@dataclass
class SparsePart:
    """Mergeable stats of `F` features over data-independent buckets (module docstring).

    moments: `FieldStatsPart` without histogram. discrete: True for integer data (key = the value, int64),
    False for floats (key = `bucket_keys`, uint64), None while empty. keys[j], counts[j]: feature j's sorted
    non-empty bucket keys `(K_j,)` and their counts `(K_j,) int64`.
    """

    moments: FieldStatsPart
    discrete: bool | None
    keys: list[np.ndarray]
    counts: list[np.ndarray]

    @property
    def count(self) -> int:
        """Rows summarised."""
        return self.moments.count

    @property
    def num_features(self) -> int:
        """F."""
        return self.moments.num_features

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; `from_dict` inverts it exactly."""
        return {"sparse": True, "discrete": self.discrete, "moments": self.moments.to_dict(),
                "keys": [k.tolist() for k in self.keys], "counts": [c.tolist() for c in self.counts]}


AnyPart = Union[FieldStatsPart, SparsePart]


def _empty_sparse(num_features: int) -> SparsePart:
    return SparsePart(empty_part(num_features), None, [np.zeros(0, np.uint64) for _ in range(num_features)],
                      [np.zeros(0, np.int64) for _ in range(num_features)])


def empty(num_features: int, edges: np.ndarray | None) -> AnyPart:
    """Identity of `merge`: a dense `FieldStatsPart` on `edges`, or a `SparsePart` when edges is None."""
    return _empty_sparse(num_features) if edges is None else empty_part(num_features, edges)


def of_rows(rows: np.ndarray, edges: np.ndarray | None) -> AnyPart:
    """Part of `rows (N, F)`: `moments.part_from_array(rows, edges)` with edges, else a `SparsePart`.
    Raises ValueError on a bad shape or non-finite floats."""
    if edges is not None:
        return part_from_array(rows, edges)
    x = np.asarray(rows)
    if x.ndim == 1:
        x = x[:, None]
    moments = part_from_array(x)
    f = x.shape[1] if x.ndim == 2 else 0
    if moments.count == 0:
        return _empty_sparse(f)
    discrete = x.dtype.kind in "iub"
    keys, counts = [], []
    for j in range(f):
        col = x[:, j].astype(np.int64) if discrete else bucket_keys(x[:, j])
        k, c = np.unique(col, return_counts=True)
        keys.append(k)
        counts.append(c.astype(np.int64))
    return SparsePart(moments, discrete, keys, counts)


def _merge_counts(ka: np.ndarray, ca: np.ndarray, kb: np.ndarray, cb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(ka):
        return kb, cb
    if not len(kb):
        return ka, ca
    keys, inverse = np.unique(np.concatenate([ka, kb]), return_inverse=True)
    counts = np.zeros(len(keys), dtype=np.int64)
    np.add.at(counts, inverse.ravel(), np.concatenate([ca, cb]))
    return keys, counts


def merge(a: AnyPart, b: AnyPart) -> AnyPart:
    """Merge two parts of one field (both dense on the same edges, or both sparse). Raises ValueError on
    different kinds, feature counts or edges, or integer with float data."""
    if isinstance(a, FieldStatsPart) and isinstance(b, FieldStatsPart):
        return merge_parts(a, b)
    if not (isinstance(a, SparsePart) and isinstance(b, SparsePart)):
        raise ValueError("cannot merge a dense-histogram part with a sparse one (different dtypes?)")
    if a.discrete is not None and b.discrete is not None and a.discrete != b.discrete:
        raise ValueError("cannot merge parts of integer and float data")
    moments = merge_parts(a.moments, b.moments)
    keys, counts = [], []
    for j in range(a.num_features):
        k, c = _merge_counts(a.keys[j], a.counts[j], b.keys[j], b.counts[j])
        keys.append(k)
        counts.append(c)
    return SparsePart(moments, a.discrete if a.discrete is not None else b.discrete, keys, counts)


def merge_many(first: AnyPart, parts: Sequence[AnyPart]) -> AnyPart:
    """`merge` folded over `[first, *parts]`, equal to the left fold (same moments, bit for bit: they are
    folded in order; the same buckets: counts add in any order), but the buckets of all parts are added in
    one sort instead of one per part (a fold costs O(parts x buckets))."""
    if not parts:
        return first
    if isinstance(first, FieldStatsPart):
        out = first
        for p in parts:
            out = merge(out, p)
        return out
    every = [first, *parts]
    if not all(isinstance(p, SparsePart) for p in every):
        raise ValueError("cannot merge a dense-histogram part with a sparse one (different dtypes?)")
    kinds = {p.discrete for p in every if p.discrete is not None}
    if len(kinds) > 1:
        raise ValueError("cannot merge parts of integer and float data")
    moments = first.moments
    for p in parts:
        moments = merge_parts(moments, p.moments)
    keys, counts = [], []
    for j in range(first.num_features):
        ks = [p.keys[j] for p in every if len(p.keys[j])]
        if not ks:
            keys.append(first.keys[j])
            counts.append(first.counts[j])
            continue
        k, inverse = np.unique(np.concatenate(ks), return_inverse=True)
        c = np.zeros(len(k), dtype=np.int64)
        np.add.at(c, inverse.ravel(), np.concatenate([p.counts[j] for p in every if len(p.keys[j])]))
        keys.append(k)
        counts.append(c)
    return SparsePart(moments, kinds.pop() if kinds else None, keys, counts)


def quantiles(p: SparsePart, qs: Sequence[float]) -> np.ndarray:
    """`(len(qs), F)` quantiles by `moments.quantiles_from_hist`'s rule over the part's buckets."""
    out = np.full((len(qs), p.num_features), np.nan)
    for j in range(p.num_features):
        counts = p.counts[j]
        cum = np.cumsum(counts)
        n = int(cum[-1]) if len(cum) else 0
        if n == 0:
            continue
        lo_v, hi_v = p.moments.min[j], p.moments.max[j]
        if p.discrete:
            lo = hi = p.keys[j].astype(np.float64)
        else:
            lo, hi = bucket_edges(p.keys[j])

        def order_stat(k: np.ndarray) -> np.ndarray:
            b = np.searchsorted(cum, k, side="right")
            before = cum[b] - counts[b]
            v = lo[b] if p.discrete else lo[b] + (k - before + 0.5) / counts[b] * (hi[b] - lo[b])
            v = np.clip(v, lo_v, hi_v)
            return np.where(k == 0, lo_v, np.where(k == n - 1, hi_v, v))

        out[:, j] = interpolate_ranks(order_stat, n, qs)
    return out


def finalize_part(part: AnyPart, scale: float = 1.0) -> dict[str, list]:
    """LeRobot-named stats (`moments.finalize`'s dict: count, mean, std, min, max, q01, q99) of either kind."""
    if isinstance(part, FieldStatsPart):
        return finalize(part, scale)
    out = finalize(part.moments, scale)
    if part.count:
        q = quantiles(part, list(QUANTILES.values()))
        for i, name in enumerate(QUANTILES):
            out[name] = (q[i] * scale).tolist()
    return out


def from_dict(d: dict[str, Any]) -> AnyPart:
    """Inverse of `to_dict` of either kind."""
    if not d.get("sparse"):
        return FieldStatsPart.from_dict(d)
    discrete = d["discrete"]
    kdt = np.int64 if discrete else np.uint64
    return SparsePart(FieldStatsPart.from_dict(d["moments"]), discrete,
                      [np.asarray(k, dtype=kdt) for k in d["keys"]],
                      [np.asarray(c, dtype=np.int64) for c in d["counts"]])


def same_layout(part: AnyPart, edges: np.ndarray | None) -> bool:
    """True when `part` was made on `edges` (dense on equal edges, or sparse when edges is None)."""
    if edges is None:
        return isinstance(part, SparsePart)
    return isinstance(part, FieldStatsPart) and part.edges is not None and np.array_equal(part.edges, edges)
