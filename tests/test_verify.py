"""Tests of `shardyard verify` (stores/verify.py): an intact store passes (exit 0); a damaged shard index, a
damaged frame chunk, a missing shard file, contents changed behind stats.json, episode_ends that disagree
with the arrays, and a feature store whose source changed are each reported by episode, field and file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardyard.stores.edit import EditTarget, EpisodeSelection, delete_episodes
from shardyard.stores.verify import verify_store
from shardyard.stores.zarr_shard import read_shard_index, shard_file
from tests.conftest import run_cli
from tests.test_edit import _features, _write, episodes  # noqa: F401  (the fixture)


@pytest.fixture
def store(tmp_path, episodes):  # noqa: F811
    return _write(tmp_path / "s", episodes[:4])


def _image_shard(store) -> tuple[Path, np.ndarray]:
    d = Path(store.root) / "data" / "obs.rgb.top"
    meta = json.loads((d / "zarr.json").read_text())
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    path = Path(shard_file(str(d), 0, len(meta["shape"])))
    return path, read_shard_index(path, rows)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_store_passes(store) -> None:
    report = verify_store(store.root)
    assert report.ok, report.summary()
    assert any("stats.json recomputed" in c for c in report.checked)


def test_damaged_chunk_and_index_are_named(store) -> None:
    path, index = _image_shard(store)
    row = int(store.episode_starts[2]) + 1
    _flip(path, int(index[row, 0]) + 12)  # inside the chunk (its blosc header's compressed size)
    report = verify_store(store.root)
    assert not report.ok
    (d,) = report.damages
    assert d.episode == "ep02" and d.field == "obs.rgb.top" and d.file == str(path) and f"row {row}" in d.reason
    _flip(path, path.stat().st_size - 7)  # inside the index
    (d,) = verify_store(store.root).damages
    assert "crc32c" in d.reason and d.file == str(path)


def test_missing_shard_and_changed_contents(tmp_path, store) -> None:
    arr = zarr.open_array(str(Path(store.root) / "data" / "action"), mode="r+")
    arr[3] = arr[3] + 1.0  # contents no longer what stats.json was computed on
    (d,) = verify_store(store.root).damages
    assert "stats.json was not computed on the current contents" in d.reason and d.field == "action"
    path, _ = _image_shard(store)
    path.unlink()
    (d,) = verify_store(store.root, check_stats=False).damages
    assert "shard file missing" in d.reason and d.episode == "ep00"


def test_episode_ends_against_arrays(store) -> None:
    meta = Path(store.root) / "meta" / "episodes.json"
    eps = json.loads(meta.read_text())
    eps[1]["length"] += 2
    meta.write_text(json.dumps(eps))
    report = verify_store(store.root)
    reasons = " | ".join(d.reason for d in report.damages)
    assert "episode_ends does not match" in reasons and "rows, episode_ends say" in reasons


def test_feature_provenance_and_cli(tmp_path, store) -> None:
    feats = _features(store, tmp_path / "s.dino")
    assert verify_store(feats).ok
    ok = run_cli("verify", feats)
    assert ok.returncode == 0 and "intact" in ok.stdout
    delete_episodes(store.root, EpisodeSelection(episodes="0"), EditTarget(in_place=True))  # features left behind
    bad = run_cli("verify", feats)
    assert bad.returncode == 1 and "has changed since the tokens were computed" in bad.stdout
