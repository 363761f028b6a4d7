"""Depth extras of stats.json (seed 003; DESIGN.md "Stats"): per depth field, the valid-pixel fraction, the
depth range and the median (metres), from mergeable parts.

A `DepthPart` counts sampled pixels (valid = finite and > 0) and histograms valid depth over fixed 1 mm bins
from 0 to `max_m` (values beyond fall in the last bin), so parts of any episode split merge exactly and the
median is exact to 1 mm. Pixels are sampled as the per-field stats sample them (`image_frame_stride`-th frame
of each episode, `image_pixel_stride`-th pixel in x and y).

    {"obs.depth": {"valid_fraction", "num_pixels", "num_valid", "min", "max", "median", "q01", "q99",
                   "unit": "m"}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shardyard.stores.stats.config import StatsConfig

__all__ = ["BIN_M", "DepthPart", "MAX_M", "depth_stats"]

BIN_M = 1e-3
MAX_M = 20.0


@dataclass
class DepthPart:
    """Sampled pixels `total`, valid pixels `valid`, min/max of valid depth (m), `hist (B,) int64` over
    `[0, MAX_M]` in `BIN_M` bins."""

    total: int
    valid: int
    min: float
    max: float
    hist: np.ndarray

    @classmethod
    def empty(cls) -> "DepthPart":
        """The part of no pixels."""
        return cls(0, 0, float("inf"), float("-inf"), np.zeros(int(round(MAX_M / BIN_M)), dtype=np.int64))

    @classmethod
    def of(cls, depth: np.ndarray) -> "DepthPart":
        """Part of an array of depth values (any shape, metres, <= 0 or non-finite = invalid)."""
        d = np.asarray(depth, dtype=np.float64).reshape(-1)
        v = d[np.isfinite(d) & (d > 0)]
        part = cls.empty()
        part.total, part.valid = int(d.size), int(v.size)
        if v.size:
            part.min, part.max = float(v.min()), float(v.max())
            idx = np.minimum((v / BIN_M).astype(np.int64), part.hist.size - 1)
            part.hist = np.bincount(idx, minlength=part.hist.size).astype(np.int64)
        return part

    def merge(self, other: "DepthPart") -> "DepthPart":
        """The part of both pixel sets (exact: counts and histograms add)."""
        return DepthPart(self.total + other.total, self.valid + other.valid, min(self.min, other.min),
                         max(self.max, other.max), self.hist + other.hist)

    def quantile(self, q: float) -> float | None:
        """Quantile of valid depth (m) from the histogram: the centre of the bin holding it, clipped to
        [min, max]; None when nothing is valid."""
        if not self.valid:
            return None
        i = int(np.searchsorted(np.cumsum(self.hist), q * self.valid, side="left"))
        return float(np.clip((i + 0.5) * BIN_M, self.min, self.max))

    def finalize(self) -> dict[str, Any]:
        """The stats.json entry (module docstring); None for min/max/quantiles when nothing is valid."""
        ok = self.valid > 0
        return {"valid_fraction": self.valid / self.total if self.total else 0.0, "num_pixels": self.total,
                "num_valid": self.valid, "min": self.min if ok else None, "max": self.max if ok else None,
                "median": self.quantile(0.5), "q01": self.quantile(0.01), "q99": self.quantile(0.99),
                "unit": "m"}


def depth_stats(store, episodes: Sequence[int], config: StatsConfig | None = None) -> dict[str, Any]:
    """Depth extras for every `kind == "depth"` field of `store` over `episodes` (see module docstring)."""
    cfg = config or StatsConfig()
    out = {}
    for field in store.schema.of_kind("depth"):
        part = DepthPart.empty()
        for ep in episodes:
            for t in range(0, store.episode_length(ep), cfg.image_frame_stride):
                x = store.read(ep, [field], t, t + 1)[field]
                part = part.merge(DepthPart.of(x[:, :: cfg.image_pixel_stride, :: cfg.image_pixel_stride]))
        out[field] = part.finalize()
    return out
