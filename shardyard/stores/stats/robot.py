"""Robot extras of stats.json (seed 001, "porting guide"): height bins over the end effector's world Z,
gripper bins, and the rotation discretisation (1-D PCA basis or k-means prototypes of the EEF quaternion).

Seed 001's model predicts, per step, a height bin (`N_HEIGHT_BINS = 32`, "min/max world-Z from dataset
stats"), a gripper bin (`N_GRIPPER_BINS = 32`) and a rotation bin: the quaternion projected on the first
principal component and discretised into `N_ROT_BINS = 32` bins (`precompute_rotation_pca.py`), or, when
PC1 explains less than ~80 % of the variance (multimodal rotations), the nearest of k-means prototypes
(`precompute_rotation_kmeans.py`). The helpers at the end (`rotation_pc1`, `bin_index`,
`nearest_prototype`) turn raw values into those class targets with the stored dicts.

Quaternions are `xyzw`; q and -q are the same rotation, so they are first flipped to one hemisphere
(`geometry.canonical_hemisphere`, w >= 0). All returned dicts are JSON-able (lists and floats).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from shardyard.geometry import canonical_hemisphere

log = logging.getLogger(__name__)

_CONSTANT_PAD = 0.01  # half-width (value units, e.g. metres) of the bins' range when all values are equal


def _range_edges(lo: float, hi: float, n_bins: int, margin: float = 0.0) -> np.ndarray:
    r = hi - lo
    if r <= 0:
        return np.linspace(lo - _CONSTANT_PAD, hi + _CONSTANT_PAD, n_bins + 1)
    return np.linspace(lo - margin * r, hi + margin * r, n_bins + 1)


def _finite_1d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def height_bins(z: np.ndarray, n_bins: int = 32, margin: float = 0.05) -> dict[str, Any]:
    """Bins over world Z of the end effector (seed 001's `N_HEIGHT_BINS`).

    z: `(N,)` metres. Returns `{"edges": (n_bins + 1) metres, "min", "max" (of z, metres), "margin",
    "n_bins", "unit": "m"}`; the edges span [min - margin * range, max + margin * range] so heights a little
    outside the training range still fall in a bin (min -/+ 1 cm when the range is 0).
    """
    z = _finite_1d(z, "height")
    lo, hi = float(z.min()), float(z.max())
    return {"edges": _range_edges(lo, hi, n_bins, margin).tolist(), "min": lo, "max": hi,
            "margin": float(margin), "n_bins": int(n_bins), "unit": "m"}


def gripper_bins(g: np.ndarray, n_bins: int = 32) -> dict[str, Any]:
    """Bins over the gripper opening (seed 001's `N_GRIPPER_BINS`). g: `(N,)` or `(N, 1)`, in the field's
    unit. Returns `{"edges": (n_bins + 1) equal bins over [min, max] (min -/+ 0.01 when constant), "min",
    "max", "n_bins"}`."""
    g = _finite_1d(g, "gripper")
    lo, hi = float(g.min()), float(g.max())
    return {"edges": _range_edges(lo, hi, n_bins).tolist(), "min": lo, "max": hi, "n_bins": int(n_bins)}


def _unit_quats(quats: np.ndarray) -> np.ndarray:
    q = np.asarray(quats, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"expected (N, 4) xyzw quaternions, got shape {q.shape}")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm < 1e-8):
        raise ValueError("quaternions must be finite and non-zero")
    return canonical_hemisphere(q / norm)


def rotation_stats(quats: np.ndarray, n_bins: int = 32, n_clusters: int = 32, pca_threshold: float = 0.8,
                   seed: int = 0, n_init: int = 4, max_kmeans_samples: int = 200_000) -> dict[str, Any]:
    """Rotation discretisation of seed 001 (`precompute_rotation_pca.py` / `precompute_rotation_kmeans.py`).

    quats: `(N, 4)` xyzw (normalised, then canonicalised to w >= 0). Returns
    ``{"n": N, "hemisphere": "w>=0",
       "pca": {"mean": (4), "basis": (4) unit PC1, "explained_variance_ratio": (4) list,
               "pc1_edges": (n_bins + 1) over the PC1 projection range, "n_bins"},
       "kmeans": {"prototypes": (k, 4) unit, canonical, "inertia": float, "k", "n_init", "seed"},
       "recommended_mode": "1d_pca" if explained_variance_ratio[0] >= pca_threshold else "kmeans",
       "pca_threshold": float}``.
    PC1's sign is fixed so that its largest-magnitude component is positive. k = min(n_clusters, number of
    distinct quaternions); k-means (sklearn, `random_state=seed`) runs on at most `max_kmeans_samples`
    quaternions drawn with `seed`. All-equal quaternions give ratio [1, 0, 0, 0] and mode "1d_pca".
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    q = _unit_quats(quats)
    n = q.shape[0]
    mean = q.mean(axis=0)
    total_var = float(((q - mean) ** 2).sum(axis=1).mean())
    if n < 2 or total_var < 1e-18:
        basis = np.array([1.0, 0.0, 0.0, 0.0])
        ratio = np.array([1.0, 0.0, 0.0, 0.0])
    else:
        pca = PCA(n_components=min(4, n), svd_solver="full").fit(q)
        mean = pca.mean_
        basis = pca.components_[0]
        ratio = np.zeros(4)
        ratio[: len(pca.explained_variance_ratio_)] = pca.explained_variance_ratio_
    basis = basis / np.linalg.norm(basis)
    if basis[np.argmax(np.abs(basis))] < 0:
        basis = -basis
    proj = (q - mean) @ basis
    pca_dict = {"mean": mean.tolist(), "basis": basis.tolist(), "explained_variance_ratio": ratio.tolist(),
                "pc1_edges": _range_edges(float(proj.min()), float(proj.max()), n_bins).tolist(),
                "n_bins": int(n_bins)}

    distinct = np.unique(np.round(q, 12), axis=0).shape[0]
    k = int(min(n_clusters, distinct))
    sample = q
    if n > max_kmeans_samples:
        sample = q[np.sort(np.random.default_rng(seed).choice(n, max_kmeans_samples, replace=False))]
    # One thread: OpenMP workers spin-wait badly when the cores are shared (ingest workers, DataLoaders),
    # turning a few-millisecond fit into seconds; the data here is small.
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(sample)
    protos = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    protos = canonical_hemisphere(protos)
    mode = "1d_pca" if ratio[0] >= pca_threshold else "kmeans"
    log.info("rotation stats: N=%d, PC1 explains %.3f, k=%d, recommended %s", n, ratio[0], k, mode)
    return {"n": int(n), "hemisphere": "w>=0", "pca": pca_dict,
            "kmeans": {"prototypes": protos.tolist(), "inertia": float(km.inertia_), "k": k,
                       "n_init": int(n_init), "seed": int(seed)},
            "recommended_mode": mode, "pca_threshold": float(pca_threshold)}


def rotation_pc1(quats: np.ndarray, pca: dict[str, Any]) -> np.ndarray:
    """PC1 coordinate `(N,)` of `(N, 4)` xyzw quaternions with the `rotation_stats(...)["pca"]` dict
    (canonicalised to w >= 0 first, as when the basis was fitted)."""
    q = _unit_quats(quats)
    return (q - np.asarray(pca["mean"], dtype=np.float64)) @ np.asarray(pca["basis"], dtype=np.float64)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value `(N,)` over `edges (n_bins + 1)` as int64 in [0, n_bins - 1]; values outside the
    edges go to the first/last bin, a value on an inner edge to the bin on its right."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, np.asarray(values, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(e) - 2).astype(np.int64)


def nearest_prototype(quats: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index `(N,) int64` of the nearest k-means prototype `(k, 4)` to each xyzw quaternion `(N, 4)`, by
    the largest |q . p| (so q and -q, the same rotation, get the same prototype)."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    p = np.asarray(prototypes, dtype=np.float64)
    return np.argmax(np.abs(q @ p.T), axis=1).astype(np.int64)
