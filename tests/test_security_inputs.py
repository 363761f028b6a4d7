"""Inputs stay inside their root (issue 25, item 3): symlinked YAM files and episode folders, HDF5 external
links (and virtual datasets, external storage, MJCF file names), LeRobot path templates with `..` and
symlinked data files, NYU pairs linked from outside: each is a named error (a report row, or a fatal error
naming the file) and nothing of the outside file reaches the store; `--follow-links` reads them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARED, YAM_EPISODES, run_cli
from libero_fixtures import MODEL_XML, write_libero_file

from shardyard import open_store
from shardyard.errors import SourceError

ROBOSUITE = SHARED / "robosuite_hdf5"
SO101 = SHARED / "lerobot" / "so101_record_test_v3.0"
G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
NYU_PAIR = SHARED / "nyu_depth_v2" / "mmseg_bts_style" / "bookstore_0001d_00001"
FAST = ["--frame-codec", "lz4"]


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy of `src` (the shared data is read-only)."""
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _report(store: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((store / "report.json").read_text())["skipped"]}


def _assert_refused_link(row: dict, path: Path) -> None:
    assert row["error"] == "SourceError" and row["path"] == str(path), row
    assert "outside the input folder" in row["reason"] and "--follow-links" in row["reason"], row


def test_yam_symlinked_file_and_episode_folder_refused_unless_follow_links(tmp_path):
    eps = sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:3]
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    _copy(eps[0], raw / "good")
    _copy(eps[1], raw / "badfile")
    _copy(eps[2], outside / "episode")
    (raw / "linked").symlink_to(outside / "episode", target_is_directory=True)
    joints = np.load(raw / "badfile" / "left-joint_pos.npy")
    np.save(outside / "joints.npy", joints + 100.0)  # no arm turns 100 rad: recognisable in a store
    (raw / "badfile" / "left-joint_pos.npy").unlink()
    (raw / "badfile" / "left-joint_pos.npy").symlink_to(outside / "joints.npy")
    args = ["ingest", "yam", raw, *FAST, "--image-size", "32x24", "--camera", "top"]

    proc = run_cli(*args, "--out", tmp_path / "s")
    assert proc.returncode == 2, proc.stderr
    rows = _report(tmp_path / "s")
    assert set(rows) == {"badfile", "linked"}
    _assert_refused_link(rows["badfile"], raw / "badfile" / "left-joint_pos.npy")
    _assert_refused_link(rows["linked"], raw / "linked")
    store = open_store(str(tmp_path / "s"))
    assert store.episode_keys == ["good"]
    assert np.abs(store.read_rows("obs.joint_pos", 0, store.num_steps)).max() < 10.0

    proc = run_cli(*args, "--out", tmp_path / "f", "--follow-links")
    assert proc.returncode == 0, proc.stderr
    store = open_store(str(tmp_path / "f"))
    assert store.episode_keys == ["badfile", "good", "linked"]
    np.testing.assert_allclose(store.read(0)["obs.joint_pos"], joints + 100.0, rtol=1e-6)


def test_yam_per_demo_frame_linked_from_outside_is_refused(tiny_yam_dir, tmp_path):
    raw = tiny_yam_dir(num_episodes=2, video=False, steps=8, width=16, height=12)
    folders = sorted(p.parent for p in raw.rglob("eef_pos.npy"))
    frame = folders[0] / "frames" / "000000.png"
    outside = tmp_path / "outside.png"
    shutil.move(frame, outside)
    frame.symlink_to(outside)
    proc = run_cli("ingest", "yam", raw, "--out", tmp_path / "s", *FAST)
    assert proc.returncode == 2, proc.stderr
    key = folders[0].relative_to(raw).as_posix()
    _assert_refused_link(_report(tmp_path / "s")[key], frame)
    assert open_store(str(tmp_path / "s")).episode_keys == [folders[1].relative_to(raw).as_posix()]


def test_yam_arm_name_with_dotdot_is_refused(yam_raw):
    from shardyard.ingest.yam import YamConfig, YamSource

    raw = yam_raw(1)
    folder = next(p.parent for p in raw.rglob("metadata.json"))
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").chmod(0o644)
    (folder / "metadata.json").write_text(json.dumps(meta | {"arm_names": ["../../left"]}))
    for follow in (False, True):  # a name is never a link: --follow-links does not let it out
        source = YamSource(YamConfig(root=raw, follow_links=follow))
        with pytest.raises(SourceError, match=r"'\.\./\.\./left': has a '\.\.' component") as e:
            source.read(source.keys()[0])
        assert e.value.field == "arm_names" and e.value.path == str(folder / "metadata.json")


def _external(group: h5py.Group, name: str, target: Path, value: np.ndarray) -> None:
    """Replace dataset `name` of `group` by an external link to a new file `target` holding `value`."""
    with h5py.File(target, "w") as f:
        f[name.rsplit("/", 1)[-1]] = value
    del group[name]
    group[name] = h5py.ExternalLink(str(target), "/" + name.rsplit("/", 1)[-1])


def test_hdf5_external_links_and_linked_files_refused_unless_follow_links(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    outside.mkdir()
    _copy(ROBOSUITE / "robosuite_lift_panda.hdf5", root / "good.hdf5")
    with h5py.File(_copy(ROBOSUITE / "robosuite_lift_panda.hdf5", root / "demo_link.hdf5"), "a") as f:
        n = f["data/demo_1/actions"].shape
        _external(f["data/demo_1"], "actions", outside / "secret.hdf5", np.full(n, 7.25))
    with h5py.File(_copy(ROBOSUITE / "robosuite_lift_panda.hdf5", outside / "data.hdf5"), "a") as f:
        f["data/demo_1/actions"][...] = 7.25
    with h5py.File(root / "data_link.hdf5", "w") as f:
        f["data"] = h5py.ExternalLink(str(outside / "data.hdf5"), "/data")
    (root / "file_link.hdf5").symlink_to(outside / "data.hdf5")

    proc = run_cli("ingest", "libero", root, "--out", tmp_path / "s")
    assert proc.returncode == 2, proc.stderr
    rows = _report(tmp_path / "s")
    assert set(rows) == {"demo_link/demo_1", "data_link/data", "file_link/data"}
    assert rows["demo_link/demo_1"]["path"] == str(root / "demo_link.hdf5")
    assert "/data/demo_1/actions is an HDF5 external link to" in rows["demo_link/demo_1"]["reason"]
    assert "/data is an HDF5 external link" in rows["data_link/data"]["reason"]
    _assert_refused_link(rows["file_link/data"], root / "file_link.hdf5")
    store = open_store(str(tmp_path / "s"))
    assert store.episode_keys == ["good/demo_1"]
    assert not np.any(store.read_rows("action", 0, store.num_steps) == 7.25)

    proc = run_cli("ingest", "libero", root, "--out", tmp_path / "f", "--follow-links")
    assert proc.returncode == 0, proc.stderr
    store = open_store(str(tmp_path / "f"))
    assert store.episode_keys == ["data_link/demo_1", "demo_link/demo_1", "file_link/demo_1", "good/demo_1"]
    assert np.all(store.read(1)["action"] == 7.25)


def test_hdf5_virtual_datasets_external_storage_soft_links_and_mjcf_files(tmp_path):
    from shardyard.ingest.libero import LiberoConfig, LiberoSource

    path, outside = write_libero_file(tmp_path / "in" / "t_demo.hdf5", num_demos=5, steps=6, size=8), tmp_path
    (outside / "raw.bin").write_bytes(bytes(range(256)))
    (outside / "camera.xml").write_text('<mujoco><camera name="agentview" pos="1 2 3"/></mujoco>')
    agentview = '<camera name="agentview" pos="0.3 -0.1 0.2" xyaxes="0.8 0.6 0 -0.3 0.4 0.866" fovy="45"/>'
    assert agentview in MODEL_XML
    with h5py.File(path, "a") as f:
        T = [f[f"data/demo_{i}/actions"].shape[0] for i in range(3)]
        with h5py.File(outside / "other.hdf5", "w") as o:
            o["actions"] = np.full((T[0], 7), 7.25)
        layout = h5py.VirtualLayout(shape=(T[0], 7), dtype="f8")
        layout[:] = h5py.VirtualSource(str(outside / "other.hdf5"), "actions", shape=(T[0], 7))
        del f["data/demo_0/actions"]
        f["data/demo_0"].create_virtual_dataset("actions", layout)
        del f["data/demo_1/rewards"]
        f["data/demo_1"].create_dataset("rewards", shape=(T[1],), dtype="u1",
                                        external=[(str(outside / "raw.bin"), 0, T[1])])
        f["elsewhere"] = h5py.ExternalLink(str(outside / "other.hdf5"), "/actions")
        del f["data/demo_2/actions"]
        f["data/demo_2/actions"] = h5py.SoftLink("/elsewhere")
        f["data/demo_3"].attrs["model_file"] = MODEL_XML.replace(agentview,
                                                                 f'<include file="{outside / "camera.xml"}"/>')
    source = LiberoSource(LiberoConfig(root=path.parent))
    for key, why in (("t_demo/demo_0", "virtual dataset reading other file"),
                     ("t_demo/demo_1", "keeps its data in external file"),
                     ("t_demo/demo_2", "is stored in another file")):
        with pytest.raises(SourceError, match=why) as e:
            source.read(key)
        assert e.value.key == key and e.value.path == str(path) and "--follow-links" in e.value.reason
    # the MJCF's include names a file: compiled without it, so its camera is not found
    assert "agentview" not in source.read("t_demo/demo_3").meta["cameras"]
    assert source.read("t_demo/demo_4").meta["cameras"]["agentview"]["T_world_cam"] is not None

    follow = LiberoSource(LiberoConfig(root=path.parent, follow_links=True))
    assert np.all(follow.read("t_demo/demo_0").steps["action"] == 7.25)
    assert follow.read("t_demo/demo_3").meta["cameras"]["agentview"]["T_world_cam"] is not None


def test_lerobot_dotdot_data_path_is_fatal_and_names_info_json(tmp_path):
    ds = _copy(SO101, tmp_path / "ds")
    shutil.copytree(ds / "data", tmp_path / "outside" / "data")
    info = json.loads((ds / "meta" / "info.json").read_text())
    info["data_path"] = "../outside/" + info["data_path"]
    (ds / "meta" / "info.json").write_text(json.dumps(info))

    proc = run_cli("ingest", "lerobot", ds, "--out", tmp_path / "s", "--camera", "none")
    assert proc.returncode == 1
    assert "data_path" in proc.stderr and str(ds / "meta" / "info.json") in proc.stderr
    assert "'..'" in proc.stderr and "--follow-links" in proc.stderr
    assert not (tmp_path / "s").exists()  # fatal before anything is written

    proc = run_cli("ingest", "lerobot", ds, "--out", tmp_path / "f", "--follow-links", "--camera", "none")
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "f")).num_episodes == 4


def test_lerobot_episode_parquet_linked_from_outside_is_a_report_row(tmp_path):
    ds = tmp_path / "ds"
    _copy(G1 / "meta" / "info.json", ds / "meta" / "info.json")  # no videos/: a tabular ingest
    episodes = (G1 / "meta" / "episodes.jsonl").read_text().splitlines()
    (ds / "meta" / "episodes.jsonl").write_text("\n".join(episodes[1:3]) + "\n")
    _copy(G1 / "meta" / "tasks.jsonl", ds / "meta" / "tasks.jsonl")
    _copy(G1 / "data" / "chunk-000" / "episode_000001.parquet", ds / "data" / "chunk-000" / "episode_000001.parquet")
    outside = _copy(G1 / "data" / "chunk-000" / "episode_000002.parquet", tmp_path / "outside.parquet")
    (ds / "data" / "chunk-000" / "episode_000002.parquet").symlink_to(outside)

    proc = run_cli("ingest", "lerobot", ds, "--out", tmp_path / "s", "--camera", "none")
    assert proc.returncode == 2, proc.stderr
    row = _report(tmp_path / "s")["episode_000002"]
    _assert_refused_link(row, ds / "data" / "chunk-000" / "episode_000002.parquet")
    assert row["field"] == "data"
    assert open_store(str(tmp_path / "s")).episode_keys == ["episode_000001"]


def test_nyu_pair_linked_from_outside_is_a_report_row(tmp_path):
    root = tmp_path / "in"
    for ext in (".jpg", ".png"):
        _copy(NYU_PAIR.with_suffix(ext), root / f"bookstore_0001d_00001{ext}")
        _copy(NYU_PAIR.with_suffix(ext), tmp_path / f"outside{ext}")
        (root / f"kitchen_0001_00001{ext}").symlink_to(tmp_path / f"outside{ext}")
    proc = run_cli("ingest", "nyu", root, "--out", tmp_path / "s", *FAST)
    assert proc.returncode == 2, proc.stderr
    row = _report(tmp_path / "s")["unknown/kitchen_0001"]
    _assert_refused_link(row, root / "kitchen_0001_00001.jpg")
    assert row["field"] == "obs.rgb"
    assert open_store(str(tmp_path / "s")).episode_keys == ["unknown/bookstore_0001d"]


def test_links_that_stay_inside_the_root_are_read(tmp_path):
    root = tmp_path / "in"
    _copy(ROBOSUITE / "robosuite_lift_panda.hdf5", root / "files" / "lift.hdf5")
    (root / "alias.hdf5").symlink_to(Path("files") / "lift.hdf5")
    os.symlink(tmp_path / "in", tmp_path / "root_link")  # the root itself may be a link
    proc = run_cli("ingest", "libero", tmp_path / "root_link", "--out", tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "s")).episode_keys == ["alias/demo_1", "files/lift/demo_1"]


def test_lerobot_hub_cache_snapshot_links_into_its_blobs_are_inside(tmp_path, monkeypatch):
    """A Hub cache snapshot is made of links into the repository's `blobs/`: they stay inside the input."""
    import hashlib

    repo = tmp_path / "hub" / "datasets--someone--so101"
    snap = repo / "snapshots" / ("a" * 40)
    for src in (p for p in SO101.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        _copy(src, blob)
        link = snap / src.relative_to(SO101)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    proc = run_cli("ingest", "lerobot", "someone/so101", "--out", tmp_path / "s", "--camera", "none")
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "s")).num_episodes == 4


def test_hdf5_link_made_after_the_probe_is_refused_where_the_read_opens_it(tmp_path):
    """A reader process reuses the probe's field plan (the probe checked every dataset), so it checks each
    dataset again where it opens it: a dataset turned into a link to another file after the probe (a file
    changed under a long ingest) is refused, naming the field, and none of the other file's data is read."""
    import gc
    import pickle

    from shardyard.ingest.libero import LiberoConfig, LiberoSource

    path = write_libero_file(tmp_path / "in" / "t_demo.hdf5", num_demos=2, steps=6, size=8)
    probe = LiberoSource(LiberoConfig(root=path.parent))
    assert "action" in probe.schema()  # every demo's datasets checked and planned
    reader = pickle.loads(pickle.dumps(probe))  # as a spawned reader gets it: the plans, no open files
    del probe
    gc.collect()  # the probe's read-only handle is closed, so the file can be changed
    with h5py.File(path, "a") as f:
        n, n0 = f["data/demo_1/actions"].shape, len(f["data/demo_0/actions"])
        _external(f["data/demo_1"], "actions", tmp_path / "secret.hdf5", np.full(n, 7.25))
    with pytest.raises(SourceError, match="is stored in another file") as e:
        reader.read("t_demo/demo_1")
    assert (e.value.key, e.value.field, e.value.path) == ("t_demo/demo_1", "action", str(path))
    assert "--follow-links" in e.value.reason
    assert reader.read("t_demo/demo_0").num_steps == n0
    follow = LiberoSource(LiberoConfig(root=path.parent, follow_links=True))
    assert np.all(follow.read("t_demo/demo_1").steps["action"] == 7.25)
