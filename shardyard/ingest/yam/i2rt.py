"""Reader of one episode in the i2rt recorder layout (`../shared/data/yam/LAYOUT.md`).

Files: `metadata.json`, `<arm>-joint_pos.npy (N, 6)` rad, `<arm>-gripper_pos.npy (N, 1)` in [0, 1],
`action-<arm>-joint.npy`, `action-<arm>-gripper.npy`, `<role>-images-<key>.mp4` (H.264) with
`<role>-timestamp.npy (N,)` ms, and `write_complete.flag` written last. The EEF pose is not recorded: it comes
from forward kinematics (`LayoutInputs.kinematics`) at the grasp site; `K` and `T_world_cam` come from the
calibration (`LayoutInputs.calibration`) or else the model's camera for each role.

Alignment: the control steps are the N rows of `<arm>-joint_pos.npy`; their times are the first camera's
timestamps (the LeRobot converter's reference camera). Each stored camera's frames are matched to those
times by nearest timestamp, and a gap above the tolerance is an error, so a dropped or repeated frame is
resolved by time, never by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import SourceError
from shardyard.ingest.inside import plain_name_problem
from shardyard.ingest.readers import load_npy, nearest_frames, read_json
from shardyard.ingest.yam.i2rt_cameras import Stream, camera_poses, stream_camera, streams_of
from shardyard.ingest.yam.layout import I2RT, LayoutInputs, RawEpisode
from shardyard.schema import Episode, FieldSpec

__all__ = ["FLAG", "read_i2rt"]

FLAG = "write_complete.flag"


def _arm_arrays(folder: Path, key: str, arm_names: list[str],
                inputs: LayoutInputs) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """Per arm `q (N, n)` joints rad (n: the robot model's, when given), `g (N, 1)` gripper, `aq`/`ag` leader
    commands, all float64; and N."""
    prefix = {a: "obs" if len(arm_names) == 1 else f"obs.{a}" for a in arm_names}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    N = None
    for arm in arm_names:
        a = {}
        for name, fname, fld in (("q", f"{arm}-joint_pos.npy", f"{prefix[arm]}.joint_pos"),
                                 ("g", f"{arm}-gripper_pos.npy", f"{prefix[arm]}.gripper"),
                                 ("aq", f"action-{arm}-joint.npy", "action"),
                                 ("ag", f"action-{arm}-gripper.npy", "action")):
            arr = load_npy(folder / fname, key, fld)
            if arr.ndim not in (1, 2) or not len(arr):
                raise SourceError(f"array of shape {arr.shape}, expected (N, columns) with N > 0",
                                  path=str(folder / fname), key=key, field=fld)
            arr = arr.reshape(len(arr), -1)
            if N is None:
                N = len(arr)
            if len(arr) != N:
                raise SourceError(f"short or malformed array: shape {arr.shape}, expected {N} rows "
                                  f"(from {arm_names[0]}-joint_pos.npy)", path=str(folder / fname), key=key, field=fld)
            if name == "q":
                _check_joints(folder / fname, key, arm, fld, arr.shape[1], inputs)
            if name in ("g", "ag") and arr.shape[1] != 1:
                raise SourceError(f"gripper array of shape {arr.shape}, expected ({N}, 1)", path=str(folder / fname),
                                  key=key, field=fld)
            if name == "aq" and arr.shape[1] != a["q"].shape[1]:
                raise SourceError(f"{arr.shape[1]} commanded joints but {a['q'].shape[1]} in {arm}-joint_pos.npy",
                                  path=str(folder / fname), key=key, field=fld)
            a[name] = arr.astype(np.float64)
        arrays[arm] = a
    return arrays, N


def _check_joints(path: Path, key: str, arm: str, field: str, columns: int, inputs: LayoutInputs) -> None:
    """An arm's joint columns against the robot model's (forward kinematics sets exactly those joints)."""
    if inputs.kinematics is not None and columns != len(inputs.kinematics.arm(arm).qadr):
        raise SourceError(f"{columns} joint columns, the robot model's {arm} arm has "
                          f"{len(inputs.kinematics.arm(arm).qadr)}", path=str(path), key=key, field=field)


def _control_hz(folder: Path, key: str, meta: dict[str, Any], step_t: np.ndarray, tolerance: float = 0.25) -> float:
    """metadata.json's `control_hz`, checked to be a positive number that agrees with the steps' timestamps
    (median interval within `tolerance`, relative: camera clocks jitter, a wrong rate is off by far more)."""
    where = {"path": str(folder / "metadata.json"), "key": key, "field": "control_hz"}
    raw = meta.get("control_hz", 30.0)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not np.isfinite(raw) or raw <= 0:
        raise SourceError(f"control_hz {raw!r} is not a positive number", **where)
    fps = float(raw)
    dt = np.diff(step_t)
    if len(dt) >= 2 and abs(float(np.median(dt)) * fps - 1.0) > tolerance:
        raise SourceError(f"control_hz {fps:g} contradicts the timestamps (median step {np.median(dt) * 1e3:.1f} ms, "
                          f"{1.0 / np.median(dt):.2f} Hz)", **where)
    return fps


def _metadata(folder: Path, key: str) -> tuple[dict[str, Any], list[str]]:
    """metadata.json and its arm names, once the episode is known to be complete."""
    if not (folder / FLAG).exists():
        raise SourceError(f"incomplete episode: {FLAG} missing (recording crashed or still being written)",
                          path=str(folder), key=key)
    meta = read_json(folder / "metadata.json", key, "metadata")
    arm_names = meta.get("arm_names") or ([meta["arm_name"]] if meta.get("arm_name") else [])
    if not isinstance(arm_names, list) or not all(isinstance(a, str) for a in arm_names):
        raise SourceError(f"arm_names {arm_names!r} is not a list of names", path=str(folder / "metadata.json"),
                          key=key, field="arm_names")
    if not arm_names:
        raise SourceError("metadata.json names no arms (arm_names)", path=str(folder / "metadata.json"), key=key,
                          field="arm_names")
    why = next(filter(None, map(plain_name_problem, arm_names)), None)  # they become parts of file names
    if why:
        raise SourceError(f"arm name {why}", path=str(folder / "metadata.json"), key=key, field="arm_names")
    return meta, arm_names


def _wanted_streams(folder: Path, key: str, meta: dict[str, Any],
                    cameras: tuple[str, ...] | None) -> tuple[list[Stream], list[Stream]]:
    """All recorded streams and the ones to store (`cameras`, or all); raises when a wanted one is missing."""
    cams = meta.get("cameras", [])
    if not isinstance(cams, list) or not all(isinstance(c, dict) and isinstance(c.get("role"), str)
                                             and isinstance(c.get("image_keys") or [], list) for c in cams):
        raise SourceError("cameras must be a list of objects, each with a `role` (and optional `image_keys` list)",
                          path=str(folder / "metadata.json"), key=key, field="cameras")
    streams = streams_of(meta)
    why = next(filter(None, (plain_name_problem(n) for s in streams for n in (s.role, s.image_key))), None)
    if why:
        raise SourceError(f"camera role or image key {why}", path=str(folder / "metadata.json"), key=key,
                          field="cameras")
    if not streams:
        raise SourceError("metadata.json lists no cameras", path=str(folder / "metadata.json"), key=key,
                          field="cameras")
    if cameras is not None:
        missing = set(cameras) - {s.name for s in streams}
        if missing:
            raise SourceError(f"camera(s) {sorted(missing)} not recorded (episode has {[s.name for s in streams]})",
                              path=str(folder / "metadata.json"), key=key, field="cameras")
    return streams, [s for s in streams if cameras is None or s.name in cameras]


class _Timestamps:
    """`<role>-timestamp.npy` in seconds `(n,) float64`, read once per role and checked non-decreasing."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, role: str, field: str) -> np.ndarray:
        if role not in self._cache:
            path = self.folder / f"{role}-timestamp.npy"
            ts = load_npy(path, self.key, field).reshape(-1).astype(np.float64) / 1000.0
            if np.any(np.diff(ts) < 0):
                raise SourceError("timestamps decrease", path=str(path), key=self.key, field=field)
            self._cache[role] = ts
        return self._cache[role]


def _stream_frames(folder: Path, key: str, stream: Stream, step_t: np.ndarray, ts: np.ndarray,
                   inputs: LayoutInputs):
    """The stream's frames nearest in time to each step, `(N, H, W, 3) uint8` (or `EncodedRows`)."""
    fld = f"obs.rgb.{stream.name}"
    video = folder / f"{stream.role}-images-{stream.image_key}.mp4"
    reader = inputs.frames.open(video, key, fld)
    n_video = reader.num_frames
    if n_video != len(ts):
        raise SourceError(f"video has {n_video} frames but {len(ts)} timestamps", path=str(video), key=key, field=fld)
    tol = inputs.timestamp_tolerance_s
    idx, gap = nearest_frames(step_t, ts, tol)
    if gap.max() > tol:
        t_bad = int(np.argmax(gap))
        raise SourceError(f"no frame within {tol * 1000:.0f} ms of step {t_bad} (nearest is "
                          f"{gap[t_bad] * 1000:.0f} ms away; lengths {n_video} frames vs {len(step_t)} steps)",
                          path=str(video), key=key, field=fld)
    return inputs.frames.video_frames(reader, idx, key, fld, inputs.encodings.get(fld))


def _arm_fields(arm_names: list[str], arrays: dict[str, dict[str, np.ndarray]], fk: dict[str, np.ndarray],
                steps: dict[str, Any], specs: dict[str, FieldSpec]) -> None:
    """Add each arm's joint_pos, gripper (and eef_pos/eef_quat from `fk`), then `action`, to steps/specs."""
    for arm in arm_names:
        p = "obs" if len(arm_names) == 1 else f"obs.{arm}"
        q = arrays[arm]["q"]
        steps[f"{p}.joint_pos"] = q.astype(np.float32)
        specs[f"{p}.joint_pos"] = FieldSpec("float32", (q.shape[1],), "rad", "vector",
                                            tuple(f"joint{k + 1}" for k in range(q.shape[1])))
        steps[f"{p}.gripper"] = arrays[arm]["g"][:, 0].astype(np.float32)
        specs[f"{p}.gripper"] = FieldSpec("float32", (), "normalised", "scalar", description="0 closed, 1 open")
        if fk:
            steps[f"{p}.eef_pos"] = fk[f"{arm}.eef_pos"].astype(np.float32)
            specs[f"{p}.eef_pos"] = FieldSpec("float32", (3,), "m", "vector", ("x", "y", "z"))
            steps[f"{p}.eef_quat"] = fk[f"{arm}.eef_quat"].astype(np.float32)
            specs[f"{p}.eef_quat"] = FieldSpec("float32", (4,), None, "vector", ("qx", "qy", "qz", "qw"))
    action = np.concatenate([np.concatenate([arrays[a]["aq"], arrays[a]["ag"]], axis=1) for a in arm_names], axis=1)
    steps["action"] = action.astype(np.float32)
    names = tuple(f"{a}_{n}" for a in arm_names for n in
                  [f"joint{k + 1}" for k in range(arrays[a]["aq"].shape[1])] + ["gripper"])
    specs["action"] = FieldSpec("float32", (action.shape[1],), None, "vector", names,
                                "commanded (leader) joints in rad and gripper in [0, 1], per arm")


def read_i2rt(folder: Path, key: str, inputs: LayoutInputs) -> RawEpisode:
    """One recorder episode: `timestamp` (s since the first step), `obs.rgb.<stream>` per stored camera,
    `obs.T_world_cam.<stream>` for a moving one, and per arm joint_pos, gripper, eef_pos/eef_quat (with a robot
    model), and `action`. Raises `SourceError` naming file, episode and field for an incomplete episode (no
    `write_complete.flag`), a metadata.json that is not an object or has malformed `arm_names`/`cameras`, a
    missing/short/non-finite/non-numeric array, joint columns other than the robot model's, a gripper with
    more than one column, decreasing timestamps, a `control_hz` that is not a positive number or contradicts
    the timestamps (median step more than 25 % off), an undecodable video, or frames that cannot be matched
    to the steps within `inputs.timestamp_tolerance_s`."""
    meta, arm_names = _metadata(folder, key)
    arrays, N = _arm_arrays(folder, key, arm_names, inputs)
    if meta.get("num_frames") not in (None, N):
        raise SourceError(f"metadata num_frames={meta['num_frames']} but arrays have {N} rows",
                          path=str(folder / "metadata.json"), key=key, field="num_frames")
    streams, wanted = _wanted_streams(folder, key, meta, inputs.cameras)
    timestamps = _Timestamps(folder, key)
    ref_role = streams[0].role
    step_t = timestamps(ref_role, "timestamp")
    if len(step_t) != N:
        raise SourceError(f"reference camera '{ref_role}' has {len(step_t)} timestamps for {N} steps",
                          path=str(folder / f"{ref_role}-timestamp.npy"), key=key, field="timestamp")
    fps = _control_hz(folder, key, meta, step_t)
    steps: dict[str, Any] = {"timestamp": step_t - step_t[0]}
    specs = {"timestamp": FieldSpec("float64", (), "s", "scalar", description="time since the first step")}
    geometry = camera_poses(inputs, wanted, arm_names, arrays)
    cameras_meta: dict[str, Any] = {}
    for stream in wanted:
        fld = f"obs.rgb.{stream.name}"
        ts = timestamps(stream.role, fld)
        frames = _stream_frames(folder, key, stream, step_t, ts, inputs)
        h, w = frames.shape[1:3]
        steps[fld] = frames
        specs[fld] = FieldSpec("uint8", (h, w, 3), None, "image")
        cameras_meta[stream.name], pose = stream_camera(inputs, stream, (w, h), geometry)
        if pose is not None:
            steps[f"obs.T_world_cam.{stream.name}"] = pose.astype(np.float32)
            specs[f"obs.T_world_cam.{stream.name}"] = FieldSpec("float32", (4, 4), "m", "pose")
    _arm_fields(arm_names, arrays, geometry.fk, steps, specs)
    ep_meta = {
        "task": str(meta.get("task_name", "")), "fps": fps, "layout": I2RT,
        "source_path": str(folder), "arms": arm_names, "created_at": meta.get("created_at"),
        "recorder_version": meta.get("yam_abc_reproduce_version"), "cameras": cameras_meta,
        "eef_site": inputs.kinematics.arm(arm_names[0]).site if geometry.fk else None,
    }
    return RawEpisode(Episode(key=key, steps=steps, meta=ep_meta), specs)
