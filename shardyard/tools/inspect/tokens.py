"""`inspect FEATURES`: summary of a feature store and frames beside the PCA-RGB rendering of their patch
tokens (the classic DINO picture: the first 3 principal components of the tokens, from stats.json, as RGB).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.stores.features import FeatureStore, open_features
from shardyard.tools.inspect.plotting import figure, save

__all__ = ["inspect_features", "pca_rgb", "summarize_features", "write_token_plots"]

log = logging.getLogger(__name__)


def pca_rgb(tokens: np.ndarray, pca: dict[str, Any], grid: tuple[int, int]) -> np.ndarray:
    """Patch tokens `(h*w, D)` -> `(h, w, 3)` float RGB in [0, 1] through the stored 3-component basis
    (projections scaled by their 1st/99th percentiles, clipped)."""
    comps = np.asarray(pca["components"], dtype=np.float64)                       # (k, D)
    proj = (tokens.astype(np.float64) - np.asarray(pca["mean"])) @ comps.T        # (h*w, k)
    lo, hi = np.asarray(pca["lo"]), np.asarray(pca["hi"])
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    if rgb.shape[1] < 3:
        rgb = np.pad(rgb, ((0, 0), (0, 3 - rgb.shape[1])))
    return rgb.reshape(grid[0], grid[1], 3)


def summarize_features(fs: FeatureStore) -> str:
    """Text summary: counts, grid, D, dtype, model and source of the key, missing frames, PCA variance."""
    key, lay = fs.key, fs.layout
    model = key.get("model", {})
    lines = [f"feature store {fs.path}",
             f"  samples {fs.num_samples}, grid {lay.grid[0]}x{lay.grid[1]} (patch {lay.patch_size} px), "
             f"D {lay.embed_dim}, dtype {lay.dtype}, shard rows {lay.shard_rows}, batch {lay.batch_size}",
             f"  model {model.get('spec')} ({model.get('kind')}), weights sha256 "
             f"{str(model.get('weights_sha256'))[:12]}, layers {model.get('layers')}, input "
             f"{model.get('image_hw')} (H, W)",
             f"  source {fs.manifest.get('source', {}).get('path')} field {key.get('field')}",
             f"  missing frames: {int(fs.missing.sum())}"]
    pca = fs.stats.get("pca")
    if pca:
        ev = ", ".join(f"{v:.3f}" for v in pca["explained_variance_ratio"])
        lines.append(f"  PCA explained variance (3 components): {ev} over {fs.stats['frames_used']} frames")
    return "\n".join(lines)


def _source_frames(fs: FeatureStore):
    src = fs.manifest.get("source", {})
    try:
        from shardyard import open_store

        store = open_store(src["path"])
        return store if store.num_steps == fs.num_samples else None
    except Exception as e:  # noqa: BLE001 - the picture is still useful without frames
        log.warning("source store %s not readable (%s); drawing tokens only", src.get("path"), e)
        return None


def write_token_plots(fs: FeatureStore, out_dir: str | Path, *, max_episodes: int = 4,
                      frames_per_episode: int = 3) -> list[Path]:
    """Write `tokens_pca.png`: per row an episode, frames beside their PCA-RGB token images."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pca = fs.stats.get("pca")
    if not pca:
        return []
    ends = fs.episode_ends
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else np.array([0])
    if not len(ends):
        ends = np.array([fs.num_samples])
    eps = np.linspace(0, len(ends) - 1, min(max_episodes, len(ends))).astype(int)
    store = _source_frames(fs)
    field = fs.key.get("field")
    cols = frames_per_episode * (2 if store is not None else 1)
    fig = figure(figsize=(2.2 * cols, 2.0 * len(eps)))
    axes = fig.subplots(len(eps), cols, squeeze=False)
    for r, e in enumerate(eps):
        idx = np.linspace(starts[e], ends[e] - 1, frames_per_episode).astype(int)
        for c, i in enumerate(idx):
            rgb = pca_rgb(fs.patch_tokens(int(i), int(i) + 1)[0], pca, fs.grid)
            if fs.missing[i]:
                rgb = np.zeros_like(rgb)
            col = c * (2 if store is not None else 1)
            if store is not None:
                axes[r, col].imshow(store.read_rows(field, int(i), int(i) + 1)[0])
                axes[r, col].set_title(f"ep {e} step {i - starts[e]}", fontsize=7)
                col += 1
            axes[r, col].imshow(rgb, interpolation="nearest")
            axes[r, col].set_title("PCA-RGB" + (" (missing)" if fs.missing[i] else ""), fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    written: list[Path] = []
    save(fig, out / "tokens_pca.png", written, dpi=110)
    return written


def inspect_features(path: str, out: str | Path | None = None, *, max_episodes: int = 4) -> tuple[str, list[Path]]:
    """Summary text of the feature store at `path` and, with `out`, the plots written there.
    Raises `StoreError` when `path` is not a complete feature store."""
    fs = open_features(path)
    paths = write_token_plots(fs, out, max_episodes=max_episodes) if out is not None else []
    return summarize_features(fs), paths
