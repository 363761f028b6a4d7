"""`ingest lerobot` on the real G1 (v2.1, AV1) and SO-101 (v3.0, tabular) samples, and by repo id offline."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
from conftest import SHARED, run_cli

from shardyard import open_store
from shardyard.video import open_video

G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
SO101 = SHARED / "lerobot" / "so101_record_test_v3.0"


def test_g1_v21_av1_one_frame_per_row_and_missing_episodes_reported(tmp_path):
    out = tmp_path / "g1"
    proc = run_cli("ingest", "lerobot", G1, "--out", out, "--frame-codec", "lz4")  # lossless: frames compared exactly
    assert proc.returncode == 2, proc.stderr  # some episodes skipped
    s = open_store(str(out))
    assert s.episode_keys == ["episode_000001", "episode_000002"]
    for i, idx in enumerate((1, 2)):
        table = pq.read_table(G1 / f"data/chunk-000/episode_{idx:06d}.parquet")
        assert s.episode_length(i) == table.num_rows
        d = s.read(i)
        state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
        assert np.array_equal(d["obs.state"], state.astype(np.float32))
        assert np.array_equal(d["timestamp"], table.column("timestamp").to_numpy())
        video = open_video(G1 / f"videos/chunk-000/observation.images.cam_high/episode_{idx:06d}.mp4")
        picks = [0, table.num_rows // 2, table.num_rows - 1]
        assert np.array_equal(d["obs.rgb.cam_high"][picks], video.read(picks))
        meta = s.episode_meta(i)
        assert meta["task"] == "Pick up the yellow bottle on the table." and meta["fps"] == 30.0
    report = json.loads((out / "report.json").read_text())
    skipped = {r["key"]: r for r in report["skipped"]}
    expected_missing = {f"episode_{i:06d}" for i in range(100)} - {"episode_000001", "episode_000002"}
    assert set(skipped) == expected_missing
    assert all(r["field"] == "data" and "missing" in r["reason"] for r in skipped.values())
    assert "98 episode(s) skipped" in proc.stderr


def test_so101_v30_tabular_with_absent_videos(tmp_path):
    out = tmp_path / "so"
    refused = run_cli("ingest", "lerobot", SO101, "--out", out)  # cameras without any video: a named refusal
    assert refused.returncode == 1 and "no video file for any episode of camera(s) ['front', 'top']" in \
        refused.stderr and "--camera none" in refused.stderr and "Traceback" not in refused.stderr
    proc = run_cli("ingest", "lerobot", SO101, "--out", out, "--camera", "none")
    assert proc.returncode == 0, proc.stderr
    s = open_store(str(out))
    eps = pq.read_table(SO101 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    data = pq.read_table(SO101 / "data/chunk-000/file-000.parquet")
    assert [s.episode_length(i) for i in range(s.num_episodes)] == [e["length"] for e in eps]
    action = np.stack(data.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert np.array_equal(s.read_rows("action", 0, s.num_steps), action)
    assert s.episode_meta(3)["task"] == "Pick the orange cube and place it in the box"
    assert not s.schema.of_kind("image")
    assert "observation.images.front: listed in meta/info.json but no video file" in proc.stdout


def test_repo_id_resolves_offline_from_the_hub_cache(tmp_path):
    cache = tmp_path / "hub"
    snap = cache / "datasets--someone--so101" / "snapshots" / ("a" * 40)
    shutil.copytree(SO101, snap)
    (cache / "datasets--someone--so101" / "refs").mkdir()
    (cache / "datasets--someone--so101" / "refs" / "main").write_text("a" * 40)
    os.environ["HF_HUB_CACHE"] = str(cache)
    try:
        proc = run_cli("ingest", "lerobot", "someone/so101", "--out", tmp_path / "s", "--camera", "none")
        missing = run_cli("ingest", "lerobot", "someone/not-cached", "--out", tmp_path / "m")
    finally:
        del os.environ["HF_HUB_CACHE"]
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "s")).num_episodes == 4
    assert missing.returncode == 1 and "not in the local Hugging Face cache" in missing.stderr
