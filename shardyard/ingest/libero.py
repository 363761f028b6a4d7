"""LIBERO, robomimic and raw robosuite demonstration HDF5 files (`../shared/data/SOURCES.md`, section 1).

Layouts, detected per demo group `data/demo_*`:

- "libero" (LIBERO `scripts/create_dataset.py`): `obs/{agentview_rgb, eye_in_hand_rgb}` `(T, H, W, 3) uint8`,
  `obs/ee_pos (T, 3)` m, `obs/ee_ori (T, 3)` axis-angle rad (or `obs/ee_states (T, 6)`), `obs/gripper_states
  (T, 2)` finger joint positions m, `obs/joint_states (T, 7)` rad, `actions (T, 7)` in [-1, 1], `rewards`,
  `dones`, `states (T, S)`; file attrs `problem_info` (JSON, `language_instruction`), `env_args`,
  `bddl_file_content`, `macros_image_convention`; 20 Hz.
- "robomimic": `obs/{agentview_image, robot0_eye_in_hand_image, robot0_eef_pos, robot0_eef_quat (xyzw),
  robot0_gripper_qpos, robot0_joint_pos}` plus the same top-level arrays.
- "raw" robosuite teleoperation files (no `obs` group): `states`, `actions`, `joint_torques`, or the 2018
  `right_dpos`/`right_dquat`/`gripper_actuations`. Only these low-dimensional arrays and the env info are
  stored; the file holds no observations (images need a replay in robosuite), which `report_notes()` says.

Stored fields: `obs.rgb.agentview`, `obs.rgb.eye_in_hand` (upright: "opengl" images are flipped),
`obs.T_world_cam.eye_in_hand (4, 4)` m (wrist camera-to-world, OpenCV; see below),
`obs.eef_pos (3,)` m, `obs.eef_quat (4,)` xyzw, `obs.gripper ()` m (finger separation), `obs.gripper_qpos
(2,)` m, `obs.joint_pos` rad, `action`, `reward`, `done`, `sim_state` (float64 flattened MuJoCo state) and, in
raw files, `raw.<name>`. A store has one schema: the union of every demo's fields. A 1-D field narrower in
one file than in another (e.g. `sim_state` of different scenes) is zero-padded to the widest; the episode's
meta `field_widths` gives the true width and `absent_fields` the fields it lacked (stored as zeros).

Cameras come from each demo's `model_file` MJCF string (`libero_cameras`): meta `cameras[<camera>]` holds
`K (3, 3)` and, for a fixed camera (`agentview`), `T_world_cam (4, 4)` OpenCV camera-to-world (metres). The
wrist camera (`eye_in_hand`, below the arm's jointed bodies) moves: its pose is stored per step as
`obs.T_world_cam.eye_in_hand (T, 4, 4) float32`, forward kinematics of the MJCF at each step's qpos from
`states` (`[time, qpos, qvel]`), with meta `moving: True`, `T_world_cam: None`, `pose: "fk from states"`. A
demo without an MJCF (raw files store only a file name), or whose `states` width does not match the model,
gets no such calibration (a demo in a store whose other demos have the pose field gets zeros and lists it in
`absent_fields`), and its meta's `camera_note` says why; this never fails the demo. Each MJCF is compiled
once per process and source (cached by a hash of the XML).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.geometry import sign_continuous
from shardyard.ingest.inside import hdf5_links_problem, hdf5_member_problem, hdf5_problem, is_inside, outside_problem
from shardyard.ingest.libero_cameras import demo_cameras, pose_specs, without_files
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.manifest import fingerprint_paths

__all__ = ["DEFAULT_FPS", "LIBERO", "LiberoConfig", "LiberoSource", "NO_OBS_NOTE", "RAW", "ROBOMIMIC",
           "add_report_notes", "detect_layout"]

log = logging.getLogger(__name__)

LIBERO, ROBOMIMIC, RAW = "libero", "robomimic", "raw"
DEFAULT_FPS = 20.0
NO_OBS_NOTE = ("holds no observations (raw robosuite demonstration: states and actions only); "
               "replay it in robosuite to render images")
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


@dataclass
class LiberoConfig:
    """Options of the LIBERO / robomimic / robosuite source.

    root: one `*.hdf5` file or a folder of them (searched recursively).
    image_convention: "opengl" (stored upside down: flipped on ingest) or "opencv"; None reads the file attr
    `macros_image_convention` and defaults to "opengl" (robosuite's default renderer convention).
    fps: control rate in Hz; None uses 20 Hz (LIBERO, robomimic, robosuite v1) and marks it assumed for
    robosuite v0.x files, whose rate is not recorded.
    follow_links: read what is refused by default (`ingest.inside`): links leading out of the root folder, HDF5
    data in other files, and files a demo's `model_file` MJCF names (meshes, includes: else compiled without).
    """

    root: Path
    image_convention: str | None = None
    fps: float | None = None
    follow_links: bool = False


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _cams(plan: dict[str, Any]) -> list[str]:
    return [f[len("obs.rgb."):] for f in plan if f.startswith("obs.rgb.")]


def detect_layout(group) -> str:
    """"libero", "robomimic" or "raw" for an h5py demo group."""
    obs = group.get("obs")
    if obs is None:
        return RAW
    if any(k in obs for k in ("agentview_rgb", "ee_ori", "ee_states", "ee_pos", "gripper_states")):
        return LIBERO
    return ROBOMIMIC


class LiberoSource:
    """Source over LIBERO / robomimic / raw robosuite HDF5 files.

    `keys()` are `<file path relative to root, without .hdf5>/<demo>` in file then natural demo order. HDF5
    files are opened lazily in the process that reads (never inherited: `__getstate__` drops the handles).
    `read(key)` raises `SourceError` (path, key, field) for a missing or malformed array, mismatched lengths,
    non-finite values, an image field of another size than the store's; without `follow_links`, a file linked
    from outside the root (key `<file>/data`) or a demo with data in another file (`ingest.inside`).
    """

    name: ClassVar[str] = "libero"

    def __init__(self, config: LiberoConfig) -> None:
        self.cfg = config
        self.root = Path(config.root)
        if config.image_convention not in (None, "opengl", "opencv"):
            raise ConfigError(f"image_convention must be 'opengl' or 'opencv', got {config.image_convention!r}")
        if self.root.is_file():
            self.files = [self.root]
        elif self.root.is_dir():
            self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in (".hdf5", ".h5"))
        else:
            raise ConfigError("HDF5 file or folder not found", path=str(self.root))
        if not self.files:
            raise ConfigError("no .hdf5 files under the folder", path=str(self.root))
        self._handles: dict[Path, Any] = {}
        self._refused: dict[str, SourceError] = {}  # keys refused while listing (links leading out), by key
        self._index: dict[str, tuple[Path, str]] | None = None
        self._scan: dict[str, dict[str, Any]] | None = None
        self._schema: Schema | None = None
        self._models: dict[str, Any] = {}  # compiled MJCF models by XML hash (libero_cameras.compile_model)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # h5py handles never cross a process boundary
        state["_models"] = {}  # nor MuJoCo models: each process compiles its own, once per XML
        return state

    def _file(self, path: Path):
        import h5py

        if path not in self._handles:
            try:
                self._handles[path] = h5py.File(path, "r")
            except OSError as e:
                raise SourceError(f"cannot open HDF5: {e}", path=str(path)) from e
        return self._handles[path]

    def _rel(self, path: Path) -> str:
        if self.root.is_file():
            return path.name[: -len(path.suffix)]
        return path.relative_to(self.root).with_suffix("").as_posix()

    # -- discovery ---------------------------------------------------------------------------------------
    def _scan_files(self) -> None:
        """One metadata pass over every file: demo keys, layout, per-field shapes, file info."""
        index, scan = {}, {}
        follow = self.cfg.follow_links
        for path in self.files:
            why = None if follow or self.root.is_file() else outside_problem(self.root, path)
            try:
                f = None if why else self._file(path)
                why = why or (None if follow else hdf5_member_problem(f, "data"))
                demos = [] if why else sorted((k for k in f.get("data", {}).keys() if k.startswith("demo")),
                                              key=_natural)
            except (SourceError, OSError) as e:
                log.warning("skipping unreadable file %s: %s", path, e)
                scan[str(path)] = {"error": str(e), "layouts": []}
                continue
            if why:  # one report row for the whole file: its demos cannot be listed without following the link
                key = f"{self._rel(path)}/data"
                index[key], self._refused[key] = (path, ""), SourceError(why, path=str(path), key=key)
                scan[str(path)] = {"error": why, "layouts": []}
                continue
            attrs = {k: _text(v) if isinstance(v, (bytes, str)) else v for k, v in f["data"].attrs.items()}
            layouts = set()
            for d in demos:
                key = f"{self._rel(path)}/{d}"
                index[key] = (path, d)
                why = None if follow else (hdf5_member_problem(f["data"], d) or hdf5_links_problem(f["data"][d]))
                if why:
                    self._refused[key] = SourceError(why, path=str(path), key=key)
                    continue
                layouts.add(detect_layout(f["data"][d]))
            scan[str(path)] = {"layouts": sorted(layouts), "num_demos": len(demos),
                               "env": attrs.get("env") or attrs.get("env_name"),
                               "repository_version": attrs.get("repository_version")}
        self._index, self._scan = index, scan

    def keys(self) -> list[str]:
        """Episode keys `<file path relative to the root, no suffix>/<demo>`, files then demos in natural order."""
        if self._index is None:
            self._scan_files()
        return list(self._index)

    def files_without_observations(self) -> list[str]:
        """Paths of files whose demos are all raw (no `obs` group)."""
        self.keys()
        return [p for p, s in self._scan.items() if s["layouts"] == [RAW]]

    def report_notes(self) -> list[str]:
        """Plain sentences for the report and the summary (files without observations)."""
        return [f"{p}: {NO_OBS_NOTE}" for p in self.files_without_observations()]

    def describe(self) -> dict[str, Any]:
        """Source block of the manifest: root, fingerprint (of the files read), layout/env per file, no-obs files."""
        self.keys()
        files = [p for p in self.files if self.cfg.follow_links or self.root.is_file() or is_inside(self.root, p)]
        return {"name": self.name, "root": str(self.root), "fingerprint": fingerprint_paths(files, self.root
                if self.root.is_dir() else self.root.parent), "files": self._scan,
                "files_without_observations": self.files_without_observations()}

    # -- schema ------------------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """Union of the fields of every demo (shapes from HDF5 metadata only); 1-D fields take the widest."""
        if self._schema is None:
            specs: dict[str, FieldSpec] = {}
            for key in self.keys():
                try:
                    for name, spec in self._field_specs(key).items():
                        old = specs.get(name)
                        if old is not None and old.shape != spec.shape and len(spec.shape) == 1 == len(old.shape):
                            spec = spec if spec.shape[0] > old.shape[0] else old
                        specs[name] = spec if old is None or len(spec.shape) == 1 else old
                except (SourceError, OSError, KeyError) as e:
                    log.warning("schema scan: %s: %s", key, e)
            if not specs:
                raise ConfigError("no readable demo in the HDF5 files", path=str(self.root))
            self._schema = Schema(dict(sorted(specs.items())))
        return self._schema

    def _plan(self, key: str) -> tuple[Any, str, dict[str, tuple[str, str, str | None, str]]]:
        """(demo group, layout, {field: (hdf5 path, dtype, unit, kind)})."""
        if key not in self.keys():
            raise SourceError("no such demo", key=key)
        if key in self._refused:
            raise self._refused[key]
        path, demo = self._index[key]
        g = self._file(path)["data"][demo]
        layout = detect_layout(g)
        plan: dict[str, tuple[str, str, str | None, str]] = {}
        for h5, cam in _IMAGES.get(layout, {}).items():
            if h5 in g:
                plan[f"obs.rgb.{cam}"] = (h5, "uint8", None, "image")
        for h5, (fld, dt, unit) in _VECTORS.get(layout, {}).items():
            if h5 in g:
                plan[fld] = (h5, dt, unit, "vector")
        if layout == LIBERO and ("obs/ee_ori" in g or "obs/ee_states" in g):
            plan["obs.eef_quat"] = ("obs/ee_ori" if "obs/ee_ori" in g else "obs/ee_states", "float32", None, "vector")
            if "obs.eef_pos" not in plan and "obs/ee_states" in g:
                plan["obs.eef_pos"] = ("obs/ee_states", "float32", "m", "vector")
        if "obs.gripper_qpos" in plan:
            plan["obs.gripper"] = (plan["obs.gripper_qpos"][0], "float32", "m", "scalar")
        for h5, (fld, dt, unit) in _COMMON.items():
            if h5 in g:
                plan[fld] = (h5, dt, unit, "scalar" if g[h5].ndim == 1 else "vector")
        if layout == RAW:
            for name, ds in g.items():
                if name not in _COMMON and getattr(ds, "ndim", 0) == 2 and ds.shape[1] > 0:
                    plan[f"raw.{name}"] = (name, "float32", None, "vector")
        why = None if self.cfg.follow_links else hdf5_problem(g, [h5 for h5, *_ in plan.values()])
        if why:
            raise SourceError(why, path=str(path), key=key)
        return g, layout, plan

    def _model_xml(self, g) -> str:
        """The demo's `model_file` MJCF, less the files it names (input's names) unless `follow_links`."""
        xml = _text(g.attrs.get("model_file", ""))
        return xml if self.cfg.follow_links else without_files(xml)

    def _field_specs(self, key: str) -> dict[str, FieldSpec]:
        g, _, plan = self._plan(key)
        out = {}
        for fld, (h5, dt, unit, kind) in plan.items():
            shape = {"obs.eef_quat": (4,), "obs.eef_pos": (3,), "obs.gripper": ()}.get(fld, tuple(g[h5].shape[1:]))
            names = {"obs.eef_quat": ("qx", "qy", "qz", "qw"), "obs.eef_pos": ("x", "y", "z")}.get(fld)
            out[fld] = FieldSpec(dt, shape, unit, kind, names)
        states = g["states"] if "sim_state" in plan else None
        out.update(pose_specs(self._model_xml(g), _cams(plan),
                              states.shape[1] if states is not None and states.ndim == 2 else None, self._models))
        return out

    # -- reading -----------------------------------------------------------------------------------------
    def read(self, key: str) -> Episode:
        """One demo as an `Episode` (see the module docstring for fields, units and meta)."""
        g, layout, plan = self._plan(key)
        path = str(self._index[key][0])
        file_attrs = {k: _text(v) if isinstance(v, (bytes, str)) else v for k, v in g.parent.attrs.items()}
        convention = self.cfg.image_convention or file_attrs.get("macros_image_convention") or "opengl"
        schema = self.schema()
        steps: dict[str, np.ndarray] = {}
        widths: dict[str, int] = {}
        for fld, (h5, dt, unit, kind) in plan.items():
            try:
                arr = np.asarray(g[h5][()])
            except Exception as e:
                raise SourceError(f"cannot read dataset: {e}", path=path, key=key, field=fld) from e
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise SourceError("NaN or inf in dataset", path=path, key=key, field=fld)
            if kind == "image":
                if arr.ndim != 4 or arr.shape[-1] != 3:
                    raise SourceError(f"image dataset has shape {arr.shape}, expected (T, H, W, 3)", path=path,
                                      key=key, field=fld)
                # a flipped view: the ingest's encoder copies it row by row, in cache
                arr = arr[:, ::-1] if convention == "opengl" else arr
            elif fld == "obs.eef_quat" and layout == LIBERO:
                from scipy.spatial.transform import Rotation

                rotvec = arr[:, 3:6] if h5.endswith("ee_states") else arr
                arr = sign_continuous(Rotation.from_rotvec(rotvec.astype(np.float64)).as_quat())
            elif fld == "obs.eef_pos":
                arr = arr[:, :3]
            elif fld == "obs.gripper":
                arr = arr[:, 0] - arr[:, 1] if arr.ndim == 2 and arr.shape[1] >= 2 else arr.reshape(len(arr), -1)[:, 0]
            steps[fld] = arr.astype(dt, copy=False)
        cameras, camera_notes = self._cameras(g, key, plan, steps, schema)
        T = {len(a) for a in steps.values()}
        if len(T) != 1:
            raise SourceError("arrays differ in length: " + ", ".join(f"{k}={len(a)}" for k, a in steps.items()),
                              path=path, key=key)
        n = T.pop()
        absent = []
        for fld, spec in schema.items():
            if fld not in steps:
                if spec.kind == "image":
                    raise SourceError(f"demo has no {fld} (the store's other demos do); "
                                      + (NO_OBS_NOTE if layout == RAW else "store it separately"),
                                      path=path, key=key, field=fld)
                absent.append(fld)
                steps[fld] = np.zeros((n,) + spec.shape, spec.dtype)
            elif len(spec.shape) == 1 and steps[fld].ndim == 2 and steps[fld].shape[1] < spec.shape[0]:
                widths[fld] = steps[fld].shape[1]
                steps[fld] = np.pad(steps[fld], ((0, 0), (0, spec.shape[0] - steps[fld].shape[1])))
        meta = self._meta(key, layout, file_attrs, widths, absent)
        meta["cameras"] = cameras
        if camera_notes:
            meta["camera_note"] = "; ".join(camera_notes)
        return Episode(key=key, steps=steps, meta=meta)

    def _cameras(self, g, key, plan, steps, schema) -> tuple[dict[str, Any], list[str]]:
        """Camera meta and notes of one demo; adds moving cameras' per-step poses to `steps` (see
        `libero_cameras.demo_cameras`; `sim_state` is still the demo's own, unpadded `states` here)."""
        sizes = {c: (int(steps[f"obs.rgb.{c}"].shape[2]), int(steps[f"obs.rgb.{c}"].shape[1])) for c in _cams(plan)}
        cameras, poses, notes = demo_cameras(self._model_xml(g), sizes,
                                             steps.get("sim_state"), self._models)
        for fld, pose in poses.items():
            if fld in schema:  # always, unless this demo's schema scan failed
                steps[fld] = pose
            else:
                cam = fld.rsplit(".", 1)[-1]
                cameras.pop(cam, None)
                notes.append(f"{cam}: the store's schema has no {fld}: no per-step pose stored")
        if notes:
            log.info("%s: cameras: %s", key, "; ".join(notes))
        return cameras, notes

    def _meta(self, key, layout, file_attrs, widths, absent) -> dict[str, Any]:
        path = str(self._index[key][0])
        task = ""
        problem = file_attrs.get("problem_info")
        if problem:
            try:
                task = json.loads(problem).get("language_instruction", "")
            except (json.JSONDecodeError, AttributeError):
                task = ""
        env_info: dict[str, Any] = {}
        for name in ("env_args", "env_info"):
            if name in file_attrs:
                try:
                    env_info[name] = json.loads(file_attrs[name])
                except (json.JSONDecodeError, TypeError):
                    env_info[name] = file_attrs[name]
        for name in ("env", "env_name", "repository_version", "date", "time", "bddl_file_name", "problem_name"):
            if name in file_attrs:
                env_info[name] = file_attrs[name]
        v0 = str(file_attrs.get("repository_version", "")).startswith("0.")
        fps = self.cfg.fps or DEFAULT_FPS
        meta: dict[str, Any] = {"task": task, "fps": fps, "fps_assumed": self.cfg.fps is None and v0,
                                "layout": layout, "source_path": path, "demo": key.rsplit("/", 1)[-1],
                                "env": env_info, "observations": layout != RAW, "cameras": {}}
        if "bddl_file_content" in file_attrs:
            meta["bddl_file_content"] = file_attrs["bddl_file_content"]
        if widths:
            meta["field_widths"] = widths
        if absent:
            meta["absent_fields"] = absent
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
