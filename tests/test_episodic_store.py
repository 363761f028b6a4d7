"""Episodic store: round trip, the fast shard reader against zarr-python, remote reads, DataLoader workers."""

import numpy as np
import pytest
import torch
import zarr

from shardyard import open_store
from shardyard.errors import SchemaError, StoreError
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.chunks import ShardReader, load_array_meta
from shardyard.stores.episodic import EpisodicWriter, EpisodicWriterConfig, split_episodes

from conftest import serve_directory

SCHEMA = Schema({
    "obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
    "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
    "obs.gripper": FieldSpec("float32", (), "normalised", "scalar"),
})


def make_episode(i: int, T: int) -> Episode:
    rng = np.random.default_rng(i)
    return Episode(key=f"ep{i:03d}", steps={
        "obs.rgb.top": rng.integers(0, 255, (T, 12, 16, 3), dtype=np.uint8),
        "obs.eef_pos": rng.normal(size=(T, 3)).astype(np.float32),
        "obs.gripper": rng.uniform(size=T).astype(np.float32),
    }, meta={"task": f"task {i % 2}", "fps": 10.0,
             "cameras": {"top": {"K": np.eye(3), "T_world_cam": np.eye(4), "moving": False}}})


def write_store(path, lengths, codec="lz4"):
    eps = [make_episode(i, T) for i, T in enumerate(lengths)]
    with EpisodicWriter(path, SCHEMA, config=EpisodicWriterConfig(image_codec=codec)) as w:
        for ep in eps:
            w.write(ep)
    return eps


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_round_trip(tmp_path, codec):
    eps = write_store(tmp_path / "s", [5, 17, 1, 30], codec)
    s = open_store(str(tmp_path / "s"))
    assert s.num_episodes == 4 and s.num_steps == 53
    assert s.episode_keys == [e.key for e in eps]
    for i, ep in enumerate(eps):
        got = s.read(i)
        for k in SCHEMA:
            np.testing.assert_array_equal(got[k], ep.steps[k])
        np.testing.assert_array_equal(s.read(i, ["obs.eef_pos"], 1, 3)["obs.eef_pos"], ep.steps["obs.eef_pos"][1:3])
    meta = s.episode_meta(1)
    assert meta["task"] == "task 1" and meta["cameras"]["top"]["K"].shape == (3, 3)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s"), mode="r")["meta/episode_ends"][:],
                                  [5, 22, 23, 53])
    # the store is a plain zarr v3 store
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s"), mode="r")["data/obs.rgb.top"][5:22],
                                  eps[1].steps["obs.rgb.top"])


@pytest.mark.parametrize("shard_rows,chunk_rows", [(4, 1), (8, 2), (16, 16), (3, 1)])
def test_fast_reader_equals_zarr(tmp_path, shard_rows, chunk_rows):
    data = np.random.default_rng(0).integers(0, 255, (37, 5, 7, 3), dtype=np.uint8)
    g = zarr.open_group(str(tmp_path / "z"), mode="w")
    a = g.create_array("x", shape=data.shape, dtype="uint8", chunks=(chunk_rows, 5, 7, 3),
                       shards=(shard_rows, 5, 7, 3))
    a[:30] = data[:30]  # rows 30.. stay unwritten: the reader must return the fill value
    r = ShardReader.maybe_for(str(tmp_path / "z" / "x"), load_array_meta(str(tmp_path / "z" / "x")))
    assert r is not None
    rng = np.random.default_rng(1)
    for _ in range(40):
        lo = int(rng.integers(0, 37))
        hi = int(rng.integers(lo, 38))
        np.testing.assert_array_equal(r.read(lo, hi), a[lo:hi])


def test_no_manifest_no_store(tmp_path):
    with pytest.raises(StoreError, match="manifest"):
        open_store(str(tmp_path))
    with pytest.raises(RuntimeError):
        with EpisodicWriter(tmp_path / "s", SCHEMA) as w:
            w.write(make_episode(0, 4))
            raise RuntimeError("crash before finishing")
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "s"))


def test_schema_mismatch_reports_every_field(tmp_path):
    ep = make_episode(0, 4)
    ep.steps["obs.eef_pos"] = ep.steps["obs.eef_pos"].astype(np.float64)
    ep.steps["obs.gripper"] = ep.steps["obs.gripper"][:3]
    ep.steps["extra"] = np.zeros(4)
    with EpisodicWriter(tmp_path / "s", SCHEMA) as w:
        with pytest.raises(SchemaError) as e:
            w.write(ep)
    msg = str(e.value)
    for part in ("obs.eef_pos: dtype float64", "extra: not in schema", "unequal lengths", "ep000"):
        assert part in msg


def test_resume_truncates_uncommitted_rows(tmp_path):
    eps = [make_episode(i, 9) for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        with EpisodicWriter(tmp_path / "s", SCHEMA) as w:
            w.write(eps[0])
            w.commit()
            # a killed writer can leave rows of an uncommitted group in the arrays
            g = zarr.open_group(str(tmp_path / "s"), mode="r+")
            for k in SCHEMA:
                g[f"data/{k}"].resize((14,) + g[f"data/{k}"].shape[1:])
                g[f"data/{k}"][9:14] = 7
            raise KeyboardInterrupt
    assert not (tmp_path / "s" / "manifest.json").exists()
    with EpisodicWriter(tmp_path / "s", SCHEMA) as w:
        assert w.committed_keys == ["ep000"]
        w.write(eps[1])
        w.write(eps[2])
    s = open_store(str(tmp_path / "s"))
    for i in range(3):
        np.testing.assert_array_equal(s.read(i)["obs.rgb.top"], eps[i].steps["obs.rgb.top"])


def test_split_is_by_episode_and_stable():
    keys = [f"k{i}" for i in range(20)]
    a = split_episodes(keys, 0.2, 0)
    assert len(a["val"]) == 4 and sorted(a["train"] + a["val"]) == list(range(20))
    assert split_episodes(keys, 0.2, 0) == a and split_episodes(keys, 0.2, 1) != a


class _Frames(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return self.store.num_steps

    def __getitem__(self, i):
        e = int(np.searchsorted(self.store.episode_ends, i, side="right"))
        t = i - int(self.store.episode_starts[e])
        return {k: torch.as_tensor(np.array(v[0])) for k, v in self.store.read(e, None, t, t + 1).items()}


def test_dataloader_workers_read_same_data(tmp_path):
    eps = write_store(tmp_path / "s", [6, 11, 7])
    s = open_store(str(tmp_path / "s"))
    s.read(0)  # open handles in the parent first: workers must not reuse them
    loader = torch.utils.data.DataLoader(_Frames(s), batch_size=4, num_workers=2)
    imgs = torch.cat([b["obs.rgb.top"] for b in loader]).numpy()
    np.testing.assert_array_equal(imgs, np.concatenate([e.steps["obs.rgb.top"] for e in eps]))


@pytest.mark.parametrize("ranges", [True, False])
def test_remote_store_over_http(tmp_path, ranges):
    """Read through fsspec from a loopback HTTP server, with and without Range support."""
    eps = write_store(tmp_path / "s", [4, 6])
    server, base = serve_directory(tmp_path, ranges=ranges)
    try:
        s = open_store(f"{base}/s")
        assert s.num_episodes == 2
        got = s.read(1, start=2)
        np.testing.assert_array_equal(got["obs.rgb.top"], eps[1].steps["obs.rgb.top"][2:])
        np.testing.assert_array_equal(got["obs.eef_pos"], eps[1].steps["obs.eef_pos"][2:])
    finally:
        server.shutdown()
