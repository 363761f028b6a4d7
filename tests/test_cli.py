"""The CLI as a user runs it: `stats` recompute and `inspect`, as subprocesses on a store built by `ingest`."""


import numpy as np
import pytest
from conftest import run_cli

from shardyard import open_store


@pytest.fixture
def store(tiny_yam_dir, tmp_path):
    out = tmp_path / "store"
    run_cli("ingest", "yam", tiny_yam_dir(num_episodes=5), "--out", out, "--val-fraction", "0.2", check=True)
    return out


def test_stats_recompute_with_other_options(store):
    before = open_store(str(store))
    assert len(before.stats["robot"]["obs"]["height_bins"]["edges"]) == 33
    proc = run_cli("stats", store, "--height-bins", "8", "--gripper-bins", "4", "--val-fraction", "0.4",
                   "--split-seed", "3", check=True)
    assert "stats.json rewritten" in proc.stdout
    after = open_store(str(store))
    assert len(after.stats["robot"]["obs"]["height_bins"]["edges"]) == 9
    assert len(after.stats["robot"]["obs"]["gripper_bins"]["edges"]) == 5
    assert len(after.split["val"]) == 2 and after.split == after.stats["split"]
    # stats follow the new train split
    train_z = np.concatenate([after.read(e, ["obs.eef_pos"])["obs.eef_pos"][:, 2] for e in after.split["train"]])
    assert after.stats["fields"]["obs.eef_pos"]["max"][2] == pytest.approx(float(train_z.max()), rel=1e-6)


def test_inspect_writes_plots_and_summary(store, tmp_path):
    proc = run_cli("inspect", store, "--out", tmp_path / "plots", check=True)
    assert "Episodes: 5" in proc.stdout and "obs.eef_pos" in proc.stdout
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert {"frames_front.png", "eef_height.png", "gripper.png", "rotation_pc1.png", "eef_paths_3d.png"} <= \
        {p.name for p in pngs}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_inspect_of_a_non_store_fails_cleanly(tmp_path):
    proc = run_cli("inspect", tmp_path)
    assert proc.returncode == 1 and "manifest" in proc.stderr and "Traceback" not in proc.stderr


def test_ingest_of_missing_folder_is_fatal(tmp_path):
    proc = run_cli("ingest", "yam", tmp_path / "nope", "--out", tmp_path / "s")
    assert proc.returncode == 1 and "not found" in proc.stderr
    manifest = tmp_path / "s" / "manifest.json"
    assert not manifest.exists()


def test_every_registered_source_class_imports():
    from shardyard.ingest import SOURCES, source_class

    for name in SOURCES:
        assert source_class(name).name == name
    with pytest.raises(KeyError, match="known"):
        source_class("nope")
