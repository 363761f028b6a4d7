"""Reader of one episode in seed 001's per-demo layout: `frames/*.png|jpg` or one `*.mp4`, `eef_pos.npy (T, 3)`
metres, `eef_quat.npy (T, 4)` xyzw, `gripper.npy (T,)` in [0, 1], `camera.json` (`K`, `T_world_cam` `(4, 4)` or
`(T, 4, 4)` for a moving camera, optional `name`, `width`, `height`), optional `meta.json` (`task`, `fps`) and
`action.npy (T, A)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import SourceError
from shardyard.geometry import scale_intrinsics, sign_continuous
from shardyard.ingest.readers import load_npy, read_json
from shardyard.ingest.yam.layout import PER_DEMO, LayoutInputs, RawEpisode
from shardyard.schema import Episode, FieldSpec
from shardyard.stores.frames.encoding import EncodedRows

__all__ = ["read_per_demo"]

_IMG_EXT = (".png", ".jpg", ".jpeg")
_EEF_SPECS = {"obs.eef_pos": FieldSpec("float32", (3,), "m", "vector", ("x", "y", "z")),
              "obs.eef_quat": FieldSpec("float32", (4,), None, "vector", ("qx", "qy", "qz", "qw")),
              "obs.gripper": FieldSpec("float32", (), "normalised", "scalar")}


def _trajectories(folder: Path, key: str, quat_norm_tolerance: float) -> tuple[np.ndarray, ...]:
    """`pos (T, 3)` m, `quat (T, 4)` xyzw (unit, sign-continuous), `grip (T, 1)`; T from eef_pos.npy."""
    pos = load_npy(folder / "eef_pos.npy", key, "obs.eef_pos", ndim=2)
    quat = load_npy(folder / "eef_quat.npy", key, "obs.eef_quat", ndim=2)
    grip = load_npy(folder / "gripper.npy", key, "obs.gripper").reshape(len(pos) if pos.size else -1, -1)
    T = len(pos)
    for name, arr, width in (("obs.eef_pos", pos, 3), ("obs.eef_quat", quat, 4), ("obs.gripper", grip, 1)):
        if arr.shape != (T, width):
            raise SourceError(f"shape {arr.shape}, expected ({T}, {width}) (length from eef_pos.npy)",
                              path=str(folder / (name.split(".")[-1] + ".npy")), key=key, field=name)
    norms = np.linalg.norm(quat, axis=1)
    bad = np.nonzero(np.abs(norms - 1.0) > quat_norm_tolerance)[0]
    if len(bad):
        raise SourceError(f"non-unit quaternion at step {int(bad[0])} (norm {norms[bad[0]]:.4f})",
                          path=str(folder / "eef_quat.npy"), key=key, field="obs.eef_quat")
    return pos, sign_continuous(quat / norms[:, None]), grip


def _frames(folder: Path, key: str, T: int, field: str, inputs: LayoutInputs) -> np.ndarray | EncodedRows:
    """`(T, H, W, 3) uint8` from `frames/` (sorted) or the folder's first `.mp4` (one frame when probing)."""
    frame_dir = folder / "frames"
    files = sorted(p for p in frame_dir.glob("*") if p.suffix.lower() in _IMG_EXT) if frame_dir.is_dir() else []
    videos = sorted(folder.glob("*.mp4"))
    if files:
        frames = inputs.frames.images(files, key, field)
    elif videos:
        video = inputs.frames.open(videos[0], key, field)
        if video.num_frames != T:
            raise SourceError(f"video has {video.num_frames} frames but trajectories have {T} steps",
                              path=str(videos[0]), key=key, field=field)
        frames = inputs.frames.video_frames(video, np.arange(T), key, field, inputs.encodings.get(field))
    else:
        raise SourceError("no frames/ folder or .mp4", path=str(folder), key=key, field=field)
    if len(frames) != T and not inputs.frames.first_only:
        raise SourceError(f"{len(frames)} frames but trajectories have {T} steps", path=str(frame_dir), key=key,
                          field=field)
    return frames


def _camera(folder: Path, key: str, cam: dict[str, Any], hw: tuple[int, int],
            image_size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """`K (3, 3)` for the stored `hw` frame size (rescaled from camera.json's width/height) and `T_world_cam`
    `(4, 4)` or `(T, 4, 4)`."""
    path = str(folder / "camera.json")
    try:
        K = np.asarray(cam["K"], dtype=np.float64).reshape(3, 3)
        Tw = np.asarray(cam["T_world_cam"], dtype=np.float64)
    except (KeyError, ValueError) as e:
        raise SourceError(f"camera.json needs K (3x3) and T_world_cam (4x4): {e}", path=path, key=key,
                          field="camera") from None
    w0, h0 = int(cam.get("width", 0)) or None, int(cam.get("height", 0)) or None
    h, w = hw
    if w0 and h0 and (w0, h0) != (w, h):
        K = scale_intrinsics(K, w / w0, h / h0)
    elif image_size is not None and not (w0 and h0):
        raise SourceError("camera.json lacks width/height, so K cannot be rescaled for --image-size", path=path,
                          key=key, field="camera")
    return K, Tw


def _action(folder: Path, key: str, T: int) -> np.ndarray | None:
    """`(T, A) float32` from action.npy, or None when there is none."""
    if not (folder / "action.npy").exists():
        return None
    action = load_npy(folder / "action.npy", key, "action")
    if len(action) != T:
        raise SourceError(f"action.npy length differs from {T}", path=str(folder / "action.npy"), key=key,
                          field="action")
    return action.reshape(T, -1).astype(np.float32)


def read_per_demo(folder: Path, key: str, inputs: LayoutInputs) -> RawEpisode:
    """One per-demo episode: `obs.rgb.<camera.json name>`, `obs.eef_pos`, `obs.eef_quat`, `obs.gripper`,
    `timestamp` (s, from meta.json's fps, default 30 and recorded as assumed), `action` when present, and
    `obs.T_world_cam.<name> (T, 4, 4)` for a moving camera. Raises `SourceError` naming file, episode and field
    for a missing/short/non-finite array, a non-unit quaternion, frames that do not match the steps, or a
    camera.json without `K`/`T_world_cam` (or without width/height when resizing)."""
    pos, quat, grip = _trajectories(folder, key, inputs.quat_norm_tolerance)
    T = len(pos)
    cam = read_json(folder / "camera.json", key, "camera")
    role = str(cam.get("name", "main"))
    meta_json = read_json(folder / "meta.json", key) if (folder / "meta.json").exists() else {}
    img_field = f"obs.rgb.{role}"
    frames = _frames(folder, key, T, img_field, inputs)
    h, w = frames.shape[1:3]
    K, Tw = _camera(folder, key, cam, (h, w), inputs.frames.image_size)
    steps: dict[str, Any] = {img_field: frames}
    specs = {img_field: FieldSpec("uint8", (h, w, 3), None, "image")}
    camera_meta = {"K": K, "moving": Tw.ndim == 3, "width": w, "height": h, "source": "camera.json"}
    if Tw.ndim == 3:
        if Tw.shape != (T, 4, 4):
            raise SourceError(f"per-step T_world_cam has shape {Tw.shape}, expected ({T}, 4, 4)",
                              path=str(folder / "camera.json"), key=key, field="camera")
        steps[f"obs.T_world_cam.{role}"] = Tw.astype(np.float32)
        specs[f"obs.T_world_cam.{role}"] = FieldSpec("float32", (4, 4), "m", "pose")
        camera_meta["T_world_cam"] = None
    else:
        camera_meta["T_world_cam"] = Tw.reshape(4, 4)
    steps.update({"obs.eef_pos": pos.astype(np.float32), "obs.eef_quat": quat.astype(np.float32),
                  "obs.gripper": grip[:, 0].astype(np.float32)})
    specs.update(_EEF_SPECS)
    action = _action(folder, key, T)
    if action is not None:
        steps["action"] = action
        specs["action"] = FieldSpec("float32", action.shape[1:], None, "vector")
    fps = float(meta_json.get("fps", 30.0))
    steps["timestamp"] = (np.arange(T) / fps).astype(np.float64)
    specs["timestamp"] = FieldSpec("float64", (), "s", "scalar")
    meta = {"task": str(meta_json.get("task", "")), "fps": fps, "fps_assumed": "fps" not in meta_json,
            "layout": PER_DEMO, "source_path": str(folder), "cameras": {role: camera_meta}}
    return RawEpisode(Episode(key=key, steps=steps, meta=meta), specs)
