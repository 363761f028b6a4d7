import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from shardyard.geometry import (
    canonical_hemisphere,
    canonical_to_reference,
    intrinsics_from_fovy,
    mean_quaternion,
    project,
    scale_intrinsics,
    sign_continuous,
    unproject_at_height,
)
from shardyard.testing import look_at


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unproject_at_height_inverts_project(seed):
    rng = np.random.default_rng(seed)
    K = intrinsics_from_fovy(58.0, 640, 480)
    T = look_at(np.array([-0.2, 0.1, 0.9]), np.array([0.4, 0.0, 0.0]))
    pts = rng.uniform([0.2, -0.3, 0.0], [0.6, 0.3, 0.4], size=(50, 3))
    pix, depth = project(pts, K, T)
    assert np.all(depth > 0)
    back = unproject_at_height(pix, pts[:, 2], K, T)
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_project_hand_computed():
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    T = np.eye(4)  # camera at origin looking down +z
    pix, z = project(np.array([0.1, -0.2, 2.0]), K, T)
    np.testing.assert_allclose(pix, [50 + 100 * 0.05, 40 - 100 * 0.1])
    assert z == pytest.approx(2.0)


def test_scale_intrinsics_keeps_pixel_centres():
    K = intrinsics_from_fovy(58.0, 640, 480)
    K2 = scale_intrinsics(K, 0.5, 0.5)
    np.testing.assert_allclose(K2, intrinsics_from_fovy(58.0, 320, 240))


def test_quaternion_hemisphere_and_continuity():
    q = Rotation.random(100, random_state=0).as_quat()
    c = canonical_hemisphere(q)
    assert np.all(c[:, 3] >= 0)
    np.testing.assert_allclose(np.abs(np.sum(c * q, axis=1)), 1.0, atol=1e-12)
    flips = q * np.where(np.arange(100) % 2, -1, 1)[:, None]
    signs = np.where(np.arange(100) % 3, -1, 1)[:, None]
    path = Rotation.from_euler("z", np.linspace(0, 3, 100)[:, None]).as_quat() * signs
    s = sign_continuous(path)
    assert np.all(np.sum(s[1:] * s[:-1], axis=1) > 0)
    # q and -q are one rotation: canonicalising either gives the same quaternion
    np.testing.assert_allclose(canonical_hemisphere(flips), c, atol=1e-12)


@pytest.mark.parametrize("mean_euler", [(180.0, 0.0, 0.0), (0.0, 180.0, 0.0), (10.0, -20.0, 30.0), (0.0, 0.0, 0.0)])
def test_mean_quaternion_and_reference_hemisphere(mean_euler):
    """Markley's average is sign-free and deterministic; flipping to its hemisphere keeps a cluster whose w is
    near 0 in one piece, where w >= 0 splits it."""
    rng = np.random.default_rng(0)
    mean = Rotation.from_euler("xyz", mean_euler, degrees=True)
    q = (mean * Rotation.from_rotvec(rng.normal(scale=0.15, size=(400, 3)))).as_quat()
    flipped = q * np.where(rng.random(400) < 0.5, -1.0, 1.0)[:, None]
    ref = mean_quaternion(flipped)
    np.testing.assert_allclose(ref, mean_quaternion(q), atol=1e-12)
    assert abs(np.linalg.norm(ref) - 1) < 1e-12 and abs(ref @ mean.as_quat()) > 0.999
    c = canonical_to_reference(flipped, ref)
    np.testing.assert_allclose(np.abs(c), np.abs(q), atol=1e-15)
    assert np.all(c @ ref > 0)
    assert np.linalg.norm(c - c.mean(0), axis=1).max() < 0.5  # one piece: within the cluster's spread
    if abs(mean.as_quat()[3]) < 1e-6:  # w = 0: the w >= 0 rule puts the two halves on opposite sides
        w_pos = canonical_hemisphere(flipped)
        assert np.linalg.norm(w_pos - w_pos.mean(0), axis=1).max() > 0.9


def test_reference_hemisphere_tie_falls_back_to_w():
    ref = np.array([0.0, 0.0, 0.0, 1.0])
    q = np.array([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.6, 0.0, -0.8]])
    np.testing.assert_allclose(canonical_to_reference(q, ref), [[1, 0, 0, 0], [1, 0, 0, 0], [0, -0.6, 0, 0.8]])
    with pytest.raises(ValueError):
        mean_quaternion(np.zeros((0, 4)))
