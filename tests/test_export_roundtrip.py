"""`export lerobot` is complete (issue 21, item 4): every field goes out (pose fields as `[4, 4]` features, a
store's own capture `timestamp` as `observation.timestamp`), `meta/shardyard.json` records the keys, field specs,
per-episode metadata (camera `K` and `T_world_cam`, episode indices) and split, and `ingest lerobot` of the export
gives the store back field for field, on the held-in YAM (with FK poses and a moving wrist camera) and G1 samples.
The real `LeRobotDataset` (peer virtualenv) reads the pose feature of the YAM export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, YAM_MODEL, run_cli

from shardyard import open_store

MEAN_TOL, P999_TOL = 3.5, 30   # video (libx264 crf 12 of 160x120 frames, themselves JPEG q85 in the store)
REPO = Path(__file__).resolve().parents[1]
PEER = REPO / ".venv-lerobot"


def assert_same_store(a, b):
    """Schema (dtype, shape, unit, kind, names), keys, split, per-episode records equal; every array exact but
    the video's frames, which are within the codec's tolerance."""
    assert a.schema == b.schema
    assert list(a.episode_keys) == list(b.episode_keys)
    assert a.split == b.split
    for e in range(a.num_episodes):
        ra, rb = a.episode_record(e), b.episode_record(e)
        assert ra == rb, {k: (ra.get(k), rb.get(k)) for k in set(ra) | set(rb) if ra.get(k) != rb.get(k)}
        da, db = a.read(e), b.read(e)
        for k, spec in a.schema.items():
            assert da[k].dtype == db[k].dtype and da[k].shape == db[k].shape, k
            if spec.kind == "image":
                d = np.abs(da[k].astype(np.int16) - db[k].astype(np.int16))
                assert d.reshape(len(d), -1).mean(1).max() <= MEAN_TOL and np.percentile(d, 99.9) <= P999_TOL, k
            else:
                assert np.array_equal(da[k], db[k]), (e, k)


@pytest.fixture(scope="module")
def yam_trip(tmp_path_factory):
    """(store, export, store again) of two real YAM episodes with the station model's FK (poses, cameras)."""
    root = tmp_path_factory.mktemp("yamtrip")
    raw = root / "raw"
    task = sorted((SHARED / "yam" / "episodes").iterdir())[0]
    for ep in sorted(task.iterdir())[:2]:
        shutil.copytree(ep, raw / task.name / ep.name)
    run_cli("ingest", "yam", raw, "--robot-model", YAM_MODEL, "--out", root / "s", "--image-size", "160x120",
            check=True)
    proc = run_cli("export", "lerobot", root / "s", "--out", root / "x", "--vcodec", "libx264", "--crf", "12",
                   check=True)
    assert "Svt[" not in proc.stderr
    run_cli("ingest", "lerobot", root / "x", "--out", root / "s2", check=True)
    return root / "s", root / "x", root / "s2"


def test_yam_export_has_every_field_and_the_metadata(yam_trip):
    s, x, _ = yam_trip
    store = open_store(str(s))
    info = json.loads((x / "meta/info.json").read_text())
    feats = info["features"]
    assert feats["observation.T_world_cam.wrist"]["shape"] == [4, 4]
    assert feats["observation.eef_pos"]["shape"] == [3] and feats["observation.eef_quat"]["shape"] == [4]
    # the store's capture times are not frame_index / fps: kept apart from LeRobot's frame times
    assert feats["observation.timestamp"]["dtype"] == "float64" and feats["timestamp"]["dtype"] == "float32"
    data = pq.read_table(x / "data/chunk-000/file-000.parquet")
    assert np.allclose(data.column("timestamp").to_numpy(), data.column("frame_index").to_numpy() / info["fps"])
    stats = json.loads((x / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.T_world_cam.wrist"]["mean"]).shape == (4, 4)
    meta = json.loads((x / "meta/shardyard.json").read_text())
    assert list(meta["schema"]) == store.schema.keys() and meta["not_exported"] == []
    assert meta["schema"]["obs.T_world_cam.wrist"]["kind"] == "pose" and meta["split"] == store.split
    assert [e["key"] for e in meta["episodes"]] == list(store.episode_keys)
    cams = meta["episodes"][0]["record"]["cameras"]
    assert np.allclose(cams["top"]["K"], store.episode_meta(0)["cameras"]["top"]["K"])
    assert np.allclose(cams["top"]["T_world_cam"], store.episode_meta(0)["cameras"]["top"]["T_world_cam"])
    eps = pq.read_table(x / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["shardyard/key"] for e in eps] == list(store.episode_keys) and [e["episode_index"] for e in eps] == [0, 1]


def test_yam_round_trip_gives_the_store_back(yam_trip):
    s, _, s2 = yam_trip
    a, b = open_store(str(s)), open_store(str(s2))
    assert a.schema["obs.T_world_cam.wrist"].kind == "pose" and a.schema["timestamp"].unit == "s"
    assert_same_store(a, b)
    assert a.stats["fields"]["obs.eef_pos"] == b.stats["fields"]["obs.eef_pos"]


def test_g1_round_trip_keeps_episode_indices(tmp_path):
    g1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
    s, x, s2 = tmp_path / "s", tmp_path / "x", tmp_path / "s2"
    run_cli("ingest", "lerobot", g1, "--out", s, "--episodes", "2", "--image-size", "160x120", check=True)
    run_cli("export", "lerobot", s, "--out", x, "--vcodec", "libx264", "--crf", "12", check=True)
    # LeRobot numbers episodes by position (0); the store's own index (2) is in the mapping
    data = pq.read_table(x / "data/chunk-000/file-000.parquet")
    assert set(data.column("episode_index").to_pylist()) == {0}
    meta = json.loads((x / "meta/shardyard.json").read_text())
    assert [(e["episode_index"], e["key"], e["record"]["episode_index"]) for e in meta["episodes"]] == \
        [(0, "episode_000002", 2)]
    run_cli("ingest", "lerobot", x, "--out", s2, check=True)
    a, b = open_store(str(s)), open_store(str(s2))
    assert list(b.episode_keys) == ["episode_000002"] and b.episode_meta(0)["episode_index"] == 2
    assert_same_store(a, b)


def test_a_crafted_export_key_is_refused(yam_trip, tmp_path):
    _, x, _ = yam_trip
    bad = tmp_path / "x"
    shutil.copytree(x, bad)
    meta = json.loads((bad / "meta/shardyard.json").read_text())
    meta["episodes"][0]["key"] = "../../escape"
    (bad / "meta/shardyard.json").write_text(json.dumps(meta))
    proc = run_cli("ingest", "lerobot", bad, "--out", tmp_path / "s")
    assert proc.returncode == 1 and "'..'" in proc.stderr and "shardyard.json" in proc.stderr
    assert not (tmp_path / "s" / "manifest.json").exists()


PEER_READ = """
import json, sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/export", root=sys.argv[1])
item = ds[int(sys.argv[2])]
episode = int(item["episode_index"])
print(json.dumps({"pose": item["observation.T_world_cam.wrist"].tolist(), "episode": episode,
                  "frame": int(item["frame_index"]), "key": ds.meta.episodes[episode]["shardyard/key"]}))
"""


def test_lerobot_dataset_reads_the_pose_feature(yam_trip):
    s, x, _ = yam_trip
    if not (PEER / ".installed").exists():
        pytest.fail(f"the LeRobot peer virtualenv {PEER} is missing: run `make lerobot-venv` (make test builds it)")
    store = open_store(str(s))
    row = int(store.episode_starts[1]) + 5
    proc = subprocess.run([str(PEER / "bin" / "python"), "-c", PEER_READ, str(x), str(row)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "",
                                                       "HF_DATASETS_CACHE": str(x.parent / "hf_datasets")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["episode"] == 1 and got["frame"] == 5 and got["key"] == store.episode_keys[1]
    assert np.array_equal(np.asarray(got["pose"], np.float32), store.read(1, ["obs.T_world_cam.wrist"], 5, 6)[
        "obs.T_world_cam.wrist"][0])
