"""Cameras of LIBERO / robomimic demos from their `model_file` MJCF string, in OpenCV convention.

A fixed camera (e.g. `agentview`) gets one `K (3, 3)` and `T_world_cam (4, 4)` (camera-to-world, metres)
in the episode meta, posed at the model's reference configuration. A moving camera (one that hangs below a
jointed body, e.g. the wrist camera `robot0_eye_in_hand`) gets `K` in the meta (`moving: True`,
`T_world_cam: None`) and its pose per step as the field `obs.T_world_cam.<camera>`, `(T, 4, 4) float32`
(`POSE_SPEC`, the YAM adapter's convention): forward kinematics of the MJCF model at each step's joint
positions, taken from the demo's `states`. robosuite stores MuJoCo's flattened sim state per step,
`[time, qpos (nq), qvel (nv)]` (plus `act (na)` when the model has actuator activations), so the pose is
computed only when the `states` width is one of those; otherwise (or with no `states`, or a camera below a
mocap body, whose pose is not in the state) no pose is stored and a note says why. The poses are MuJoCo's own
`cam_xpos`/`cam_xmat` after `mj_kinematics` (+ `mj_camlight`), turned from MuJoCo's -z-forward, y-up camera
frame to OpenCV's (x right, y down, z forward) with `GL_TO_CV`.

Compiled models are cached in a dict the caller owns (`LiberoSource` keeps one per instance and process),
keyed by a hash of the XML, so demos sharing one model compile it once; with each model the cache keeps
what depends on the model alone: its fixed cameras' meta and one `MjData` for the per-step poses (a new
`MjData` and an `mj_forward` per demo took ~2 ms, as much as the wrist camera's poses of 150 steps).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardyard.errors import SourceError
from shardyard.geometry import GL_TO_CV, intrinsics_from_fovy, pose_matrix
from shardyard.schema import FieldSpec

__all__ = ["MAX_MODELS", "POSE_METHOD", "POSE_SPEC", "camera_meta", "compile_model", "demo_cameras", "pose_field",
           "pose_specs", "state_widths", "without_files"]

log = logging.getLogger(__name__)

_MJCF_CAMERAS = {"agentview": ["agentview"], "eye_in_hand": ["robot0_eye_in_hand", "eye_in_hand"]}
POSE_SPEC = FieldSpec("float32", (4, 4), "m", "pose")
POSE_METHOD = "fk from states"
MAX_MODELS = 8  # compiled models kept per cache (real LIBERO models are a few MB each)


def pose_field(camera: str) -> str:
    """Per-step camera-to-world field of a moving camera: `obs.T_world_cam.<camera>`."""
    return f"obs.T_world_cam.{camera}"


def _strip_assets(xml: str) -> str:
    """The MJCF without assets, includes, other elements naming a file (`skin`, `flexcomp`) and mesh/texture
    references (mesh geoms become small spheres), so that a model recorded on another machine compiles and
    nothing is read from a file; body and camera poses are unchanged."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in ("asset", "include") or any(a.startswith("file") for a in child.attrib):
                parent.remove(child)
    for el in root.iter():
        had_mesh = el.attrib.pop("mesh", None) is not None or el.get("type") in ("mesh", "hfield")
        for a in ("material", "texture", "hfield"):
            el.attrib.pop(a, None)
        if el.tag == "geom" and had_mesh:
            el.set("type", "sphere")
            el.set("size", "0.01")
    return ET.tostring(root, encoding="unicode")


def without_files(model_xml: str) -> str:
    """`model_xml` with nothing that makes MuJoCo open a file: the file names in an HDF5 attribute are the
    input's, not the user's (`ingest.inside`). Unchanged when it names no file, or does not parse (MuJoCo
    then refuses it as well)."""
    import xml.etree.ElementTree as ET

    if "file" not in model_xml:
        return model_xml
    try:
        return _strip_assets(model_xml)
    except ET.ParseError:
        return model_xml


@dataclass
class _Compiled:
    """One entry of a model cache: the compiled model (or the `SourceError` saying why it does not compile),
    the meta of its fixed cameras by `(camera, width, height)`, and the `MjData` its poses are computed in."""

    model: Any
    fixed: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    data: Any = None


def _compiled(model_xml: str, models: dict[str, Any] | None) -> _Compiled:
    """The cache entry of `model_xml` (see `compile_model`), compiling the model when it is not cached."""
    import mujoco

    models = {} if models is None else models
    key = hashlib.sha1(model_xml.encode()).hexdigest()
    if key in models:
        models[key] = entry = models.pop(key)  # most recently used last
    else:
        try:
            found = mujoco.MjModel.from_xml_string(model_xml)
        except Exception as first:  # typically mesh/texture files of the recording machine: poses need none
            try:
                found = mujoco.MjModel.from_xml_string(_strip_assets(model_xml))
            except Exception:
                found = SourceError(f"MuJoCo cannot load model_file: {str(first).splitlines()[0]}",
                                    field="model_file")
                log.warning("%s", found.reason)
        while len(models) >= MAX_MODELS:
            models.pop(next(iter(models)))
        models[key] = entry = _Compiled(found)
    return entry


def compile_model(model_xml: str, models: dict[str, Any] | None = None):
    """MuJoCo model of an MJCF XML string, from `models` (a cache keyed by the XML's SHA-1, holding at most
    `MAX_MODELS`, failures included) or compiled, retrying without assets when mesh/texture files of the
    recording machine are missing. Raises `SourceError(field="model_file")` when it does not compile."""
    found = _compiled(model_xml, models).model
    if isinstance(found, SourceError):
        raise found
    return found


def state_widths(model) -> tuple[int, ...]:
    """Widths of robosuite's flattened sim state for `model`: `1 + nq + nv`, and `+ na` when na > 0."""
    base = 1 + int(model.nq) + int(model.nv)
    return (base, base + int(model.na)) if model.na else (base,)


def _under_mocap(model, body: int) -> bool:
    while body > 0:
        if model.body_mocapid[body] >= 0:
            return True
        body = int(model.body_parentid[body])
    return False


def _pose_problem(model, cam, states_width: int | None) -> str | None:
    """Why the per-step pose of moving camera `cam` cannot be computed from `states`, or None."""
    if _under_mocap(model, int(model.cam_bodyid[cam.cam_id])):
        return f"MJCF camera '{cam.name}' hangs below a mocap body, whose pose is not in states"
    if states_width is None:
        return "demo has no states (T, S) array"
    widths = state_widths(model)
    if states_width not in widths:
        return (f"states have {states_width} columns but the MJCF model's sim state [time, qpos, qvel"
                f"{', act' if model.na else ''}] has {' or '.join(map(str, widths))} (nq={model.nq}, "
                f"nv={model.nv}, na={model.na})")
    return None


def _find(model, camera: str):
    from shardyard.mjcf import find_camera

    return find_camera(model, _MJCF_CAMERAS.get(camera, [camera]))


def camera_meta(model_xml: str, camera: str, width: int, height: int,
                models: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fixed camera `camera` of an MJCF model given as an XML string: `{"K" (3, 3), "T_world_cam" (4, 4)
    OpenCV camera-to-world, "moving": False, "width", "height", "fovy_deg", "mjcf_camera"}`, or None when the
    model has no such camera or the camera moves (see `demo_cameras` for those).

    The pose is MuJoCo's own composition of the camera's `pos`/`quat`/`xyaxes` with its parent bodies at the
    model's reference configuration (`mj_forward`), turned from MuJoCo's -z-forward frame to OpenCV's.
    `models` is the compiled-model cache (`compile_model`). Raises `SourceError` when MuJoCo cannot compile
    the XML.
    """
    import mujoco

    entry = _compiled(model_xml, models)
    model = entry.model
    if isinstance(model, SourceError):
        raise model
    found = entry.fixed.get((camera, width, height))
    if found is None:
        cam = _find(model, camera)
        if cam is None or cam.moving:
            return None
        data = mujoco.MjData(model)  # its own: the reference configuration, whatever entry.data last held
        mujoco.mj_forward(model, data)
        R = data.cam_xmat[cam.cam_id].reshape(3, 3) @ GL_TO_CV
        entry.fixed[(camera, width, height)] = found = {
            "K": intrinsics_from_fovy(cam.fovy_deg, width, height),
            "T_world_cam": pose_matrix(R, data.cam_xpos[cam.cam_id]), "moving": False, "width": width,
            "height": height, "fovy_deg": cam.fovy_deg, "mjcf_camera": cam.name}
    # each demo's meta gets its own arrays: the cached ones must not change with a caller's edit
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in found.items()}


def pose_specs(model_xml: str, cameras: list[str], states_width: int | None,
               models: dict[str, Any] | None = None) -> dict[str, FieldSpec]:
    """`{obs.T_world_cam.<camera>: POSE_SPEC}` for each of `cameras` that moves and whose pose `demo_cameras`
    will compute from states `states_width` columns wide. Never raises (a model that does not compile gives
    no field)."""
    if not cameras or not model_xml.lstrip().startswith("<"):
        return {}
    try:
        model = compile_model(model_xml, models)
    except SourceError:
        return {}
    out = {}
    for camera in cameras:
        cam = _find(model, camera)
        if cam is not None and cam.moving and _pose_problem(model, cam, states_width) is None:
            out[pose_field(camera)] = POSE_SPEC
    return out


def demo_cameras(model_xml: str, sizes: dict[str, tuple[int, int]], states: np.ndarray | None,
                 models: dict[str, Any] | None = None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], list[str]]:
    """Cameras of one demo: `(meta per camera, per-step fields, notes)`. Never raises.

    `sizes[camera] = (width, height)` of its stored images; `states (T, S)` the demo's flattened sim states.
    A fixed camera's meta is `camera_meta`'s. A moving camera's is `{"K", "T_world_cam": None, "moving": True,
    "width", "height", "fovy_deg", "mjcf_camera", "body", "pose": "fk from states", "pose_field"}` with the
    per-step field `obs.T_world_cam.<camera> (T, 4, 4) float32` (OpenCV camera-to-world, metres), qpos being
    `states[:, 1:1 + nq]`. Notes (plain phrases for the meta's `camera_note`) say why a camera got no
    calibration: no MJCF, a model that does not compile, no such MJCF camera, or states that do not match it.
    """
    from shardyard.mjcf import forward_kinematics

    cameras: dict[str, dict[str, Any]] = {}
    steps: dict[str, np.ndarray] = {}
    if not model_xml.lstrip().startswith("<"):
        return cameras, steps, ["no MJCF in model_file" + (f" (only a file name: {model_xml})" if model_xml else "")
                                + ": no camera calibration stored"]
    if not sizes:
        return cameras, steps, []
    entry = _compiled(model_xml, models)
    model = entry.model
    if isinstance(model, SourceError):
        return cameras, steps, [model.reason + ": no camera calibration stored"]
    notes = []
    width = None if states is None or np.ndim(states) != 2 else int(np.shape(states)[1])
    for camera, (w, h) in sizes.items():
        cam = _find(model, camera)
        if cam is None:
            notes.append(f"{camera}: no MJCF camera named {' or '.join(_MJCF_CAMERAS.get(camera, [camera]))}")
        elif not cam.moving:
            cameras[camera] = camera_meta(model_xml, camera, w, h, models)
        elif (why := _pose_problem(model, cam, width)) is not None:
            notes.append(f"{camera}: {why}: no per-step pose stored")
        else:
            if entry.data is None:
                import mujoco

                entry.data = mujoco.MjData(model)
            fk = forward_kinematics(model, {}, [cam], qpos=np.asarray(states)[:, 1:1 + model.nq], data=entry.data)
            steps[pose_field(camera)] = fk[f"T_world_cam.{cam.name}"].astype(np.float32)
            cameras[camera] = {"K": intrinsics_from_fovy(cam.fovy_deg, w, h), "T_world_cam": None, "moving": True,
                               "width": w, "height": h, "fovy_deg": cam.fovy_deg, "mjcf_camera": cam.name,
                               "body": cam.body, "pose": POSE_METHOD, "pose_field": pose_field(camera)}
    return cameras, steps, notes
