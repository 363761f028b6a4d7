"""Token stats of a feature store (DESIGN.md "Stats", token extras): per-channel mean and std of patch and
CLS tokens (mergeable moments, `moments.py`) and a 3-component PCA basis for the classic DINO RGB picture."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardyard.stores.stats.moments import finalize, merge_all, part_from_array

__all__ = ["CLS_FIELD", "PATCH_FIELD", "token_stats"]

PATCH_FIELD, CLS_FIELD = "dino.patch_tokens", "dino.cls_token"


def token_stats(store, *, max_frames: int = 512, max_pca_rows: int = 50_000) -> dict[str, Any]:
    """Stats of a feature store's tokens from at most `max_frames` evenly spaced valid frames.

    Returns `{"dino.patch_tokens": {count, mean, std, min, max, ...} per channel (D,), "dino.cls_token": same,
    "pca": {"mean" (D,), "components" (3, D), "explained_variance_ratio" (3,), "lo" (3,), "hi" (3,)},
    "frames_used"}`; `lo`/`hi` are the 1st/99th percentiles of the projections, for RGB scaling.
    """
    valid = np.flatnonzero(~store.missing)
    pick = valid[np.linspace(0, len(valid) - 1, min(max_frames, len(valid))).astype(int)] if len(valid) else valid
    pick = np.unique(pick)
    d = store.embed_dim
    patch_parts, cls_parts, rows = [], [], []
    for g in range(0, len(pick), 64):                                            # 64 frames per part
        idx = pick[g:g + 64]
        p = np.concatenate([store.patch_tokens(int(i), int(i) + 1) for i in idx]).astype(np.float32)
        c = np.concatenate([store.cls_token(int(i), int(i) + 1) for i in idx]).astype(np.float32)
        patch_parts.append(part_from_array(p.reshape(-1, d)))                    # (64 * h*w, D)
        cls_parts.append(part_from_array(c))
        rows.append(p.reshape(-1, d))
    out: dict[str, Any] = {"frames_used": int(len(pick))}
    if not len(pick):
        return out
    out[PATCH_FIELD] = finalize(merge_all(patch_parts))
    out[CLS_FIELD] = finalize(merge_all(cls_parts))
    x = np.concatenate(rows)                                                     # (frames * h*w, D)
    x = x[np.linspace(0, len(x) - 1, min(max_pca_rows, len(x))).astype(int)].astype(np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    evals, evecs = np.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))                # ascending
    order = np.argsort(evals)[::-1][:3]
    comps = evecs[:, order].T                                                    # (k, D), k <= 3
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    proj = xc @ comps.T
    total = float(evals.sum()) or 1.0
    out["pca"] = {"mean": mean.tolist(), "components": comps.tolist(),
                  "explained_variance_ratio": (evals[order] / total).tolist(),
                  "lo": np.quantile(proj, 0.01, axis=0).tolist(), "hi": np.quantile(proj, 0.99, axis=0).tolist(),
                  "embed_dim": d}
    return out
