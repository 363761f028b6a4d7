"""Class targets of seed 001's volume-query model from EEF poses and a store's `stats.json`.

Seed 001 (`data_smith300_volume.py`, `precompute_rotation_*.py`) trains on, per future step: the EEF's pixel on
the `PRED_SIZE x PRED_SIZE` feature grid, its height bin (world Z, `N_HEIGHT_BINS` from the dataset's min/max),
a gripper bin and a rotation bin (`1d_pca`: the quaternion's PC1 coordinate in `N_ROT_BINS` bins; `kmeans`:
the nearest prototype). The query starts at the current EEF's pixel (the start pixel).

Grid convention: an image of `W x H` pixels is resized to `P x P` keeping pixel centres aligned (as
`geometry.scale_intrinsics`): image pixel `u` maps to grid coordinate `(u + 0.5) * P / W - 0.5`, and the
target cell is that coordinate rounded, i.e. the cell containing the point (one on a border goes to the
right/lower cell, robust to rounding in the projection). Cell `(x, y)` is the pixel
`(x, y)` of the grid camera `K_grid = scale_intrinsics(K, P / W, P / H)`, so decoding a cell and a height
with `geometry.unproject_at_height(cell, height, K_grid, T_world_cam)` inverts the encoding up to the cell
and bin width. Pixels are `(x, y)` = `(u, v)` order throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardyard.errors import ConfigError
from shardyard.geometry import project, scale_intrinsics, unproject_at_height
from shardyard.stores.stats.robot import bin_index, nearest_prototype, rotation_pc1

__all__ = ["ROTATION_MODES", "TargetSpec", "compute_targets", "decode_positions", "grid_intrinsics", "pixel_targets"]

log = logging.getLogger(__name__)

ROTATION_MODES = ("1d_pca", "kmeans")
_TIE_EPS = 1e-6  # grid cells: a point on a cell border (e.g. on the optical axis) goes to the right/lower cell


@dataclass
class TargetSpec:
    """Discretisation read from stats.json (`stats["robot"][prefix]`).

    height_edges `(Z + 1,)` metres; gripper_edges `(G + 1,)`; rotation_mode "1d_pca" or "kmeans"; pca: the
    `rotation.pca` dict (mean, basis, pc1_edges, and `reference`, the xyzw quaternion whose hemisphere the
    basis was fitted in: quaternions are flipped to `q . reference >= 0` before projection, exactly as the
    stats did; w >= 0 when the stats predate it); prototypes `(k, 4)` xyzw (matched by |q . p|, so either
    sign); fields: the store's EEF position, quaternion and gripper field names.
    """

    height_edges: np.ndarray
    gripper_edges: np.ndarray
    rotation_mode: str
    pca: dict[str, Any]
    prototypes: np.ndarray
    pos_field: str = "obs.eef_pos"
    quat_field: str = "obs.eef_quat"
    gripper_field: str | None = "obs.gripper"

    @property
    def n_height_bins(self) -> int:
        """Number of height bins Z."""
        return len(self.height_edges) - 1

    @property
    def n_gripper_bins(self) -> int:
        """Number of gripper bins G."""
        return len(self.gripper_edges) - 1

    @property
    def n_rot_bins(self) -> int:
        """Number of rotation classes: PC1 bins ("1d_pca") or prototypes ("kmeans")."""
        return len(self.pca["pc1_edges"]) - 1 if self.rotation_mode == "1d_pca" else len(self.prototypes)

    @property
    def height_centres(self) -> np.ndarray:
        """`(Z,)` metres: the middle of each height bin (the decoded height of a bin)."""
        e = self.height_edges
        return (e[:-1] + e[1:]) / 2.0

    @classmethod
    def from_stats(cls, stats: dict[str, Any], robot: str | None = None,
                   rotation_mode: str | None = None) -> "TargetSpec":
        """Read the robot extras of `stats` (a store's parsed stats.json).

        robot: the robot prefix (`"obs"`, `"obs.left"`); default the first one. rotation_mode: override the
        stats' `recommended_mode`. Raises ConfigError when the stats have no robot extras, the prefix is
        unknown, or the mode is not one of ROTATION_MODES.
        """
        robots = (stats or {}).get("robot") or {}
        robots = {k: v for k, v in robots.items() if v}
        if not robots:
            raise ConfigError("store stats have no robot extras (height/gripper/rotation bins); run "
                              "`shardyard stats STORE` on a store with an eef_pos field")
        prefix = robot if robot is not None else sorted(robots)[0]
        if prefix not in robots:
            raise ConfigError(f"no robot stats for prefix {prefix!r}; stats have {sorted(robots)}")
        r = robots[prefix]
        mode = rotation_mode or r["rotation"]["recommended_mode"]
        if mode not in ROTATION_MODES:
            raise ConfigError(f"rotation mode {mode!r} not one of {ROTATION_MODES}")
        grip = r.get("gripper_bins") or {"edges": [0.0, 1.0]}
        return cls(height_edges=np.asarray(r["height_bins"]["edges"], np.float64),
                   gripper_edges=np.asarray(grip["edges"], np.float64), rotation_mode=mode,
                   pca=r["rotation"]["pca"], prototypes=np.asarray(r["rotation"]["kmeans"]["prototypes"]),
                   pos_field=r["eef_pos_field"], quat_field=r["eef_quat_field"],
                   gripper_field=r.get("gripper_field"))

    def rotation_bins(self, quats: np.ndarray) -> np.ndarray:
        """`(N, 4)` xyzw -> `(N,) int64` rotation class: the PC1 bin (`stats.robot.rotation_pc1`, which flips q
        to the stats' reference hemisphere) or the nearest prototype."""
        q = np.asarray(quats, np.float64).reshape(-1, 4)
        if self.rotation_mode == "1d_pca":
            return bin_index(rotation_pc1(q, self.pca), np.asarray(self.pca["pc1_edges"]))
        return nearest_prototype(q, self.prototypes)


def grid_intrinsics(K: np.ndarray, image_wh: tuple[int, int], pred_size: int) -> np.ndarray:
    """`K (3, 3)` of a `W x H` image -> the intrinsics of the `P x P` prediction grid (cell centres at
    integer coordinates)."""
    w, h = image_wh
    return scale_intrinsics(np.asarray(K, np.float64), pred_size / w, pred_size / h)


def pixel_targets(points: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, image_wh: tuple[int, int],
                  pred_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells of world points.

    points `(..., 3)` metres, K `(3, 3)` of the `W x H` image, T_world_cam `(..., 4, 4)` (broadcast).
    Returns `cells (..., 2) int64 (x, y)` clipped to `[0, P - 1]` and `in_frame (...) bool` (in front of the
    camera and inside the image before clipping).
    """
    Kg = grid_intrinsics(K, image_wh, pred_size)
    pix, depth = project(np.asarray(points, np.float64), Kg, T_world_cam)
    finite = np.isfinite(pix).all(axis=-1)
    pix = np.where(finite[..., None], pix, 0.0)
    cell = np.floor(pix + 0.5 + _TIE_EPS)
    in_frame = finite & (depth > 0) & (cell >= 0).all(axis=-1) & (cell <= pred_size - 1).all(axis=-1)
    return np.clip(cell, 0, pred_size - 1).astype(np.int64), in_frame


def compute_targets(spec: TargetSpec, pos: np.ndarray, quat: np.ndarray, gripper: np.ndarray | None,
                    K: np.ndarray, T_world_cam: np.ndarray, image_wh: tuple[int, int],
                    pred_size: int) -> dict[str, np.ndarray]:
    """Targets of EEF poses `pos (..., 3)` m, `quat (..., 4)` xyzw, `gripper (...)` (or None: bin 0).

    Returns `pix (..., 2) int64 (x, y)` on the grid, `in_frame (...) bool`, `height_bin`, `gripper_bin`,
    `rot_bin` `(...) int64`.
    """
    pos = np.asarray(pos, np.float64)
    lead = pos.shape[:-1]
    pix, in_frame = pixel_targets(pos, K, T_world_cam, image_wh, pred_size)
    hb = bin_index(pos[..., 2].reshape(-1), spec.height_edges).reshape(lead)
    gb = (np.zeros(lead, np.int64) if gripper is None
          else bin_index(np.asarray(gripper).reshape(-1), spec.gripper_edges).reshape(lead))
    rb = spec.rotation_bins(np.asarray(quat).reshape(-1, 4)).reshape(lead)
    return {"pix": pix, "in_frame": in_frame, "height_bin": hb, "gripper_bin": gb, "rot_bin": rb}


def decode_positions(pix: np.ndarray, height_bin: np.ndarray, K_grid: np.ndarray, T_world_cam: np.ndarray,
                     height_edges: np.ndarray) -> np.ndarray:
    """World points `(..., 3)` m of grid cells `pix (..., 2) (x, y)` at the centres of `height_bin (...)`
    (seed 001's `recover_3d_from_direct_keypoint_and_height`). K_grid `(3, 3)` from `grid_intrinsics`, or
    `(B, 3, 3)` per sample with `pix (B, ..., 2)`; T_world_cam `(..., 4, 4)` broadcast against `pix`'s
    leading dims."""
    e = np.asarray(height_edges, np.float64)
    pix = np.asarray(pix, np.float64)
    height = ((e[:-1] + e[1:]) / 2.0)[np.asarray(height_bin)]
    K_grid = np.asarray(K_grid, np.float64)
    if K_grid.ndim == 2:
        return unproject_at_height(pix, height, K_grid, np.asarray(T_world_cam, np.float64))
    T = np.broadcast_to(np.asarray(T_world_cam, np.float64), pix.shape[:-1] + (4, 4))
    return np.stack([unproject_at_height(pix[b], height[b], K_grid[b], T[b]) for b in range(len(K_grid))])
