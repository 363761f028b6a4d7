"""Columnar episode metadata and stats parts (issue 22): metadata round-trips through the Parquet tables as the
sources gave it, keys and `--where` selections are vectorised and equal the per-record answers, a store of
format version 1 (a fixture written by the code before the columns) opens read-only and `shardyard upgrade`
rewrites it, a DataLoader worker's pickled dataset does not grow with the number of episodes, and the
vectorised stats fold equals the one-by-one merge bit for bit."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardyard.errors import ConfigError, StoreChangedError
from shardyard.loaders import EpisodeDataset, EpisodeDatasetConfig
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.atomic import to_jsonable
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.stats import compute_stats
from shardyard.stores.stats.fold import fold_moments, lowdim_part
from shardyard.stores.stats.moments import empty_part, merge_parts, part_from_array
from shardyard.tools.edit import EditTarget, EpisodeSelection, delete_episodes, parse_where
from shardyard.tools.verify import verify_store

FIXTURE = Path(__file__).parent / "fixtures" / "store_format1"  # made by make_store_format1.py at 3b19018
LOWDIM = Schema({"obs.eef_pos": FieldSpec("float32", (3,), unit="m"), "action": FieldSpec("float32", (2,))})
K = np.array([[100.0, 0, 8], [0, 100.0, 8], [0, 0, 1]])


def _meta(i: int) -> dict:
    """Metadata of every shape the sources give: columns, extras, cameras of two roles, odd types."""
    metas = [
        {"task": "pick", "fps": 15.0, "source_path": f"/raw/{i}",
         "cameras": {"top": {"K": K, "T_world_cam": np.eye(4), "width": 16, "height": 16, "moving": False}}},
        {"task": "place", "fps": 30, "tasks": ["place", "put"], "episode_index": i, "cameras": {}},
        {"task": None, "fps": "fast", "scene": "kitchen", "absent_fields": ["action"],
         "cameras": {"wrist": {"K": K, "T_world_cam": None, "moving": True, "source": "cam.json"},
                     "top": {"K": [[1, 2], [3, 4]], "width": 16}}},
        {"source_path": f"/raw/{i}", "length_note": 3},
    ]
    return metas[i % len(metas)]


def _write(path: Path, n: int, steps: int = 2, **cfg) -> EpisodicStore:
    rng = np.random.default_rng(n)
    config = EpisodicWriterConfig(commit_every=cfg.pop("commit_every", 64), **cfg)
    with EpisodicWriter(path, LOWDIM, config=config, stats_fn=compute_stats) as w:
        for i in range(n):
            t = steps + i % 3
            w.write(Episode(f"ep{i:05d}", {"obs.eef_pos": rng.normal(size=(t, 3)).astype(np.float32),
                                           "action": rng.normal(size=(t, 2)).astype(np.float32)}, meta=_meta(i)))
    return EpisodicStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EpisodicStore:
    return _write(tmp_path_factory.mktemp("cols") / "s", 12, commit_every=5)


def test_metadata_round_trips_through_the_columns(store) -> None:
    """Every record is the JSON of what the source gave (columns, extras, cameras), and episode_meta turns the
    camera matrices into arrays; the tables hold one row per episode and the distinct tasks once."""
    assert store.format_version == 2 and not (Path(store.root) / "meta" / "episodes.json").exists()
    for i in range(store.num_episodes):
        want = {"key": f"ep{i:05d}", "length": 2 + i % 3, **to_jsonable(_meta(i))}
        assert store.episode_record(i) == want
    meta = store.episode_meta(0)
    np.testing.assert_array_equal(meta["cameras"]["top"]["K"], K)
    assert meta["cameras"]["top"]["T_world_cam"].shape == (4, 4)
    assert store.episode_meta(2)["cameras"]["wrist"]["T_world_cam"] is None
    assert store.meta_table.tasks() == ["pick", "place"]
    assert store.episode_tasks([0, 1, 2, 3]) == ["pick", "place", "", ""]
    with pytest.raises(IndexError):
        store.episode_record(store.num_episodes)


def test_keys_and_lookup_are_vectorised(store) -> None:
    keys = [f"ep{i:05d}" for i in range(store.num_episodes)]
    assert store.episode_keys == keys and list(store.episode_keys) == keys and store.episode_keys[3] == keys[3]
    assert store.episode_keys[-1] == keys[-1] and "ep00004" in store.episode_keys and "nope" not in store.episode_keys
    assert store.episode_keys.index("ep00007") == 7
    np.testing.assert_array_equal(store.episode_indices(["ep00009", "nope", "ep00000", "ep00009"]), [9, -1, 0, 9])
    assert store.episode_keys + ["x"] == keys + ["x"]


@pytest.mark.parametrize("where", ["length < 3", "length >= 3 and task == pick", "task != 'pick'",
                                   "fps == 30", "source_path == '/raw/4'", "fps > 10 and length > 2",
                                   "key > ep00005", "fps == 'fast'"])
def test_where_on_columns_equals_the_per_record_filter(store, where) -> None:
    """`select_where` (columns) picks exactly what the per-record filter picks, clause order included."""
    match = parse_where(where)
    expected = []
    for i in range(store.num_episodes):
        try:
            if match(store.episode_record(i)):
                expected.append(i)
        except ConfigError:
            expected = None
            break
    if expected is None:
        with pytest.raises(ConfigError, match="lacks"):
            store.select_where(where)
    else:
        assert store.select_where(where).tolist() == expected


def test_where_names_the_episode_lacking_an_entry(store) -> None:
    with pytest.raises(ConfigError, match=r"--where names 'task', which episode 'ep00002' lacks"):
        store.select_where("task == pick")
    with pytest.raises(ConfigError, match="lacks"):
        store.select_where("scene == kitchen")  # an extra entry most episodes do not have
    assert store.select_where("length > 100 and scene == kitchen").tolist() == []  # no episode is asked
    assert store.select_where("key == ep00006 and scene == kitchen").tolist() == [6]
    with pytest.raises(ConfigError, match="bad --where clause"):
        store.select_where("length <")


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_format_1_store_opens_read_only_and_upgrades(tmp_path) -> None:
    """The fixture (written by the code before the columns: meta/episodes.json, JSON stats parts, the split in
    the manifest) reads as before without writing a byte; `shardyard upgrade` rewrites its metadata only
    (format version 2), after which it reads the same, verifies clean, and recomputed stats are unchanged."""
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    before = _tree(old)
    v1 = EpisodicStore(old)
    assert v1.format_version == 1 and v1.num_episodes == 4
    records = [v1.episode_record(i) for i in range(4)]
    assert records == json.loads((old / "meta" / "episodes.json").read_text())
    keys, split, stats = list(v1.episode_keys), v1.split, v1.stats
    rows = {f: v1.read_rows(f, 0, v1.num_steps) for f in v1.schema.keys()}
    assert v1.select_where("length > 4").tolist() == [2, 3]
    assert v1.episode_indices(["ep02"]).tolist() == [2] and split == v1.manifest["split"]
    assert _tree(old) == before  # reading wrote nothing
    assert verify_store(str(old)).ok

    run = subprocess.run([sys.executable, "-m", "shardyard.cli", "upgrade", str(old)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "format version 1 -> 2" in run.stdout
    v2 = EpisodicStore(old)
    assert v2.format_version == 2 and v2.manifest["split"] == {}
    assert [v2.episode_record(i) for i in range(4)] == records
    assert list(v2.episode_keys) == keys and v2.split == split and v2.stats == stats
    for f, x in rows.items():
        np.testing.assert_array_equal(v2.read_rows(f, 0, v2.num_steps), x)
    assert not (old / "meta" / "episodes.json").exists() and not list((old / "meta" / "stats_parts").glob("*.json"))
    report = verify_store(str(old))
    assert report.ok and not report.warnings, report.summary()
    with pytest.raises(StoreChangedError):  # a reader of the old version does not read the new one's files
        v1.read_rows("action", 0, 1)
    again = subprocess.run([sys.executable, "-m", "shardyard.cli", "upgrade", str(old)], capture_output=True,
                           text=True)
    assert again.returncode == 0 and "already format version 2" in again.stdout


def test_an_edit_of_a_format_1_store_writes_format_2(tmp_path) -> None:
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    delete_episodes(str(old), EpisodeSelection(where="length > 5"), EditTarget(out=str(tmp_path / "new")))
    new = EpisodicStore(tmp_path / "new")
    assert new.format_version == 2 and list(new.episode_keys) == ["ep00", "ep01", "ep02"]
    assert [new.episode_record(i) for i in range(3)] == [EpisodicStore(old).episode_record(i) for i in range(3)]
    assert verify_store(str(tmp_path / "new")).ok


def test_pickled_dataset_does_not_grow_with_the_store(tmp_path) -> None:
    """A DataLoader worker receives the dataset by pickling (spawn): its size is the same for 300 and 3,000
    episodes; the worker's copy rebuilds its anchors from the store's columns and serves the same items."""
    sizes = {}
    for n in (300, 3000):
        ds = EpisodeDataset(_write(tmp_path / f"s{n}", n, commit_every=500), {"action": [0, 1], "obs.eef_pos": [0]},
                            config=EpisodeDatasetConfig(split="train", include_task=True))
        assert len(ds.store.episode_ends) == n and len(ds) > n
        blob = pickle.dumps(ds)
        sizes[n] = len(blob)
        copy = pickle.loads(blob)
        assert copy._anchors is None and copy.store._ends is None
        for i in (0, len(ds) // 2, len(ds) - 1):
            a, b = ds[i], copy[i]
            assert a["index"] == b["index"] and a["task"] == b["task"]
            np.testing.assert_array_equal(a["action"].numpy(), b["action"].numpy())
    assert sizes[3000] <= sizes[300] + 256, sizes
    assert sizes[3000] < 64 << 10, sizes


def test_a_worker_refuses_a_selection_that_changed(tmp_path) -> None:
    s = _write(tmp_path / "s", 40)
    ds = EpisodeDataset(s, {"action": [0]}, config=EpisodeDatasetConfig(split="train"))
    blob = pickle.dumps(ds)
    from shardyard.stores.stats import recompute_store_stats

    recompute_store_stats(str(tmp_path / "s"), val_fraction=0.5)  # a new split, same data and generation
    assert EpisodicStore(tmp_path / "s").split != s.split
    with pytest.raises(StoreChangedError, match="changed since it was made"):
        pickle.loads(blob)[0]


def test_fold_equals_merging_one_part_at_a_time() -> None:
    """`fold_moments` gives the same bits as the left fold of `merge_parts`, empty parts included."""
    rng = np.random.default_rng(3)
    parts = [part_from_array(rng.normal(5.0, 3.0, size=(int(n), 4))) for n in rng.integers(0, 9, 200)]
    seq = empty_part(4)
    for p in parts:
        seq = merge_parts(seq, p)
    start = parts[0]
    folded = fold_moments(start, np.array([p.count for p in parts[1:]]), np.stack([p.sum for p in parts[1:]]),
                          np.stack([p.m2 for p in parts[1:]]), np.stack([p.min for p in parts[1:]]),
                          np.stack([p.max for p in parts[1:]]))
    seq2 = parts[0]
    for p in parts[1:]:
        seq2 = merge_parts(seq2, p)
    for name in ("sum", "m2", "min", "max"):
        assert getattr(folded, name).tobytes() == getattr(seq2, name).tobytes(), name
    assert folded.count == seq.count == seq2.count


def test_lowdim_stats_do_not_depend_on_the_block_size(store) -> None:
    eps = np.asarray(store.split["train"], dtype=np.int64)
    a = lowdim_part(store, "obs.eef_pos", eps, 3, block_rows=3)
    b = lowdim_part(store, "obs.eef_pos", eps, 3)
    assert a.count == b.count == int(sum(store.episode_length(int(e)) for e in eps))
    for name in ("sum", "m2", "min", "max"):
        assert getattr(a.moments, name).tobytes() == getattr(b.moments, name).tobytes()
    for ka, kb, ca, cb in zip(a.keys, b.keys, a.counts, b.counts):
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(ca, cb)


def test_a_damaged_episode_table_raises_and_verify_names_it(tmp_path) -> None:
    """Every page of the tables carries a CRC32: a flipped byte raises `StoreDamagedError` naming the file
    at the first read of that page (never wrong metadata), and `verify` reports the file."""
    from shardyard.errors import StoreDamagedError

    s = _write(tmp_path / "s", 12)
    table = Path(s.root) / "meta" / "episodes.parquet"
    data = bytearray(table.read_bytes())
    data[len(data) // 3] ^= 0x40
    table.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match="episodes.parquet"):
        EpisodicStore(s.root).episode_record(5)
    report = verify_store(s.root)
    assert not report.ok and any("episodes.parquet" in str(d) for d in report.damages), report.summary()


def test_large_lowdim_fields_are_read_by_chunk_within_a_bound(tmp_path) -> None:
    """A low-dim field too large to keep whole in every worker is read a zarr chunk at a time: the rows equal
    the array's across chunk boundaries, at most `max_bytes` of chunks are kept, and each chunk is checked
    once, before its first read."""
    import zarr

    from shardyard.stores.lowdim_chunks import ChunkRows

    x = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    arr = zarr.create_array(str(tmp_path / "a"), data=x, chunks=(64, 3))
    checked: list[int] = []
    rows = ChunkRows(arr, 64, checked.append, max_bytes=4 * 64 * 3 * 4)
    for a, b in ((0, 10), (60, 200), (990, 1000), (500, 501), (0, 1000), (5, 5)):
        np.testing.assert_array_equal(rows.read(a, b), x[a:b])
        assert len(rows._chunks) <= 4
    assert sorted(checked) == sorted(set(checked)) == list(range(16))


def test_appending_to_a_format_1_store_writes_format_2(tmp_path) -> None:
    """A writer reopening a format-1 store (its commit log, JSON stats parts) converts the parts, appends, and
    finishes in format 2: the old episodes keep their metadata and parts, the stats use them."""
    from shardyard.stores.stats.part_table import PartTable

    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    v1 = EpisodicStore(old)
    records = [v1.episode_record(i) for i in range(4)]
    rng = np.random.default_rng(9)
    with EpisodicWriter(old, v1.schema, config=EpisodicWriterConfig(frame_codec="jpeg"), stats_fn=compute_stats) as w:
        assert w.committed_keys == ["ep00", "ep01", "ep02", "ep03"]
        w.write(Episode("ep04", {"obs.rgb.top": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
                                 "obs.eef_pos": rng.normal(size=(5, 3)).astype(np.float32),
                                 "action": rng.normal(size=(5, 2)).astype(np.float32)}, meta={"task": "pick"}))
    v2 = EpisodicStore(old)
    assert v2.format_version == 2 and v2.num_episodes == 5 and not (old / "meta" / "episodes.json").exists()
    assert [v2.episode_record(i) for i in range(4)] == records
    assert v2.episode_record(4) == {"key": "ep04", "length": 5, "task": "pick"}
    assert not list((old / "meta" / "stats_parts").glob("*.json"))
    parts = PartTable(old / "meta" / "stats_parts")
    assert parts.get(0, "obs.rgb.top") is not None  # converted from the JSON file, by index now
    assert parts.get(4, "obs.rgb.top") is None  # written here without a reader worker: no part, read back
    assert verify_store(str(old)).ok
