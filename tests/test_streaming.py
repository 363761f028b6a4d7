"""ClipStream: frame-exact clips, order as a pure function of (seed, epoch), rank/worker split, mid-epoch
resume (directly and through a 2-worker DataLoader), bad samples skipped and counted, and a loopback HTTP
server injecting 500s, truncated bodies, stalls and 404s on the shards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from faultserver import FaultServer
from torch.utils.data import DataLoader

from shardyard.ingest.webvid import WebvidConfig, ingest_webvid
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.stores.wds import Sample, ShardStore, ShardWriter
from shardyard.video import open_video, write_video

SIZE = (32, 24)


def _clip_bytes(tmp: Path, seed: int, n: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.integers(0, 255, (1, 48, 64, 3)) + np.arange(n)[:, None, None, None] * 8, 0, 255)
    p = tmp / f"clip{seed}.mp4"
    write_video(p, frames.astype(np.uint8), fps=12)
    return p.read_bytes()


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data) -> Path:
    """5 shards x 5 samples of tiny real H.264 clips, with a JPEG, a truncated mp4 and a too-short clip."""
    tmp = tmp_path_factory.mktemp("streamstore")
    clips = [_clip_bytes(tmp, s) for s in range(4)]
    short = _clip_bytes(tmp, 9, n=8)
    with tarfile.open(shared_data / "webvid" / "video2dataset_shard" / "return_all_test.tar") as t:
        jpeg = t.extractfile("000000014.mp4").read()
    special = {3: jpeg, 8: clips[1][: len(clips[1]) // 2], 14: short}
    with ShardWriter(tmp / "store") as w:
        for si in range(5):
            samples = []
            for j in range(5):
                i = si * 5 + j
                samples.append(Sample(f"{i:09d}", {"mp4": special.get(i, clips[i % 4]), "txt": f"c{i}".encode()}))
            w.write_shard(si, samples, [])
    return tmp / "store"


def _keys(stream, n=None) -> list[str]:
    out = []
    for item in stream:
        out.append(item["key"])
        if n is not None and len(out) == n:
            break
    return out


def _stream(src, **kw) -> ClipStream:
    return ClipStream(src, config=StreamConfig(**{"num_frames": 16, "size": SIZE, "shuffle_buffer": 4, "seed": 3,
                                                  **kw}))


def test_real_video2dataset_store_frame_exact(shared_data, tmp_path):
    ingest_webvid(shared_data / "webvid" / "video2dataset_shard", WebvidConfig(out=tmp_path / "w"))
    s = _stream(tmp_path / "w", clip_start="start", size=(96, 64))
    items = list(s)
    assert sorted(i["key"] for i in items) == ["0000008_00001", "0000030_00005", "0000038_00003"]
    c = s.counters
    assert (c["seen"], c["yielded"], c["skipped"]["not_video"]) == (6, 3, 3)
    with tarfile.open(tmp_path / "w" / "shards" / "train-000000.tar") as t:
        (tmp_path / "x.mp4").write_bytes(t.extractfile(f"{items[0]['key']}.mp4").read())
    ref = open_video(tmp_path / "x.mp4").read(range(16), size=(96, 64))  # (T, H, W, 3)
    assert items[0]["frames"].shape == (16, 3, 64, 96) and items[0]["frames"].dtype == torch.uint8
    assert torch.equal(items[0]["frames"], torch.from_numpy(ref).permute(0, 3, 1, 2))
    assert items[0]["caption"]


def test_order_is_pure_function_of_seed_epoch_and_split_partitions(store):
    a, b = _stream(store), _stream(store)
    ka = _keys(a)
    assert ka == _keys(b) and len(ka) == len(set(ka)) == 22  # 25 - jpeg - truncated - too short
    c = a.counters
    assert c["seen"] == 25 and c["skipped"] == {"undecodable": 1, "not_video": 1, "too_short": 1, "no_video": 0}
    assert c["seen"] == c["yielded"] + sum(c["skipped"].values())
    b.set_epoch(1)
    assert _keys(b) != ka and sorted(_keys(b)) == sorted(ka)
    for world in (1, 2, 3):
        for workers in (1, 2, 4):
            parts = [a.shards_for(5, r, world, w, workers) for r in range(world) for w in range(workers)]
            flat = [x for p in parts for x in p]
            assert sorted(flat) == sorted(a.shards) and len(flat) == len(set(flat))


@pytest.mark.parametrize("taken", [0, 1, 9, 22])
def test_resume_mid_epoch_directly(store, taken):
    full = list(_stream(store))
    s = _stream(store)
    first = _keys(s, taken) if taken else []
    state = json.loads(json.dumps(s.state_dict()))
    r = _stream(store, seed=0)
    r.load_state_dict(state)
    rest = list(r)
    assert first + [i["key"] for i in rest] == [i["key"] for i in full]
    if rest:
        assert torch.equal(rest[0]["frames"], full[taken]["frames"])


def test_dataloader_two_workers_resume_and_counters(store):
    def run(stream, batches=None):
        dl = DataLoader(stream, batch_size=2, num_workers=2)
        got = []
        for bi, batch in enumerate(dl):
            if batches is not None and bi == batches:
                break
            stream.record(batch)
            got += list(zip(batch["worker"].tolist(), batch["key"]))
        return got

    full_stream = _stream(store)
    full = run(full_stream)
    assert len(full) == 22 and {w for w, _ in full} == {0, 1}
    c = full_stream.counters
    assert c["seen"] == 25 and c["seen"] == c["yielded"] + sum(c["skipped"].values())
    s = _stream(store)
    first = run(s, batches=3)
    state = s.state_dict()
    assert state["num_workers"] == 2
    r = _stream(store)
    r.load_state_dict(state)
    rest = run(r)
    for w in (0, 1):  # per worker, the resumed sequence continues exactly
        assert [k for x, k in first + rest if x == w] == [k for x, k in full if x == w]


def test_truncated_local_shard_is_skipped_and_counted(store, tmp_path):
    data = (store / "shards" / "train-000000.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: int(len(data) * 0.6)])
    s = _stream([str(tmp_path / "t.tar"), str(store / "shards" / "train-000001.tar")], shuffle_buffer=0,
                shuffle_shards=False)
    keys = _keys(s)
    assert keys[-4:] == [f"{i:09d}" for i in (5, 6, 7, 9)] and len(keys) >= 5  # shard 1 minus its truncated mp4
    assert s.counters["shards_skipped"] == 1 and s.counters["shards_done"] == 1


def test_http_stream_under_faults_keeps_yielding_and_resumes(store):
    files = {"/s/manifest.json": (store / "manifest.json").read_bytes()}
    files |= {f"/s/shards/train-{i:06d}.tar": (store / "shards" / f"train-{i:06d}.tar").read_bytes() for i in range(5)}
    plan = {"/s/shards/train-000000.tar": ["500", "ok"], "/s/shards/train-000001.tar": ["truncate", "ok"],
            "/s/shards/train-000002.tar": ["stall", "ok"], "/s/shards/train-000003.tar": ["404"],
            "/s/shards/train-000004.tar": ["500"]}
    cfg = dict(timeout_s=0.5, retries=2, backoff_s=0.02)
    with FaultServer(files, plan, nth_500=3, stall_s=1.5, max_requests=200, max_seconds=60) as srv:
        s = _stream(f"{srv.url}/s", **cfg)
        assert [u.rsplit("/", 1)[1] for u in s.shards] == [u.rsplit("/", 1)[1] for u in ShardStore(str(store)).shards()]
        full = _keys(s)
        c = s.counters
        reachable = {f"{i:09d}" for i in range(15)} - {f"{i:09d}" for i in (3, 8, 14)}
        assert sorted(full) == sorted(reachable)  # every sample of the reachable shards, once
        assert c["seen"] == 15 and c["seen"] == c["yielded"] + sum(c["skipped"].values())
        assert c["shards_skipped"] == 2 and c["shards_done"] == 3
        assert c["retries"] >= 6  # 500, truncate, stall, 2 x always-500, and the injected 500s (every 3rd good GET)
        print("fault-test counters:", json.dumps(c))
        part = _stream(f"{srv.url}/s", **cfg)
        first = _keys(part, 5)
        resumed = _stream(f"{srv.url}/s", **cfg)
        resumed.load_state_dict(part.state_dict())
        assert first + _keys(resumed) == full
        assert len(srv.log) < 200


def test_decord_backend_equals_pyav_for_stream_clips(shared_data, tmp_path):
    """The stream may use decord (native size) only because its clips equal PyAV's, shown here on real clips."""
    pytest.importorskip("decord")
    clips = sorted((shared_data / "webvid" / "clips").glob("*.mp4"))
    with ShardWriter(tmp_path / "s") as w:
        w.write_shard(0, [Sample(f"{i:09d}", {"mp4": p.read_bytes()}) for i, p in enumerate(clips)], [])
    a = list(_stream(tmp_path / "s", size=None, backend="pyav"))
    b = list(_stream(tmp_path / "s", size=None, backend="decord"))
    assert [x["key"] for x in a] == [x["key"] for x in b] and len(a) == 3
    for x, y in zip(a, b):
        assert torch.equal(x["frames"], y["frames"])


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_resize_modes_keep_or_change_the_aspect_ratio_as_named(tmp_path, mode):
    """A 64x48 (4:3) clip to a 32x32 square: stretch squashes it (the whole frame at 32x32), crop scales it to
    43x32 and keeps the centre 32 columns, pad scales it to 32x24 and centres it on black rows."""
    with ShardWriter(tmp_path / "s") as w:
        w.write_shard(0, [Sample("000000000", {"mp4": _clip_bytes(tmp_path, 5), "txt": b"c"})], [])
    (tmp_path / "x.mp4").write_bytes(_clip_bytes(tmp_path, 5))
    video = open_video(tmp_path / "x.mp4")
    item = next(iter(_stream(tmp_path / "s", clip_start="start", size=(32, 32), resize=mode)))
    got = item["frames"].permute(0, 2, 3, 1).numpy()                                # (T, 32, 32, 3)
    assert got.shape == (16, 32, 32, 3)
    if mode == "stretch":
        want = video.read(range(16), size=(32, 32))
    elif mode == "crop":
        want = video.read(range(16), size=(43, 32))[:, :, 5:37]
    else:
        want = np.zeros_like(got)
        want[:, 4:28] = video.read(range(16), size=(32, 24))
        assert not got[:, :4].any() and not got[:, 28:].any()                       # the black bands
    np.testing.assert_array_equal(got, want)


def test_resize_mode_is_checked():
    from shardyard.errors import ConfigError

    with pytest.raises(ConfigError, match="resize must be one of"):
        StreamConfig(size=32, resize="squash")
