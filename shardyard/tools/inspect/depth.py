"""Depth views of `inspect` (seed 003): RGB beside colour-mapped depth, and a histogram of valid depth.

For stores with a `kind == "depth"` field (e.g. `ingest nyu`): `depth_frames.png` shows, for a few
episodes, the image field beside its depth (metres, `magma_r`, 0 = invalid drawn white) with the Eigen crop
outlined; `depth_histogram.png` is the histogram of valid depth (m) over the plotted frames with the stats'
median and range marked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.tools.inspect.plotting import figure, save

__all__ = ["depth_summary_lines", "plot_depth"]

log = logging.getLogger(__name__)


def depth_summary_lines(depth_stats: dict[str, Any]) -> list[str]:
    """Lines for `summarize`: valid fraction, range and median per depth field (stats.json "depth")."""
    lines = ["", "Depth extras"]
    for field, d in depth_stats.items():
        if not isinstance(d, dict) or d.get("min") is None:
            lines.append(f"  {field}: no valid depth")
            continue
        lines.append(f"  {field}: valid fraction {d['valid_fraction']:.3f}, range [{d['min']:.3f}, {d['max']:.3f}]"
                     f" m, median {d['median']:.3f} m")
    return lines


def _image_field(store, depth_field: str) -> str | None:
    images = store.schema.of_kind("image")
    if not images:
        return None
    shape = store.schema[depth_field].shape
    same = [k for k in images if store.schema[k].shape[:2] == tuple(shape)]
    return (same or images)[0]


def plot_depth(store, episodes: list[int], out: Path, written: list[Path], frames_per_episode: int = 2) -> None:
    """Write `depth_frames.png` and `depth_histogram.png` into `out` (appended to `written`)."""
    crop = ((store.manifest.get("source") or {}).get("eval") or {}).get("eigen_crop")
    for field in store.schema.of_kind("depth")[:1]:
        img_field = _image_field(store, field)
        picks = []
        for e in episodes:
            n = store.episode_length(e)
            picks += [(e, int(t)) for t in sorted(set(np.linspace(0, n - 1, min(frames_per_episode, n)).round()))]
        cols = 2 if img_field else 1
        fig = figure(figsize=(4.2 * cols, 3.2 * len(picks)))
        axes = fig.subplots(len(picks), cols, squeeze=False)
        values = []
        for row, (e, t) in enumerate(picks):
            data = store.read(e, [field] + ([img_field] if img_field else []), t, t + 1)
            d = data[field][0].astype(np.float32)
            values.append(d[d > 0])
            if img_field:
                axes[row, 0].imshow(data[img_field][0])
                axes[row, 0].set_title(f"{store.episode_keys[e]} step {t}", fontsize=8)
            ax = axes[row, cols - 1]
            im = ax.imshow(np.where(d > 0, d, np.nan), cmap="magma_r")
            fig.colorbar(im, ax=ax, fraction=0.046, label="m")
            if crop:
                top, bottom, left, right = crop
                ax.plot([left, right, right, left, left], [top, top, bottom, bottom, top], color="cyan", lw=0.8)
            ax.set_title(f"{field} (m; white = invalid, cyan = Eigen crop)", fontsize=8)
            for a in axes[row]:
                a.axis("off")
        save(fig, out / "depth_frames.png", written)
        fig = figure(figsize=(6, 3.5))
        ax = fig.subplots()
        v = np.concatenate(values) if values else np.zeros(0)
        ax.hist(v, bins=60, color="tab:blue", alpha=0.8)
        st = ((store.stats or {}).get("depth") or {}).get(field) or {}
        for k, c in (("median", "tab:red"), ("min", "tab:gray"), ("max", "tab:gray")):
            if st.get(k) is not None:
                ax.axvline(st[k], color=c, lw=1, label=f"{k} {st[k]:.2f} m (stats)")
        frac = f", valid fraction {st['valid_fraction']:.2f}" if "valid_fraction" in st else ""
        ax.set_title(f"{field}: valid depth over {len(picks)} frame(s){frac}", fontsize=9)
        ax.set_xlabel("depth (m)")
        if st:
            ax.legend(fontsize=7)
        save(fig, out / "depth_histogram.png", written)
