"""Episodic store: round trip, the fast shard reader against zarr-python, remote reads, DataLoader workers."""

import os

import numpy as np
import pytest
import torch
import zarr
from conftest import serve_directory
from zarr.codecs import BloscCodec, ZstdCodec

from shardyard import open_store
from shardyard.errors import SchemaError, StoreError
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic import split_episodes
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.byte_ranges import ChunkRef
from shardyard.stores.frames.registry import chunk_codec_of
from shardyard.stores.frames.shard_append import ShardAppender
from shardyard.stores.frames.zarr_shard import ShardReader, load_array_meta

SCHEMA = Schema({
    "obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
    "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
    "obs.gripper": FieldSpec("float32", (), "normalised", "scalar"),
})


LOSSLESS = EpisodicWriterConfig(frame_codec="lz4")


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
    with EpisodicWriter(path, SCHEMA, config=EpisodicWriterConfig(frame_codec=codec)) as w:
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
        with EpisodicWriter(tmp_path / "s", SCHEMA, config=LOSSLESS) as w:
            w.write(eps[0])
            w.commit()
            # a killed writer can leave rows of an uncommitted group in the arrays
            g = zarr.open_group(str(tmp_path / "s"), mode="r+")
            for k in SCHEMA:
                g[f"data/{k}"].resize((14,) + g[f"data/{k}"].shape[1:])
                g[f"data/{k}"][9:14] = 7
            raise KeyboardInterrupt
    assert not (tmp_path / "s" / "manifest.json").exists()
    with EpisodicWriter(tmp_path / "s", SCHEMA, config=LOSSLESS) as w:
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


# -- ShardAppender: pre-encoded chunks (bytes, or refs into spill files) into zarr shard files ---------------

ROW = (5, 7, 3)
COMPRESSORS = {"lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
               "zstd": lambda: ZstdCodec(level=1), "none": lambda: None}


def _sharded(path, shard_rows: int, compressor: str = "lz4"):
    """An empty `(0, *ROW)` uint8 array with one-row inner chunks in shards, as `EpisodicWriter` makes frame
    fields; returns (array folder, `encode(row) -> bytes`)."""
    g = zarr.open_group(str(path), mode="w")
    g.create_array("x", shape=(0,) + ROW, dtype="uint8", chunks=(1,) + ROW, shards=(shard_rows,) + ROW,
                   compressors=COMPRESSORS[compressor]())
    folder = path / "x"
    codec = chunk_codec_of(load_array_meta(str(folder)))
    assert codec is not None
    return folder, codec.encoder()


def _rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).integers(0, 256, (n,) + ROW, dtype=np.uint8)
    rows[:, 0, 0, 0] = np.arange(n) % 256  # no two neighbouring rows alike
    return rows


class _Spills:
    """Two spill files written here: file A takes its chunks in row order (adjacent refs, copied as one
    range), file B in reverse (no two adjacent); each starts with junk, so no offset is 0."""

    def __init__(self, folder):
        self.paths = [folder / "a.spill", folder / "b.spill"]
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT) for p in self.paths]
        self.ends = [os.write(fd, b"junk" * (3 + i)) for i, fd in enumerate(self.fds)]

    def pieces(self, chunks: list[bytes], kinds: str) -> list:
        """`kinds[i]`: "m" (bytes in memory), "a" or "b" (a ChunkRef into that file)."""
        out: list = [None] * len(chunks)
        order = {"a": [i for i, k in enumerate(kinds) if k == "a"],
                 "b": [i for i, k in enumerate(kinds) if k == "b"][::-1]}
        for f, name in enumerate("ab"):
            for i in order[name]:
                out[i] = ChunkRef(self.fds[f], self.ends[f], len(chunks[i]))
                self.ends[f] += os.pwrite(self.fds[f], chunks[i], self.ends[f])
        return [c if k == "m" else out[i] for i, (c, k) in enumerate(zip(chunks, kinds))]

    def close(self):
        for fd in self.fds:
            os.close(fd)


def _read_back(folder, n: int) -> np.ndarray:
    """Rows `[0, n)` through zarr-python, after setting the shape (the appender leaves it to its caller)."""
    a = zarr.open_array(str(folder), mode="r+")
    a.resize((n,) + ROW)
    return zarr.open_array(str(folder), mode="r")[:]


def _append_all(folder, encode, rows, batches, shard_rows, spills, seed=0, app=None):
    rng = np.random.default_rng(seed)
    app = app or ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW))
    start = app.n_rows
    done = 0
    for b in batches:
        chunks = [encode(np.ascontiguousarray(r)) for r in rows[done:done + b]]
        kinds = "".join(rng.choice(list("mmaab"), size=b))
        app.append(spills.pieces(chunks, kinds))
        done += b
        assert app.n_rows == start + done
    return app


@pytest.mark.parametrize("compressor", sorted(COMPRESSORS))
@pytest.mark.parametrize("shard_rows,batches", [(4, [1, 2, 9, 3, 1, 8]), (7, [7, 1, 13, 6, 2]), (5, [24])])
def test_shard_appender_mixed_pieces_read_back_by_zarr(tmp_path, compressor, shard_rows, batches):
    folder, encode = _sharded(tmp_path / "z", shard_rows, compressor)
    rows = _rows(sum(batches), seed=shard_rows)
    spills = _Spills(tmp_path)
    try:
        app = ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW))
        done = 0
        for i, b in enumerate(batches):  # read back after every append: the partial shard's tail carried over
            _append_all(folder, encode, rows[done:done + b], [b], shard_rows, spills, seed=i, app=app)
            done += b
            np.testing.assert_array_equal(_read_back(folder, done), rows[:done], err_msg=f"after append {i}")
    finally:
        spills.close()
    n = sum(batches)
    shards = sorted(int(d.name) for d in (folder / "c").iterdir())
    assert shards == list(range(-(-n // shard_rows)))
    assert not [p for p in folder.rglob("*.tmp")]


@pytest.mark.parametrize("n", [9, 12, 1, 0])
def test_shard_appender_resumes_mid_shard(tmp_path, n):
    """A new appender `load(n)` keeps rows `[0, n)` of the partial shard and drops the rows past n that the
    file still holds (a killed group's); appends then continue from row n."""
    shard_rows = 4
    folder, encode = _sharded(tmp_path / "z", shard_rows)
    old, new = _rows(23, seed=1), _rows(14, seed=2)
    spills = _Spills(tmp_path)
    try:
        _append_all(folder, encode, old, [10, 13], shard_rows, spills)
        app = ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW))
        app.drop_shards_after(n)
        app.load(n)
        assert app.n_rows == n
        _append_all(folder, encode, new, [3, 11], shard_rows, spills, seed=5, app=app)
    finally:
        spills.close()
    total = n + len(new)
    np.testing.assert_array_equal(_read_back(folder, total), np.concatenate([old[:n], new]))
    assert sorted(int(d.name) for d in (folder / "c").iterdir()) == list(range(-(-total // shard_rows)))


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 10, 12, 22, 23, 40])
def test_drop_shards_after_keeps_the_shard_of_row_n_minus_1(tmp_path, n):
    shard_rows = 4
    folder, encode = _sharded(tmp_path / "z", shard_rows)
    rows = _rows(23, seed=3)  # shards 0..5, the last one partial
    spills = _Spills(tmp_path)
    try:
        _append_all(folder, encode, rows, [23], shard_rows, spills)
    finally:
        spills.close()
    ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW)).drop_shards_after(n)
    kept = sorted(int(d.name) for d in (folder / "c").iterdir()) if (folder / "c").exists() else []
    assert kept == list(range(min(-(-n // shard_rows), 6)))  # every shard with a row below n, no other
    m = min(n, 23)
    np.testing.assert_array_equal(_read_back(folder, m), rows[:m])


def test_drop_shards_after_on_a_one_dimensional_array(tmp_path):
    g = zarr.open_group(str(tmp_path / "z"), mode="w")
    g.create_array("v", shape=(0,), dtype="int32", chunks=(1,), shards=(4,), compressors=ZstdCodec(level=1))
    encode = chunk_codec_of(load_array_meta(str(tmp_path / "z" / "v"))).encoder()
    app = ShardAppender(tmp_path / "z" / "v", shard_rows=4, ndim=1)
    app.append([encode(np.array(i, np.int32)) for i in range(10)])
    ShardAppender(tmp_path / "z" / "v", shard_rows=4, ndim=1).drop_shards_after(5)
    assert sorted(p.name for p in (tmp_path / "z" / "v" / "c").iterdir()) == ["0", "1"]


@pytest.mark.parametrize("torn", ["rows_and_index", "half_written"])
def test_shard_appender_cuts_a_shard_grown_after_its_commit(tmp_path, torn):
    """Rows appended after the commit point (a killed group) grew the partial shard in place; `load` with
    the committed `shard_bytes` cuts them off, even when the kill tore the file mid-write (no valid index at
    its end), and appends then continue from the committed row."""
    shard_rows = 8
    folder, encode = _sharded(tmp_path / "z", shard_rows)
    committed, lost, new = _rows(5, seed=1), _rows(2, seed=2), _rows(6, seed=3)
    app = ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW))
    app.append([encode(np.ascontiguousarray(r)) for r in committed])
    shard_bytes = app.shard_bytes  # what the commit log records
    app.append([encode(np.ascontiguousarray(r)) for r in lost])
    shard = folder / "c" / "0" / "0" / "0" / "0"
    if torn == "half_written":
        with open(shard, "ab") as f:
            f.write(os.urandom(1000))  # chunk bytes written, index not yet
    assert shard.stat().st_size > shard_bytes
    if torn == "half_written":  # without the commit log's size, a torn shard cannot be read
        with pytest.raises(ValueError, match="committed chunk"):
            ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW)).load(len(committed))
    app = ShardAppender(folder, shard_rows=shard_rows, ndim=1 + len(ROW))
    app.load(len(committed), shard_bytes)
    assert shard.stat().st_size == shard_bytes
    app.append([encode(np.ascontiguousarray(r)) for r in new])
    np.testing.assert_array_equal(_read_back(folder, len(committed) + len(new)), np.concatenate([committed, new]))
