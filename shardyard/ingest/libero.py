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
raw files, `raw.<name>`. Nothing is padded (`ingest.schema_groups`): a demo whose field has another shape
than the store's (e.g. `sim_state` of another scene or robot) is refused with a report row naming the
differing fields, or, with `--group-by-schema` (`schema_groups()`), stored in a store of its own; a low-dim
field some demos lack (e.g. `action` of a 2018 file) is listed in their meta's `absent_fields` and served
with `<field>_is_pad` True, never as data.

A file that h5py cannot open (truncated, not HDF5) or that holds no `data/demo_*` group is a report row keyed
`<file>/data`; a dataset of strings or other non-numbers, an image that is not `(T, H, W, 3) uint8`, NaN or
inf, or arrays of different lengths is a row naming the demo, file and field.

Cameras come from each demo's `model_file` MJCF string (`libero_cameras`): meta `cameras[<camera>]` holds
`K (3, 3)` and, for a fixed camera (`agentview`), `T_world_cam (4, 4)` OpenCV camera-to-world (metres). The
wrist camera (`eye_in_hand`, below the arm's jointed bodies) moves: its pose is stored per step as
`obs.T_world_cam.eye_in_hand (T, 4, 4) float32`, forward kinematics of the MJCF at each step's qpos from
`states` (`[time, qpos, qvel]`), with meta `moving: True`, `T_world_cam: None`, `pose: "fk from states"`. A
demo without an MJCF (raw files store only a file name), or whose `states` width does not match the model,
gets no such calibration (in a store whose other demos have the pose field, the field is listed in its
`absent_fields`), and its meta's `camera_note` says why; this never fails the demo. Each MJCF is compiled
once per process and source (cached by a hash of the XML).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.geometry import sign_continuous
from shardyard.ingest.configs import LiberoConfig
from shardyard.ingest.failures import source_error
from shardyard.ingest.inside import (
    hdf5_links_problem,
    hdf5_member_problem,
    hdf5_object_problem,
    hdf5_problem,
    is_inside,
    outside_problem,
)
from shardyard.ingest.libero_cameras import demo_cameras, pose_specs, without_files
from shardyard.ingest.libero_meta import (
    DEFAULT_FPS,
    LIBERO,
    NO_OBS_NOTE,
    RAW,
    ROBOMIMIC,
    add_report_notes,
    camera_names,
    demo_meta,
    detect_layout,
    field_plan,
    file_attrs,
    natural_key,
    robot_of,
    text,
)
from shardyard.ingest.schema_groups import SchemaPlan, group_keys, group_name, plan_schema
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.manifest import fingerprint_paths

__all__ = ["DEFAULT_FPS", "LIBERO", "LiberoConfig", "LiberoSource", "NO_OBS_NOTE", "RAW", "ROBOMIMIC",
           "add_report_notes", "detect_layout"]

log = logging.getLogger(__name__)

GROUP_HINT = " (--group-by-schema stores each set of fields in a store of its own)"


class LiberoSource:
    """Source over LIBERO / robomimic / raw robosuite HDF5 files.

    `keys()` are `<file path relative to root, without .hdf5>/<demo>` in file then natural demo order, and
    `<file>/data` for a file whose demos cannot be listed (unreadable, no `data/demo_*`, linked from outside).
    HDF5 files are opened lazily in the process that reads (never inherited: `__getstate__` drops the handles).
    `read(key)` raises `SourceError` (path, key, field) for an unreadable file, a missing or malformed array,
    mismatched lengths, non-finite values; `SchemaError` naming the differing fields for a demo the store's
    schema cannot hold without padding (`schema_groups.plan_schema`); without `follow_links`, a file linked
    from outside the root or a demo with data in another file (`ingest.inside`).
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
        self._refused: dict[str, SourceError] = {}  # keys refused while listing or scanning, by key
        self._index: dict[str, tuple[Path, str]] | None = None
        self._scan: dict[str, dict[str, Any]] | None = None
        self._specs: dict[str, dict[str, FieldSpec]] | None = None
        self._plan_: SchemaPlan | None = None
        self._models: dict[str, Any] = {}  # compiled MJCF models by XML hash (libero_cameras.compile_model)
        # Per demo, what the scan found (layout, field plan), and per file its decoded attributes: a read in a
        # reader process (forked after the scan, or sent this state) looks neither up again (~8 ms a demo).
        self._layouts: dict[str, tuple[str, dict[str, tuple[str, str, str | None, str]]]] = {}
        self._attrs: dict[Path, dict[str, Any]] = {}

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
            except Exception as e:  # OSError for a truncated or non-HDF5 file; others for worse damage
                raise SourceError(f"cannot open HDF5 ({type(e).__name__}): {e}", path=str(path), field="data") from e
        return self._handles[path]

    def _rel(self, path: Path) -> str:
        if self.root.is_file():
            return path.name[: -len(path.suffix)]
        return path.relative_to(self.root).with_suffix("").as_posix()

    def episode_path(self, key: str) -> str | None:
        """The HDF5 file episode `key` is read from."""
        return str(self._index[key][0]) if key in self.keys() else None

    # -- discovery ---------------------------------------------------------------------------------------
    def _list_demos(self, path: Path) -> tuple[Any, list[str], str | None]:
        """(open file or None, its demo groups in natural order, why its demos cannot be listed or None)."""
        follow = self.cfg.follow_links
        why = None if follow or self.root.is_file() else outside_problem(self.root, path)
        if why:
            return None, [], why
        try:
            f = self._file(path)
            why = None if follow else hdf5_member_problem(f, "data")
            if why:
                return f, [], why
            data = f.get("data")
            demos = sorted((k for k in data.keys() if k.startswith("demo")), key=natural_key) \
                if data is not None and hasattr(data, "keys") else []
        except Exception as e:
            return None, [], source_error(e, path=str(path), field="data").reason
        return f, demos, None if demos else "no data/demo_* group in the file (not a robosuite/LIBERO demo file)"

    def _scan_files(self) -> None:
        """One metadata pass over every file: demo keys, layout, file info; unlistable files become keys."""
        index, scan = {}, {}
        for path in self.files:
            f, demos, why = self._list_demos(path)
            if why:  # one report row for the whole file: its demos cannot be listed
                key = f"{self._rel(path)}/data"
                index[key], self._refused[key] = (path, ""), SourceError(why, path=str(path), key=key, field="data")
                scan[str(path)] = {"error": why, "layouts": []}
                continue
            attrs = self._attrs[path] = file_attrs(f["data"])
            layouts = set()
            for d in demos:
                key = f"{self._rel(path)}/{d}"
                index[key] = (path, d)
                why = None if self.cfg.follow_links else (hdf5_member_problem(f["data"], d)
                                                          or hdf5_links_problem(f["data"][d]))
                if why:
                    self._refused[key] = SourceError(why, path=str(path), key=key)
                    continue
                layouts.add(detect_layout(f["data"][d]))
            scan[str(path)] = {"layouts": sorted(layouts), "num_demos": len(demos),
                               "env": attrs.get("env") or attrs.get("env_name"), "robot": robot_of(attrs),
                               "repository_version": attrs.get("repository_version")}
        if self.cfg.keys is not None:
            index = {k: v for k, v in index.items() if k in set(self.cfg.keys)}
        self._index, self._scan = index, scan

    def keys(self) -> list[str]:
        """Episode keys `<file path relative to the root, no suffix>/<demo>` (or `/data` for a file whose demos
        cannot be listed), files then demos in natural order."""
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
    def demo_specs(self) -> dict[str, dict[str, FieldSpec]]:
        """Fields of every demo that can be scanned (shapes and dtypes from HDF5 metadata only), in key order;
        a demo that cannot is refused (its read raises why)."""
        if self._specs is None:
            specs = {}
            for key in self.keys():
                if key in self._refused:
                    continue
                try:
                    specs[key] = self._field_specs(key)
                except ConfigError:
                    raise
                except Exception as e:  # one bad demo never stops the scan: its read reports it
                    self._refused[key] = source_error(e, path=str(self._index[key][0]), key=key)
            self._specs = specs
        return self._specs

    def _plan(self) -> SchemaPlan:
        if self._plan_ is None:
            specs = self.demo_specs()
            if not specs:
                raise ConfigError("no readable demo in the HDF5 files", path=str(self.root))
            self._plan_ = plan_schema(specs, GROUP_HINT)
        return self._plan_

    def schema(self) -> Schema:
        """The fields of the demos, never padded (`schema_groups.plan_schema`: the first scannable demo sets
        each field's shape; demos whose fields differ are refused)."""
        return self._plan().schema

    def schema_groups(self) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
        """`--group-by-schema`: (store name -> keys with exactly those fields, store name -> {"robot", "schema"
        hash}); the name is `<robot>-<hash>` (or the env name, or `schema-<hash>`). Keys refused while listing
        or scanning go with the first group, whose report names them."""
        specs = self.demo_specs()
        groups, info = {}, {}
        for digest, keys in group_keys(specs).items():
            attrs = self._scan.get(str(self._index[keys[0]][0]), {})
            name = group_name(attrs.get("robot") or attrs.get("env"), digest)
            groups[name], info[name] = keys, {"robot": attrs.get("robot"), "schema_hash": digest}
        refused = [k for k in self.keys() if k not in specs]
        if refused and groups:
            first = next(iter(groups))
            groups[first] = sorted(groups[first] + refused, key=self.keys().index)
        elif refused:
            groups["unreadable"], info["unreadable"] = refused, {"robot": None, "schema_hash": None}
        return groups, info

    def _demo(self, key: str) -> tuple[Any, str, dict[str, tuple[str, str, str | None, str]]]:
        """(demo group, layout, {field: (hdf5 path, dtype, unit, kind)}). The layout and plan are the scan's
        when it saw the demo; a read checks each dataset where it opens it (`_array`)."""
        g, layout, plan, _ = self._scan_demo(key)
        return g, layout, plan

    def _scan_demo(self, key: str) -> tuple[Any, str, dict[str, tuple[str, str, str | None, str]], dict[str, Any]]:
        """`_demo` and, when the demo had not been seen, its datasets as opened for the link checks (by HDF5
        path), so that the scan reads their shapes without opening them again; raises `SourceError`."""
        if key not in self.keys():
            raise SourceError("no such demo", key=key)
        if key in self._refused:
            raise self._refused[key]
        path, demo = self._index[key]
        g = self._file(path)["data"][demo]
        if key in self._layouts:
            return (g, *self._layouts[key], {})
        layout = detect_layout(g)
        plan = field_plan(g, layout)
        opened = {h5: g[h5] for h5, *_ in plan.values()}
        why = None if self.cfg.follow_links else hdf5_problem(g, opened)
        if why:
            raise SourceError(why, path=str(path), key=key)
        self._layouts[key] = layout, plan
        return g, layout, plan, opened

    def _model_xml(self, g) -> str:
        """The demo's `model_file` MJCF, less the files it names (input's names) unless `follow_links`."""
        xml = text(g.attrs.get("model_file", ""))
        return xml if self.cfg.follow_links else without_files(xml)

    def _field_specs(self, key: str) -> dict[str, FieldSpec]:
        g, _, plan, opened = self._scan_demo(key)
        path = str(self._index[key][0])
        out = {}
        for fld, (h5, dt, unit, kind) in plan.items():
            ds = opened[h5] if h5 in opened else g[h5]
            if ds.dtype.kind not in "biuf" or ds.ndim < 1:
                raise SourceError(f"dataset {h5} holds {ds.dtype} of shape {ds.shape}, expected per-step numbers",
                                  path=path, key=key, field=fld)
            shape = {"obs.eef_quat": (4,), "obs.eef_pos": (3,), "obs.gripper": ()}.get(fld, tuple(ds.shape[1:]))
            names = {"obs.eef_quat": ("qx", "qy", "qz", "qw"), "obs.eef_pos": ("x", "y", "z")}.get(fld)
            out[fld] = FieldSpec(dt, shape, unit, kind, names)
        if not out:
            raise SourceError("demo holds no array this source reads (states, actions, obs/...)", path=path,
                              key=key, field="sim_state")
        states = (opened["states"] if "states" in opened else g["states"]) if "sim_state" in plan else None
        out.update(pose_specs(self._model_xml(g), camera_names(plan),
                              states.shape[1] if states is not None and states.ndim == 2 else None, self._models))
        return out

    # -- reading -----------------------------------------------------------------------------------------
    def _array(self, g, key: str, path: str, fld: str, h5: str, kind: str, convention: str) -> np.ndarray:
        """One dataset as read (images flipped per `convention`), checked: numbers, finite, images (T, H, W, 3)
        uint8."""
        try:
            ds = g[h5]
            why = None if self.cfg.follow_links else hdf5_object_problem(ds, g.id.fileno, f"{g.name}/{h5}")
            if why:
                raise SourceError(why, path=path, key=key, field=fld)
            arr = np.asarray(ds[()])
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"cannot read dataset {h5}: {type(e).__name__}: {e}", path=path, key=key,
                              field=fld) from e
        if arr.dtype.kind not in "biuf" or arr.ndim < 1:
            raise SourceError(f"dataset {h5} holds {arr.dtype} of shape {arr.shape}, expected per-step numbers",
                              path=path, key=key, field=fld)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise SourceError(f"NaN or inf in dataset {h5}", path=path, key=key, field=fld)
        if kind == "image":
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise SourceError(f"image dataset {h5} is {arr.dtype} {arr.shape}, expected (T, H, W, 3) uint8",
                                  path=path, key=key, field=fld)
            # One flipped copy of the whole array: a copy per frame as the encoder takes it cost 5x as much
            # (150 frames of 128x128: 10.5 ms against 1.9 ms).
            return np.ascontiguousarray(arr[:, ::-1]) if convention == "opengl" else arr
        return arr

    def read(self, key: str) -> Episode:
        """One demo as an `Episode` (see the module docstring for fields, units and meta)."""
        g, layout, plan = self._demo(key)
        path = str(self._index[key][0])
        self._plan().check(key, path)
        attrs = self._attrs[self._index[key][0]]  # the file's, decoded when its demos were listed
        convention = self.cfg.image_convention or attrs.get("macros_image_convention") or "opengl"
        schema = self.schema()
        steps: dict[str, np.ndarray] = {}
        loaded: dict[str, np.ndarray] = {}  # by dataset: obs.gripper and obs.gripper_qpos read one
        for fld, (h5, dt, unit, kind) in plan.items():
            if h5 not in loaded:
                loaded[h5] = self._array(g, key, path, fld, h5, kind, convention)
            arr = loaded[h5]
            if fld == "obs.eef_quat" and layout == LIBERO:
                from scipy.spatial.transform import Rotation

                rotvec = arr[:, 3:6] if h5.endswith("ee_states") else arr
                arr = sign_continuous(Rotation.from_rotvec(rotvec.astype(np.float64)).as_quat())
            elif fld == "obs.eef_pos":
                arr = arr[:, :3]
            elif fld == "obs.gripper":
                arr = arr[:, 0] - arr[:, 1] if arr.ndim == 2 and arr.shape[1] >= 2 else arr.reshape(len(arr), -1)[:, 0]
            steps[fld] = arr.astype(dt, copy=False)
        cameras, camera_notes = self._cameras(g, key, plan, steps, schema)
        lengths = Counter(len(a) for a in steps.values())
        if len(lengths) != 1:
            n = lengths.most_common(1)[0][0]
            odd = sorted(k for k, a in steps.items() if len(a) != n)
            raise SourceError("arrays differ in length: " + ", ".join(f"{k}={len(a)}" for k, a in steps.items()),
                              path=path, key=key, field=",".join(odd))
        n = next(iter(lengths))
        absent = sorted(fld for fld in schema if fld not in steps)
        for fld in absent:  # a placeholder the meta marks absent: stats skip it, loaders flag it as padding
            spec = schema[fld]
            steps[fld] = np.zeros((n,) + spec.shape, spec.dtype)
        meta = demo_meta(key, path, layout, attrs, self.cfg.fps, absent)
        meta["cameras"] = cameras
        if camera_notes:
            meta["camera_note"] = "; ".join(camera_notes)
        return Episode(key=key, steps=steps, meta=meta)

    def _cameras(self, g, key, plan, steps, schema) -> tuple[dict[str, Any], list[str]]:
        """Camera meta and notes of one demo; adds moving cameras' per-step poses to `steps` (see
        `libero_cameras.demo_cameras`)."""
        sizes = {c: (int(steps[f"obs.rgb.{c}"].shape[2]), int(steps[f"obs.rgb.{c}"].shape[1]))
                 for c in camera_names(plan)}
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
