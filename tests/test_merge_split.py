"""`edit merge` keeps each input's split (issue 21, item 5): two all-train stores merge into an all-train store
whose stats are the union's (before, the merge drew a seeded split and an episode silently left training);
stores with validation episodes keep them, episode by episode; `--val-fraction` draws the split anew, as an
ingest of the merged keys would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run_cli

from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic import EpisodicStore, split_episodes
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.stats import StatsConfig, compute_stats

SCHEMA = Schema({
    "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
    "obs.gripper": FieldSpec("float32", (), "normalised", "scalar"),
    "action": FieldSpec("float64", (4,), "rad", "vector"),
    "obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
})
STATS = StatsConfig(kmeans_clusters=4, image_frame_stride=2, image_pixel_stride=2)


def _episode(i: int) -> Episode:
    rng = np.random.default_rng(i)
    t = 8 + 2 * i
    return Episode(key=f"ep{i:02d}", steps={
        "obs.eef_pos": (rng.normal(size=(t, 3)) * 0.1 + [0, 0, 0.3 + 0.05 * i]).astype(np.float32),
        "obs.gripper": rng.uniform(0, 1, t).astype(np.float32),
        "action": rng.normal(size=(t, 4)) + i,
        "obs.rgb.top": rng.integers(0, 256, size=(t, 12, 16, 3)).astype(np.uint8)},
        meta={"task": "pick", "fps": 10.0, "cameras": {"top": {"K": np.eye(3), "T_world_cam": np.eye(4)}}})


def _write(path: Path, idx: list[int], val_fraction: float = 0.0) -> EpisodicStore:
    cfg = EpisodicWriterConfig(val_fraction=val_fraction, frame_codec="lz4")
    with EpisodicWriter(path, SCHEMA, config=cfg, stats_fn=lambda s: compute_stats(s, STATS)) as w:
        for i in idx:
            w.write(_episode(i))
    return EpisodicStore(path)


def test_merging_all_train_stores_gives_an_all_train_store_with_the_unions_stats(tmp_path):
    # ingested with the default 0.1: 3 episodes round to no val episode each; a seeded split of the 6 merged
    # would put one in val (what merge did before)
    a, b = _write(tmp_path / "a", [0, 2, 4], 0.1), _write(tmp_path / "b", [1, 3, 5], 0.1)
    assert a.split["val"] == [] and b.split["val"] == [] and len(split_episodes(["x"] * 6, 0.1, 0)["val"]) == 1
    proc = run_cli("edit", "merge", a.root, b.root, "--out", tmp_path / "m", check=True)
    assert "each episode keeps its input's (0 val)" in proc.stdout
    merged, union = EpisodicStore(tmp_path / "m"), _write(tmp_path / "union", list(range(6)))
    assert merged.split == {"train": list(range(6)), "val": []}
    assert merged.stats["num_episodes"] == 6 and merged.stats["split"] == merged.split
    assert json.dumps(merged.stats, sort_keys=True) == json.dumps(union.stats, sort_keys=True)
    assert merged.manifest["extra"]["split_source"] == "kept by edit merge"


def test_each_episode_keeps_its_inputs_membership(tmp_path):
    a = _write(tmp_path / "a", [0, 1, 2, 3], val_fraction=0.5)       # two val episodes
    b = _write(tmp_path / "b", [4, 5, 6])                            # none
    val_keys = {a.episode_keys[i] for i in a.split["val"]}
    assert len(val_keys) == 2
    run_cli("edit", "merge", b.root, a.root, "--out", tmp_path / "m", check=True)
    merged = EpisodicStore(tmp_path / "m")
    assert {merged.episode_keys[i] for i in merged.split["val"]} == val_keys
    assert merged.stats["num_episodes"] == 5   # stats on the 5 train episodes, as the inputs said


def test_val_fraction_draws_the_split_anew(tmp_path):
    a, b = _write(tmp_path / "a", [0, 2, 4]), _write(tmp_path / "b", [1, 3, 5])
    proc = run_cli("edit", "merge", a.root, b.root, "--out", tmp_path / "m", "--val-fraction", "0.5", check=True)
    assert "drawn anew, val_fraction 0.5" in proc.stdout
    merged = EpisodicStore(tmp_path / "m")
    assert merged.split == split_episodes(list(merged.episode_keys), 0.5, 0) and len(merged.split["val"]) == 3
    fresh = _write(tmp_path / "fresh", list(range(6)), val_fraction=0.5)
    assert json.dumps(merged.stats, sort_keys=True) == json.dumps(fresh.stats, sort_keys=True)
    bad = run_cli("edit", "merge", a.root, b.root, "--out", tmp_path / "x", "--val-fraction", "1.5")
    assert bad.returncode == 1 and "val_fraction" in bad.stderr and not (tmp_path / "x").exists()
