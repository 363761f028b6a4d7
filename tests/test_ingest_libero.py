"""`ingest libero`: real raw robosuite files, the LIBERO-layout camera test, workers, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from scipy.spatial.transform import Rotation

from conftest import SHARED, run_cli
from libero_fixtures import gl_pixel, mujoco_camera, write_libero_file, write_libero_suite
from shardyard import open_store
from shardyard.geometry import GL_TO_CV, project

ROBOSUITE = SHARED / "robosuite_hdf5"


def _arrays_equal(a, b):
    assert a.schema.keys() == b.schema.keys() and a.episode_keys == b.episode_keys
    for f in a.schema.keys():
        assert np.array_equal(a.read_rows(f, 0, a.num_steps), b.read_rows(f, 0, b.num_steps)), f
    assert json.dumps([a.episode_meta(i)["cameras"] for i in range(a.num_episodes)], default=str) == \
        json.dumps([b.episode_meta(i)["cameras"] for i in range(b.num_episodes)], default=str)


def test_raw_robosuite_folder_says_which_files_hold_no_observations(tmp_path):
    out = tmp_path / "r"
    proc = run_cli("ingest", "libero", ROBOSUITE, "--out", out)
    assert proc.returncode == 0, proc.stderr
    files = sorted(ROBOSUITE.glob("*.hdf5"))
    report = json.loads((out / "report.json").read_text())
    for f in files:
        assert any(str(f) in n and "no observations" in n for n in report["notes"]), f
        assert f"{f}: holds no observations" in proc.stdout
    s = open_store(str(out))
    assert s.num_episodes == 11 and not s.schema.of_kind("image")
    lengths = {}
    import h5py
    for f in files:
        with h5py.File(f, "r") as h:
            for d in h["data"]:
                lengths[f"{f.stem}/{d}"] = (len(h["data"][d]["states"]), h["data"][d]["states"][()])
    for i, key in enumerate(s.episode_keys):
        meta = s.episode_meta(i)
        assert meta["observations"] is False and meta["cameras"] == {} and "model_file" in meta["camera_note"]
        n, states = lengths[key]
        assert s.episode_length(i) == n
        w = meta.get("field_widths", {}).get("sim_state", states.shape[1])
        assert np.array_equal(s.read(i, ["sim_state"])["sim_state"][:, :w], states)  # float64, exact
    lift = s.episode_keys.index("robosuite_lift_panda/demo_1")
    assert s.episode_meta(lift)["env"]["env_info"]["controller_configs"]["type"] == "OSC_POSE"


def test_camera_matches_mujoco_and_eef_projects_onto_marker(tmp_path):
    size = 64
    write_libero_file(tmp_path / "raw" / "PICK_demo.hdf5", num_demos=2, steps=16, size=size)
    out = tmp_path / "store"
    run_cli("ingest", "libero", tmp_path / "raw", "--out", out, check=True)
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
    # eye-in-hand hangs below jointed bodies: no fixed calibration is stored for it
    assert "eye_in_hand" not in s.episode_meta(0)["cameras"]
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


def test_workers_and_resume_after_sigkill_give_identical_arrays(tmp_path):
    raw = write_libero_suite(tmp_path / "suite", num_files=2, num_demos=6, steps=30, size=96)
    one, two, killed = tmp_path / "w1", tmp_path / "w2", tmp_path / "killed"
    run_cli("ingest", "libero", raw, "--out", one, "--workers", "1", check=True)
    run_cli("ingest", "libero", raw, "--out", two, "--workers", "2", check=True)
    a, b = open_store(str(one)), open_store(str(two))
    _arrays_equal(a, b)
    assert a.episode_meta(4)["field_widths"] == {"sim_state": 40}  # narrower scene padded, true width kept

    proc = subprocess.Popen([sys.executable, "-m", "shardyard.cli", "ingest", "libero", str(raw), "--out",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            n = len(json.loads((killed / "progress.json").read_text())["episodes"])
        except (FileNotFoundError, json.JSONDecodeError):
            n = 0
        if n >= 3 or proc.poll() is not None:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "killed too late: the run had finished"
    run_cli("ingest", "libero", raw, "--out", killed, check=True)
    _arrays_equal(a, open_store(str(killed)))
