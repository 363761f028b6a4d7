"""Monocular depth metrics on NYU's Eigen crop (seed 003; BTS `compute_errors`; Eigen et al. 2014).

Per image, over pixels inside the crop with ground truth in `[min_m, max_m]` (1e-3..10 m), predictions
clipped to the same range (as BTS/AdaBins eval):

    abs_rel = mean(|p - g| / g)           sq_rel = mean((p - g)^2 / g)       rmse = sqrt(mean((p - g)^2)) m
    rmse_log = sqrt(mean((ln p - ln g)^2))   log10 = mean(|log10 p - log10 g|)
    silog = sqrt(mean(e^2) - mean(e)^2), e = ln p - ln g   (not x100 as BTS prints it; seed 003's scale)
    delta_k = mean(max(p/g, g/p) < 1.25^k), k = 1, 2, 3
    s_star = median(g) / median(p)        (median scaling; < 1 means predictions too far)
    scaled_abs_rel = abs_rel of s_star * p

Image metrics are averaged over images. `abs_rel_<a>_<b>m` pools |p - g| / g over all pixels with
a <= g < b (0-2, 2-5, 5-10 m). `pred_min`/`pred_max` and `gt_min`/`gt_max` are over all evaluated pixels
(prediction range before clipping).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.ingest.nyu_depth_v2 import EIGEN_CROP
from shardyard.train.loop import format_table as loop_table

__all__ = ["DepthMetrics", "KEYS", "RANGES", "TABLE_COLUMNS", "eval_mask", "format_table",
           "image_metrics", "write_depth_png"]

log = logging.getLogger(__name__)

RANGES = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0))
KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3", "s_star",
        "scaled_abs_rel")


def eval_mask(gt: np.ndarray, crop: tuple[int, int, int, int] | list[int] | None = EIGEN_CROP,
              min_m: float = 1e-3, max_m: float = 10.0) -> np.ndarray:
    """`(H, W) bool`: inside `crop` ([top, bottom, left, right]; None = whole frame) and `min_m < gt < max_m`."""
    m = (gt > min_m) & (gt < max_m)
    if crop is not None:
        c = np.zeros_like(m)
        top, bottom, left, right = crop
        c[top:bottom, left:right] = True
        m &= c
    return m


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one image's evaluated pixels (1-D arrays, metres, gt > 0, pred > 0)."""
    p, g = pred.astype(np.float64), gt.astype(np.float64)
    thresh = np.maximum(g / p, p / g)
    e = np.log(p) - np.log(g)
    s = float(np.median(g) / np.median(p))
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "sq_rel": float(np.mean((p - g) ** 2 / g)),
            "rmse": float(np.sqrt(np.mean((p - g) ** 2))), "rmse_log": float(np.sqrt(np.mean(e ** 2))),
            "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
            "silog": float(np.sqrt(max(np.mean(e ** 2) - np.mean(e) ** 2, 0.0))),
            "delta1": float(np.mean(thresh < 1.25)), "delta2": float(np.mean(thresh < 1.25 ** 2)),
            "delta3": float(np.mean(thresh < 1.25 ** 3)), "s_star": s,
            "scaled_abs_rel": float(np.mean(np.abs(s * p - g) / g))}


@dataclass
class DepthMetrics:
    """Accumulates `image_metrics` over images (`update`), then `compute()` (see module docstring)."""

    crop: tuple[int, int, int, int] | list[int] | None = EIGEN_CROP
    min_m: float = 1e-3
    max_m: float = 10.0
    sums: dict[str, float] = field(default_factory=dict)
    images: int = 0
    range_sums: np.ndarray = field(default_factory=lambda: np.zeros(len(RANGES)))
    range_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(RANGES), dtype=np.int64))
    pred_range: list[float] = field(default_factory=lambda: [np.inf, -np.inf])
    gt_range: list[float] = field(default_factory=lambda: [np.inf, -np.inf])

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred, gt `(H, W)` or `(B, H, W)` (or `(B, 1, H, W)`) metres; gt 0 = invalid."""
        pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
        gt = gt.reshape((-1,) + gt.shape[-2:])
        pred = pred.reshape(gt.shape)
        for p, g in zip(pred, gt):
            m = eval_mask(g, self.crop, self.min_m, self.max_m)
            if not m.any():
                continue
            pv, gv = p[m], g[m]
            self.pred_range = [min(self.pred_range[0], float(pv.min())), max(self.pred_range[1], float(pv.max()))]
            self.gt_range = [min(self.gt_range[0], float(gv.min())), max(self.gt_range[1], float(gv.max()))]
            pv = np.clip(pv, self.min_m, self.max_m)
            for k, v in image_metrics(pv, gv).items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.images += 1
            rel = np.abs(pv - gv) / gv
            for i, (a, b) in enumerate(RANGES):
                sel = (gv >= a) & (gv < b)
                self.range_sums[i] += float(rel[sel].sum())
                self.range_counts[i] += int(sel.sum())

    def compute(self) -> dict[str, Any]:
        """Means over the images seen so far (None when there were none), median scaling and range splits."""
        out: dict[str, Any] = {k: self.sums[k] / self.images if self.images else None for k in KEYS}
        for i, (a, b) in enumerate(RANGES):
            out[f"abs_rel_{a:g}_{b:g}m"] = float(self.range_sums[i] / self.range_counts[i]) \
                if self.range_counts[i] else None
        ok = self.images > 0
        out.update(pred_min=self.pred_range[0] if ok else None, pred_max=self.pred_range[1] if ok else None,
                   gt_min=self.gt_range[0] if ok else None, gt_max=self.gt_range[1] if ok else None,
                   num_images=self.images)
        return out


TABLE_COLUMNS = ("step", "abs_rel", "sq_rel", "rmse", "log10", "silog", "delta1", "delta2", "delta3", "s_star",
                 "scaled_abs_rel", "abs_rel_0_2m", "abs_rel_2_5m", "abs_rel_5_10m", "pred_min", "pred_max")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of eval rows (one per eval step), floats to 4 decimals (`train.loop.format_table`)."""
    return loop_table(rows, TABLE_COLUMNS, float_format=".4f", rule=False)


def write_depth_png(path: Path, rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                    crop: list[int] | tuple[int, int, int, int] | None = EIGEN_CROP, max_m: float = 10.0) -> Path:
    """PNG of RGB `(H, W, 3) uint8` / truth / prediction (metres, one colour scale) / |error| (m) per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb, gt, pred = np.asarray(rgb), np.asarray(gt), np.asarray(pred)
    if rgb.ndim == 3:
        rgb, gt, pred = rgb[None], gt[None], pred[None]
    n = len(rgb)
    fig = Figure(figsize=(12, 2.8 * n))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        g, p = gt[i], pred[i].reshape(gt[i].shape)
        vmax = float(np.quantile(g[g > 0], 0.99)) if (g > 0).any() else max_m
        err = np.where(eval_mask(g, crop, 1e-3, max_m), np.abs(p - g), np.nan)
        for ax, img, title, kw in ((axes[i, 0], rgb[i], "RGB", {}),
                                   (axes[i, 1], np.where(g > 0, g, np.nan), "truth (m)",
                                    dict(cmap="magma_r", vmin=0, vmax=vmax)),
                                   (axes[i, 2], p, "prediction (m)", dict(cmap="magma_r", vmin=0, vmax=vmax)),
                                   (axes[i, 3], err, "|error| (m), Eigen crop", dict(cmap="viridis"))):
            im = ax.imshow(img, **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
            if kw:
                fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
