"""YAM robot-arm demos: the i2rt recorder layout and seed 001's per-demo layout, detected per episode.

Layout "i2rt" (`../shared/data/yam/LAYOUT.md`): `metadata.json`, `<arm>-joint_pos.npy (N, 6)` rad,
`<arm>-gripper_pos.npy (N, 1)` in [0, 1], `action-<arm>-joint.npy`, `action-<arm>-gripper.npy`,
`<role>-images-<key>.mp4` (H.264) with `<role>-timestamp.npy (N,)` ms, and `write_complete.flag` written
last. The EEF pose is not recorded: it comes from forward kinematics of `robot_model` at the grasp site;
`K` and `T_world_cam` come from the model's camera for each role (or a calibration JSON).

Layout "per_demo" (seed 001): `frames/*.png|jpg` or one `*.mp4`, `eef_pos.npy (T, 3)` m,
`eef_quat.npy (T, 4)` xyzw, `gripper.npy (T,)`, `camera.json` (`K`, `T_world_cam`, optional `name`,
`width`, `height`), optional `meta.json` (`task`, `fps`) and `action.npy (T, A)`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shardyard.errors import ConfigError, SchemaError, SourceError
from shardyard.geometry import scale_intrinsics, sign_continuous
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.frame_encoding import EncodedRows, FrameEncoding
from shardyard.stores.manifest import fingerprint_paths, sha256_file
from shardyard.video import VideoReader, open_video

log = logging.getLogger(__name__)

I2RT, PER_DEMO = "i2rt", "per_demo"
_IMG_EXT = (".png", ".jpg", ".jpeg")


@dataclass
class YamConfig:
    """Options of the YAM source.

    cameras: camera streams to store (role, or `<role>_<key>` for stereo); None stores all.
    image_size: `(W, H)` to resize frames on ingest (area filter; `K` is scaled to match); None keeps size.
    timestamp_tolerance_s: largest gap between a control step and the camera frame matched to it.
    """

    root: Path
    robot_model: Path | None = None
    eef_site: str | None = None
    calibration: Path | None = None
    cameras: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    timestamp_tolerance_s: float = 0.05
    quat_norm_tolerance: float = 1e-3
    video_backend: str = "pyav"


def _load_npy(path: Path, key: str, field: str, *, ndim: int | None = None) -> np.ndarray:
    if not path.exists():
        raise SourceError("file missing", path=str(path), key=key, field=field)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated header or payload, or an object array (pickle refused)
        raise SourceError(f"cannot read .npy: {e}", path=str(path), key=key, field=field) from e
    if ndim is not None and arr.ndim != ndim:
        raise SourceError(f"expected {ndim}-D array, got shape {arr.shape}", path=str(path), key=key, field=field)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0, 0])
        raise SourceError(f"NaN or inf at step {bad}", path=str(path), key=key, field=field)
    return arr


def _read_json(path: Path, key: str, field: str | None = None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceError("file missing", path=str(path), key=key, field=field) from None
    except json.JSONDecodeError as e:
        raise SourceError(f"invalid JSON: {e}", path=str(path), key=key, field=field) from e


def detect_layout(folder: Path) -> str | None:
    """"i2rt", "per_demo" or None for a folder that is not an episode."""
    if (folder / "metadata.json").exists() or any(folder.glob("*-joint_pos.npy")):
        return I2RT
    if (folder / "eef_pos.npy").exists():
        return PER_DEMO
    return None


def nearest_frames(step_times: np.ndarray, frame_times: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the frame nearest in time to each step (both `(n,)` seconds) and the absolute gaps."""
    pos = np.clip(np.searchsorted(frame_times, step_times), 1, max(len(frame_times) - 1, 1))
    left, right = frame_times[pos - 1], frame_times[np.minimum(pos, len(frame_times) - 1)]
    idx = np.where(np.abs(step_times - left) <= np.abs(right - step_times), pos - 1, pos)
    idx = np.clip(idx, 0, len(frame_times) - 1)
    return idx, np.abs(frame_times[idx] - step_times)


class YamSource:
    """Source over a folder of YAM episodes (any depth; an episode folder is one `detect_layout` accepts).

    `keys()` are episode folder paths relative to the root, sorted. `read(key)` raises `SourceError` naming
    the file, episode and field for a missing/short/non-finite array, an undecodable video, camera frames
    that cannot be matched to steps within `timestamp_tolerance_s`, a non-unit quaternion, or an episode
    without `write_complete.flag`.
    """

    name: ClassVar[str] = "yam"

    def __init__(self, config: YamConfig) -> None:
        self.cfg = config
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise ConfigError("raw data folder not found", path=str(self.root))
        self._kin: dict[str, Any] = {}
        self._probe = False  # while True, `_frames` decodes one frame: enough to learn the schema
        self._schema: Schema | None = None
        self._calibration = None
        if config.calibration is not None:
            self._calibration = _read_json(Path(config.calibration), key="*")


    # -- discovery ---------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        found = []
        for p in sorted(self.root.rglob("*")):
            if p.is_dir() and detect_layout(p) is not None:
                found.append(p.relative_to(self.root).as_posix())
        if detect_layout(self.root) is not None:
            found.append(".")
        return sorted(found)

    def warm(self) -> None:
        """Load what every read needs (the MuJoCo model), so a fresh worker process starts ready."""
        if self.cfg.robot_model is not None:
            from shardyard.mjcf import load_model

            self._kin.setdefault("model", load_model(self.cfg.robot_model))

    def fingerprint(self) -> str:
        return fingerprint_paths([p for p in self.root.rglob("*") if p.is_file()], self.root)

    def describe(self) -> dict[str, Any]:
        """Source block of the manifest: name, root, input fingerprint, robot model path and sha256."""
        d: dict[str, Any] = {"name": self.name, "root": str(self.root), "fingerprint": self.fingerprint()}
        if self.cfg.robot_model is not None:
            d["robot_model"] = {"path": str(self.cfg.robot_model), "sha256": sha256_file(self.cfg.robot_model),
                                "eef_site": self.cfg.eef_site}
        if self.cfg.calibration is not None:
            d["calibration"] = {"path": str(self.cfg.calibration), "sha256": sha256_file(self.cfg.calibration)}
        return d

    # -- schema ------------------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """Schema of the store, taken from the first episode (in key order) that reads cleanly."""
        if self._schema is None:
            last: Exception | None = None
            for key in self.keys():
                try:
                    self._probe = True
                    try:
                        self._schema = self._schema_of(self._read_raw(key))
                    finally:
                        self._probe = False
                    break
                except SourceError as e:
                    last = e
            if self._schema is None:
                raise ConfigError(f"no readable episode under the folder (last error: {last})",
                                  path=str(self.root))
        return self._schema

    @staticmethod
    def _schema_of(ep: Episode) -> Schema:
        specs = ep.meta["_specs"]
        return Schema({k: specs[k] if k in specs else FieldSpec(str(a.dtype), a.shape[1:]) for k, a in ep.steps.items()})

    # -- reading -----------------------------------------------------------------------------------------
    def _read_raw(self, key: str, encodings: dict[str, FrameEncoding] | None = None) -> Episode:
        """The episode with `meta["_specs"]` (field specs) still attached."""
        folder = self.root / key
        layout = detect_layout(folder)
        if layout == I2RT:
            return self._read_i2rt(folder, key, encodings or {})
        if layout == PER_DEMO:
            return self._read_per_demo(folder, key, encodings or {})
        raise SourceError("not an episode folder (no metadata.json or eef_pos.npy)", path=str(folder), key=key)

    def read(self, key: str) -> Episode:
        """One episode, checked against the store schema (taken from the first readable episode)."""
        return self.read_encoded(key, {})

    def read_encoded(self, key: str, encodings: dict[str, FrameEncoding]) -> Episode:
        """As `read`, but video fields named in `encodings` come back as `EncodedRows`: each frame is
        compressed as it is decoded (`VideoReader.decode_each`), so no `(T, H, W, 3)` array is built."""
        ep = self._read_raw(key, encodings)
        specs = ep.meta.pop("_specs", {})
        schema = self.schema()
        try:
            schema.validate(ep, path=str(self.root / key))
        except SchemaError as e:
            raise SchemaError(e.reason + " (the store schema comes from the first readable episode)",
                              path=str(self.root / key), key=key, field=e.field) from None
        for k, spec in specs.items():
            if k in schema and spec != schema[k]:
                raise SchemaError(f"{k}: spec {spec} differs from the store's {schema[k]}",
                                  path=str(self.root / key), key=key, field=k)
        return ep

    def _kinematics(self, arm: str):
        from shardyard.mjcf import ArmJoints, load_model

        if arm not in self._kin:
            if "model" not in self._kin:
                self._kin["model"] = load_model(self.cfg.robot_model)
            self._kin[arm] = ArmJoints(self._kin["model"], arm, self.cfg.eef_site)
        return self._kin[arm]

    def _open(self, path: Path, key: str, field_name: str) -> VideoReader:
        """Open a video once (its packet table is read here); errors name the episode and field."""
        try:
            return open_video(path, self.cfg.video_backend)
        except SourceError as e:
            raise SourceError(e.reason, path=str(path), key=key, field=field_name) from None

    def _frames(self, video: VideoReader, indices: np.ndarray, key: str, field_name: str,
                encoding: FrameEncoding | None = None) -> np.ndarray | EncodedRows:
        """Frames `indices` of an open video as `(n, H, W, 3) uint8` (`EncodedRows` of that shape when an
        `encoding` is given), resized to `image_size` if set."""
        try:
            if len(indices) and int(indices.max()) >= video.num_frames:
                raise SourceError(f"video has {video.num_frames} frames, step needs frame {int(indices.max())}")
            if self._probe:
                indices = indices[:1]
            if encoding is None or self._probe:
                return video.read(indices, size=self.cfg.image_size)
            w, h = self.cfg.image_size or (video.width, video.height)
            sink = encoding.sink(len(indices))
            video.decode_each(indices, sink, size=self.cfg.image_size)
            return sink.rows((h, w, 3))
        except SourceError as e:
            raise SourceError(e.reason, path=video.path, key=key, field=field_name) from None

    def _read_i2rt(self, folder: Path, key: str, encodings: dict[str, FrameEncoding]) -> Episode:
        from shardyard.ingest.yam_i2rt import read_i2rt_episode

        return read_i2rt_episode(self, folder, key, encodings)

    def _read_per_demo(self, folder: Path, key: str, encodings: dict[str, FrameEncoding]) -> Episode:
        cfg = self.cfg
        pos = _load_npy(folder / "eef_pos.npy", key, "obs.eef_pos", ndim=2)
        quat = _load_npy(folder / "eef_quat.npy", key, "obs.eef_quat", ndim=2)
        grip = _load_npy(folder / "gripper.npy", key, "obs.gripper").reshape(len(pos) if pos.size else -1, -1)
        T = len(pos)
        for name, arr, width in (("obs.eef_pos", pos, 3), ("obs.eef_quat", quat, 4), ("obs.gripper", grip, 1)):
            if arr.shape != (T, width):
                raise SourceError(f"shape {arr.shape}, expected ({T}, {width}) (length from eef_pos.npy)",
                                  path=str(folder / (name.split(".")[-1] + ".npy")), key=key, field=name)
        norms = np.linalg.norm(quat, axis=1)
        bad = np.nonzero(np.abs(norms - 1.0) > cfg.quat_norm_tolerance)[0]
        if len(bad):
            raise SourceError(f"non-unit quaternion at step {int(bad[0])} (norm {norms[bad[0]]:.4f})",
                              path=str(folder / "eef_quat.npy"), key=key, field="obs.eef_quat")
        quat = sign_continuous(quat / norms[:, None])
        cam = _read_json(folder / "camera.json", key, "camera")
        role = str(cam.get("name", "main"))
        meta_json = _read_json(folder / "meta.json", key) if (folder / "meta.json").exists() else {}
        img_field = f"obs.rgb.{role}"
        frame_files = sorted(p for p in (folder / "frames").glob("*") if p.suffix.lower() in _IMG_EXT) \
            if (folder / "frames").is_dir() else []
        videos = sorted(folder.glob("*.mp4"))
        if frame_files:
            frames = self._read_images(frame_files[:1] if self._probe else frame_files, key, img_field)
        elif videos:
            video = self._open(videos[0], key, img_field)
            if video.num_frames != T:
                raise SourceError(f"video has {video.num_frames} frames but trajectories have {T} steps",
                                  path=str(videos[0]), key=key, field=img_field)
            frames = self._frames(video, np.arange(T), key, img_field, encodings.get(img_field))
        else:
            raise SourceError("no frames/ folder or .mp4", path=str(folder), key=key, field=img_field)
        if len(frames) != T and not self._probe:
            raise SourceError(f"{len(frames)} frames but trajectories have {T} steps",
                              path=str(folder / "frames"), key=key, field=img_field)
        try:
            K = np.asarray(cam["K"], dtype=np.float64).reshape(3, 3)
            Tw = np.asarray(cam["T_world_cam"], dtype=np.float64)
        except (KeyError, ValueError) as e:
            raise SourceError(f"camera.json needs K (3x3) and T_world_cam (4x4): {e}", path=str(folder / "camera.json"),
                              key=key, field="camera") from None
        w0, h0 = int(cam.get("width", 0)) or None, int(cam.get("height", 0)) or None
        h, w = frames.shape[1:3]
        if w0 and h0 and (w0, h0) != (w, h):
            K = scale_intrinsics(K, w / w0, h / h0)
        elif cfg.image_size is not None and not (w0 and h0):
            raise SourceError("camera.json lacks width/height, so K cannot be rescaled for --image-size",
                              path=str(folder / "camera.json"), key=key, field="camera")
        steps: dict[str, np.ndarray] = {img_field: frames}
        camera_meta = {"K": K, "moving": Tw.ndim == 3, "width": w, "height": h, "source": "camera.json"}
        specs = {img_field: FieldSpec("uint8", (h, w, 3), None, "image")}
        if Tw.ndim == 3:
            if Tw.shape != (T, 4, 4):
                raise SourceError(f"per-step T_world_cam has shape {Tw.shape}, expected ({T}, 4, 4)",
                                  path=str(folder / "camera.json"), key=key, field="camera")
            steps[f"obs.T_world_cam.{role}"] = Tw.astype(np.float32)
            specs[f"obs.T_world_cam.{role}"] = FieldSpec("float32", (4, 4), "m", "pose")
            camera_meta["T_world_cam"] = None
        else:
            camera_meta["T_world_cam"] = Tw.reshape(4, 4)
        steps["obs.eef_pos"] = pos.astype(np.float32)
        steps["obs.eef_quat"] = quat.astype(np.float32)
        steps["obs.gripper"] = grip[:, 0].astype(np.float32)
        specs.update({"obs.eef_pos": FieldSpec("float32", (3,), "m", "vector", ("x", "y", "z")),
                      "obs.eef_quat": FieldSpec("float32", (4,), None, "vector", ("qx", "qy", "qz", "qw")),
                      "obs.gripper": FieldSpec("float32", (), "normalised", "scalar")})
        if (folder / "action.npy").exists():
            action = _load_npy(folder / "action.npy", key, "action").reshape(T, -1) if \
                len(np.load(folder / "action.npy", mmap_mode="r", allow_pickle=False)) == T else None
            if action is None:
                raise SourceError(f"action.npy length differs from {T}", path=str(folder / "action.npy"),
                                  key=key, field="action")
            steps["action"] = action.astype(np.float32)
            specs["action"] = FieldSpec("float32", action.shape[1:], None, "vector")
        fps = float(meta_json.get("fps", 30.0))
        steps["timestamp"] = (np.arange(T) / fps).astype(np.float64)
        specs["timestamp"] = FieldSpec("float64", (), "s", "scalar")
        meta = {"task": str(meta_json.get("task", "")), "fps": fps, "fps_assumed": "fps" not in meta_json,
                "layout": PER_DEMO, "source_path": str(folder), "cameras": {role: camera_meta}, "_specs": specs}
        return Episode(key=key, steps=steps, meta=meta)

    def _read_images(self, files: list[Path], key: str, field_name: str) -> np.ndarray:
        from PIL import Image

        out = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if self.cfg.image_size is not None:
                        im = im.resize(self.cfg.image_size, Image.Resampling.BOX)
                    out.append(np.asarray(im))
            except Exception as e:
                raise SourceError(f"cannot read image: {e}", path=str(f), key=key, field=field_name) from e
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise SourceError(f"frames differ in size: {sorted(shapes)}", path=str(files[0].parent), key=key,
                              field=field_name)
        return np.stack(out)
