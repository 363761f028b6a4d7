"""Layouts and metadata of LIBERO / robomimic / robosuite demos (`ingest.libero`): which datasets a demo's
layout stores as which field, the episode meta (task, env info, rate, robot), and an ingest's report notes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_FPS", "LIBERO", "NO_OBS_NOTE", "RAW", "ROBOMIMIC", "add_report_notes", "camera_names",
           "demo_meta", "detect_layout", "field_plan", "file_attrs", "member_paths", "natural_key", "robot_of", "text"]

LIBERO, ROBOMIMIC, RAW = "libero", "robomimic", "raw"
# (layout, hdf5 path under the demo, field, dtype, unit, kind, camera)
_IMAGES = {LIBERO: {"obs/agentview_rgb": "agentview", "obs/eye_in_hand_rgb": "eye_in_hand"},
           ROBOMIMIC: {"obs/agentview_image": "agentview", "obs/robot0_eye_in_hand_image": "eye_in_hand"}}
_VECTORS = {  # hdf5 path -> (field, dtype, unit)
    LIBERO: {"obs/ee_pos": ("obs.eef_pos", "float32", "m"), "obs/joint_states": ("obs.joint_pos", "float32", "rad"),
             "obs/gripper_states": ("obs.gripper_qpos", "float32", "m")},
    ROBOMIMIC: {"obs/robot0_eef_pos": ("obs.eef_pos", "float32", "m"),
                "obs/robot0_eef_quat": ("obs.eef_quat", "float32", None),
                "obs/robot0_joint_pos": ("obs.joint_pos", "float32", "rad"),
                "obs/robot0_gripper_qpos": ("obs.gripper_qpos", "float32", "m")},
}
_COMMON = {"actions": ("action", "float32", "normalised"), "rewards": ("reward", "float32", None),
           "dones": ("done", "uint8", None), "states": ("sim_state", "float64", None)}
DEFAULT_FPS = 20.0
NO_OBS_NOTE = ("holds no observations (raw robosuite demonstration: states and actions only); "
               "replay it in robosuite to render images")
# robots of robosuite v0.x env names ("SawyerLift", "BaxterLift"), whose files do not record the robot
_ROBOT_PREFIX = re.compile(r"^(Sawyer|Baxter|Panda|Jaco|Kinova3|IIWA|UR5e|GR1|Spot|Tiago)")


def camera_names(plan: dict[str, Any]) -> list[str]:
    """Cameras of a `field_plan`: `obs.rgb.<camera>` -> `<camera>`."""
    return [f[len("obs.rgb."):] for f in plan if f.startswith("obs.rgb.")]


def detect_layout(group) -> str:
    """"libero", "robomimic" or "raw" for an h5py demo group."""
    obs = group.get("obs")
    if obs is None:
        return RAW
    if any(k in obs for k in ("agentview_rgb", "ee_ori", "ee_states", "ee_pos", "gripper_states")):
        return LIBERO
    return ROBOMIMIC


def member_paths(g) -> set[str]:
    """Names of demo group `g`'s members and of its `obs` group's (`obs/<name>`): one listing of each group,
    where testing each path `field_plan` looks for with `in` made h5py resolve it (~35 us each)."""
    names = set(g.keys())
    obs = g.get("obs") if "obs" in names else None
    if obs is not None and hasattr(obs, "keys"):
        names |= {f"obs/{k}" for k in obs.keys()}
    return names


def field_plan(g, layout: str) -> dict[str, tuple[str, str, str | None, str]]:
    """What a demo group `g` of `layout` stores: `{field: (hdf5 path under the demo, dtype, unit, kind)}`."""
    plan: dict[str, tuple[str, str, str | None, str]] = {}
    names = member_paths(g)
    for h5, cam in _IMAGES.get(layout, {}).items():
        if h5 in names:
            plan[f"obs.rgb.{cam}"] = (h5, "uint8", None, "image")
    for h5, (fld, dt, unit) in _VECTORS.get(layout, {}).items():
        if h5 in names:
            plan[fld] = (h5, dt, unit, "vector")
    if layout == LIBERO and ("obs/ee_ori" in names or "obs/ee_states" in names):
        plan["obs.eef_quat"] = ("obs/ee_ori" if "obs/ee_ori" in names else "obs/ee_states", "float32", None, "vector")
        if "obs.eef_pos" not in plan and "obs/ee_states" in names:
            plan["obs.eef_pos"] = ("obs/ee_states", "float32", "m", "vector")
    if "obs.gripper_qpos" in plan:
        plan["obs.gripper"] = (plan["obs.gripper_qpos"][0], "float32", "m", "scalar")
    for h5, (fld, dt, unit) in _COMMON.items():
        if h5 in names:
            plan[fld] = (h5, dt, unit, "scalar" if g[h5].ndim == 1 else "vector")
    if layout == RAW:
        for name, ds in g.items():
            if name not in _COMMON and getattr(ds, "ndim", 0) == 2 and ds.shape[1] > 0:
                plan[f"raw.{name}"] = (name, "float32", None, "vector")
    return plan


def text(v: Any) -> str:
    """An HDF5 attribute as `str` (bytes decoded as UTF-8, undecodable bytes replaced)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def natural_key(name: str) -> tuple:
    """Sort key that orders `demo_2` before `demo_10`."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name))


def file_attrs(group) -> dict[str, Any]:
    """The attributes of an h5py group, strings decoded."""
    return {k: text(v) if isinstance(v, (bytes, str)) else v for k, v in group.attrs.items()}


def _env_info(attrs: dict[str, Any]) -> dict[str, Any]:
    env_info: dict[str, Any] = {}
    for name in ("env_args", "env_info"):
        if name in attrs:
            try:
                env_info[name] = json.loads(attrs[name])
            except (json.JSONDecodeError, TypeError):
                env_info[name] = attrs[name]
    for name in ("env", "env_name", "repository_version", "date", "time", "bddl_file_name", "problem_name"):
        if name in attrs:
            env_info[name] = attrs[name]
    return env_info


def robot_of(attrs: dict[str, Any]) -> str | None:
    """The robot(s) of a demo file: `env_info.robots` (robosuite v1), the `robots` of `env_args.env_kwargs`,
    else the robot an env name starts with (robosuite v0.x: "SawyerLift" -> "Sawyer"); None when unknown."""
    info = _env_info(attrs)
    for block in (info.get("env_info"), (info.get("env_args") or {}).get("env_kwargs")
                  if isinstance(info.get("env_args"), dict) else None):
        robots = block.get("robots") if isinstance(block, dict) else None
        if robots:
            return "+".join(map(str, robots)) if isinstance(robots, list) else str(robots)
    m = _ROBOT_PREFIX.match(str(attrs.get("env") or attrs.get("env_name") or ""))
    return m.group(1) if m else None


def demo_meta(key: str, path: str, layout: str, attrs: dict[str, Any], fps: float | None,
              absent: list[str]) -> dict[str, Any]:
    """Meta of one demo: task (LIBERO `problem_info.language_instruction`), fps (`fps`, else 20 Hz, marked
    assumed for robosuite v0.x files, which do not record it), layout, source path, env info, robot, whether
    it holds observations, and `absent_fields` (the store's fields it lacks, recorded as absent)."""
    task = ""
    problem = attrs.get("problem_info")
    if problem:
        try:
            task = json.loads(problem).get("language_instruction", "")
        except (json.JSONDecodeError, AttributeError):
            task = ""
    v0 = str(attrs.get("repository_version", "")).startswith("0.")
    meta: dict[str, Any] = {"task": task, "fps": fps or DEFAULT_FPS, "fps_assumed": fps is None and v0,
                            "layout": layout, "source_path": path, "demo": key.rsplit("/", 1)[-1],
                            "env": _env_info(attrs), "robot": robot_of(attrs), "observations": layout != RAW,
                            "cameras": {}}
    if "bddl_file_content" in attrs:
        meta["bddl_file_content"] = attrs["bddl_file_content"]
    if absent:
        meta["absent_fields"] = list(absent)
    if layout == RAW:
        meta["note"] = NO_OBS_NOTE
    return meta


def add_report_notes(store: str | Path, notes: list[str]) -> None:
    """Add `notes` (plain sentences, e.g. files without observations) to a finished store's `report.json`
    under "notes"; `summarize` prints them. A no-op for an empty list."""
    from shardyard.stores.atomic import atomic_write_json
    from shardyard.stores.manifest import read_json

    if not notes:
        return
    path = Path(store) / "report.json"
    report = read_json(str(path)) if path.exists() else {}
    report["notes"] = list(dict.fromkeys(list(report.get("notes") or []) + list(notes)))
    atomic_write_json(path, report)
