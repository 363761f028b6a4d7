"""Feature normalisation from `stats.json` and its inverse, relative-action stats, images on the device.

Modes (LeRobot's `NormalizationMode` names, lower case; LeRobot `policies/normalize.py`):

    mean_std    (x - mean) / std
    min_max     [min, max] -> [-1, 1]
    quantiles   [q01, q99] -> [-1, 1] (values outside go past +-1: robust to outliers, as pi0 uses)
    identity    x

Every mode is an affine map `(x - shift) / scale` with per-feature `shift` and `scale` shaped like the field's
per-step shape, so `invert` is exact up to float rounding. A feature whose scale is below `eps` (a constant
joint, say) gets scale 1: it maps to 0 instead of blowing up, and still inverts exactly.

Images are not normalised here: they cross DataLoader workers as `uint8 (..., C, H, W)` (DESIGN.md,
"Conventions") and `normalize_images` turns them into float on whatever device they were moved to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from shardyard.stores.stats.moments import empty_part, finalize, make_edges, merge_parts, part_from_array

log = logging.getLogger(__name__)

MODES = ("mean_std", "min_max", "quantiles", "identity")

__all__ = ["MODES", "FieldNorm", "normalize_images", "relative_actions",
           "relative_action_stats"]


def _as(a: np.ndarray, x: Any) -> Any:
    """`a` as an array of `x`'s kind: a tensor on `x`'s device and dtype, or a numpy array of its dtype."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(a, dtype=dtype, device=x.device)
    x = np.asarray(x)
    return a.astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)


@dataclass(frozen=True)
class FieldNorm:
    """The affine normalisation of one field: `normalized = (x - shift) / scale`.

    mode: one of `MODES`. shift, scale: float64 arrays of the field's per-step shape (e.g. `(A,)` for an
    action of A dims, `()` for a scalar), broadcast over any leading dims `(B, K, ...)`.
    """

    mode: str
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(cls, stats: Mapping[str, Sequence[float]], mode: str, shape: tuple[int, ...], *,
                   field: str = "?", eps: float = 1e-8) -> "FieldNorm":
        """The normalisation of a field from its `stats.json` entry (`mean`, `std`, `min`, `max`, `q01`,
        `q99`: per-feature lists of `prod(shape)` values). Raises ConfigError naming `field` for an unknown
        mode, a missing statistic, or a feature count that does not fit `shape`."""
        if mode not in MODES:
            raise ConfigError(f"field {field!r}: unknown normalisation mode {mode!r}; use one of {MODES}")
        n = int(np.prod(shape, dtype=np.int64))
        if mode == "identity":
            return cls(mode, np.zeros(shape), np.ones(shape))
        need = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantiles": ("q01", "q99")}[mode]
        vals = []
        for name in need:
            if stats.get(name) is None:
                raise ConfigError(f"field {field!r}: stats have no {name!r}, needed by mode {mode!r}")
            v = np.asarray(stats[name], dtype=np.float64).reshape(-1)
            if v.size != n or not np.all(np.isfinite(v)):
                raise ConfigError(f"field {field!r}: stats {name!r} has {v.size} values (finite: "
                                  f"{bool(np.all(np.isfinite(v)))}), the field has {n} features {shape}")
            vals.append(v.reshape(shape))
        lo, hi = vals
        if mode == "mean_std":
            shift, scale = lo, hi
        else:
            shift, scale = (lo + hi) / 2.0, (hi - lo) / 2.0
        scale = np.where(np.abs(scale) < eps, 1.0, scale)
        return cls(mode, shift, scale)

    def apply(self, x: Any) -> Any:
        """Normalise `x (..., *shape)` (numpy array or tensor; float result of x's float dtype)."""
        return (x - _as(self.shift, x)) / _as(self.scale, x)

    def invert(self, y: Any) -> Any:
        """Raw values `(..., *shape)` of normalised `y` (the inverse of `apply`, for predictions)."""
        return y * _as(self.scale, y) + _as(self.shift, y)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: mode, shift, scale (nested lists)."""
        return {"mode": self.mode, "shift": self.shift.tolist(), "scale": self.scale.tolist()}


def normalize_images(images: torch.Tensor, mean: Sequence[float] | None = IMAGENET_MEAN,
                     std: Sequence[float] | None = IMAGENET_STD, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`uint8 (..., C, H, W)` images -> `dtype` `(..., C, H, W)`: `x / 255`, then `(x - mean) / std` per
    channel when `mean` and `std` are given (default ImageNet's; None for plain `[0, 1]`). Runs on the
    tensor's device: move the uint8 batch to the GPU first, so the worker transport and the host-to-device
    copy carry a quarter of the float bytes, and the conversion happens once (DESIGN.md, "Conventions").
    Raises ValueError for a non-uint8 input or a channel count that does not fit `mean`/`std`."""
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize_images expects uint8 (..., C, H, W) images, got {images.dtype}")
    x = images.to(dtype).div_(255.0)
    if mean is None or std is None:
        return x
    c = images.shape[-3] if images.dim() >= 3 else -1
    if len(mean) != c or len(std) != c:
        raise ValueError(f"images have {c} channels (shape {tuple(images.shape)}); mean/std have "
                         f"{len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=dtype, device=images.device).view(c, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=images.device).view(c, 1, 1)
    return x.sub_(m).div_(s)


def relative_actions(action: np.ndarray, state: np.ndarray, deltas: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Relative action chunks of one episode: `action (T, A)`, `state (T, S)`, step offsets `deltas (K,)` ->
    `(n, A) float32` rows `action[t + k] - state[t]` (on `dims`; other dims stay absolute) for every anchor
    `t` and offset `k` that stays inside the episode (padded ones are left out of the stats)."""
    a, s = np.asarray(action, np.float32), np.asarray(state, np.float32)
    t = np.arange(len(a))[:, None] + np.asarray(deltas, np.int64)[None, :]            # (T, K)
    ok = (t >= 0) & (t < len(a))
    rel = a[np.clip(t, 0, len(a) - 1)]                                                 # (T, K, A)
    rel[..., dims] -= s[:, None, dims]
    return rel[ok]


def relative_action_stats(store: Any, action_field: str, state_field: str, deltas: Sequence[int],
                          dims: Sequence[int], episodes: Sequence[int] | None = None) -> dict[str, list]:
    """`stats.json`-style stats (`count, mean, std, min, max, q01, q99`, per feature) of the relative actions
    (`relative_actions`) over `episodes` (default the store's train split, else every episode), from the
    mergeable parts of `stores.stats.moments`: pass 1 merges per-episode min/max into shared histogram edges
    (`make_edges`), pass 2 merges per-episode histograms on them, so q01/q99 are within one bin width of
    `np.quantile` and the result does not depend on how episodes are grouped. Reads each episode's two
    fields whole, twice (about 0.5 s for 736 steps x 16 offsets on this machine)."""
    if episodes is None:
        episodes = [int(e) for e in (store.split or {}).get("train", [])] or list(range(store.num_episodes))
    d, dm = np.asarray(deltas, np.int64), np.asarray(dims, np.int64)

    def chunks() -> Iterator[np.ndarray]:
        for e in episodes:
            x = store.read(e, [action_field, state_field])
            yield relative_actions(x[action_field], x[state_field], d, dm)

    dim = int(np.prod(store.schema[action_field].shape, dtype=np.int64))
    part = empty_part(dim)
    for rows in chunks():
        part = merge_parts(part, part_from_array(rows))
    edges = make_edges(part.min, part.max, "float32")
    part = empty_part(dim, edges)
    for rows in chunks():
        part = merge_parts(part, part_from_array(rows, edges))
    log.info("relative-action stats of %s - %s over %d episodes, %d rows", action_field, state_field,
             len(episodes), part.count)
    return finalize(part)
