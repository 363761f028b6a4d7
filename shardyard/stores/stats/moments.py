"""Mergeable per-field statistics: moments plus fixed-edge histograms (DESIGN.md, "Stats").

A `FieldStatsPart` summarises `N` rows of `F` features: count, per-feature sum and sum of squared
deviations from the part's mean (`m2`, float64), min, max and, when edges are given, a histogram
`(F, B) int64` over fixed edges `(F, B + 1)`. Parts merge associatively (`merge_parts`): counts and
histograms add exactly, sums add in float64, `m2` merges by Chan et al.'s parallel-variance formula, min/max
take the extremes. (`m2` rather than a raw sum of squares: sumsq / n - mean**2 cancels catastrophically
when |mean| >> std, e.g. timestamps or a position far from the origin; the raw sum of squares is still
available as the `sumsq` property.) `finalize` turns a part into LeRobot's per-feature stats names
`count, mean, std, min, max, q01, q99` (LeRobot `compute_stats.py`; std is the population std, ddof 0).

Two-pass scheme (per-worker stats that merge exactly):
  pass 1  `part_from_array(x)` without edges per chunk, merged -> global min/max;
  pass 2  `make_edges(min, max, dtype)` (shared by every worker), `part_from_array(x, edges)` per chunk,
          merged -> the same histogram whatever the split into chunks.
`uint8`, `int8` and `bool` data take `fixed_edges` (one unit-wide bin per integer value, 256 bins for uint8)
and need no pass 1; integer-valued bins make the quantiles exact (equal to `np.quantile`, linear method).
Float data takes `n_bins` (default 2048) equal bins over [min, max]; quantiles are then interpolated linearly
inside a bin and are within one bin width of `np.quantile`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["FLOAT_BINS", "FieldStatsPart", "QUANTILES", "empty_part", "finalize", "fixed_edges", "is_discrete",
           "interpolate_ranks", "make_edges", "merge_all", "merge_parts", "part_from_array", "quantiles_from_hist"]

log = logging.getLogger(__name__)

FLOAT_BINS = 2048
QUANTILES = {"q01": 0.01, "q99": 0.99}


@dataclass
class FieldStatsPart:
    """Mergeable statistics of `count` rows of `F` features.

    sum: `(F,) float64`, sum of x. m2: `(F,) float64`, sum of (x - sum / count)**2. min, max: `(F,) float64`
    (+inf / -inf when empty).
    hist: `(F, B) int64` counts over `edges (F, B + 1) float64`, or both None (moments only). Values outside
    the edges are counted in the first/last bin; the last bin includes its right edge (as `np.histogram`).
    """

    count: int
    sum: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    hist: np.ndarray | None = None
    edges: np.ndarray | None = None

    @property
    def num_features(self) -> int:
        """F, the number of features."""
        return int(self.sum.shape[0])

    @property
    def sumsq(self) -> np.ndarray:
        """Raw per-feature sum of squares `(F,)`, m2 + sum**2 / count."""
        return self.m2 + (self.sum * self.sum / self.count if self.count else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists), for shipping parts between workers; `from_dict` inverts it exactly.
        Unit bins centred on the integers (`fixed_edges`: every uint8 image part) are written as
        `{"unit_bins_from": lo, "bins": n}`, not as F x 257 floats: they were 2/3 of each stored part."""
        return {"count": self.count, "sum": self.sum.tolist(), "m2": self.m2.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist(),
                "hist": None if self.hist is None else self.hist.tolist(), "edges": _edges_to_json(self.edges)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FieldStatsPart":
        """Inverse of `to_dict`."""
        def arr(v, dtype):
            return None if v is None else np.asarray(v, dtype=dtype)
        return cls(count=int(d["count"]), sum=arr(d["sum"], np.float64), m2=arr(d["m2"], np.float64),
                   min=arr(d["min"], np.float64), max=arr(d["max"], np.float64),
                   hist=arr(d["hist"], np.int64), edges=_edges_from_json(d["edges"], len(d["sum"])))


def _unit_edges(lo: int, bins: int, num_features: int) -> np.ndarray:
    return np.tile(np.arange(lo, lo + bins + 1, dtype=np.float64) - 0.5, (num_features, 1))


def _edges_to_json(edges: np.ndarray | None) -> Any:
    if edges is None:
        return None
    lo, bins = edges[0, 0] + 0.5, edges.shape[1] - 1
    if lo == int(lo) and np.array_equal(edges, _unit_edges(int(lo), bins, edges.shape[0])):
        return {"unit_bins_from": int(lo), "bins": int(bins)}
    return edges.tolist()


def _edges_from_json(v: Any, num_features: int) -> np.ndarray | None:
    if isinstance(v, dict):
        return _unit_edges(int(v["unit_bins_from"]), int(v["bins"]), num_features)
    return None if v is None else np.asarray(v, dtype=np.float64)


def empty_part(num_features: int, edges: np.ndarray | None = None) -> FieldStatsPart:
    """The identity of `merge_parts`: zero rows of `num_features` features (with zero histogram if edges)."""
    e = None if edges is None else np.asarray(edges, dtype=np.float64)
    return FieldStatsPart(count=0, sum=np.zeros(num_features), m2=np.zeros(num_features),
                          min=np.full(num_features, np.inf), max=np.full(num_features, -np.inf),
                          hist=None if e is None else np.zeros((num_features, e.shape[1] - 1), np.int64),
                          edges=e)


def fixed_edges(dtype: np.dtype | str, num_features: int) -> np.ndarray | None:
    """Data-independent edges `(F, B + 1)` for small integer dtypes (one bin per value, centred on it):
    uint8 -> 256 bins over [-0.5, 255.5], int8 -> 256 bins over [-128.5, 127.5], bool -> 2 bins. None for
    any other dtype (its edges come from the data's min/max, see `make_edges`)."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        lo, n = 0, 256
    elif dt == np.int8:
        lo, n = -128, 256
    elif dt == np.bool_:
        lo, n = 0, 2
    else:
        return None
    row = np.arange(lo, lo + n + 1, dtype=np.float64) - 0.5
    return np.tile(row, (num_features, 1))


def make_edges(mins: np.ndarray, maxs: np.ndarray, dtype: np.dtype | str = "float64",
               n_bins: int = FLOAT_BINS) -> np.ndarray:
    """Histogram edges `(F, B + 1) float64` from global per-feature `mins`, `maxs` `(F,)` (pass 1).

    uint8/int8/bool: `fixed_edges`. Other integer dtypes whose widest feature range has at most `n_bins`
    values: unit bins centred on the integers (exact quantiles). Otherwise `n_bins` equal bins over
    [min, max]; a constant feature gets [v - d, v + d] with d = max(1e-6 |v|, 1e-6); a feature with no
    finite data gets [0, 1].
    """
    mins = np.asarray(mins, dtype=np.float64)
    maxs = np.asarray(maxs, dtype=np.float64)
    dt = np.dtype(dtype)
    fixed = fixed_edges(dt, mins.shape[0])
    if fixed is not None:
        return fixed
    ok = np.isfinite(mins) & np.isfinite(maxs)
    lo = np.where(ok, mins, 0.0)
    hi = np.where(ok, maxs, 1.0)
    if dt.kind in "iu" and mins.shape[0] and float(np.max(hi - lo)) + 1 <= n_bins:
        width = int(np.max(hi - lo)) + 1
        return lo[:, None] + np.arange(width + 1, dtype=np.float64)[None, :] - 0.5
    pad = np.maximum(1e-6 * np.abs(lo), 1e-6)
    same = hi <= lo
    lo = np.where(same, lo - pad, lo)
    hi = np.where(same, hi + pad, hi)
    return np.linspace(lo, hi, n_bins + 1, axis=1)


def is_discrete(edges: np.ndarray) -> bool:
    """True when every bin is one unit wide and centred on an integer (so each bin holds one value)."""
    e = np.asarray(edges, dtype=np.float64)
    return bool(np.all(np.diff(e, axis=1) == 1.0) and np.all(e - np.floor(e) == 0.5))


def _histogram(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts `(F, B) int64` of `x (N, F)` over `edges (F, B + 1)`; out-of-range values go to the end bins."""
    n, f = x.shape
    b = edges.shape[1] - 1
    if x.dtype.kind in "iub" and is_discrete(edges):
        idx = x.astype(np.int64) - (edges[:, 0] + 0.5).astype(np.int64)[None, :]
    else:
        idx = np.empty((n, f), dtype=np.int64)
        for j in range(f):
            idx[:, j] = np.searchsorted(edges[j], x[:, j], side="right") - 1
    np.clip(idx, 0, b - 1, out=idx)
    flat = idx + (np.arange(f, dtype=np.int64) * b)[None, :]
    return np.bincount(flat.ravel(), minlength=f * b).reshape(f, b).astype(np.int64)


def part_from_array(x: np.ndarray, edges: np.ndarray | None = None) -> FieldStatsPart:
    """Statistics of `x (N, F)` (any numeric dtype; a `(N,)` array is one feature). With `edges (F, B + 1)`
    the part carries a histogram; every part that is to be merged must use the same edges.
    Raises ValueError on a bad shape or non-finite floats."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"expected an (N, F) array, got shape {x.shape}")
    f = x.shape[1]
    if edges is not None:
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 2 or edges.shape[0] != f or edges.shape[1] < 2:
            raise ValueError(f"edges of shape {edges.shape} do not fit {f} features")
    if x.shape[0] == 0:
        return empty_part(f, edges)
    if x.dtype == np.uint8 and edges is not None and np.array_equal(edges, fixed_edges(np.uint8, f)):
        return _uint8_part(x, edges)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError("data contains NaN or inf")
    x64 = x.astype(np.float64, copy=False)
    total = x64.sum(axis=0)
    dev = x64 - total / x.shape[0]
    return FieldStatsPart(count=int(x.shape[0]), sum=total, m2=np.einsum("nf,nf->f", dev, dev),
                          min=x64.min(axis=0), max=x64.max(axis=0),
                          hist=None if edges is None else _histogram(x, edges), edges=edges)


def _uint8_part(x: np.ndarray, edges: np.ndarray) -> FieldStatsPart:
    """`part_from_array` for uint8 data on `fixed_edges`: one bincount per feature, and the moments, min
    and max read off the exact histogram (every value is a bin centre), about 10x cheaper than the
    float64 passes on image pixels."""
    hist = np.stack([np.bincount(x[:, j], minlength=256) for j in range(x.shape[1])]).astype(np.int64)
    values = np.arange(256, dtype=np.float64)
    n = int(x.shape[0])
    total = hist @ values
    dev = values[None, :] - (total / n)[:, None]
    seen = hist > 0
    return FieldStatsPart(count=n, sum=total, m2=np.einsum("fb,fb->f", hist, dev * dev),
                          min=np.argmax(seen, axis=1).astype(np.float64),
                          max=(255 - np.argmax(seen[:, ::-1], axis=1)).astype(np.float64),
                          hist=hist, edges=edges)


def merge_parts(a: FieldStatsPart, b: FieldStatsPart) -> FieldStatsPart:
    """Merge two parts of the same field (associative and commutative; the empty part is the identity).
    Raises ValueError when the feature counts differ, or when the parts' histogram edges differ (both
    must have the same edges or both none)."""
    if a.num_features != b.num_features:
        raise ValueError(f"cannot merge parts of {a.num_features} and {b.num_features} features")
    if (a.edges is None) != (b.edges is None) or (
            a.edges is not None and not np.array_equal(a.edges, b.edges)):
        raise ValueError("cannot merge parts with different histogram edges (compute both with the same "
                         "edges, see make_edges)")
    if a.count == 0 or b.count == 0:
        m2 = a.m2 + b.m2
    else:  # Chan, Golub & LeVeque (1979): M2 = M2_a + M2_b + delta**2 n_a n_b / n
        delta = b.sum / b.count - a.sum / a.count
        m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / (a.count + b.count))
    return FieldStatsPart(count=a.count + b.count, sum=a.sum + b.sum, m2=m2,
                          min=np.minimum(a.min, b.min), max=np.maximum(a.max, b.max),
                          hist=None if a.hist is None else a.hist + b.hist, edges=a.edges)


def merge_all(parts: Sequence[FieldStatsPart]) -> FieldStatsPart:
    """Left fold of `merge_parts` over a non-empty sequence."""
    if not parts:
        raise ValueError("merge_all needs at least one part")
    out = parts[0]
    for p in parts[1:]:
        out = merge_parts(out, p)
    return out


def interpolate_ranks(order_stat: Callable[[np.ndarray], np.ndarray], n: int, qs: Sequence[float]) -> np.ndarray:
    """`np.quantile`'s linear method over `n` values known only through `order_stat(k) -> x[k]` (ranks
    `(m,) int64`): the value at rank h = (n - 1) q interpolates x[floor h] and x[floor h + 1]. Returns `(len(qs),)`."""
    h = (n - 1) * np.asarray(qs, dtype=np.float64)
    k0 = np.floor(h).astype(np.int64)
    k1 = np.minimum(k0 + 1, n - 1)
    x0, x1 = order_stat(k0), order_stat(k1)
    return x0 + (h - k0) * (x1 - x0)


def quantiles_from_hist(hist: np.ndarray, edges: np.ndarray, mins: np.ndarray, maxs: np.ndarray,
                        qs: Sequence[float]) -> np.ndarray:
    """Quantiles `(len(qs), F)` from a histogram, following `np.quantile`'s linear method: the value at
    rank h = (n - 1) q interpolates the order statistics x[floor h] and x[floor h + 1]. An order statistic
    is read off the cumulative counts: with discrete (unit, integer-centred) bins it is the bin's value,
    exactly; otherwise the c values of its bin are taken as spread evenly over the bin, (k + 0.5) / c of
    the way in, clipped to [min, max] (error below one bin width). x[0] and x[n-1] are min and max."""
    hist = np.asarray(hist, dtype=np.int64)
    edges = np.asarray(edges, dtype=np.float64)
    f = hist.shape[0]
    discrete = is_discrete(edges)
    out = np.full((len(qs), f), np.nan)
    for j in range(f):
        cum = np.cumsum(hist[j])
        n = int(cum[-1])
        if n == 0:
            continue

        def order_stat(k: np.ndarray) -> np.ndarray:
            b = np.searchsorted(cum, k, side="right")
            lo, hi = edges[j, b], edges[j, b + 1]
            if discrete:
                v = (lo + hi) / 2.0
            else:
                before = cum[b] - hist[j, b]
                v = lo + (k - before + 0.5) / hist[j, b] * (hi - lo)
            v = np.clip(v, mins[j], maxs[j])
            return np.where(k == 0, mins[j], np.where(k == n - 1, maxs[j], v))

        out[:, j] = interpolate_ranks(order_stat, n, qs)
    return out


def finalize(part: FieldStatsPart, scale: float = 1.0) -> dict[str, list]:
    """LeRobot-named stats of a part, per feature, as lists: `count` ([N], LeRobot's shape (1,)), `mean`,
    `std` (population), `min`, `max`, `q01`, `q99`. Every value but count is multiplied by `scale` (1/255
    puts uint8 images in [0, 1], as LeRobot does). Empty parts and parts without histogram give NaN where
    the value is undefined."""
    n = part.count
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = part.sum / n if n else np.full(part.num_features, np.nan)
        var = np.maximum(part.m2 / n, 0.0) if n else mean
    std = np.sqrt(var)
    mins = part.min if n else np.full(part.num_features, np.nan)
    maxs = part.max if n else np.full(part.num_features, np.nan)
    if part.hist is not None and n:
        q = quantiles_from_hist(part.hist, part.edges, part.min, part.max, list(QUANTILES.values()))
    else:
        q = np.full((len(QUANTILES), part.num_features), np.nan)
    out: dict[str, list] = {"count": [int(n)]}
    for name, v in (("mean", mean), ("std", std), ("min", mins), ("max", maxs)):
        out[name] = (np.asarray(v, dtype=np.float64) * scale).tolist()
    for i, name in enumerate(QUANTILES):
        out[name] = (q[i] * scale).tolist()
    return out
