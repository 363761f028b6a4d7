"""Cameras of an i2rt recorder episode: the recorded streams, and each one's `K` and `T_world_cam` (OpenCV;
camera to world) from the calibration JSON or else the robot model's `<camera>` of the same name, role or
`<arm>_<role>`. A camera on a moving body gets per-step poses `(N, 4, 4)` from forward kinematics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardyard.geometry import scale_intrinsics
from shardyard.ingest.yam.layout import LayoutInputs
from shardyard.mjcf import CameraModel, camera_K, find_camera, forward_kinematics

__all__ = ["CameraGeometry", "Stream", "camera_poses", "stream_camera", "streams_of"]


@dataclass(frozen=True)
class Stream:
    """One recorded video: `name` (`role` for mono, `<role>_<image_key>` for stereo), the file's `image_key`
    (`<role>-images-<image_key>.mp4`), the camera `role` and its metadata.json entry `cam`."""

    name: str
    image_key: str
    role: str
    cam: dict[str, Any]


@dataclass
class CameraGeometry:
    """Forward kinematics of an episode (`mjcf.forward_kinematics` output: `<arm>.eef_pos`, `<arm>.eef_quat`,
    `T_world_cam.<camera>`, `T_world_body.<link>`; empty without a robot model) and the model camera found for
    each stream name."""

    fk: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, CameraModel] = field(default_factory=dict)


def streams_of(meta: dict[str, Any]) -> list[Stream]:
    """The streams of metadata.json's `cameras` (each camera's `image_keys`, default `["rgb"]`), in order."""
    out = []
    for cam in meta.get("cameras", []):
        for k in cam.get("image_keys") or ["rgb"]:
            out.append(Stream(cam["role"] if k == "rgb" else f"{cam['role']}_{k}", k, cam["role"], cam))
    return out


def _calibration_of(inputs: LayoutInputs, stream: Stream) -> dict[str, Any] | None:
    return inputs.calibration.get(stream.name) or inputs.calibration.get(stream.role)


def camera_poses(inputs: LayoutInputs, wanted: list[Stream], arm_names: list[str],
                 arrays: dict[str, dict[str, np.ndarray]]) -> CameraGeometry:
    """Forward kinematics over the episode (`arrays[arm]["q"] (N, n)` rad, `["g"] (N, 1)`) for every arm, the
    model cameras of `wanted` and the bodies calibrated cameras are mounted on; empty without a robot model.
    Raises `ConfigError` when the model lacks an arm's joints or grasp site, or a calibration's link."""
    kin = inputs.kinematics
    if kin is None:
        return CameraGeometry()
    kin.arm(arm_names[0])  # a missing grasp site is reported before any camera lookup
    models: dict[str, CameraModel] = {}
    for s in wanted:
        candidates = [s.cam.get("name", ""), s.name, s.role] + [f"{a}_{s.role}" for a in arm_names]
        cm = find_camera(kin.model, [c for c in candidates if c])
        if cm is not None:
            models[s.name] = cm
    bodies = sorted({cal["link"] for s in wanted for cal in [_calibration_of(inputs, s) or {}] if "link" in cal})
    fk = forward_kinematics(kin.model, {a: (kin.arm(a), arrays[a]["q"], arrays[a]["g"][:, 0]) for a in arm_names},
                            list({c.name: c for c in models.values()}.values()), bodies)
    return CameraGeometry(fk, models)


def stream_camera(inputs: LayoutInputs, stream: Stream, size: tuple[int, int],
                  geometry: CameraGeometry) -> tuple[dict[str, Any], np.ndarray | None]:
    """The episode meta of a stream stored at `size = (w, h)` pixels (`K (3, 3)` scaled to it, `T_world_cam
    (4, 4)` or None when it moves, `moving`, `source`, ...) and its per-step poses `(N, 4, 4)` when it moves."""
    w, h = size
    cam = stream.cam
    native_w, native_h = int(cam.get("width") or w), int(cam.get("height") or h)
    c_meta: dict[str, Any] = {"width": w, "height": h, "name": cam.get("name"), "role": stream.role}
    cal = _calibration_of(inputs, stream)
    if cal is not None:
        kw, kh = int(cal.get("width", native_w)), int(cal.get("height", native_h))
        c_meta["K"] = scale_intrinsics(np.asarray(cal["K"], dtype=np.float64), w / kw, h / kh)
        c_meta["source"] = "calibration"
        if "link" not in cal:
            c_meta.update(moving=False, T_world_cam=np.asarray(cal["T_world_cam"], dtype=np.float64))
            return c_meta, None
        T_link_cam = np.asarray(cal["T_link_cam"], dtype=np.float64)
        c_meta.update(moving=True, T_world_cam=None, link=cal["link"], T_link_cam=T_link_cam)
        return c_meta, geometry.fk[f"T_world_body.{cal['link']}"] @ T_link_cam
    cm = geometry.models.get(stream.name)
    if cm is None:
        c_meta.update(K=None, T_world_cam=None, moving=None, source="none: no model camera or calibration")
        return c_meta, None
    c_meta["K"] = scale_intrinsics(camera_K(cm, native_w, native_h), w / native_w, h / native_h)
    c_meta.update(source=f"mjcf camera '{cm.name}' (fovy {cm.fovy_deg} deg)", moving=cm.moving)
    pose = geometry.fk[f"T_world_cam.{cm.name}"]
    c_meta["T_world_cam"] = None if cm.moving else pose[0]
    return c_meta, pose if cm.moving else None
