"""Camera projection, pixel + height -> 3-D, and quaternion helpers (hemispheres, Markley's average).

Conventions (DESIGN.md): positions in metres; quaternions `xyzw` (scipy's order); cameras in OpenCV
convention (x right, y down, z forward); `T_world_cam (4, 4)` maps camera coordinates to world.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["GL_TO_CV", "canonical_hemisphere", "canonical_to_reference", "intrinsics_from_fovy", "mean_quaternion",
           "pose_matrix", "project", "quat_from_matrix", "quat_wxyz_to_xyzw", "scale_intrinsics", "sign_continuous",
           "unproject_at_height"]

# MuJoCo/OpenGL cameras look down -z with y up; OpenCV looks down +z with y down: a 180 deg turn about x.
GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole `K (3, 3)` for a vertical field of view in degrees with square pixels and the principal
    point at the image centre `((w - 1) / 2, (h - 1) / 2)` (MuJoCo's camera model)."""
    f = (height / 2.0) / np.tan(np.deg2rad(fovy_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """`K` for an image resized by (sx, sy), keeping pixel centres aligned (`c' = (c + 0.5) s - 0.5`)."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, 0] *= sx
    K2[1, 1] *= sy
    K2[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K2[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K2


def project(points_world: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project `(..., 3)` world points (metres) with `K (3, 3)` and `T_world_cam (..., 4, 4)` (broadcast).

    Returns `(pixels (..., 2) float64 (u, v), depth (..., ) metres along the optical axis)`; points behind
    the camera get depth <= 0 and meaningless pixels.
    """
    T_cam_world = np.linalg.inv(T_world_cam)
    p = np.einsum("...ij,...j->...i", T_cam_world[..., :3, :3], points_world) + T_cam_world[..., :3, 3]
    z = p[..., 2]
    uvw = np.einsum("ij,...j->...i", K, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = uvw[..., :2] / uvw[..., 2:3]
    return pix, z


def unproject_at_height(pixels: np.ndarray, height: np.ndarray, K: np.ndarray,
                        T_world_cam: np.ndarray) -> np.ndarray:
    """Inverse of `project` for points of known world Z (seed 001's "recover 3D from keypoint and height").

    `pixels (..., 2)`, `height (...)` metres (world z), `K (3, 3)`, `T_world_cam (..., 4, 4)` -> `(..., 3)`
    world points: the intersection of each pixel's viewing ray with the plane z = height. Rays parallel to
    the plane give NaN.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    ones = np.ones(pixels.shape[:-1] + (1,))
    rays_cam = np.einsum("ij,...j->...i", np.linalg.inv(K), np.concatenate([pixels, ones], axis=-1))
    R = T_world_cam[..., :3, :3]
    origin = T_world_cam[..., :3, 3]
    rays_world = np.einsum("...ij,...j->...i", R, rays_cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (np.asarray(height) - origin[..., 2]) / rays_world[..., 2]
    return origin + s[..., None] * rays_world


def quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """Rotation matrices `(..., 3, 3)` -> quaternions `(..., 4)` xyzw."""
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(R.shape[:-2] + (4,))


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Quaternions `(..., 4)` from scalar-first `wxyz` (MuJoCo) to scalar-last `xyzw` (scipy, our stores)."""
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def canonical_hemisphere(q: np.ndarray) -> np.ndarray:
    """Flip `(..., 4)` xyzw quaternions to w >= 0 (q and -q are the same rotation); ties at w = 0 are broken
    by the first non-zero component being positive."""
    q = np.array(q, dtype=np.float64, copy=True)
    sign = np.sign(q[..., 3])
    for i in range(3):
        sign = np.where(sign == 0, np.sign(q[..., i]), sign)
    sign = np.where(sign == 0, 1.0, sign)
    return q * sign[..., None]


def mean_quaternion(q: np.ndarray) -> np.ndarray:
    """Average rotation of `(N, 4)` xyzw quaternions as one unit `(4,)` xyzw quaternion, sign-invariant.

    Markley et al., "Averaging Quaternions" (J. Guidance, Control, and Dynamics, 2007): the principal eigenvector
    of the scatter matrix `sum q q^T` (scipy's `Rotation.mean`), which q and -q give alike. Its own sign is fixed
    by `canonical_hemisphere` so the result is deterministic. Raises `ValueError` for an empty or non-finite
    input or a zero quaternion.
    """
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    if len(q) == 0:
        raise ValueError("mean of no quaternions")
    return canonical_hemisphere(Rotation.from_quat(q).mean().as_quat())


def canonical_to_reference(q: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip `(..., 4)` xyzw quaternions to the hemisphere of `reference (4,)`: `q . reference >= 0`.

    Unlike `canonical_hemisphere` (w >= 0), this keeps a cluster of orientations together wherever it lies,
    e.g. a gripper pointing down (w near 0), when `reference` is the data's `mean_quaternion`. A quaternion
    orthogonal to the reference (180 degrees away from it) falls back to `canonical_hemisphere`.
    """
    q = np.asarray(q, dtype=np.float64)
    dot = q @ np.asarray(reference, dtype=np.float64).reshape(4)
    tie = canonical_hemisphere(q)
    return np.where((dot > 0)[..., None], q, np.where((dot < 0)[..., None], -q, tie))


def sign_continuous(q: np.ndarray) -> np.ndarray:
    """Flip quaternions of a `(T, 4)` trajectory so consecutive ones have a non-negative dot product."""
    q = np.array(q, dtype=np.float64, copy=True)
    for t in range(1, len(q)):
        if np.dot(q[t], q[t - 1]) < 0:
            q[t] = -q[t]
    return q


def pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`(..., 3, 3)` rotation and `(..., 3)` translation -> `(..., 4, 4)` homogeneous transform."""
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T
