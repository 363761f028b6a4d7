"""`shardyard view`: the .rrd it writes, read back with Rerun's own reader (entities, frame counts)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import run_cli

from shardyard import open_store

rr_chunk = pytest.importorskip("rerun.chunk")


def rows_per_entity(path) -> Counter:
    counts: Counter = Counter()
    for chunk in rr_chunk.RrdReader(path).stream():
        counts[str(chunk.entity_path)] += chunk.num_rows
    return counts


def test_view_writes_cameras_eef_and_plots(tiny_yam_dir, tmp_path):
    raw = tiny_yam_dir(num_episodes=2, steps=12)
    store = tmp_path / "store"
    proc = run_cli("ingest", "yam", raw, "--out", store)
    assert proc.returncode == 0, proc.stderr
    s = open_store(str(store))
    n = s.episode_length(1)
    role = s.schema.of_kind("image")[0].split(".")[-1]
    out = tmp_path / "ep1.rrd"
    proc = run_cli("view", store, "--episode", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = rows_per_entity(out)
    assert rows[f"/world/cameras/{role}/image"] == n            # one frame per step
    assert rows["/world/eef/obs/position"] == n
    assert rows["/world/eef/obs/path"] == 1                   # static: the whole path at once
    assert rows["/plots/obs.gripper"] == n
    assert rows[f"/world/cameras/{role}"] >= 2                # the pose and the pinhole (frustum)


def test_view_rejects_an_episode_out_of_range(tiny_yam_dir, tmp_path):
    raw = tiny_yam_dir(num_episodes=1, steps=8)
    store = tmp_path / "store"
    assert run_cli("ingest", "yam", raw, "--out", store).returncode == 0
    proc = run_cli("view", store, "--episode", "5", "--out", tmp_path / "x.rrd")
    assert proc.returncode == 1 and "out of range" in proc.stderr
