"""Reader of one episode in the i2rt recorder layout (`../shared/data/yam/LAYOUT.md`), for `YamSource`.

Alignment: the control steps are the N rows of `<arm>-joint_pos.npy`; their times are the first camera's
timestamps (the LeRobot converter's reference camera). Each stored camera's frames are matched to those
times by nearest timestamp, and a gap above the tolerance is an error, so a dropped or repeated frame is
resolved by time, never by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shardyard.errors import SourceError
from shardyard.geometry import scale_intrinsics
from shardyard.schema import Episode, FieldSpec

if TYPE_CHECKING:
    from shardyard.ingest.yam import YamSource
    from shardyard.stores.frame_encoding import FrameEncoding

FLAG = "write_complete.flag"


def _streams(meta: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(stream name, image key, camera meta) per video: `role` for mono, `<role>_<key>` for stereo."""
    out = []
    for cam in meta.get("cameras", []):
        keys = cam.get("image_keys") or ["rgb"]
        for k in keys:
            out.append((cam["role"] if k == "rgb" else f"{cam['role']}_{k}", k, cam))
    return out


def _camera_for(source: "YamSource", model, stream: str, cam: dict[str, Any], arm_names: list[str]):
    from shardyard.mjcf import find_camera

    candidates = [cam.get("name", ""), stream, cam["role"]] + [f"{a}_{cam['role']}" for a in arm_names]
    return find_camera(model, [c for c in candidates if c])


def read_i2rt_episode(source: "YamSource", folder: Path, key: str,
                      encodings: dict[str, "FrameEncoding"] | None = None) -> Episode:
    """Read one recorder episode; see `YamSource.read` for the errors raised, and `read_encoded` for
    `encodings`."""
    from shardyard.ingest.yam import _load_npy, _read_json, nearest_frames

    cfg = source.cfg
    if not (folder / FLAG).exists():
        raise SourceError(f"incomplete episode: {FLAG} missing (recording crashed or still being written)",
                          path=str(folder), key=key)
    meta = _read_json(folder / "metadata.json", key, "metadata")
    arm_names = meta.get("arm_names") or ([meta["arm_name"]] if meta.get("arm_name") else [])
    if not arm_names:
        raise SourceError("metadata.json names no arms (arm_names)", path=str(folder / "metadata.json"), key=key,
                          field="arm_names")
    single = len(arm_names) == 1
    prefix = {a: "obs" if single else f"obs.{a}" for a in arm_names}
    steps: dict[str, np.ndarray] = {}
    specs: dict[str, FieldSpec] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    N = None
    for arm in arm_names:
        a = {}
        for name, fname, fld in (("q", f"{arm}-joint_pos.npy", f"{prefix[arm]}.joint_pos"),
                                 ("g", f"{arm}-gripper_pos.npy", f"{prefix[arm]}.gripper"),
                                 ("aq", f"action-{arm}-joint.npy", "action"),
                                 ("ag", f"action-{arm}-gripper.npy", "action")):
            arr = _load_npy(folder / fname, key, fld)
            arr = arr.reshape(len(arr), -1) if arr.ndim else arr
            if N is None:
                N = len(arr)
            if arr.ndim != 2 or len(arr) != N:
                raise SourceError(f"short or malformed array: shape {arr.shape}, expected {N} rows "
                                  f"(from {arm_names[0]}-joint_pos.npy)", path=str(folder / fname), key=key, field=fld)
            a[name] = arr.astype(np.float64)
        arrays[arm] = a
    assert N is not None
    if N == 0:
        raise SourceError("episode has 0 steps", path=str(folder), key=key)
    if meta.get("num_frames") not in (None, N):
        raise SourceError(f"metadata num_frames={meta['num_frames']} but arrays have {N} rows",
                          path=str(folder / "metadata.json"), key=key, field="num_frames")

    streams = _streams(meta)
    if not streams:
        raise SourceError("metadata.json lists no cameras", path=str(folder / "metadata.json"), key=key, field="cameras")
    wanted = [s for s in streams if cfg.cameras is None or s[0] in cfg.cameras]
    if cfg.cameras is not None:
        missing = set(cfg.cameras) - {s[0] for s in streams}
        if missing:
            raise SourceError(f"camera(s) {sorted(missing)} not recorded (episode has {[s[0] for s in streams]})",
                              path=str(folder / "metadata.json"), key=key, field="cameras")
    ts_cache: dict[str, np.ndarray] = {}

    def timestamps(role: str, fld: str) -> np.ndarray:
        if role not in ts_cache:
            ts = _load_npy(folder / f"{role}-timestamp.npy", key, fld).reshape(-1).astype(np.float64) / 1000.0
            if np.any(np.diff(ts) < 0):
                raise SourceError("timestamps decrease", path=str(folder / f"{role}-timestamp.npy"), key=key, field=fld)
            ts_cache[role] = ts
        return ts_cache[role]

    ref_role = streams[0][2]["role"]
    step_t = timestamps(ref_role, "timestamp")
    if len(step_t) != N:
        raise SourceError(f"reference camera '{ref_role}' has {len(step_t)} timestamps for {N} steps",
                          path=str(folder / f"{ref_role}-timestamp.npy"), key=key, field="timestamp")
    steps["timestamp"] = step_t - step_t[0]
    specs["timestamp"] = FieldSpec("float64", (), "s", "scalar", description="time since the first step")

    cam_models = {}
    fk_cams = []
    if cfg.robot_model is not None:
        model = source._kinematics(arm_names[0]) and source._kin["model"]
        for stream, _, cam in wanted:
            cm = _camera_for(source, model, stream, cam, arm_names)
            if cm is not None:
                cam_models[stream] = cm
                fk_cams.append(cm)

    calib = (source._calibration or {}).get("cameras", {})
    fk: dict[str, np.ndarray] = {}
    if cfg.robot_model is not None:
        from shardyard.mjcf import forward_kinematics

        bodies = sorted({c["link"] for s, _, cm in wanted for c in [calib.get(s) or calib.get(cm["role"]) or {}]
                         if "link" in c})
        fk = forward_kinematics(source._kin["model"],
                                {a: (source._kinematics(a), arrays[a]["q"], arrays[a]["g"][:, 0]) for a in arm_names},
                                list({c.name: c for c in fk_cams}.values()), bodies)

    cameras_meta: dict[str, Any] = {}
    for stream, img_key, cam in wanted:
        fld = f"obs.rgb.{stream}"
        video = folder / f"{cam['role']}-images-{img_key}.mp4"
        ts = timestamps(cam["role"], fld)
        reader = source._open(video, key, fld)
        n_video = reader.num_frames
        if n_video != len(ts):
            raise SourceError(f"video has {n_video} frames but {len(ts)} timestamps", path=str(video), key=key, field=fld)
        idx, gap = nearest_frames(step_t, ts, cfg.timestamp_tolerance_s)
        if gap.max() > cfg.timestamp_tolerance_s:
            t_bad = int(np.argmax(gap))
            raise SourceError(f"no frame within {cfg.timestamp_tolerance_s * 1000:.0f} ms of step {t_bad} "
                              f"(nearest is {gap[t_bad] * 1000:.0f} ms away; lengths {n_video} frames vs {N} steps)",
                              path=str(video), key=key, field=fld)
        frames = source._frames(reader, idx, key, fld, (encodings or {}).get(fld))
        h, w = frames.shape[1:3]
        steps[fld] = frames
        specs[fld] = FieldSpec("uint8", (h, w, 3), None, "image")
        native_w, native_h = int(cam.get("width") or w), int(cam.get("height") or h)
        c_meta: dict[str, Any] = {"width": w, "height": h, "name": cam.get("name"), "role": cam["role"]}
        cal = calib.get(stream) or calib.get(cam["role"])
        if cal is not None:
            K = np.asarray(cal["K"], dtype=np.float64)
            kw, kh = int(cal.get("width", native_w)), int(cal.get("height", native_h))
            c_meta["K"] = scale_intrinsics(K, w / kw, h / kh)
            c_meta["source"] = "calibration"
            if "link" in cal:
                T_link_cam = np.asarray(cal["T_link_cam"], dtype=np.float64)
                pose = fk[f"T_world_body.{cal['link']}"] @ T_link_cam
                c_meta.update(moving=True, T_world_cam=None, link=cal["link"], T_link_cam=T_link_cam)
                steps[f"obs.T_world_cam.{stream}"] = pose.astype(np.float32)
                specs[f"obs.T_world_cam.{stream}"] = FieldSpec("float32", (4, 4), "m", "pose")
            else:
                c_meta.update(moving=False, T_world_cam=np.asarray(cal["T_world_cam"], dtype=np.float64))
        elif stream in cam_models:
            from shardyard.mjcf import camera_K

            cm = cam_models[stream]
            c_meta["K"] = scale_intrinsics(camera_K(cm, native_w, native_h), w / native_w, h / native_h)
            c_meta.update(source=f"mjcf camera '{cm.name}' (fovy {cm.fovy_deg} deg)", moving=cm.moving)
            pose = fk[f"T_world_cam.{cm.name}"]
            if cm.moving:
                c_meta["T_world_cam"] = None
                steps[f"obs.T_world_cam.{stream}"] = pose.astype(np.float32)
                specs[f"obs.T_world_cam.{stream}"] = FieldSpec("float32", (4, 4), "m", "pose")
            else:
                c_meta["T_world_cam"] = pose[0]
        else:
            c_meta.update(K=None, T_world_cam=None, moving=None, source="none: no model camera or calibration")
        cameras_meta[stream] = c_meta

    for arm in arm_names:
        p = prefix[arm]
        steps[f"{p}.joint_pos"] = arrays[arm]["q"].astype(np.float32)
        specs[f"{p}.joint_pos"] = FieldSpec("float32", (arrays[arm]["q"].shape[1],), "rad", "vector",
                                            tuple(f"joint{k + 1}" for k in range(arrays[arm]["q"].shape[1])))
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
    ep_meta = {
        "task": meta.get("task_name", ""), "fps": float(meta.get("control_hz", 30.0)), "layout": "i2rt",
        "source_path": str(folder), "arms": arm_names, "created_at": meta.get("created_at"),
        "recorder_version": meta.get("yam_abc_reproduce_version"), "cameras": cameras_meta,
        "eef_site": source._kinematics(arm_names[0]).site if fk else None, "_specs": specs,
    }
    return Episode(key=key, steps=steps, meta=ep_meta)
