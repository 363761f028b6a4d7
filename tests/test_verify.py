"""Tests of `shardyard verify` (tools/verify.py) and of the checksums recorded at ingest (stores/checksums.py):
an intact, a freshly written and an edited store pass (exit 0); a flipped byte inside a frame chunk (lz4 and
jpeg), inside an MP4 of a video store and inside a low-dim chunk file, a damaged shard index, a missing shard
file, a stale stats.json, episode_ends that disagree with the arrays, and a feature store whose source changed
are each reported by episode, field, step and file; a store without recorded checksums gets a warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardyard.stores.checksums import CHECKSUMS, CHUNK_CRC, VIDEO_CRC, read_crc32c
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.zarr_shard import read_shard_index, shard_file
from shardyard.stores.stats import compute_stats
from shardyard.tools.edit import EditTarget, EpisodeSelection, delete_episodes
from shardyard.tools.recode import recode_store
from shardyard.tools.verify import verify_store
from tests.conftest import run_cli
from tests.test_edit import SCHEMA, STATS, _features, episodes  # noqa: F401  (the fixture)

FIELD = "obs.rgb.top"


def _write(path: Path, eps, codec: str = "lz4", **cfg) -> EpisodicStore:
    config = EpisodicWriterConfig(val_fraction=0.25, frame_codec=codec, config={"frame_codec": codec}, **cfg)
    with EpisodicWriter(path, SCHEMA, config=config, stats_fn=lambda s: compute_stats(s, STATS)) as w:
        for ep in eps:
            w.write(ep)
    return EpisodicStore(path)


@pytest.fixture
def store(tmp_path, episodes):  # noqa: F811
    return _write(tmp_path / "s", episodes[:4])


def _image_shard(store) -> tuple[Path, np.ndarray]:
    d = Path(store.root) / "data" / FIELD
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
    assert report.ok and not report.warnings, report.summary()
    assert any("stats.json recomputed" in c for c in report.checked)
    assert any("checksums.json" in c for c in report.checked)
    crc = read_crc32c(store.root, CHUNK_CRC, FIELD)
    assert crc is not None and crc.shape == (store.num_steps,) and crc.dtype == np.uint32
    names = {f["name"] for f in json.loads((Path(store.root) / CHECKSUMS).read_text())["files"]}
    assert "data/action/c/0/0" in names and "meta/episodes.parquet" in names
    assert f"meta/{CHUNK_CRC}/{FIELD}/zarr.json" in names
    assert not any(n.startswith(f"data/{FIELD}/c/") for n in names) and "stats.json" not in names


@pytest.mark.parametrize("codec", ["lz4", "jpeg"])
def test_flipped_byte_in_frame_chunk_is_named(tmp_path, episodes, codec) -> None:  # noqa: F811
    store = _write(tmp_path / codec, episodes[:4], codec)
    path, index = _image_shard(store)
    row = int(store.episode_starts[2]) + 1
    off, n = (int(v) for v in index[row])
    _flip(path, off + n // 2)  # in the middle of the chunk: JPEG's entropy-coded data still decodes
    report = verify_store(store.root)
    (d,) = report.damages
    assert (d.episode, d.episode_index, d.field, d.step, d.file) == ("ep02", 2, FIELD, 1, str(path))
    assert f"row {row}" in d.reason and "crc32c" in d.reason
    assert "episode=ep02" in report.summary() and "step=1" in report.summary()
    _flip(path, path.stat().st_size - 7)  # inside the index
    (d,) = verify_store(store.root).damages
    assert "shard index fails its crc32c" in d.reason and d.file == str(path)


def test_flipped_byte_in_video_file(tmp_path, episodes) -> None:  # noqa: F811
    store = _write(tmp_path / "v", episodes[:3], "video")
    assert verify_store(store.root).ok
    crc = read_crc32c(store.root, VIDEO_CRC, FIELD)
    assert crc is not None and crc.shape == (3,)
    mp4 = Path(store.root) / "data" / FIELD / "video" / "000001.mp4"
    _flip(mp4, mp4.stat().st_size // 2)
    (d,) = verify_store(store.root).damages
    assert (d.episode, d.episode_index, d.field, d.file) == ("ep01", 1, FIELD, str(mp4)) and "crc32c" in d.reason
    mp4.unlink()
    (d,) = verify_store(store.root).damages
    assert "video file missing" in d.reason and d.episode == "ep01"


def test_flipped_byte_in_lowdim_chunk_file(store) -> None:
    path = Path(store.root) / "data" / "action" / "c" / "0" / "0"
    _flip(path, path.stat().st_size - 3)
    report = verify_store(store.root)
    d = next(d for d in report.damages if "sha256 differs from checksums.json" in d.reason)
    assert d.field == "action" and d.file == str(path) and d.episode == "ep00..ep03"
    run = run_cli("verify", store.root)
    assert run.returncode == 1 and "sha256 differs" in run.stdout and "field=action" in run.stdout


def test_missing_shard_and_stale_stats(store) -> None:
    stats_path = Path(store.root) / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["fields"]["action"]["mean"][0] += 1.0  # no longer what the contents give
    stats_path.write_text(json.dumps(stats))
    (d,) = verify_store(store.root).damages
    assert "stats.json was not computed on the current contents" in d.reason and d.field == "action"
    path, _ = _image_shard(store)
    path.unlink()
    (d,) = verify_store(store.root, check_stats=False).damages
    assert "shard file missing" in d.reason and d.episode == "ep00" and d.field == FIELD


def test_store_without_checksums_warns(store) -> None:
    (Path(store.root) / CHECKSUMS).unlink()
    shutil.rmtree(Path(store.root) / "meta" / CHUNK_CRC)
    report = verify_store(store.root)
    assert report.ok, report.summary()
    text = " | ".join(report.warnings)
    assert "no checksums recorded" in text and FIELD in text and "checksums.json" in text
    run = run_cli("verify", store.root)
    assert run.returncode == 0 and "WARNING: no checksums recorded" in run.stdout


def test_episode_ends_against_arrays(store) -> None:
    ends = zarr.open_array(str(Path(store.root) / "meta" / "episode_ends"), mode="r+")
    ends[1:] = ends[1:] + 2  # episode 1 two steps longer than its rows and its episodes.json entry
    report = verify_store(store.root)
    reasons = " | ".join(d.reason for d in report.damages)
    assert "episode_ends does not match" in reasons and "rows, episode_ends say" in reasons


def test_resumed_and_edited_stores_verify_clean(tmp_path, episodes) -> None:  # noqa: F811
    try:  # a job that stops after two committed episodes, then is rerun
        with EpisodicWriter(tmp_path / "r", SCHEMA, config=EpisodicWriterConfig(
                val_fraction=0.25, frame_codec="lz4", commit_every=1), stats_fn=lambda s: compute_stats(s, STATS)) as w:
            for ep in episodes[:2]:
                w.write(ep)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    crc = zarr.open_array(str(tmp_path / "r" / "meta" / CHUNK_CRC / FIELD), mode="r+")
    crc.resize((crc.shape[0] + 5,))  # as a kill between a group's crc write and its commit point leaves it
    crc[-5:] = 7
    with EpisodicWriter(tmp_path / "r", SCHEMA, config=EpisodicWriterConfig(val_fraction=0.25, frame_codec="lz4"),
                        stats_fn=lambda s: compute_stats(s, STATS)) as w:
        for ep in episodes[2:5]:
            w.write(ep)
    resumed, fresh = EpisodicStore(tmp_path / "r"), _write(tmp_path / "f", episodes[:5])
    assert verify_store(resumed.root).ok
    np.testing.assert_array_equal(read_crc32c(resumed.root, CHUNK_CRC, FIELD),
                                  read_crc32c(fresh.root, CHUNK_CRC, FIELD))
    delete_episodes(fresh.root, EpisodeSelection(episodes="1,3"), EditTarget(out=str(tmp_path / "d")))
    out = EpisodicStore(tmp_path / "d")
    report = verify_store(out.root)
    assert report.ok and not report.warnings, report.summary()
    np.testing.assert_array_equal(read_crc32c(out.root, CHUNK_CRC, FIELD),
                                  read_crc32c(_write(tmp_path / "g", [episodes[i] for i in (0, 2, 4)]).root,
                                              CHUNK_CRC, FIELD))
    recode_store(out.root, "jpeg", out=tmp_path / "j")  # recoded: new chunks, new checksums
    report = verify_store(tmp_path / "j")
    assert report.ok and not report.warnings, report.summary()
    assert not np.array_equal(read_crc32c(tmp_path / "j", CHUNK_CRC, FIELD), read_crc32c(out.root, CHUNK_CRC, FIELD))


def test_feature_provenance_and_cli(tmp_path, store) -> None:
    feats = _features(store, tmp_path / "s.dino")
    assert verify_store(feats).ok
    ok = run_cli("verify", feats)
    assert ok.returncode == 0 and "intact" in ok.stdout
    delete_episodes(store.root, EpisodeSelection(episodes="0"), EditTarget(in_place=True))  # features left behind
    assert verify_store(store.root).ok
    bad = run_cli("verify", feats)
    assert bad.returncode == 1 and "has changed since the tokens were computed" in bad.stdout


def test_flipped_byte_in_token_chunk_is_named(tmp_path, store) -> None:
    """An uncompressed token chunk decodes whatever its bytes: only its crc32c, recorded when it was written,
    finds a flipped byte; `shardyard verify` names the sample, its source episode and step, and the field."""
    feats = _features(store, tmp_path / "s.dino")
    assert read_crc32c(feats, CHUNK_CRC, "patch_tokens").shape == (store.num_steps,)
    ok = run_cli("verify", feats)
    assert ok.returncode == 0 and "intact" in ok.stdout and "WARNING" not in ok.stdout, ok.stdout
    row = int(store.episode_starts[2]) + 3
    shard = Path(shard_file(str(feats / "patch_tokens"), 0, 3))
    rows = json.loads((feats / "patch_tokens" / "zarr.json").read_text())["chunk_grid"]["configuration"]
    off, n = read_shard_index(shard, rows["chunk_shape"][0])[row]
    _flip(shard, int(off) + int(n) // 2)
    bad = run_cli("verify", feats)
    assert bad.returncode == 1, bad.stdout
    assert f"sample {row}: chunk crc32c" in bad.stdout and "field=patch_tokens" in bad.stdout
    assert "episode=ep02" in bad.stdout and "step=3" in bad.stdout and f"file={shard}" in bad.stdout


@pytest.mark.parametrize("codec", ["lz4", "video"])
def test_damage_in_an_edit_input_shows_in_the_result(tmp_path, episodes, codec) -> None:  # noqa: F811
    """Copied frame chunks and MP4s keep the crc32c of their ingest: a byte flipped in the input after it was
    written is found by `verify` of the edited store, at the episode it moved to."""
    src = _write(tmp_path / "s", episodes[:4], codec)
    if codec == "video":
        damaged = Path(src.root) / "data" / FIELD / "video" / "000002.mp4"
        _flip(damaged, damaged.read_bytes().index(b"mdat") + 40)  # inside a frame: the file still decodes
    else:
        damaged, index = _image_shard(src)
        off, n = (int(v) for v in index[int(src.episode_starts[2]) + 1])
        _flip(damaged, off + n // 2)
    delete_episodes(src.root, EpisodeSelection(episodes="0"), EditTarget(out=str(tmp_path / "d")))
    report = verify_store(tmp_path / "d", check_stats=False)
    (d,) = report.damages
    assert (d.episode, d.episode_index, d.field) == ("ep02", 1, FIELD) and "crc32c" in d.reason, report.summary()
    if codec == "video":
        assert d.file == str(Path(tmp_path, "d", "data", FIELD, "video", "000001.mp4"))
    else:
        assert d.step == 1
