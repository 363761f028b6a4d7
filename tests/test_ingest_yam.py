"""`ingest yam`: both layouts, projection against ground truth, bad input, determinism, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import YAM_EPISODES, YAM_MODEL, run_cli, sigkill_group, start_paused_cli, wait_paused

from shardyard import open_store
from shardyard.errors import SourceError
from shardyard.geometry import project, scale_intrinsics
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.yam import LAYOUT_READERS, PER_DEMO, LayoutInputs, YamConfig, YamSource, detect_layout
from shardyard.ingest.yam.frames import FrameReader
from shardyard.ingest.yam.i2rt import read_i2rt
from shardyard.ingest.yam.per_demo import read_per_demo
from shardyard.mjcf import RobotKinematics
from shardyard.stores.commit_log import committed_episodes

SMALL = ["--image-size", "160x120", "--camera", "top"]


def assert_stores_equal(a: str, b: str) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.episode_keys == sb.episode_keys
    assert sa.schema == sb.schema
    for e in range(sa.num_episodes):
        ra, rb = sa.read(e), sb.read(e)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"{k} of episode {e}")
        ma, mb = sa.episode_meta(e), sb.episode_meta(e)
        assert json.dumps(ma, default=lambda o: o.tolist(), sort_keys=True) == \
            json.dumps(mb, default=lambda o: o.tolist(), sort_keys=True)
    assert sa.stats == sb.stats


@pytest.fixture(scope="module")
def full_yam_store(tmp_path_factory, shared_data):
    """The acceptance command on all shared episodes, run through the real `ingest` CLI."""
    out = tmp_path_factory.mktemp("yam") / "store"
    proc = run_cli("ingest", "yam", YAM_EPISODES, "--robot-model", YAM_MODEL, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Episodes: 6" in proc.stdout and "0 skipped" in proc.stdout
    return out


def test_full_ingest_projects_eef_onto_gripper(full_yam_store):
    """The stored EEF projected with the stored K / T_world_cam lands where the sidecar ground truth (never
    read by ingest) says the fingertip centre is, in both cameras."""
    s = open_store(str(full_yam_store))
    assert s.num_episodes == 6
    for e, key in enumerate(s.episode_keys):
        gt = np.load(YAM_EPISODES / key / "ground_truth.npz")
        steps = s.read(e, ["obs.eef_pos", "obs.eef_quat", "obs.T_world_cam.wrist", "obs.rgb.top"])
        meta = s.episode_meta(e)
        assert len(steps["obs.eef_pos"]) == len(gt["eef_pos"])
        np.testing.assert_allclose(steps["obs.eef_pos"], gt["eef_pos"], atol=1e-6)
        q, qgt = steps["obs.eef_quat"], gt["eef_quat_xyzw"]
        np.testing.assert_allclose(np.abs(np.sum(q * qgt, axis=1)), 1.0, atol=1e-5)
        top = meta["cameras"]["top"]
        np.testing.assert_allclose(top["K"], gt["top_K"], atol=1e-9)
        np.testing.assert_allclose(top["T_world_cam"], gt["top_T_world_cam"][0], atol=1e-9)
        assert meta["cameras"]["wrist"]["moving"] and meta["cameras"]["wrist"]["T_world_cam"] is None
        np.testing.assert_allclose(steps["obs.T_world_cam.wrist"], gt["wrist_T_world_cam"], atol=1e-5)
        pix, depth = project(steps["obs.eef_pos"].astype(np.float64), top["K"], top["T_world_cam"])
        pix_gt, _ = project(gt["eef_pos"], gt["top_K"], gt["top_T_world_cam"])
        assert np.all(depth > 0)
        assert np.max(np.linalg.norm(pix - pix_gt, axis=1)) < 0.05  # pixels
        inside = (pix[:, 0] >= 0) & (pix[:, 0] < 640) & (pix[:, 1] >= 0) & (pix[:, 1] < 480)
        assert inside.mean() > 0.9
        # and the stored frame there shows the (dark grey) gripper, not the light table
        img = steps["obs.rgb.top"]
        t = int(np.argmax(inside))
        u, v = np.round(pix[t]).astype(int)
        patch = img[t, max(v - 4, 0):v + 5, max(u - 4, 0):u + 5].astype(float)
        assert patch.mean() < img[t].astype(float).mean() + 40


def test_full_ingest_stats_and_report(full_yam_store):
    s = open_store(str(full_yam_store))
    robot = s.stats["robot"]["obs"]
    edges = np.asarray(robot["height_bins"]["edges"])
    assert len(edges) == 33 and np.all(np.diff(edges) > 0)
    train = s.split["train"]
    z = np.concatenate([s.read(e, ["obs.eef_pos"])["obs.eef_pos"][:, 2] for e in train])
    assert edges[0] < z.min() and edges[-1] > z.max()
    assert robot["rotation"]["recommended_mode"] in ("1d_pca", "kmeans")
    ev = robot["rotation"]["pca"]["explained_variance_ratio"][0]
    assert robot["rotation"]["recommended_mode"] == ("1d_pca" if ev >= 0.8 else "kmeans")
    assert s.report["num_skipped"] == 0 and s.report["num_stored"] == 6
    assert s.manifest["source"]["robot_model"]["sha256"]


@pytest.mark.parametrize("video", [True, False])
def test_per_demo_layout(tiny_yam_dir, tmp_path, video):
    raw = tiny_yam_dir(video=video)
    out = tmp_path / "store"
    proc = run_cli("ingest", "yam", raw, "--out", out, "--frame-codec", "lz4")  # lossless: frames compared exactly
    assert proc.returncode == 0, proc.stderr
    s = open_store(str(out))
    assert s.num_episodes == 3
    assert {"obs.rgb.front", "obs.eef_pos", "obs.eef_quat", "obs.gripper", "action"} <= set(s.schema.keys())
    for e, key in enumerate(s.episode_keys):
        src = raw / key
        np.testing.assert_allclose(s.read(e, ["obs.eef_pos"])["obs.eef_pos"], np.load(src / "eef_pos.npy"), atol=1e-6)
        cam = json.loads((src / "camera.json").read_text())
        np.testing.assert_allclose(s.episode_meta(e)["cameras"]["front"]["K"], cam["K"])
    if not video:  # PNG frames are lossless
        from PIL import Image

        np.testing.assert_array_equal(s.read(0, ["obs.rgb.front"], 5, 6)["obs.rgb.front"][0],
                                      np.asarray(Image.open(raw / s.episode_keys[0] / "frames" / "000005.png")))


def test_per_demo_resize_scales_K(tiny_yam_dir, tmp_path):
    raw = tiny_yam_dir(video=False)
    out = tmp_path / "store"
    run_cli("ingest", "yam", raw, "--out", out, "--image-size", "32x24", check=True)
    s = open_store(str(out))
    assert s.schema["obs.rgb.front"].shape == (24, 32, 3)
    K0 = np.asarray(json.loads((raw / s.episode_keys[0] / "camera.json").read_text())["K"])
    K = s.episode_meta(0)["cameras"]["front"]["K"]
    assert K[0, 0] == pytest.approx(K0[0, 0] / 2) and K[0, 2] == pytest.approx((K0[0, 2] + 0.5) / 2 - 0.5)


@pytest.mark.parametrize("video", [True, False])
def test_layout_reader_with_explicit_inputs(tiny_yam_dir, video):
    """A layout is a plain reader of (folder, key, inputs): the schema probe is a `FrameReader` with
    `first_only`, the specs come back beside the episode, and the source's schema is built from them."""
    raw = tiny_yam_dir(video=video)
    key = YamSource(YamConfig(root=raw)).keys()[0]
    assert detect_layout(raw / key) == PER_DEMO and LAYOUT_READERS[PER_DEMO] is read_per_demo
    probe = read_per_demo(raw / key, key, LayoutInputs(FrameReader(image_size=(32, 24), first_only=True)))
    full = read_per_demo(raw / key, key, LayoutInputs(FrameReader(image_size=(32, 24))))
    T = len(np.load(raw / key / "eef_pos.npy"))
    assert probe.episode.steps["obs.rgb.front"].shape == (1, 24, 32, 3)
    assert full.episode.steps["obs.rgb.front"].shape == (T, 24, 32, 3)
    assert "_specs" not in full.episode.meta and full.specs == probe.specs
    assert full.specs["obs.eef_pos"].unit == "m" and full.specs["obs.rgb.front"].shape == (24, 32, 3)
    source = YamSource(YamConfig(root=raw, image_size=(32, 24)))
    assert {k: source.schema()[k] for k in full.specs} == full.specs
    np.testing.assert_array_equal(source.read(key).steps["obs.rgb.front"], full.episode.steps["obs.rgb.front"])


def test_i2rt_reader_with_explicit_kinematics(yam_raw):
    """The i2rt reader takes the robot model as `RobotKinematics` (None: no EEF fields, no model cameras)."""
    raw = yam_raw(1)
    key = YamSource(YamConfig(root=raw)).keys()[0]
    frames = FrameReader(image_size=(80, 60), first_only=True)
    kin = RobotKinematics(YAM_MODEL)
    with_fk = read_i2rt(raw / key, key, LayoutInputs(frames, kinematics=kin, cameras=("top",)))
    without = read_i2rt(raw / key, key, LayoutInputs(frames, cameras=("top",)))
    gt = np.load(raw / key / "ground_truth.npz")
    np.testing.assert_allclose(with_fk.episode.steps["obs.eef_pos"], gt["eef_pos"], atol=1e-6)
    assert "obs.eef_pos" not in without.episode.steps and without.episode.meta["cameras"]["top"]["K"] is None
    np.testing.assert_allclose(with_fk.episode.meta["cameras"]["top"]["K"],
                               scale_intrinsics(gt["top_K"], 80 / 640, 60 / 480), atol=1e-9)
    assert with_fk.episode.steps["obs.rgb.top"].shape == (1, 60, 80, 3)
    assert with_fk.specs["obs.joint_pos"].unit == "rad" and with_fk.episode.meta["eef_site"] == kin.arm("left").site


# -- bad input --------------------------------------------------------------------------------------------

def _truncate_video(ep: Path) -> str:
    p = ep / "top-images-rgb.mp4"
    p.write_bytes(p.read_bytes()[:4000])
    return "obs.rgb.top"


def _missing_npy(ep: Path) -> str:
    (ep / "left-gripper_pos.npy").unlink()
    return "obs.gripper"


def _short_npy(ep: Path) -> str:
    a = np.load(ep / "action-left-joint.npy")
    np.save(ep / "action-left-joint.npy", a[:-5])
    return "action"


def _length_mismatch(ep: Path) -> str:
    # the camera lost its last 10 frames and timestamps: steps at the end have no frame within tolerance
    from shardyard.video import open_video, write_video

    v = open_video(ep / "top-images-rgb.mp4")
    frames = v.read(range(v.num_frames - 10))
    write_video(ep / "top-images-rgb.mp4", frames, fps=30)
    ts = np.load(ep / "top-timestamp.npy")
    np.save(ep / "top-timestamp.npy", ts[:-10])
    # the reference camera is the first one listed: make the wrist camera the reference
    meta = json.loads((ep / "metadata.json").read_text())
    meta["cameras"] = meta["cameras"][::-1]
    (ep / "metadata.json").write_text(json.dumps(meta))
    return "obs.rgb.top"


def _nan(ep: Path) -> str:
    a = np.load(ep / "left-joint_pos.npy")
    a[17, 2] = np.nan
    np.save(ep / "left-joint_pos.npy", a)
    return "obs.joint_pos"


def _no_flag(ep: Path) -> str:
    (ep / "write_complete.flag").unlink()
    return None


def _pickled_npy(ep: Path) -> str:
    np.save(ep / "left-gripper_pos.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return "obs.gripper"


BAD_I2RT = {"truncated_mp4": _truncate_video, "missing_npy": _missing_npy, "short_npy": _short_npy,
            "length_mismatch": _length_mismatch, "nan": _nan, "incomplete": _no_flag, "pickle": _pickled_npy}


def test_bad_i2rt_episodes_are_reported_and_skipped(yam_raw, tmp_path):
    """One raw folder with a good episode and one bad episode per kind of damage (`BAD_I2RT`): one ingest
    skips each bad one with a report row naming its file, episode and field, and stores the good one."""
    raw = yam_raw(6)  # the six shared episodes, and copies of them for the other kinds
    eps = sorted(p.parent for p in raw.rglob("metadata.json"))
    for i in range(len(eps), 1 + len(BAD_I2RT)):
        shutil.copytree(eps[i % len(eps)], eps[i % len(eps)].with_name(f"{eps[i % len(eps)].name}_copy{i}"))
    eps = sorted(p.parent for p in raw.rglob("metadata.json"))
    bad = {eps[i + 1].relative_to(raw).as_posix(): (case, BAD_I2RT[case](eps[i + 1]), eps[i + 1])
           for i, case in enumerate(sorted(BAD_I2RT))}
    out = tmp_path / "store"
    proc = run_cli("ingest", "yam", raw, "--out", out, "--robot-model", YAM_MODEL, *SMALL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{len(BAD_I2RT)} skipped" in proc.stdout and "report.json" in proc.stderr
    s = open_store(str(out))
    assert s.episode_keys == [eps[0].relative_to(raw).as_posix()]
    rows = {row["key"]: row for row in s.report["skipped"]}
    assert rows.keys() == bad.keys()
    for key, (case, field, ep) in bad.items():
        assert rows[key]["field"] == field, case
        assert rows[key]["path"] and Path(rows[key]["path"]).is_relative_to(ep), case
    # --on-error fail stops at the first bad episode, exit status 1, and names the episode
    proc = run_cli("ingest", "yam", raw, "--out", tmp_path / "fail", "--robot-model", YAM_MODEL, *SMALL,
                   "--on-error", "fail")
    assert proc.returncode == 1 and min(bad) in proc.stderr


def _nonunit_quat(ep: Path) -> str:
    q = np.load(ep / "eef_quat.npy")
    q[3] *= 1.5
    np.save(ep / "eef_quat.npy", q)
    return "obs.eef_quat"


def _frames_short(ep: Path) -> str:
    for f in sorted((ep / "frames").glob("*.png"))[-3:]:
        f.unlink()
    return "obs.rgb.front"


def _inf_pos(ep: Path) -> str:
    p = np.load(ep / "eef_pos.npy")
    p[2, 0] = np.inf
    np.save(ep / "eef_pos.npy", p)
    return "obs.eef_pos"


@pytest.mark.parametrize("corrupt", [_nonunit_quat, _frames_short, _inf_pos])
def test_bad_per_demo_episode(tiny_yam_dir, tmp_path, corrupt):
    raw = tiny_yam_dir(video=False)
    ep = sorted(raw.rglob("eef_pos.npy"))[2].parent
    field = corrupt(ep)
    res = run_ingest(YamSource(YamConfig(root=raw)), IngestConfig(out=tmp_path / "s"))
    assert res.exit_code == 2 and len(res.skipped) == 1
    assert res.skipped[0]["field"] == field and res.skipped[0]["key"] == ep.relative_to(raw).as_posix()
    with pytest.raises(SourceError) as e:
        YamSource(YamConfig(root=raw)).read(ep.relative_to(raw).as_posix())
    assert ep.name in str(e.value)


# -- determinism and resume -------------------------------------------------------------------------------

def test_same_arrays_whatever_the_worker_count(yam_raw, tmp_path):
    raw = yam_raw(4)
    for w in (1, 2):
        run_cli("ingest", "yam", raw, "--out", tmp_path / f"w{w}", "--robot-model", YAM_MODEL, *SMALL,
                "--workers", str(w), check=True)
    assert_stores_equal(str(tmp_path / "w1"), str(tmp_path / "w2"))


def _committed(out: Path) -> int:
    try:
        return len(committed_episodes(out))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.parametrize("kill_after,commit_every", [(0, 32), (1, 1), (3, 1), (2, 2)])
def test_resume_after_sigkill_equals_uninterrupted(tiny_yam_dir, tmp_path, kill_after, commit_every):
    """SIGKILL the CLI (and its readers) once exactly `kill_after` episodes are committed (0: after the first
    episode of an open group is written, nothing committed), rerun the same command, and compare with a run
    that was never interrupted. The job is paused at that point (`--pause-file`), so the kill cannot miss it."""
    raw = tiny_yam_dir(num_episodes=6, steps=30, video=True)
    args = ["ingest", "yam", str(raw), "--workers", "2", "--commit-every", str(commit_every)]
    run_cli(*args, "--out", tmp_path / "ref", check=True)
    out = tmp_path / "killed"
    proc = start_paused_cli(*args, "--out", out, pause_file=tmp_path / "pause", after=max(kill_after, 1))
    wait_paused(proc)
    assert sigkill_group(proc) == -signal.SIGKILL
    assert _committed(out) == kill_after and not (out / "manifest.json").exists()
    with pytest.raises(Exception):
        open_store(str(out))
    rerun = run_cli(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert_stores_equal(str(tmp_path / "ref"), str(out))
    report = open_store(str(out)).report
    assert report["num_already_committed"] == kill_after


def test_rerun_of_complete_store_is_a_no_op_and_overwrite_redoes(tiny_yam_dir, tmp_path):
    raw = tiny_yam_dir()
    out = tmp_path / "s"
    run_cli("ingest", "yam", raw, "--out", out, check=True)
    proc = run_cli("ingest", "yam", raw, "--out", out, check=True)
    assert "0 episode(s) written, 3 already stored" in proc.stdout
    proc = run_cli("ingest", "yam", raw, "--out", out, "--overwrite", check=True)
    assert "3 episode(s) written" in proc.stdout


def test_console_script_ingest_alias(tiny_yam_dir, tmp_path):
    exe = Path(sys.executable).parent / "ingest"
    if not exe.exists():
        pytest.skip("package not installed with its console scripts")
    proc = subprocess.run([str(exe), "yam", str(tiny_yam_dir()), "--out", str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "s")).num_episodes == 3


def test_ray_reads_give_the_same_store(tiny_yam_dir, tmp_path):
    """`--ray-address local` starts Ray on this machine; the store must equal the one-process run."""
    pytest.importorskip("ray")
    raw = tiny_yam_dir(num_episodes=4)
    run_cli("ingest", "yam", raw, "--out", tmp_path / "local", check=True)
    proc = run_cli("ingest", "yam", raw, "--out", tmp_path / "ray", "--ray-address", "local", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_stores_equal(str(tmp_path / "local"), str(tmp_path / "ray"))


# -- stats parts made in the workers, and resume over a half-written group --------------------------------

def _frame_fields(store) -> list[str]:
    return sorted(k for k in store.schema.keys() if k.startswith("obs.rgb."))


def _assert_no_spill(out: Path) -> None:
    assert not (out / ".spill").exists()
    assert not list(out.rglob("*.spill"))


def test_worker_stats_parts_equal_stats_read_back(tiny_yam_dir, tmp_path):
    """uint8 frame stats made in the reader processes while they encode (and spill) frames equal, bit for
    bit, the stats of the frames read back from the finished store; the per-episode parts are kept under
    meta/stats_parts, and a finished ingest leaves no spill files behind. The strides divide neither the
    episode lengths nor the image width, so the worker's sampling must match the stats pass's exactly."""
    from shardyard.stores.stats import StatsConfig, finalize_stats_parts, recompute_store_stats
    from shardyard.stores.stats.moments import FieldStatsPart, empty_part, merge_parts

    raw = tiny_yam_dir(num_episodes=4, steps=23)
    out = tmp_path / "store"
    stats_cfg = StatsConfig(image_frame_stride=7, image_pixel_stride=3)
    res = run_ingest(YamSource(YamConfig(root=raw)),
                     IngestConfig(out=out, workers=2, commit_every=3, stats=stats_cfg))
    assert res.exit_code == 0 and res.num_written == 4
    _assert_no_spill(out)
    store = open_store(str(out))
    fields = _frame_fields(store)
    assert fields
    written = json.loads((out / "stats.json").read_text())  # recompute below replaces stats.json

    from shardyard.stores.stats.part_table import PartTable

    # one file per commit group (3 + 1 episodes) while the ingest runs, compacted into one when it finishes
    assert [f.name for f in (out / "meta" / "stats_parts").iterdir()] == ["000000000000.parquet"]
    table = PartTable(out / "meta" / "stats_parts")
    parts = {key: {name: table.get(e, name) for name in fields} for e, key in enumerate(store.episode_keys)}
    for key in store.episode_keys:
        assert sorted(name for name, part in parts[key].items() if part is not None) == fields
        for name in fields:
            assert (parts[key][name]["frame_stride"], parts[key][name]["pixel_stride"]) == (7, 3)

    recomputed = recompute_store_stats(str(out), stats_cfg)  # reads the frames back, ignores the parts
    for name in fields:
        assert written["fields"][name] == recomputed["fields"][name], name
    assert written["fields"] == recomputed["fields"]

    # the kept parts themselves, merged over the train split in order, give those stats exactly
    train = [int(i) for i in store.split["train"]] or list(range(store.num_episodes))
    for name in fields:
        merged = empty_part(3, FieldStatsPart.from_dict(parts[store.episode_keys[0]][name]["part"]).edges)
        for i in train:
            merged = merge_parts(merged, FieldStatsPart.from_dict(parts[store.episode_keys[i]][name]["part"]))
        h, w = store.schema[name].shape[:2]
        lengths = [store.episode_length(i) for i in train]
        assert merged.count == sum(len(range(0, n, 7)) for n in lengths) * len(range(0, h, 3)) * len(range(0, w, 3))
        assert finalize_stats_parts({name: merged}, store.schema)[name] == recomputed["fields"][name]


def _shards(store_dir: Path, field: str) -> list[int]:
    return sorted(int(d.name) for d in (store_dir / "data" / field / "c").iterdir())


def test_resume_over_a_half_written_group_equals_uninterrupted(tiny_yam_dir, tmp_path):
    """The state a SIGKILL leaves between a group's shard writes and its commit point (which a timed kill
    cannot hit reliably): frame shards hold rows past the committed ones, in the committed partial shard and
    in shard files wholly past it, zarr.json does not know those rows yet (its shape is set at the end), the
    group's stats part is on disk, and a reader process's spill file is left over. Here the rerun also has
    fewer episodes than the killed run (two were removed from the source), so a stale shard past the new
    end would survive unless it is deleted. The resumed store must equal an uninterrupted run's.

    Frames are upscaled to 640x480 on ingest so that a shard holds 36 rows (32 MiB / row)."""
    raw = tiny_yam_dir(num_episodes=4, steps=12)
    source = lambda: YamSource(YamConfig(root=raw, image_size=(640, 480)))  # noqa: E731
    out = tmp_path / "killed"
    run_ingest(source(), IngestConfig(out=out, workers=1, commit_every=1))  # to be "killed" (workers: same files)
    store = open_store(str(out))
    (field,) = _frame_fields(store)
    keys, lengths = store.episode_keys, [store.episode_length(i) for i in range(store.num_episodes)]
    array_meta = json.loads((out / "data" / field / "zarr.json").read_text())
    shard_rows = array_meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    assert shard_rows == 36 and 36 < sum(lengths) <= 72 and lengths[0] + lengths[1] < 36

    # rewind to one committed episode, as if killed during the commit of the second
    for record in sorted((out / "progress").glob("*.json"))[1:]:  # commit_every=1: one record per episode
        record.unlink()
    for name in ("manifest.json", "stats.json", "report.json"):
        (out / name).unlink()
    array_meta["shape"][0] = 0  # the first run had not yet grown it
    (out / "data" / field / "zarr.json").write_text(json.dumps(array_meta))
    (out / ".spill").mkdir()
    (out / ".spill" / "tmpdead.spill").write_bytes(os.urandom(4096))
    assert _shards(out, field) == [0, 1]
    for key in keys[2:]:  # the rerun's source lacks the last two episodes
        shutil.rmtree(raw / key)

    ref = tmp_path / "ref"
    run_ingest(source(), IngestConfig(out=ref, workers=1, commit_every=1))
    res = run_ingest(source(), IngestConfig(out=out, workers=2, commit_every=1))  # the process-pool path
    assert res.exit_code == 0 and (res.num_already_committed, res.num_written) == (1, 1)
    assert_stores_equal(str(ref), str(out))
    assert _shards(out, field) == _shards(ref, field) == [0]
    _assert_no_spill(out)
    # the killed groups' stats parts (episodes 2 and 3 are gone) were deleted, not merged into the stats
    import pyarrow.parquet as pq

    listed = {e for f in (out / "meta" / "stats_parts").glob("*.parquet")
              for e in pq.read_table(f).column("episode").to_pylist()}
    assert sorted(open_store(str(out)).episode_keys[e] for e in listed) == sorted(keys[:2])
    fields = [json.loads((d / "stats.json").read_text())["fields"] for d in (out, ref)]
    assert fields[0] == fields[1]
