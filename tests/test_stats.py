"""Tests of shardyard.stores.stats: mergeable moments/histograms, seed 001 robot extras, and compute_stats on a
real tiny episodic store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.manifest import Manifest
from shardyard.stores.stats import (
    StatsConfig,
    compute_stats,
    field_edges,
    field_parts,
    field_rows,
    finalize_stats_parts,
    merge_stats_parts,
    robot_fields,
)
from shardyard.stores.stats.moments import (
    FieldStatsPart,
    finalize,
    fixed_edges,
    make_edges,
    merge_all,
    merge_parts,
    part_from_array,
)
from shardyard.stores.stats.parts import SparsePart
from shardyard.stores.stats.robot import (
    bin_index,
    gripper_bins,
    height_bins,
    nearest_prototype,
    pc1_separation,
    rotation_pc1,
    rotation_stats,
)

# --------------------------------------------------------------------------------------------------- helpers


def _data(dtype: str, n: int = 1000, f: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=(n, f)) * [1.0, 10.0, 0.01] + [0.0, 5.0, -3.0]).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -700), min(info.max, 700)
    return rng.integers(lo, hi + 1, size=(n, f)).astype(dtype)


def _edges_for(x: np.ndarray) -> np.ndarray:
    p = part_from_array(x)
    return make_edges(p.min, p.max, x.dtype)


def _assert_parts_equal(a, b) -> None:
    assert type(a) is type(b) and a.count == b.count
    if isinstance(a, SparsePart):  # data-independent buckets (stats/parts.py): counts add exactly
        assert a.discrete == b.discrete
        for ka, kb, ca, cb in zip(a.keys, b.keys, a.counts, b.counts):
            np.testing.assert_array_equal(ka, kb)
            np.testing.assert_array_equal(ca, cb)
        a, b = a.moments, b.moments
    np.testing.assert_allclose(a.sum, b.sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.m2, b.m2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a.min, b.min)
    np.testing.assert_array_equal(a.max, b.max)
    np.testing.assert_array_equal(a.hist, b.hist)  # histograms add exactly
    np.testing.assert_array_equal(a.edges, b.edges)


def _axis_rotations(n: int, seed: int = 0) -> np.ndarray:
    angles = np.random.default_rng(seed).uniform(-1.2, 1.2, n)
    return Rotation.from_rotvec(angles[:, None] * np.array([0.0, 0.0, 1.0])).as_quat()


# ------------------------------------------------------------------------------------------------- moments


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int16"])
@pytest.mark.parametrize("split", [0, 1, 137, 500, 999, 1000])
def test_merge_equals_stats_of_union(dtype: str, split: int) -> None:
    x = _data(dtype)
    edges = _edges_for(x)
    whole = part_from_array(x, edges)
    merged = merge_parts(part_from_array(x[:split], edges), part_from_array(x[split:], edges))
    _assert_parts_equal(merged, whole)
    assert whole.hist.sum() == x.shape[0] * x.shape[1]
    fa, fb = finalize(merged), finalize(whole)
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=1e-10)


@pytest.mark.parametrize("cuts", [(10, 20), (0, 999), (333, 666), (1, 2)])
def test_merge_is_associative_and_commutative(cuts: tuple[int, int]) -> None:
    x = _data("float64", seed=3)
    edges = _edges_for(x)
    a, b, c = (part_from_array(p, edges) for p in np.split(x, cuts))
    left = merge_parts(merge_parts(a, b), c)
    right = merge_parts(a, merge_parts(b, c))
    _assert_parts_equal(left, right)
    _assert_parts_equal(merge_all([c, b, a]), part_from_array(x, edges))


def test_part_roundtrips_through_json() -> None:
    x = _data("float32")
    p = part_from_array(x, _edges_for(x))
    q = FieldStatsPart.from_dict(json.loads(json.dumps(p.to_dict())))
    _assert_parts_equal(p, q)


def test_merge_rejects_different_edges() -> None:
    x = _data("float64")
    with pytest.raises(ValueError, match="edges"):
        merge_parts(part_from_array(x[:10], _edges_for(x[:10])), part_from_array(x[10:], _edges_for(x[10:])))
    with pytest.raises(ValueError, match="features"):
        merge_parts(part_from_array(x[:, :2]), part_from_array(x))


def test_moments_match_numpy() -> None:
    x = _data("float32", n=5000)
    s = finalize(part_from_array(x, _edges_for(x)))
    x64 = x.astype(np.float64)
    assert s["count"] == [5000]
    np.testing.assert_allclose(s["mean"], x64.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s["std"], x64.std(0), rtol=1e-7)
    np.testing.assert_array_equal(s["min"], x64.min(0))
    np.testing.assert_array_equal(s["max"], x64.max(0))


@pytest.mark.parametrize("dist", ["normal", "exponential", "bimodal", "uniform"])
@pytest.mark.parametrize("n", [50, 4000])
def test_float_quantiles_within_one_bin(dist: str, n: int) -> None:
    rng = np.random.default_rng(1)
    x = {"normal": rng.normal(size=(n, 2)), "exponential": rng.exponential(size=(n, 2)),
         "uniform": rng.uniform(-3, 7, size=(n, 2)),
         "bimodal": np.where(rng.random((n, 2)) < 0.5, rng.normal(-5, 0.1, (n, 2)), rng.normal(5, 0.1, (n, 2)))}[dist]
    edges = _edges_for(x)
    s = finalize(part_from_array(x, edges))
    width = edges[:, 1] - edges[:, 0]
    for name, q in (("q01", 0.01), ("q99", 0.99)):
        err = np.abs(np.asarray(s[name]) - np.quantile(x, q, axis=0))
        assert np.all(err <= width), (name, err, width)


@pytest.mark.parametrize("n", [1, 2, 99, 100, 101, 7777])
def test_uint8_histogram_and_quantiles_exact(n: int) -> None:
    x = np.random.default_rng(n).integers(0, 256, size=(n, 3)).astype(np.uint8)
    edges = fixed_edges(np.uint8, 3)
    assert edges.shape == (3, 257)
    p = part_from_array(x, edges)
    for j in range(3):
        np.testing.assert_array_equal(p.hist[j], np.bincount(x[:, j], minlength=256))
    s = finalize(p)
    np.testing.assert_array_equal(s["q01"], np.quantile(x, 0.01, axis=0))
    np.testing.assert_array_equal(s["q99"], np.quantile(x, 0.99, axis=0))
    scaled = finalize(p, scale=1 / 255)
    np.testing.assert_allclose(scaled["max"], x.max(0) / 255)


def _uint8_pixels(n: int, seed: int) -> np.ndarray:
    """`(n, 4)` uint8: uniform, a constant channel, a two-value channel at the extremes, a narrow band."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 4), np.uint8)
    x[:, 0] = rng.integers(0, 256, n)
    x[:, 1] = 173
    x[:, 2] = np.where(rng.random(n) < 0.3, 0, 255)
    x[:, 3] = rng.integers(100, 104, n)
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 640, 50_000])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_uint8_fast_path_matches_numpy(n: int, layout: str) -> None:
    """uint8 on `fixed_edges` (the path image pixels take): count, mean, std (ddof 0), min and max equal
    numpy's to 1e-12, the histogram is the bincount, and it agrees with the generic path (same values as
    int16, which takes the float64 passes, on the same edges)."""
    x = _uint8_pixels(n, seed=n)
    if layout == "strided":  # a worker's sample is a view: every other column of a wider array
        wide = np.zeros((n, 8), np.uint8)
        wide[:, ::2] = x
        x = wide[:, ::2]
        assert not x.flags.c_contiguous
    edges = fixed_edges(np.uint8, 4)
    p = part_from_array(x, edges)
    x64 = x.astype(np.float64)
    assert p.count == n
    np.testing.assert_allclose(p.sum / p.count, np.mean(x64, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(p.m2 / p.count), np.std(x64, axis=0, ddof=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(p.min, x.min(0))
    np.testing.assert_array_equal(p.max, x.max(0))
    for j in range(4):
        np.testing.assert_array_equal(p.hist[j], np.bincount(x[:, j], minlength=256))
    assert p.hist.dtype == np.int64 and p.hist.shape == (4, 256)
    np.testing.assert_array_equal(p.edges, edges)
    assert p.m2[1] == 0.0 and p.min[1] == p.max[1] == 173  # the constant channel
    s = finalize(p, scale=1 / 255)
    np.testing.assert_allclose(s["mean"], np.mean(x64, axis=0) / 255, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s["std"], np.std(x64, axis=0) / 255, rtol=1e-12, atol=1e-12)
    if n == 1:
        assert s["std"] == [0.0] * 4 and s["min"] == s["max"]
    _assert_parts_equal(p, part_from_array(x.astype(np.int16), edges))


@pytest.mark.parametrize("split", [1, 2, 777, 4999])
def test_uint8_parts_merge_to_part_of_concatenation(split: int) -> None:
    x = _uint8_pixels(5000, seed=7)
    x[:split, 3] = 7  # the two sides differ in mean, so the merge's correction term matters
    edges = fixed_edges(np.uint8, 4)
    a, b = part_from_array(x[:split], edges), part_from_array(x[split:], edges)
    whole = part_from_array(x, edges)
    for merged in (merge_parts(a, b), merge_parts(b, a)):
        _assert_parts_equal(merged, whole)  # histogram exact, moments to 1e-12
        np.testing.assert_allclose(np.sqrt(merged.m2 / merged.count), np.std(x.astype(np.float64), axis=0),
                                   rtol=1e-12, atol=1e-12)


def test_small_integer_ranges_get_exact_unit_bins() -> None:
    x = np.random.default_rng(0).integers(-300, 400, size=(2000, 2)).astype(np.int32)
    s = finalize(part_from_array(x, _edges_for(x)))
    np.testing.assert_array_equal(s["q01"], np.quantile(x, 0.01, axis=0))
    np.testing.assert_array_equal(s["q99"], np.quantile(x, 0.99, axis=0))


def test_constant_feature_and_bad_input() -> None:
    x = np.full((10, 1), 2.5)
    s = finalize(part_from_array(x, _edges_for(x)))
    assert s["mean"] == [2.5] and s["std"] == [0.0] and s["q01"] == [2.5] and s["q99"] == [2.5]
    with pytest.raises(ValueError, match="NaN"):
        part_from_array(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="edges"):
        part_from_array(np.zeros((3, 2)), np.zeros((3, 5)))


# --------------------------------------------------------------------------------------------------- robot


def test_height_bins_with_margin() -> None:
    z = np.array([0.30, 0.10, 0.25, 0.2])
    hb = height_bins(z, n_bins=32, margin=0.05)
    edges = np.asarray(hb["edges"])
    assert edges.shape == (33,)
    assert hb["min"] == pytest.approx(0.10) and hb["max"] == pytest.approx(0.30)
    assert edges[0] == pytest.approx(0.10 - 0.05 * 0.20) and edges[-1] == pytest.approx(0.30 + 0.05 * 0.20)
    np.testing.assert_allclose(np.diff(edges), 0.22 / 32)
    # edges 0.09 .. 0.31, width 0.006875: 0.30 -> 30.5 bins in, 0.10 -> 1.45, 0.25 -> 23.3, 0.20 -> 16.0
    assert bin_index(z, edges).tolist() == [30, 1, 23, 16]
    const = height_bins(np.full(5, 0.7), n_bins=8)
    assert const["edges"][0] == pytest.approx(0.69) and const["edges"][-1] == pytest.approx(0.71)


def test_gripper_bins_and_bin_index_clip() -> None:
    gb = gripper_bins(np.linspace(0.0, 1.0, 11)[:, None], n_bins=10)
    assert gb["min"] == 0.0 and gb["max"] == 1.0 and len(gb["edges"]) == 11
    idx = bin_index(np.array([-5.0, 0.0, 0.05, 0.1, 0.999, 1.0, 7.0]), gb["edges"])
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 0, 0, 1, 9, 9, 9]


def test_rotation_about_one_axis_recommends_pca() -> None:
    q = _axis_rotations(500)
    rs = rotation_stats(q, n_bins=32, n_clusters=8)
    assert rs["recommended_mode"] == "1d_pca"
    assert rs["pca"]["explained_variance_ratio"][0] >= 0.95
    assert len(rs["pca"]["pc1_edges"]) == 33
    basis = np.asarray(rs["pca"]["basis"])
    assert abs(np.linalg.norm(basis) - 1) < 1e-12 and abs(basis[2]) > 0.9  # PC1 ~ the z component
    pc1 = rotation_pc1(q, rs["pca"])
    angles = Rotation.from_quat(q).as_rotvec()[:, 2]
    assert abs(np.corrcoef(pc1, angles)[0, 1]) > 0.99  # PC1 is a monotone code of the angle
    edges = rs["pca"]["pc1_edges"]
    assert edges[0] <= pc1.min() and pc1.max() <= edges[-1]
    assert len(np.unique(bin_index(pc1, edges))) > 20
    json.dumps(rs)


def test_multimodal_rotations_recommend_kmeans() -> None:
    centres = Rotation.random(6, random_state=1)
    noise = Rotation.from_rotvec(np.random.default_rng(2).normal(scale=0.05, size=(600, 3)))
    q = (centres[np.repeat(np.arange(6), 100)] * noise).as_quat()
    rs = rotation_stats(q, n_clusters=6, seed=0)
    assert rs["recommended_mode"] == "kmeans"
    assert rs["pca"]["explained_variance_ratio"][0] < 0.8
    protos = np.asarray(rs["kmeans"]["prototypes"])
    assert protos.shape == (6, 4) and rs["kmeans"]["k"] == 6
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0)
    assert np.all(protos @ np.asarray(rs["reference"]) >= 0)  # the data's hemisphere (issue 12), not w >= 0
    # every cluster recovers one of the true centres (|dot| ~ 1), each centre once
    match = np.abs(protos @ centres.as_quat().T)
    assert np.all(match.max(axis=1) > 0.99) and len(set(match.argmax(axis=1))) == 6
    labels = nearest_prototype(q, protos)
    assert len(np.unique(labels)) == 6
    np.testing.assert_array_equal(labels, nearest_prototype(-q, protos))


def test_rotation_stats_is_hemisphere_invariant_and_seeded() -> None:
    q = Rotation.random(300, random_state=5).as_quat()
    flip = np.where(np.random.default_rng(0).random(300) < 0.5, -1.0, 1.0)[:, None]
    a = rotation_stats(q, n_clusters=4, seed=3)
    b = rotation_stats(q * flip, n_clusters=4, seed=3)
    np.testing.assert_allclose(a["pca"]["mean"], b["pca"]["mean"], atol=1e-12)
    np.testing.assert_allclose(a["pca"]["basis"], b["pca"]["basis"], atol=1e-9)
    np.testing.assert_allclose(a["kmeans"]["prototypes"], b["kmeans"]["prototypes"], atol=1e-9)
    np.testing.assert_allclose(rotation_pc1(q, a["pca"]), rotation_pc1(-q, a["pca"]), atol=1e-12)


def test_rotation_kmeans_runs_side_by_side_give_the_serial_result() -> None:
    """An ingest runs the k-means runs on its reader pool (`map_fn`): each run has its own seed, so the
    stats equal those `shardyard stats` and `verify` compute one run after another."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    q = Rotation.random(2000, random_state=7).as_quat()
    serial = rotation_stats(q, n_clusters=8, seed=4, n_init=4)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        pooled = rotation_stats(q, n_clusters=8, seed=4, n_init=4, map_fn=pool.map)
    assert json.dumps(pooled) == json.dumps(serial)
    # the runs differ (each its own seed), and the best one is kept
    assert rotation_stats(q, n_clusters=8, seed=4, n_init=1)["kmeans"]["inertia"] >= serial["kmeans"]["inertia"]
    assert rotation_stats(q, n_clusters=8, seed=5, n_init=4)["kmeans"] != serial["kmeans"]


def _cluster(mean: Rotation, n: int, spread_deg: float, seed: int, axis: np.ndarray | None = None) -> np.ndarray:
    """`n` xyzw quats within `spread_deg` of `mean`: about one `axis` (in the mean's frame), or any axis."""
    rng = np.random.default_rng(seed)
    if axis is None:
        axes = rng.normal(size=(n, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    else:
        axes = np.tile(np.asarray(axis, float) / np.linalg.norm(axis), (n, 1))
    angles = np.radians(spread_deg) * rng.uniform(-1.0, 1.0, n)
    q = (mean * Rotation.from_rotvec(axes * angles[:, None])).as_quat()
    return q * np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]  # recorded signs are arbitrary


def _angle_from(q: np.ndarray, mean: Rotation) -> np.ndarray:
    return (mean.inv() * Rotation.from_quat(q)).magnitude()


# Mean orientations with w near 0 (the gripper pointing down: 180 degrees about x, y or z; and about a tilted
# axis), and near w = 1 (identity); the spread is a 28 degree yaw about the mean's own z.
W_NEAR_0 = {"down_x": Rotation.from_euler("x", 180, degrees=True),
            "down_y": Rotation.from_euler("y", 180, degrees=True),
            "about_z": Rotation.from_euler("z", 179, degrees=True),
            "down_tilted": Rotation.from_rotvec(np.pi * np.array([0.6, 0.8, 0.0])) * Rotation.from_euler("x", 10,
                                                                                                        degrees=True)}


@pytest.mark.parametrize("name", sorted(W_NEAR_0) + ["identity"])
def test_rotation_pc1_codes_orientation_not_sign_flip(name: str) -> None:
    """Issue 12: orientations within 28 degrees of a mean with w ~ 0 fill the PC1 range smoothly (no spikes at
    about +-1), like the same spread around w = 1; PC1 is a monotone code of the yaw angle."""
    mean = W_NEAR_0.get(name, Rotation.identity())
    q = _cluster(mean, 600, 28.0, seed=4, axis=[0.0, 0.0, 1.0])
    rs = rotation_stats(q, n_bins=32, n_clusters=8)
    ref = np.asarray(rs["reference"])
    assert abs(abs(ref @ mean.as_quat()) - 1) < 1e-3  # the reference is the data's mean rotation
    assert rs["pca"]["reference"] == rs["reference"] and rs["hemisphere"] == "q.reference>=0"
    pc1 = rotation_pc1(q, rs["pca"])
    theta = _angle_from(q, mean).max()
    # |q - ref| <= 2 sin(theta / 4) for every q flipped to the reference: PC1's range is bounded by the spread
    assert np.ptp(pc1) <= 2 * 2 * np.sin(theta / 4) + 1e-6 and np.ptp(pc1) > 0.5 * 2 * np.sin(theta / 4)
    assert np.abs(pc1).max() < 0.3  # 28 degrees: nowhere near the +-1 of antipodal halves
    yaw = (mean.inv() * Rotation.from_quat(q)).as_rotvec()[:, 2]
    assert abs(np.corrcoef(pc1, yaw)[0, 1]) > 0.99
    hist = np.bincount(bin_index(pc1, rs["pca"]["pc1_edges"]), minlength=32)
    assert (hist > 0).sum() >= 28  # the bins are used across the range, not two spikes
    assert rs["pca"]["explained_variance_ratio"][0] > 0.95 and rs["pc1_separation"] < 0.8
    assert rs["recommended_mode"] == "1d_pca"


@pytest.mark.parametrize("name", sorted(W_NEAR_0))
def test_rotation_spread_in_all_axes_with_w_near_0(name: str) -> None:
    """A 3-D cluster (any axis, 25 degrees) around a w ~ 0 mean: not one direction, so PC1 explains about a
    third and k-means is recommended; PC1 still spans no more than the spread allows."""
    mean = W_NEAR_0[name]
    q = _cluster(mean, 900, 25.0, seed=5)
    rs = rotation_stats(q, n_clusters=8)
    pc1 = rotation_pc1(q, rs["pca"])
    assert np.ptp(pc1) <= 4 * np.sin(_angle_from(q, mean).max() / 4) + 1e-6
    assert rs["pca"]["explained_variance_ratio"][0] < 0.6 and rs["recommended_mode"] == "kmeans"


@pytest.mark.parametrize("mean", [Rotation.from_euler("x", 180, degrees=True), Rotation.identity()])
def test_bimodal_rotations_recommend_kmeans(mean: Rotation) -> None:
    """Two grasps 90 degrees apart in yaw, each +-8 degrees: PC1 explains most of the variance, but its
    projections form two groups, so the mode is k-means, whose prototypes fall in both groups."""
    grasps = [mean, mean * Rotation.from_euler("z", 90, degrees=True)]
    q = np.concatenate([_cluster(g, 300, 8.0, seed=6 + i, axis=[0.0, 0.0, 1.0]) for i, g in enumerate(grasps)])
    rs = rotation_stats(q, n_clusters=8)
    assert rs["pca"]["explained_variance_ratio"][0] > 0.8
    assert rs["pc1_separation"] > 0.9 and rs["recommended_mode"] == "kmeans"
    protos = np.asarray(rs["kmeans"]["prototypes"])
    near = np.abs(protos @ np.stack([g.as_quat() for g in grasps]).T).argmax(axis=1)
    assert set(near.tolist()) == {0, 1}
    # one yaw range per grasp, not two antipodal spikes: PC1 stays within the two grasps' spread
    assert np.ptp(rotation_pc1(q, rs["pca"])) <= 4 * np.sin(np.radians(90 + 16) / 4) + 1e-6


def test_pc1_separation_scale() -> None:
    rng = np.random.default_rng(0)
    assert 0.6 < pc1_separation(rng.normal(size=5000)) < 0.68
    assert 0.72 < pc1_separation(rng.uniform(size=5000)) < 0.78
    assert pc1_separation(np.r_[rng.normal(size=500) * 0.1, 5 + rng.normal(size=500) * 0.1]) > 0.99
    assert pc1_separation(np.ones(50)) == 0.0 and pc1_separation(np.arange(5.0)) == 0.0


def test_rotation_pc1_without_reference_keeps_w_ge_0() -> None:
    """stats.json written before issue 12 has no reference: quats are then flipped to w >= 0, as they were."""
    q = np.array([[0.0, 0.0, 0.6, -0.8], [0.0, 0.0, -0.6, 0.8]])
    pca = {"mean": [0.0, 0.0, 0.0, 0.0], "basis": [0.0, 0.0, 1.0, 0.0]}
    np.testing.assert_allclose(rotation_pc1(q, pca), [-0.6, -0.6])


def test_kmeans_k_is_capped_by_distinct_quats() -> None:
    q = np.repeat(_axis_rotations(3), 10, axis=0)
    rs = rotation_stats(q, n_clusters=32)
    assert rs["kmeans"]["k"] == 3
    const = rotation_stats(np.tile([0.0, 0.0, 0.0, 1.0], (5, 1)))
    assert const["kmeans"]["k"] == 1 and const["recommended_mode"] == "1d_pca"


# ---------------------------------------------------------------------------------------------- the store

SCHEMA = Schema({
    "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
    "obs.eef_quat": FieldSpec("float32", (4,), None, "vector"),
    "obs.gripper": FieldSpec("float32", (), "normalised", "scalar"),
    "obs.T_world_eef": FieldSpec("float64", (4, 4), "m", "pose"),
    "obs.rgb.top": FieldSpec("uint8", (16, 20, 3), None, "image"),
})
LENGTHS = {"demo_0": 23, "demo_1": 17, "demo_2": 31}


def _episode(key: str, i: int) -> Episode:
    rng = np.random.default_rng(100 + i)
    t = LENGTHS[key]
    pos = rng.normal(size=(t, 3)).astype(np.float32) * 0.1
    pos[:, 2] += 0.2 * (i + 1)  # each episode at its own height: a val episode would shift the bins
    quat = _axis_rotations(t, seed=i).astype(np.float32)
    pose = np.tile(np.eye(4), (t, 1, 1))
    pose[:, :3, 3] = pos
    rgb = rng.integers(0, 256, size=(t, 16, 20, 3)).astype(np.uint8)
    rgb[..., 0] //= (i + 1)
    return Episode(key=key, steps={"obs.eef_pos": pos, "obs.eef_quat": quat,
                                   "obs.gripper": rng.uniform(0, 1, t).astype(np.float32),
                                   "obs.T_world_eef": pose, "obs.rgb.top": rgb}, meta={"task": "pick", "fps": 10})


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> tuple[EpisodicStore, dict[str, Episode]]:
    path = tmp_path_factory.mktemp("stats") / "store"
    episodes = {k: _episode(k, i) for i, k in enumerate(LENGTHS)}
    with EpisodicWriter(path, SCHEMA, config=EpisodicWriterConfig(val_fraction=0.34, frame_codec="lz4"),
                        stats_fn=compute_stats) as w:
        for ep in episodes.values():
            w.write(ep)
    return EpisodicStore(path), episodes


def test_compute_stats_uses_train_split_only(tiny_store) -> None:
    store, episodes = tiny_store
    split = store.split
    assert len(split["train"]) == 2 and len(split["val"]) == 1
    train = [episodes[store.episode_keys[i]] for i in split["train"]]
    stats = store.stats  # written by EpisodicWriter through stats_fn
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats
    assert stats["computed_on"] == "train" and stats["split"] == split
    assert stats["num_episodes"] == 2 and stats["num_steps"] == sum(e.num_steps for e in train)
    assert stats["config"] == json.loads(json.dumps(StatsConfig().__dict__))
    assert set(stats["fields"]) == set(SCHEMA.keys())

    pos = np.concatenate([e.steps["obs.eef_pos"] for e in train]).astype(np.float64)
    f = stats["fields"]["obs.eef_pos"]
    assert f["count"] == [len(pos)]
    np.testing.assert_allclose(f["mean"], pos.mean(0), rtol=1e-10)
    np.testing.assert_allclose(f["std"], pos.std(0), rtol=1e-6)
    np.testing.assert_array_equal(f["min"], pos.min(0))
    np.testing.assert_array_equal(f["max"], pos.max(0))
    width = (pos.max(0) - pos.min(0)) / 2048
    assert np.all(np.abs(np.asarray(f["q99"]) - np.quantile(pos, 0.99, axis=0)) <= width)

    grip = stats["fields"]["obs.gripper"]
    assert len(grip["mean"]) == 1
    assert stats["fields"]["obs.T_world_eef"]["count"] == [len(pos)]
    assert len(stats["fields"]["obs.T_world_eef"]["mean"]) == 16

    # images: per channel in [0, 1], every 10th frame of each episode, every 4th pixel; uint8 is exact
    pix = np.concatenate([e.steps["obs.rgb.top"][::10, ::4, ::4].reshape(-1, 3) for e in train])
    img = stats["fields"]["obs.rgb.top"]
    assert img["count"] == [len(pix)]
    np.testing.assert_allclose(img["mean"], pix.mean(0) / 255, rtol=1e-12)
    np.testing.assert_allclose(img["std"], pix.std(0) / 255, rtol=1e-9)
    np.testing.assert_allclose(img["q01"], np.quantile(pix, 0.01, axis=0) / 255, rtol=1e-12)
    np.testing.assert_allclose(img["q99"], np.quantile(pix, 0.99, axis=0) / 255, rtol=1e-12)

    robot = stats["robot"]["obs"]
    assert robot["eef_pos_field"] == "obs.eef_pos" and robot["eef_quat_field"] == "obs.eef_quat"
    assert robot["gripper_field"] == "obs.gripper"
    zmin, zmax = pos[:, 2].min(), pos[:, 2].max()
    assert robot["height_bins"]["min"] == pytest.approx(zmin) and robot["height_bins"]["max"] == pytest.approx(zmax)
    assert robot["height_bins"]["edges"][0] == pytest.approx(zmin - 0.05 * (zmax - zmin))
    grip_train = np.concatenate([e.steps["obs.gripper"] for e in train])
    assert robot["gripper_bins"]["max"] == pytest.approx(float(grip_train.max()))
    assert robot["rotation"]["recommended_mode"] == "1d_pca"
    assert robot["rotation"]["n"] == len(pos)


def test_store_level_merge_matches_union(tiny_store) -> None:
    store, _ = tiny_store
    cfg = StatsConfig(image_frame_stride=3, image_pixel_stride=2)
    everything = [0, 1, 2]
    edges = field_edges(store, everything, cfg)
    for cut in (1, 2):
        merged = merge_stats_parts(field_parts(store, everything[:cut], edges, cfg),
                                   field_parts(store, everything[cut:], edges, cfg))
        whole = field_parts(store, everything, edges, cfg)
        assert set(merged) == set(whole)
        for name in whole:
            _assert_parts_equal(merged[name], whole[name])
        fm, fw = finalize_stats_parts(merged, store.schema), finalize_stats_parts(whole, store.schema)
        for name in fw:
            for stat in fw[name]:
                np.testing.assert_allclose(fm[name][stat], fw[name][stat], rtol=1e-10, atol=1e-15)
    rows = field_rows(store, 2, "obs.rgb.top", cfg)
    assert rows.shape == (len(range(0, 31, 3)) * 8 * 10, 3)


def test_empty_train_split_falls_back_to_all(tiny_store) -> None:
    store, episodes = tiny_store
    manifest = Manifest.from_dict({**store.manifest, "split": {"train": [], "val": []}})
    stats = compute_stats(EpisodicStore(store.url, manifest=manifest), StatsConfig(kmeans_clusters=4))
    assert stats["computed_on"].startswith("all")
    assert stats["num_episodes"] == 3 and stats["num_steps"] == sum(LENGTHS.values())
    z = np.concatenate([e.steps["obs.eef_pos"][:, 2] for e in episodes.values()])
    assert stats["robot"]["obs"]["height_bins"]["max"] == pytest.approx(float(z.max()))


def test_robot_prefixes() -> None:
    schema = Schema({
        "obs.left.eef_pos": FieldSpec("float32", (3,), "m"),
        "obs.left.gripper": FieldSpec("float32", (1,)),
        "obs.right.eef_pos": FieldSpec("float32", (3,), "m"),
        "obs.right.eef_quat": FieldSpec("float32", (4,)),
        "action": FieldSpec("float32", (7,)),
    })
    assert robot_fields(schema) == {
        "obs.left": {"eef_pos_field": "obs.left.eef_pos", "eef_quat_field": None,
                     "gripper_field": "obs.left.gripper"},
        "obs.right": {"eef_pos_field": "obs.right.eef_pos", "eef_quat_field": "obs.right.eef_quat",
                      "gripper_field": None},
    }


def test_std_is_stable_far_from_zero() -> None:
    # timestamps-like data: |mean| / std ~ 1e7, where sumsq / n - mean**2 would lose every digit
    x = 1.7e9 + np.random.default_rng(4).normal(scale=100.0, size=(4000, 1))
    edges = _edges_for(x)
    parts = [part_from_array(c, edges) for c in np.array_split(x, 7)]
    s = finalize(merge_all(parts))
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-9)
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-14)
