"""`ingest libero`: real raw robosuite files, the LIBERO-layout camera tests (fixed agentview, wrist camera
posed per step from states), workers, resume after SIGKILL."""

from __future__ import annotations

import json
import signal

import numpy as np
from conftest import SHARED, run_cli, sigkill_group, start_paused_cli, wait_paused
from libero_fixtures import MODEL_XML, gl_pixel, mujoco_camera, write_libero_file, write_libero_suite
from scipy.spatial.transform import Rotation

from shardyard import open_store
from shardyard.geometry import GL_TO_CV, project

WRIST = "obs.T_world_cam.eye_in_hand"

ROBOSUITE = SHARED / "robosuite_hdf5"


def _arrays_equal(a, b):
    assert a.schema.keys() == b.schema.keys() and a.episode_keys == b.episode_keys
    for f in a.schema.keys():
        assert np.array_equal(a.read_rows(f, 0, a.num_steps), b.read_rows(f, 0, b.num_steps)), f
    assert json.dumps([a.episode_meta(i)["cameras"] for i in range(a.num_episodes)], default=str) == \
        json.dumps([b.episode_meta(i)["cameras"] for i in range(b.num_episodes)], default=str)


def test_raw_robosuite_folder_says_which_files_hold_no_observations(tmp_path):
    """The eight real robosuite files differ in robot and scene (`sim_state` 23 to 52 wide, `action` 7 or 8 wide
    or absent): `--group-by-schema` stores them in one store per schema, never padded, each demo's arrays exact."""
    out = tmp_path / "r"
    proc = run_cli("ingest", "libero", ROBOSUITE, "--out", out, "--group-by-schema")
    assert proc.returncode == 0, proc.stderr
    files = sorted(ROBOSUITE.glob("*.hdf5"))
    groups = json.loads((out / "groups.json").read_text())
    stores = {name: open_store(str(out / name)) for name in groups}
    assert sum(s.num_episodes for s in stores.values()) == 11 and len(stores) == 7
    assert {g["robot"] for g in groups.values()} == {"Sawyer", "Baxter", "Panda"}
    lengths = {}
    import h5py
    for f in files:
        with h5py.File(f, "r") as h:
            for d in h["data"]:
                lengths[f"{f.stem}/{d}"] = (len(h["data"][d]["states"]), h["data"][d]["states"][()])
    seen = set()
    for name, s in stores.items():
        assert not s.schema.of_kind("image") and s.episode_keys == groups[name]["keys"]
        report = json.loads((out / name / "report.json").read_text())
        for key in s.episode_keys:
            f = ROBOSUITE / f"{key.split('/')[0]}.hdf5"
            assert any(str(f) in n and "no observations" in n for n in report["notes"]), f
            assert f"{f}: holds no observations" in (out / name / "report.json").read_text()
        for i, key in enumerate(s.episode_keys):
            meta = s.episode_meta(i)
            assert meta["observations"] is False and meta["cameras"] == {} and "model_file" in meta["camera_note"]
            assert "absent_fields" not in meta and "field_widths" not in meta
            n, states = lengths[key]
            assert s.episode_length(i) == n
            assert np.array_equal(s.read(i, ["sim_state"])["sim_state"], states)  # float64, exact, unpadded
            seen.add(key)
    assert seen == set(lengths)
    lift = next(s for s in stores.values() if "robosuite_lift_panda/demo_1" in s.episode_keys)
    assert lift.episode_meta(0)["env"]["env_info"]["controller_configs"]["type"] == "OSC_POSE"


def test_camera_matches_mujoco_and_eef_projects_onto_marker(tmp_path):
    size = 64
    write_libero_file(tmp_path / "raw" / "PICK_demo.hdf5", num_demos=2, steps=16, size=size)
    out = tmp_path / "store"
    run_cli("ingest", "libero", tmp_path / "raw", "--out", out, "--frame-codec", "lz4", check=True)
    s = open_store(str(out))
    pos, xmat, fovy = mujoco_camera()
    T_expected = np.eye(4)
    T_expected[:3, :3], T_expected[:3, 3] = xmat @ GL_TO_CV, pos
    f = (size / 2) / np.tan(np.deg2rad(fovy) / 2)
    K_expected = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    for ep in range(s.num_episodes):
        cam = s.episode_meta(ep)["cameras"]["agentview"]
        np.testing.assert_allclose(cam["T_world_cam"], T_expected, atol=1e-6)
        np.testing.assert_allclose(cam["K"], K_expected, atol=1e-6)
        assert (cam["width"], cam["height"]) == (size, size) and cam["moving"] is False
        d = s.read(ep, ["obs.eef_pos", "obs.rgb.agentview", "obs.eef_quat", "obs.gripper"])
        pix, depth = project(d["obs.eef_pos"].astype(np.float64), cam["K"], cam["T_world_cam"])
        assert np.all(depth > 0)
        np.testing.assert_allclose(pix, gl_pixel(d["obs.eef_pos"].astype(np.float64), size), atol=1e-3)
        for t, (u, v) in enumerate(np.round(pix).astype(int)):  # marker is at the projection in the upright image
            assert np.all(d["obs.rgb.agentview"][t, v, u] == 255), (ep, t)
    # eye-in-hand hangs below jointed bodies: no fixed pose, a per-step one (test_wrist_camera_...)
    wrist = s.episode_meta(0)["cameras"]["eye_in_hand"]
    assert wrist["moving"] is True and wrist["T_world_cam"] is None and "camera_note" not in s.episode_meta(0)
    import h5py
    with h5py.File(tmp_path / "raw" / "PICK_demo.hdf5", "r") as h:
        rotvec = h["data/demo_0/obs/ee_ori"][()]
        grip = h["data/demo_0/obs/gripper_states"][()]
    q = s.read(0, ["obs.eef_quat"])["obs.eef_quat"].astype(np.float64)
    np.testing.assert_allclose(Rotation.from_quat(q).as_rotvec(), rotvec, atol=1e-5)
    np.testing.assert_allclose(s.read(0, ["obs.gripper"])["obs.gripper"], grip[:, 0] - grip[:, 1], atol=1e-6)
    meta = s.episode_meta(0)
    assert meta["task"] == "put the bowl on the plate" and meta["fps"] == 20.0
    plots = run_cli("inspect", out, "--out", tmp_path / "plots", check=True)
    assert "frames_agentview.png" in plots.stdout and "eef_height.png" in plots.stdout


def _mujoco_wrist_poses(states: np.ndarray) -> np.ndarray:
    """MuJoCo's own wrist camera pose per step (qpos from the states, mj_forward), turned to OpenCV here."""
    import mujoco

    m = mujoco.MjModel.from_xml_string(MODEL_XML)
    d = mujoco.MjData(m)
    cid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "robot0_eye_in_hand")
    out = np.zeros((len(states), 4, 4))
    for t, s in enumerate(states):
        d.qpos[:] = s[1:1 + m.nq]
        mujoco.mj_forward(m, d)
        R = d.cam_xmat[cid].reshape(3, 3).copy()
        R[:, 1:] *= -1.0  # GL (x right, y up, looking down -z) -> CV (y down, z forward)
        out[t, :3, :3], out[t, :3, 3], out[t, 3, 3] = R, d.cam_xpos[cid], 1.0
    return out


def test_wrist_camera_pose_from_states_matches_mujoco(tmp_path):
    import h5py

    size = 48
    raw = write_libero_file(tmp_path / "raw" / "WRIST_demo.hdf5", num_demos=2, steps=24, size=size)
    out = tmp_path / "store"
    run_cli("ingest", "libero", raw.parent, "--out", out, check=True)
    s = open_store(str(out))
    assert s.schema[WRIST].shape == (4, 4) and s.schema[WRIST].kind == "pose" and s.schema[WRIST].dtype == "float32"
    f = (size / 2) / np.tan(np.deg2rad(75.0) / 2)  # fixture fovy 75 deg
    K_expected = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    with h5py.File(raw, "r") as h:
        for ep, key in enumerate(s.episode_keys):
            meta = s.episode_meta(ep)
            cam = meta["cameras"]["eye_in_hand"]
            assert cam["moving"] is True and cam["T_world_cam"] is None and cam["pose"] == "fk from states"
            assert (cam["width"], cam["height"], cam["fovy_deg"]) == (size, size, 75.0)
            assert cam["mjcf_camera"] == "robot0_eye_in_hand"
            np.testing.assert_allclose(cam["K"], K_expected, atol=1e-9)
            assert "camera_note" not in meta and WRIST not in meta.get("absent_fields", [])
            states = h[f"data/{key.rsplit('/', 1)[-1]}/states"][()]
            stored = s.read(ep, [WRIST])[WRIST]
            assert stored.dtype == np.float32 and stored.shape == (len(states), 4, 4)
            steps = np.linspace(0, len(states) - 1, 6).astype(int)
            expected = _mujoco_wrist_poses(states[steps])
            np.testing.assert_allclose(stored[steps], expected, atol=1e-5, rtol=0)
            R = stored[steps, :3, :3].astype(np.float64)
            np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
            # the camera moves: position and orientation both change along the joint trajectory
            assert np.ptp(stored[:, :3, 3], axis=0).max() > 0.05
            assert np.abs(stored[:, :3, :3] - stored[0, :3, :3]).max() > 0.1
    # inspection projects through the per-step pose
    from shardyard.tools.inspect.summary import eef_pixels

    eef = s.read(0, ["obs.eef_pos"])["obs.eef_pos"].astype(np.float64)
    pose = s.read(0, [WRIST])[WRIST].astype(np.float64)
    pix, depth = project(eef, s.episode_meta(0)["cameras"]["eye_in_hand"]["K"], pose)
    pix[~(depth > 1e-9)] = np.nan
    np.testing.assert_allclose(eef_pixels(s, 0, "eye_in_hand"), pix, atol=1e-9)


def test_wrist_pose_absent_when_states_do_not_match_model(tmp_path):
    import pickle

    import h5py

    from shardyard.ingest.libero import LiberoConfig, LiberoSource
    from shardyard.loaders.episodes import EpisodeDataset

    raw = tmp_path / "raw"
    write_libero_file(raw / "A_demo.hdf5", num_demos=2, steps=12, size=32)
    # B: the same fields and widths, but its MJCF has one more joint, so its 5-column states do not match it
    write_libero_file(raw / "B_demo.hdf5", num_demos=2, steps=12, size=32, seed=1)
    other = MODEL_XML.replace("<worldbody>", '<worldbody><body name="extra"><joint name="j0" type="slide" '
                              'axis="1 0 0"/><geom type="sphere" size="0.01"/></body>')
    with h5py.File(raw / "B_demo.hdf5", "a") as h:
        for d in h["data"]:
            h["data"][d].attrs["model_file"] = other
    out = tmp_path / "store"
    proc = run_cli("ingest", "libero", raw, "--out", out, "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr
    s = open_store(str(out))
    assert s.num_episodes == 4 and WRIST in s.schema
    for ep, key in enumerate(s.episode_keys):
        meta = s.episode_meta(ep)
        assert "agentview" in meta["cameras"] and "field_widths" not in meta
        if key.startswith("A_demo/"):
            assert "eye_in_hand" in meta["cameras"] and "camera_note" not in meta and "absent_fields" not in meta
            assert np.abs(s.read(ep, [WRIST])[WRIST]).max() > 0.1
        else:
            assert "eye_in_hand" not in meta["cameras"]
            assert "states have 5 columns" in meta["camera_note"] and "no per-step pose" in meta["camera_note"]
            assert meta["absent_fields"] == [WRIST]
    # absent is absent: left out of the stats, served as padding, never as a pose of zeros
    a_steps = sum(s.episode_length(i) for i, k in enumerate(s.episode_keys) if k.startswith("A_demo/"))
    assert s.stats["fields"][WRIST]["count"] == [a_steps] and s.stats["fields"]["action"]["count"] == [s.num_steps]
    ds = EpisodeDataset(s, {WRIST: [0, 1], "action": [0]})
    batch = ds.fetch(range(len(ds)))
    from_b = np.isin(batch["episode_index"], [i for i, k in enumerate(s.episode_keys) if k.startswith("B_demo/")])
    assert batch[f"{WRIST}_is_pad"][from_b].all() and not batch["action_is_pad"].any()
    assert not batch[f"{WRIST}_is_pad"][~from_b][:, 0].any()
    # states of another width are another schema: refused with a row naming the field, or a store of their own
    write_libero_file(raw / "C_demo.hdf5", num_demos=1, steps=12, size=32, seed=2, state_dim=9)
    proc = run_cli("ingest", "libero", raw, "--out", tmp_path / "mixed")
    assert proc.returncode == 2, proc.stderr
    (row,) = json.loads((tmp_path / "mixed" / "report.json").read_text())["skipped"]
    assert row["key"] == "C_demo/demo_0" and row["field"] == "sim_state" and "(9,)" in row["reason"]
    assert row["path"] == str(raw / "C_demo.hdf5") and "--group-by-schema" in row["reason"]
    # a store of mismatching demos only has no wrist pose field; one compiled model serves every demo
    src = LiberoSource(LiberoConfig(root=raw / "C_demo.hdf5"))
    assert WRIST not in src.schema() and "obs.rgb.eye_in_hand" in src.schema()
    src = LiberoSource(LiberoConfig(root=raw / "A_demo.hdf5"))
    for key in src.keys():
        src.read(key)
    assert len(src._models) == 1 and pickle.loads(pickle.dumps(src))._models == {}
    # a demo without states: no pose, a note, the demo still reads
    nostates = write_libero_file(tmp_path / "C_demo.hdf5", num_demos=2, steps=12, size=32)
    with h5py.File(nostates, "a") as h:
        del h["data/demo_1/states"]
    src = LiberoSource(LiberoConfig(root=nostates))
    ep = src.read("C_demo/demo_1")
    assert "eye_in_hand" not in ep.meta["cameras"] and "no states" in ep.meta["camera_note"]
    assert sorted(ep.meta["absent_fields"]) == sorted([WRIST, "sim_state"])
    assert "eye_in_hand" in src.read("C_demo/demo_0").meta["cameras"]


def test_workers_and_resume_after_sigkill_give_identical_arrays(tmp_path):
    raw = write_libero_suite(tmp_path / "suite", num_files=2, num_demos=6, steps=30, size=96, state_dim_step=0)
    one, two, killed = tmp_path / "w1", tmp_path / "w2", tmp_path / "killed"
    run_cli("ingest", "libero", raw, "--out", one, "--workers", "1", check=True)
    run_cli("ingest", "libero", raw, "--out", two, "--workers", "2", check=True)
    a, b = open_store(str(one)), open_store(str(two))
    _arrays_equal(a, b)
    assert a.schema["sim_state"].shape == (40,) and "absent_fields" not in a.episode_meta(4)

    # killed after 3 of 12 episodes are written (into an open group: nothing committed yet)
    proc = start_paused_cli("ingest", "libero", raw, "--out", killed, pause_file=tmp_path / "pause", after=3)
    wait_paused(proc)
    assert sigkill_group(proc) == -signal.SIGKILL
    assert not (killed / "manifest.json").exists()
    run_cli("ingest", "libero", raw, "--out", killed, check=True)
    _arrays_equal(a, open_store(str(killed)))
