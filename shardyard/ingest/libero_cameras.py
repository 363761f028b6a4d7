"""Cameras of LIBERO / robomimic demos from their `model_file` MJCF string, in OpenCV convention."""

from __future__ import annotations

from typing import Any

from shardyard.errors import SourceError
from shardyard.geometry import GL_TO_CV, intrinsics_from_fovy, pose_matrix

_MJCF_CAMERAS = {"agentview": ["agentview"], "eye_in_hand": ["robot0_eye_in_hand", "eye_in_hand"]}


def _strip_assets(xml: str) -> str:
    """The MJCF without assets, includes and mesh/texture references (mesh geoms become small spheres), so
    that a model recorded on another machine compiles; body and camera poses are unchanged."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in ("asset", "include"):
                parent.remove(child)
    for el in root.iter():
        had_mesh = el.attrib.pop("mesh", None) is not None or el.get("type") in ("mesh", "hfield")
        for a in ("material", "texture", "hfield"):
            el.attrib.pop(a, None)
        if el.tag == "geom" and had_mesh:
            el.set("type", "sphere")
            el.set("size", "0.01")
    return ET.tostring(root, encoding="unicode")


def camera_meta(model_xml: str, camera: str, width: int, height: int) -> dict[str, Any] | None:
    """Camera `camera` of an MJCF model given as an XML string: `{"K" (3, 3), "T_world_cam" (4, 4) OpenCV
    camera-to-world, "moving", "width", "height", "fovy_deg", "mjcf_camera"}`, or None when the model has no
    such camera or the camera moves (hangs below a jointed or mocap body: its pose changes per step).

    The pose is MuJoCo's own composition of the camera's `pos`/`quat`/`xyaxes` with its parent bodies at the
    model's reference configuration (`mj_forward`), turned from MuJoCo's -z-forward frame to OpenCV's.
    Raises `SourceError` when MuJoCo cannot compile the XML (e.g. it references mesh files not present).
    """
    import mujoco

    from shardyard.mjcf import find_camera

    try:
        model = mujoco.MjModel.from_xml_string(model_xml)
    except Exception as first:  # typically mesh/texture files of the recording machine: poses need none
        try:
            model = mujoco.MjModel.from_xml_string(_strip_assets(model_xml))
        except Exception:
            raise SourceError(f"MuJoCo cannot load model_file: {str(first).splitlines()[0]}",
                              field="model_file") from first
    cam = find_camera(model, _MJCF_CAMERAS.get(camera, [camera]))
    if cam is None or cam.moving:
        return None
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    R = data.cam_xmat[cam.cam_id].reshape(3, 3) @ GL_TO_CV
    return {"K": intrinsics_from_fovy(cam.fovy_deg, width, height), "T_world_cam": pose_matrix(R, data.cam_xpos[cam.cam_id]),
            "moving": False, "width": width, "height": height, "fovy_deg": cam.fovy_deg, "mjcf_camera": cam.name}
