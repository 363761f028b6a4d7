"""Robot extras of stats.json (seed 001, "porting guide"): height bins over the end effector's world Z,
gripper bins, and the rotation discretisation (1-D PCA basis or k-means prototypes of the EEF quaternion).

Seed 001's model predicts, per step, a height bin (`N_HEIGHT_BINS = 32`, "min/max world-Z from dataset
stats"), a gripper bin (`N_GRIPPER_BINS = 32`) and a rotation bin: the quaternion projected on the first
principal component and discretised into `N_ROT_BINS = 32` bins (`precompute_rotation_pca.py`), or, when
PC1 explains less than ~80 % of the variance (multimodal rotations), the nearest of k-means prototypes
(`precompute_rotation_kmeans.py`). The helpers at the end (`rotation_pc1`, `bin_index`,
`nearest_prototype`) turn raw values into those class targets with the stored dicts.

Quaternions are `xyzw`; q and -q are the same rotation, so they are first flipped to the hemisphere of the
data's own mean rotation (`geometry.mean_quaternion`, Markley's average; `q . reference >= 0`), which is recorded
as `reference`. Flipping to w >= 0 instead would split any cluster whose w is near 0 (a gripper pointing down,
the usual top-down grasp) into two antipodal halves, and PC1 would then code the flip, not the orientation.
All returned dicts are JSON-able (lists and floats).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import numpy as np

from shardyard.geometry import canonical_hemisphere, canonical_to_reference, mean_quaternion

__all__ = ["bin_index", "gripper_bins", "height_bins", "nearest_prototype", "pc1_separation", "rotation_pc1",
           "rotation_stats"]

log = logging.getLogger(__name__)

# Most Lloyd iterations of each k-means run: from k-means++ seeding the inertia is within 1 % of scikit-learn's
# converged fit by then, even on uniform random rotations.
KMEANS_ITER = 50
KMEANS_STEP = 5  # iterations between two convergence tests
# Converged when the centroids' squared moves sum to at most this times the data's mean per-dimension variance
# (scikit-learn's `KMeans` rule and default).
KMEANS_TOL = 1e-4
# Quaternions each k-means run sees at most (a seeded draw): 32 prototypes from 50,000 rotations leave the
# inertia per rotation within 0.1 % of a fit on 100,000, and 4 runs take ~1.9 s on one core.
KMEANS_SAMPLES = 50_000

_CONSTANT_PAD = 0.01  # half-width (value units, e.g. metres) of the bins' range when all values are equal
_MIN_SPLIT_SAMPLES = 20  # below this, a two-group split of PC1 cannot be told from sampling noise


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
    return q / norm


def pc1_separation(proj: np.ndarray) -> float:
    """How well `(N,)` PC1 coordinates split into two groups: the largest between-group share of the variance
    over all splits of the sorted values (Otsu's criterion, "A threshold selection method from gray-level
    histograms", 1979), in [0, 1]. About 0.64 for a normal sample, 0.75 for a uniform one, towards 1 for two
    separated clusters; 0 for fewer than 20 values or a constant."""
    x = np.sort(np.asarray(proj, dtype=np.float64).reshape(-1))
    n = x.size
    var = float(x.var()) if n else 0.0
    if n < _MIN_SPLIT_SAMPLES or var <= 1e-18:
        return 0.0
    k = np.arange(1, n)
    head = np.cumsum(x)[:-1]
    m0, m1 = head / k, (x.sum() - head) / (n - k)
    between = (k / n) * (1 - k / n) * (m0 - m1) ** 2
    return float(min(between.max() / var, 1.0))


_TRIU = np.triu_indices(4)
_TRIU_SCALE = np.where(_TRIU[0] == _TRIU[1], 1.0, np.sqrt(2.0))


def _sign_free(q: np.ndarray) -> np.ndarray:
    """`(N, 4)` unit quats -> `(N, 10)`: the upper triangle of `q q^T`, off-diagonal terms times sqrt(2), so the
    Euclidean distance is the Frobenius one, `|q q^T - p p^T|^2 = 2 - 2 (q . p)^2`: the same for q and -q, and
    no hemisphere boundary for k-means to cut a cluster at."""
    return (q[:, :, None] * q[:, None, :])[:, _TRIU[0], _TRIU[1]] * _TRIU_SCALE


def _top_eigenvector(centre: np.ndarray) -> np.ndarray:
    """Unit `(4,)` principal eigenvector of a `_sign_free` centroid `(10,)`: the cluster's Markley mean."""
    m = np.zeros((4, 4))
    m[_TRIU] = centre / _TRIU_SCALE
    m = m + np.triu(m, 1).T
    return np.linalg.eigh(m)[1][:, -1]


def _pca_basis(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean `(4,)`, unit PC1 `(4,)` (largest-magnitude component positive) and explained variance ratio `(4,)`
    of canonical quaternions `(N, 4)`: PCA as the SVD of the centred data (what scikit-learn's `PCA(svd_solver=
    "full")` computes, without its ~1.6 s import)."""
    n = q.shape[0]
    mean = q.mean(axis=0)
    centred = q - mean
    if n < 2 or float((centred ** 2).sum(axis=1).mean()) < 1e-18:
        basis, ratio = np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0, 0.0])
    else:
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        var = sv ** 2
        basis = vt[0]
        ratio = np.zeros(4)
        ratio[: len(var)] = var / var.sum()
    basis = basis / np.linalg.norm(basis)
    if basis[np.argmax(np.abs(basis))] < 0:
        basis = -basis
    return mean, basis, ratio


def _kmeans_run(x: np.ndarray, k: int, seed: np.random.SeedSequence, tol: float) -> tuple[np.ndarray, float]:
    """Centroids `(k, D)` and inertia of one k-means run on `x (N, D)` from k-means++ seeding drawn with `seed`
    (module level, so that a process pool can run it; see `_kmeans`)."""
    import warnings

    from scipy.cluster.vq import kmeans2
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # a cluster emptied on the way keeps its centroid: no need to say so
        centres, labels = kmeans2(x, k, iter=KMEANS_STEP, minit="++", rng=np.random.default_rng(seed))
        for _ in range(KMEANS_STEP, KMEANS_ITER, KMEANS_STEP):
            before = centres
            centres, labels = kmeans2(x, before, iter=KMEANS_STEP, minit="matrix")
            if float(((centres - before) ** 2).sum()) <= tol:
                break
    return centres, float(((x - centres[labels]) ** 2).sum())


def _kmeans(x: np.ndarray, k: int, n_init: int, seed: int,
            map_fn: Callable[..., Iterable[Any]] = map) -> tuple[np.ndarray, float]:
    """Centroids `(k, D)` and inertia (sum of squared distances to the nearest centroid) of the best of
    `n_init` k-means runs on `x (N, D)`: scipy's `kmeans2` (Lloyd's algorithm from k-means++ seeding), each
    run seeded with its own child of `SeedSequence(seed)`, so the result is a function of the data and seed
    whether the runs go one after another or side by side (`map_fn`: a process pool's `map`; ties go to the
    first run). `kmeans2` has no stopping rule, so each run goes `KMEANS_STEP` iterations at a time, restarted
    from its own centroids, until they move less than `KMEANS_TOL` says or `KMEANS_ITER` iterations are done.

    BLAS runs on one thread in each run: `vq`'s products are small, and OpenBLAS's other threads spin between
    them (on 7,500 quaternions, 0.59 s of CPU for 0.29 s of wall time, against 0.31 s and 0.31 s on one
    thread), CPU an ingest's reader processes need."""
    tol = KMEANS_TOL * float(np.var(x, axis=0).mean())
    seeds = np.random.SeedSequence(seed).spawn(n_init)
    runs = list(map_fn(_kmeans_run, [x] * n_init, [k] * n_init, seeds, [tol] * n_init))
    return min(runs, key=lambda run: run[1])


def rotation_stats(quats: np.ndarray, n_bins: int = 32, n_clusters: int = 32, pca_threshold: float = 0.8,
                   seed: int = 0, n_init: int = 4, max_kmeans_samples: int = KMEANS_SAMPLES,
                   separation_threshold: float = 0.9,
                   map_fn: Callable[..., Iterable[Any]] = map) -> dict[str, Any]:
    """Rotation discretisation of seed 001 (`precompute_rotation_pca.py` / `precompute_rotation_kmeans.py`).

    quats: `(N, 4)` xyzw (normalised, then flipped to `q . reference >= 0` with `reference` their
    `mean_quaternion`). Returns
    ``{"n": N, "hemisphere": "q.reference>=0", "reference": (4) unit xyzw,
       "pca": {"mean": (4), "basis": (4) unit PC1, "explained_variance_ratio": (4) list,
               "pc1_edges": (n_bins + 1) over the PC1 projection range, "n_bins", "reference": (4)},
       "kmeans": {"prototypes": (k, 4) unit, in the reference's hemisphere, "inertia": float (k-means'
                  inertia in the `q q^T` embedding), "k", "n_init", "seed"},
       "pc1_separation": `pc1_separation` of the PC1 projections,
       "recommended_mode": "1d_pca" if explained_variance_ratio[0] >= pca_threshold and pc1_separation <
                           separation_threshold else "kmeans",
       "pca_threshold": float, "separation_threshold": float}``.
    The separation test catches orientations in two separate groups (e.g. two grasps): PC1 then explains most
    of the variance, but its bins would code the group and leave the range between them empty. PC1's sign is
    fixed so that its largest-magnitude component is positive. k = min(n_clusters, number of distinct
    quaternions); k-means (`_kmeans`: SciPy, seeded with `seed`) runs on at most `max_kmeans_samples`
    quaternions drawn with `seed`, embedded as `q q^T` so that q and -q are one point (each prototype is its
    cluster's Markley mean); `map_fn` runs the `n_init` k-means runs (a process pool's `map` runs them side
    by side, with the same result). All-equal quaternions give ratio [1, 0, 0, 0] and mode "1d_pca". Raises
    `ValueError` for a shape other than `(N, 4)`, a non-finite or a zero quaternion.
    """
    q = _unit_quats(quats)
    reference = mean_quaternion(q)
    q = canonical_to_reference(q, reference)
    n = q.shape[0]
    mean, basis, ratio = _pca_basis(q)
    proj = (q - mean) @ basis
    pca_dict = {"mean": mean.tolist(), "basis": basis.tolist(), "explained_variance_ratio": ratio.tolist(),
                "pc1_edges": _range_edges(float(proj.min()), float(proj.max()), n_bins).tolist(),
                "n_bins": int(n_bins), "reference": reference.tolist()}

    distinct = np.unique(np.round(q, 12), axis=0).shape[0]
    k = int(min(n_clusters, distinct))
    sample = q
    if n > max_kmeans_samples:
        sample = q[np.sort(np.random.default_rng(seed).choice(n, max_kmeans_samples, replace=False))]
    centres, inertia = _kmeans(_sign_free(sample), k, n_init, seed, map_fn)
    protos = canonical_to_reference(np.stack([_top_eigenvector(c) for c in centres]), reference)
    separation = pc1_separation(proj)
    mode = "1d_pca" if ratio[0] >= pca_threshold and separation < separation_threshold else "kmeans"
    log.info("rotation stats: N=%d, PC1 explains %.3f, separation %.3f, k=%d, recommended %s", n, ratio[0],
             separation, k, mode)
    return {"n": int(n), "hemisphere": "q.reference>=0", "reference": reference.tolist(), "pca": pca_dict,
            "kmeans": {"prototypes": protos.tolist(), "inertia": inertia, "k": k,
                       "n_init": int(n_init), "seed": int(seed)},
            "pc1_separation": separation, "recommended_mode": mode, "pca_threshold": float(pca_threshold),
            "separation_threshold": float(separation_threshold)}


def rotation_pc1(quats: np.ndarray, pca: dict[str, Any]) -> np.ndarray:
    """PC1 coordinate `(N,)` of `(N, 4)` xyzw quaternions with the `rotation_stats(...)["pca"]` dict, flipped
    to the hemisphere the basis was fitted in: `q . pca["reference"] >= 0`, or w >= 0 for stats written before
    the reference was recorded. Raises `ValueError` as `rotation_stats`."""
    q = _unit_quats(quats)
    ref = pca.get("reference")
    q = canonical_to_reference(q, np.asarray(ref, dtype=np.float64)) if ref is not None else canonical_hemisphere(q)
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
