"""Synthetic YAM-style demos for the demo and the tests. **Synthetic data, not robot recordings.**

`write_synthetic_yam` writes episodes in seed 001's per-demo layout (see `shardyard.ingest.yam`): a pick
and place trajectory of the EEF (metres, world z up), a quaternion that yaws about a downward-pointing
approach axis, a gripper that closes on the object and opens at the place point, and frames rendered with
a pinhole camera so that the drawn gripper sits exactly where `K` and `T_world_cam` project the EEF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from shardyard.geometry import intrinsics_from_fovy, project

__all__ = ["SyntheticConfig", "SYNTHETIC_TASKS", "default_camera", "look_at", "render", "synthetic_trajectory",
           "write_synthetic_yam"]

SYNTHETIC_TASKS = ("put the red block on the blue plate", "stack the green block on the yellow block")


@dataclass
class SyntheticConfig:
    """Size of the synthetic set: episodes, steps per episode (varied by up to +-20 %), image size (px),
    frame rate (Hz), and whether frames go to an mp4 (else a `frames/` folder of PNGs)."""

    num_episodes: int = 8
    steps: int = 60
    width: int = 160
    height: int = 120
    fps: float = 15.0
    video: bool = True
    seed: int = 0


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV-convention `T_world_cam (4, 4)` of a camera at `eye` looking at `target` (metres)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def default_camera(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """`K (3, 3)` (fovy 60 deg) and `T_world_cam (4, 4)` of the synthetic scene's fixed camera."""
    return intrinsics_from_fovy(60.0, width, height), look_at(np.array([0.05, 0.0, 0.6]), np.array([0.45, 0.0, 0.0]))


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n)[:, None]
    s = 10 * s**3 - 15 * s**4 + 6 * s**5
    return a + (b - a) * s


def synthetic_trajectory(rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
    """EEF `pos (T, 3)` m, `quat (T, 4)` xyzw and `gripper (T,)` in [0, 1] for one pick and place."""
    pick = np.array([rng.uniform(0.35, 0.55), rng.uniform(-0.15, 0.15), 0.02])
    place = np.array([rng.uniform(0.35, 0.55), rng.uniform(-0.15, 0.15), 0.05])
    home = np.array([0.3, 0.0, 0.3])
    above = lambda p: p + np.array([0.0, 0.0, 0.15])  # noqa: E731
    way = [home, above(pick), pick, above(pick), above(place), place, above(place)]
    seg = np.diff(np.linspace(0, steps, len(way)).astype(int))
    seg[-1] += steps - seg.sum()
    pos = np.concatenate([_min_jerk(way[i], way[i + 1], seg[i]) for i in range(len(way) - 1)])
    phase = np.concatenate([np.full(seg[i], i) for i in range(len(seg))])
    grip = np.where((phase >= 2) & (phase <= 4), 0.4, 1.0)
    yaw = np.deg2rad(rng.uniform(-40, 40)) + np.linspace(0, np.deg2rad(rng.uniform(-30, 30)), steps)
    down = Rotation.from_euler("x", 180, degrees=True)
    quat = (Rotation.from_euler("z", yaw[:, None]) * down).as_quat()
    return {"pos": pos, "quat": quat, "gripper": grip}


def render(pos: np.ndarray, gripper: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int,
           objects: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    """Frames `(T, H, W, 3) uint8`: table, coloured objects, and the gripper (a dark disc with two fingers
    whose gap follows `gripper`) centred on the projection of `pos (T, 3)`."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.zeros((height, width, 3), np.uint8)
    base[...] = (200, 190, 170)
    base[(xx // 16 + yy // 16) % 2 == 0] = (190, 180, 160)
    for centre, colour in objects:
        (u, v), z = project(centre, K, T_world_cam)
        r = max(2.0, 0.03 * K[0, 0] / max(z, 1e-3))
        base[(xx - u) ** 2 + (yy - v) ** 2 <= r * r] = colour
    pix, depth = project(pos, K, T_world_cam)
    frames = np.repeat(base[None], len(pos), axis=0)
    for t, ((u, v), z) in enumerate(zip(pix, depth)):
        r = max(2.0, 0.025 * K[0, 0] / max(z, 1e-3))
        img = frames[t]
        gap = r * (0.6 + 1.2 * gripper[t])
        for side in (-1, 1):
            img[(np.abs(xx - (u + side * gap)) <= max(1, r / 3)) & (np.abs(yy - v) <= 1.5 * r)] = (90, 90, 100)
        img[(xx - u) ** 2 + (yy - v) ** 2 <= r * r] = (30, 30, 40)
    return frames


def write_synthetic_yam(root: str | Path, config: SyntheticConfig | None = None) -> list[Path]:
    """Write `config.num_episodes` synthetic episodes under `root/<task_slug>/demo_XXXX/` in the per-demo
    layout; returns their folders. Deterministic for a given config."""
    from PIL import Image

    from shardyard.video import write_video

    cfg = config or SyntheticConfig()
    root = Path(root)
    rng = np.random.default_rng(cfg.seed)
    K, T_world_cam = default_camera(cfg.width, cfg.height)
    folders = []
    for e in range(cfg.num_episodes):
        task = SYNTHETIC_TASKS[e % len(SYNTHETIC_TASKS)]
        folder = root / task.replace(" ", "_") / f"demo_{e:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        steps = int(cfg.steps * rng.uniform(0.8, 1.2))
        traj = synthetic_trajectory(rng, steps)
        objects = [(traj["pos"][int(steps * 2 / 6)] * [1, 1, 0], (200, 40, 40)),
                   (traj["pos"][int(steps * 5 / 6)] * [1, 1, 0], (40, 60, 200))]
        frames = render(traj["pos"], traj["gripper"], K, T_world_cam, cfg.width, cfg.height, objects)
        np.save(folder / "eef_pos.npy", traj["pos"])
        np.save(folder / "eef_quat.npy", traj["quat"])
        np.save(folder / "gripper.npy", traj["gripper"])
        np.save(folder / "action.npy", np.concatenate([traj["pos"][1:], traj["pos"][-1:]]))
        (folder / "camera.json").write_text(json.dumps(
            {"name": "front", "K": K.tolist(), "T_world_cam": T_world_cam.tolist(),
             "width": cfg.width, "height": cfg.height}))
        (folder / "meta.json").write_text(json.dumps({"task": task, "fps": cfg.fps, "synthetic": True}))
        if cfg.video:
            write_video(folder / "rgb.mp4", frames, fps=cfg.fps)
        else:
            (folder / "frames").mkdir(exist_ok=True)
            for t, img in enumerate(frames):
                Image.fromarray(img).save(folder / "frames" / f"{t:06d}.png")
        folders.append(folder)
    return folders
