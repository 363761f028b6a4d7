"""Factory of LIBERO-layout HDF5 files (LIBERO `scripts/create_dataset.py`, SOURCES.md section 1).

The `model_file` is a mesh-free MJCF whose `agentview` camera sits inside nested, rotated bodies and whose
`robot0_eye_in_hand` camera hangs below two hinge joints (j1, j2). Images are stored the "opengl" way (upside
down); each frame has a white 3x3 marker where the EEF projects, computed here from MuJoCo's camera
(cam_xpos/cam_xmat, -z forward, y up), independently of the adapter. `states` are, as robosuite writes them,
the flattened MuJoCo state `[time, qpos, qvel]` of MODEL_XML along a smooth joint trajectory (`model_states`).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

MODEL_XML = """
<mujoco model="libero_fixture">
  <worldbody>
    <body name="table" pos="0.1 -0.2 0.3" quat="0.9238795 0 0 0.3826834">
      <body name="mount" pos="0.4 0.1 0.5" euler="0.3 -0.2 0.5">
        <body name="rig" pos="0.2 0.0 0.3" axisangle="0 1 0 0.7">
          <camera name="agentview" pos="0.3 -0.1 0.2" xyaxes="0.8 0.6 0 -0.3 0.4 0.866" fovy="45"/>
        </body>
      </body>
    </body>
    <body name="robot0_base" pos="0 0 0.9">
      <joint name="j1" type="hinge" axis="0 0 1"/>
      <geom type="capsule" size="0.03 0.2"/>
      <body name="robot0_hand" pos="0.3 0 0.2">
        <joint name="j2" type="hinge" axis="0 1 0"/>
        <geom type="box" size="0.02 0.02 0.02"/>
        <camera name="robot0_eye_in_hand" pos="0.05 0.01 -0.02" xyaxes="0 -1 0 0.5 0 0.866" fovy="75"/>
      </body>
    </body>
  </worldbody>
</mujoco>
"""


def mujoco_camera(xml: str = MODEL_XML, name: str = "agentview") -> tuple[np.ndarray, np.ndarray, float]:
    """(cam_xpos (3,), cam_xmat (3, 3), fovy deg) of a camera after `mj_forward`."""
    import mujoco

    m = mujoco.MjModel.from_xml_string(xml)
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    cid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, name)
    return d.cam_xpos[cid].copy(), d.cam_xmat[cid].reshape(3, 3).copy(), float(m.cam_fovy[cid])


def gl_pixel(p_world: np.ndarray, size: int, xml: str = MODEL_XML) -> np.ndarray:
    """Upright-image pixel (u, v) of world points `(n, 3)` through the GL camera: (n, 2)."""
    pos, R, fovy = mujoco_camera(xml)
    pc = (p_world - pos) @ R              # camera frame: x right, y up, looking down -z
    f = (size / 2.0) / np.tan(np.deg2rad(fovy) / 2.0)
    c = (size - 1) / 2.0
    return np.stack([c + f * pc[:, 0] / -pc[:, 2], c - f * pc[:, 1] / -pc[:, 2]], axis=1)


def eef_path(steps: int, seed: int) -> np.ndarray:
    """EEF positions (steps, 3) m in front of the agentview camera."""
    pos, R, _ = mujoco_camera()
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, steps)[:, None]
    cam = np.concatenate([0.15 * np.sin(2 * np.pi * t + seed), 0.1 * np.cos(2 * np.pi * t), -1.0 - 0.2 * t], 1)
    cam += rng.normal(0, 0.005, cam.shape)
    return pos + cam @ R.T


def model_states(steps: int, seed: int, xml: str = MODEL_XML, fps: float = 20.0) -> np.ndarray:
    """Flattened MuJoCo states `(steps, 1 + nq + nv)` float64, `[time s, qpos rad, qvel rad/s]`, of `xml`
    along a smooth joint trajectory (sines of about 0.5-1 rad; qvel its time derivative)."""
    import mujoco

    m = mujoco.MjModel.from_xml_string(xml)
    if m.nv != m.nq:
        raise ValueError("model_states handles hinge/slide joints only (nq == nv)")
    t = np.arange(steps) / fps
    k = np.arange(m.nq)[None, :]
    w = 2 * np.pi * (0.3 + 0.1 * k)
    phase = 0.7 * seed + k
    qpos = (0.5 + 0.3 * k) * np.sin(w * t[:, None] + phase) + 0.2
    qvel = (0.5 + 0.3 * k) * w * np.cos(w * t[:, None] + phase)
    return np.concatenate([t[:, None], qpos, qvel], axis=1)


def write_libero_file(path: Path, *, num_demos: int = 3, steps: int = 20, size: int = 64, seed: int = 0,
                      task: str = "put the bowl on the plate", marker: bool = True,
                      state_dim: int | None = None) -> Path:
    """Write one `<TASK>_demo.hdf5` in LIBERO's processed layout; returns its path.

    `states` are MODEL_XML's `[time, qpos, qvel]` (`model_states`, 5 columns), so the adapter can pose the
    wrist camera from them. `state_dim`, when given and different from that width, imitates a state that does
    not match the model (e.g. another scene's): the model's state followed by random columns up to
    `state_dim`, or its first `state_dim` columns; the adapter then stores no wrist pose for those demos.
    """
    from scipy.spatial.transform import Rotation

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = [steps + (i % 3) for i in range(num_demos)]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update({
            "env_name": "Libero_Tabletop_Manipulation",
            "problem_info": json.dumps({"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
                                        "language_instruction": task}),
            "macros_image_convention": "opengl", "bddl_file_name": "fixture.bddl",
            "bddl_file_content": "(define (problem fixture))",
            "env_args": json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation",
                                    "problem_name": "fixture", "bddl_file": "fixture.bddl", "env_kwargs": {}}),
            "num_demos": num_demos, "total": sum(lengths)})
        for i, T in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            states = model_states(T, seed * 100 + i)
            if state_dim is not None and state_dim != states.shape[1]:
                states = (np.concatenate([states, rng.normal(size=(T, state_dim - states.shape[1]))], axis=1)
                          if state_dim > states.shape[1] else states[:, :state_dim])
            g.attrs.update({"num_samples": T, "model_file": MODEL_XML, "init_state": states[0]})
            pos = eef_path(T, seed * 100 + i)
            rotvec = Rotation.from_euler("xyz", rng.normal(0, 0.5, (T, 3))).as_rotvec()
            grip = np.stack([np.linspace(0.04, 0.0, T), -np.linspace(0.04, 0.0, T)], 1)
            img = rng.integers(0, 120, (T, size, size, 3), dtype=np.uint8)
            if marker:
                uv = np.round(gl_pixel(pos, size)).astype(int)
                for t, (u, v) in enumerate(uv):
                    r = size - 1 - v                 # opengl: row 0 is the bottom of the picture
                    img[t, max(r - 1, 0):r + 2, max(u - 1, 0):u + 2] = 255
            obs = g.create_group("obs")
            obs["agentview_rgb"] = img
            obs["eye_in_hand_rgb"] = rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8)
            obs["ee_pos"] = pos
            obs["ee_ori"] = rotvec
            obs["ee_states"] = np.concatenate([pos, rotvec], 1)
            obs["gripper_states"] = grip
            obs["joint_states"] = rng.normal(0, 1, (T, 7))
            g["actions"] = np.clip(rng.normal(0, 0.5, (T, 7)), -1, 1)
            g["rewards"] = np.eye(T, dtype=np.uint8)[-1]
            g["dones"] = np.eye(T, dtype=np.uint8)[-1]
            g["states"] = states
            g["robot_states"] = np.concatenate([grip, pos, Rotation.from_rotvec(rotvec).as_quat()], 1)
    return path


def write_libero_suite(root: Path, *, num_files: int = 2, state_dim_step: int = 3, **kwargs) -> Path:
    """A folder of LIBERO task files (different state widths, as different scenes have: 40 + step i columns,
    none matching MODEL_XML, so these stores hold no wrist pose field; `state_dim_step=0`: one scene)."""
    for i in range(num_files):
        write_libero_file(root / f"TASK_{i}_demo.hdf5", seed=i, state_dim=40 + state_dim_step * i,
                          task=f"task number {i}", **kwargs)
    return root
