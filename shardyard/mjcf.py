"""Forward kinematics and cameras of an MJCF robot model, through MuJoCo.

Used by the YAM adapter (the recorder stores joints only: the EEF pose comes from FK at the grasp site;
LAYOUT.md section 7) and by any adapter whose cameras are described by an MJCF model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.geometry import GL_TO_CV, intrinsics_from_fovy, pose_matrix, quat_from_matrix, sign_continuous

__all__ = ["ArmJoints", "CameraModel", "RobotKinematics", "camera_K", "find_camera", "forward_kinematics",
           "load_model"]


def load_model(path: str | Path):
    """Load an MJCF file with MuJoCo. Raises `ConfigError(path=...)` when it is missing or does not load."""
    import mujoco

    if not Path(path).exists():
        raise ConfigError("robot model file not found", path=str(path))
    try:
        return mujoco.MjModel.from_xml_path(str(path))
    except Exception as e:
        raise ConfigError(f"MuJoCo cannot load the model: {e}", path=str(path)) from e


@dataclass(frozen=True)
class CameraModel:
    """One camera of the model: name, whether it moves with a jointed body, and its fovy (degrees)."""

    name: str
    cam_id: int
    moving: bool
    fovy_deg: float
    body: str


def _name(model, objtype, i: int) -> str:
    import mujoco

    return mujoco.mj_id2name(model, objtype, i) or ""


def find_camera(model, candidates: list[str]) -> CameraModel | None:
    """First MuJoCo `<camera>` whose name is in `candidates`, or None."""
    import mujoco

    for name in candidates:
        cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cid < 0:
            continue
        body = int(model.cam_bodyid[cid])
        moving = False
        b = body
        while b > 0:
            if model.body_jntnum[b] > 0 or model.body_mocapid[b] >= 0:
                moving = True
                break
            b = int(model.body_parentid[b])
        return CameraModel(name=name, cam_id=cid, moving=moving, fovy_deg=float(model.cam_fovy[cid]),
                           body=_name(model, mujoco.mjtObj.mjOBJ_BODY, body))
    return None


class ArmJoints:
    """Joint addresses of one arm: `<arm>_joint1..n` (radians) and the coupled finger slides, driven by a
    normalised gripper in [0, 1] (`q = gripper * upper_limit`, as i2rt's simulator maps it), plus its grasp
    site (`eef_site`, else `tcp_<arm>`, else `grasp_site`). Raises `ConfigError` when a joint or the site is
    not in the model."""

    def __init__(self, model, arm: str, eef_site: str | None, num_joints: int = 6) -> None:
        import mujoco

        sites = [eef_site] if eef_site else [f"tcp_{arm}", "grasp_site", f"{arm}_grasp_site"]
        self.site_id, self.site = -1, ""
        for s in sites:
            sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, s)
            if sid >= 0:
                self.site_id, self.site = sid, s
                break
        if self.site_id < 0:
            raise ConfigError(f"no grasp site among {sites} in the robot model")
        self.qadr = []
        for k in range(1, num_joints + 1):
            jid = -1
            for name in (f"{arm}_joint{k}", f"joint{k}"):
                jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
                if jid >= 0:
                    break
            if jid < 0:
                raise ConfigError(f"joint {arm}_joint{k} not in the robot model")
            self.qadr.append(int(model.jnt_qposadr[jid]))
        self.finger = []
        for k in (num_joints + 1, num_joints + 2):
            for name in (f"{arm}_joint{k}", f"joint{k}"):
                jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
                if jid >= 0:
                    self.finger.append((int(model.jnt_qposadr[jid]), float(model.jnt_range[jid][1])))
                    break


class RobotKinematics:
    """One MJCF robot model, loaded on first use, and the `ArmJoints` of each arm asked for (cached), so a
    worker process compiles the model once for all the episodes it reads.

    path: the MJCF file; eef_site: the grasp site of every arm (None: `tcp_<arm>`, else `grasp_site`). Raises
    `ConfigError` (from `load_model` / `ArmJoints`) when the model does not load or lacks a joint or site.
    """

    def __init__(self, path: str | Path, eef_site: str | None = None) -> None:
        self.path = Path(path)
        self.eef_site = eef_site
        self._model = None
        self._arms: dict[str, ArmJoints] = {}

    @property
    def model(self):
        """The compiled `mujoco.MjModel` (loaded by the first use)."""
        return self.load()

    def load(self):
        """Compile the model now, if not done yet, and return it (a worker warms up with this)."""
        if self._model is None:
            self._model = load_model(self.path)
        return self._model

    def arm(self, name: str) -> ArmJoints:
        """Joint addresses and grasp site of arm `name` (e.g. "left")."""
        if name not in self._arms:
            self._arms[name] = ArmJoints(self.model, name, self.eef_site)
        return self._arms[name]


def forward_kinematics(model, arms: dict[str, tuple[ArmJoints, np.ndarray, np.ndarray | None]],
                       cameras: list[CameraModel], bodies: list[str] = (), *,
                       qpos: np.ndarray | None = None, data=None) -> dict[str, np.ndarray]:
    """Pose every arm's grasp site and every camera over a trajectory, all arms set together.

    `arms[name] = (ArmJoints, joint_pos (T, n) rad, gripper (T,) in [0, 1] or None)`. `qpos (T, nq)`, when
    given, sets the whole configuration per step first (e.g. from a recorded MuJoCo sim state; `arms` may then
    be empty). `data`: a `mujoco.MjData` of `model` to compute in (one is made when None; with `qpos`, no
    earlier contents of it matter, as every step sets the whole configuration). Returns `<arm>.eef_pos
    (T, 3)` metres, `<arm>.eef_quat (T, 4)` xyzw (sign-continuous), `T_world_cam.<camera> (T, 4, 4)`
    (OpenCV convention) and `T_world_body.<body> (T, 4, 4)`. Raises
    `ConfigError` when neither arms nor qpos are given, or qpos is not `(T, nq)`.
    """
    import mujoco

    d = mujoco.MjData(model) if data is None else data
    if qpos is not None:
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.ndim != 2 or qpos.shape[1] != model.nq:
            raise ConfigError(f"qpos has shape {qpos.shape}, expected (T, {model.nq})")
        T = len(qpos)
    elif arms:
        T = len(next(iter(arms.values()))[1])
    else:
        raise ConfigError("forward_kinematics needs arms or qpos")
    # cameras that track a body or the centre of mass need mj_comPos; fixed-mode cameras do not
    com = any(int(model.cam_mode[c.cam_id]) != int(mujoco.mjtCamLight.mjCAMLIGHT_FIXED) for c in cameras)
    body_ids = {b: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b) for b in bodies}
    for b, i in body_ids.items():
        if i < 0:
            raise ConfigError(f"body {b!r} not in the robot model")
    # Per step only MuJoCo's own outputs are copied out (position (3,) and row-major rotation (9,) of each
    # site, camera and body); the 4x4 poses are assembled for all steps at once after the loop, which took
    # the Python cost of a step from ~25 to ~10 us (the same float64 values: GL_TO_CV only flips signs).
    sites = [joints.site_id for joints, _, _ in arms.values()]
    site_pos, site_mat = np.zeros((T, len(sites), 3)), np.zeros((T, len(sites), 9))
    cam_ids = [c.cam_id for c in cameras]
    cam_pos, cam_mat = np.zeros((T, len(cam_ids), 3)), np.zeros((T, len(cam_ids), 9))
    bids = list(body_ids.values())
    body_pos, body_mat = np.zeros((T, len(bids), 3)), np.zeros((T, len(bids), 9))
    for t in range(T):
        if qpos is not None:
            d.qpos[:] = qpos[t]
        for joints, q, g in arms.values():
            d.qpos[joints.qadr] = q[t]
            if g is not None:
                for adr, upper in joints.finger:
                    d.qpos[adr] = float(g[t]) * upper
        mujoco.mj_kinematics(model, d)
        if com:
            mujoco.mj_comPos(model, d)
        mujoco.mj_camlight(model, d)
        if sites:
            site_pos[t], site_mat[t] = d.site_xpos[sites], d.site_xmat[sites]
        if cam_ids:
            cam_pos[t], cam_mat[t] = d.cam_xpos[cam_ids], d.cam_xmat[cam_ids]
        if bids:
            body_pos[t], body_mat[t] = d.xpos[bids], d.xmat[bids]
    out: dict[str, np.ndarray] = {}
    for k, a in enumerate(arms):
        out[f"{a}.eef_pos"] = site_pos[:, k].copy()
        out[f"{a}.eef_quat"] = sign_continuous(quat_from_matrix(site_mat[:, k].reshape(T, 3, 3)))
    for k, c in enumerate(cameras):
        out[f"T_world_cam.{c.name}"] = pose_matrix(cam_mat[:, k].reshape(T, 3, 3) @ GL_TO_CV, cam_pos[:, k])
    for k, b in enumerate(body_ids):
        out[f"T_world_body.{b}"] = pose_matrix(body_mat[:, k].reshape(T, 3, 3), body_pos[:, k])
    return out


def camera_K(camera: CameraModel, width: int, height: int) -> np.ndarray:
    """Intrinsics of a MuJoCo camera rendered at `width` x `height` pixels."""
    if not np.isfinite(camera.fovy_deg) or camera.fovy_deg <= 0:
        raise SourceError(f"camera {camera.name} has no valid fovy")
    return intrinsics_from_fovy(camera.fovy_deg, width, height)
