"""Videos in every container: the reader's frame `i` is the i-th frame of an independent front-to-back
decode (AVI with B-frames, whose packet numbers are not presentation times; MPEG-4 Part 2; a timestamp
gap; repeated pts; WebM VP8/VP9; MOV; MP4, one with an edit list; a raw H.264 stream whose packets carry
no pts), and `ingest
webvid` of all of them from a loopback server stores each under its container's extension, as samples
that `ClipStream` streams frame-exactly and that webdataset's own reader reads."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from clipfactory import CLIPS, encode_clip, reference_frames
from conftest import run_cli
from faultserver import FaultServer

from shardyard.ingest.webvid import probe_video
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.stores.wds import ShardStore
from shardyard.video import container_ext, open_video

T = 8  # clip length streamed


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, bytes, np.ndarray, np.ndarray]]:
    """Each clip of `clipfactory.CLIPS` by name: (file, bytes, source frames, reference decode)."""
    tmp = tmp_path_factory.mktemp("containers")
    out = {}
    for i, (name, spec) in enumerate(CLIPS.items()):
        data, src = encode_clip(spec, seed=i)
        path = tmp / f"{name}.{spec.ext}"
        path.write_bytes(data)
        ref = reference_frames(data)
        assert len(ref) == len(src)
        # the independent decode is in presentation order (each frame near its source), and neighbours
        # differ, so a reader one frame off fails
        assert np.abs(ref.astype(int) - src).mean() < 14
        assert all(not np.array_equal(a, b) for a, b in zip(ref[:-1], ref[1:]))
        out[name] = (path, data, src, ref)
    return out


@pytest.mark.parametrize("name", list(CLIPS))
def test_reader_frames_equal_the_front_to_back_decode(clips, name):
    path, _, _, ref = clips[name]
    v = open_video(path)
    assert (v.num_frames, v.width, v.height) == (len(ref), 64, 48)
    assert v.container == CLIPS[name].ext == container_ext(path)
    np.testing.assert_array_equal(v.read(range(v.num_frames)), ref)
    n = v.num_frames
    idx = np.random.default_rng(7).integers(0, n, 10)
    for case in (idx, np.arange(n - 5, n), np.arange(n - T - 3, n - 3), [n - 1, 0, 13, 13]):
        np.testing.assert_array_equal(v.read(case), ref[case])
    ts = v.timestamps()
    assert len(ts) == n and ts[0] == 0 and np.all(np.diff(ts) >= 0)


def test_timestamps_keep_a_gap_and_a_repeat(clips):
    gap = open_video(clips["avi_mpeg4_gap"][0]).timestamps()
    assert np.allclose(np.diff(gap), [1 / 12] * 11 + [4 / 12] + [1 / 12] * 11)
    rep = open_video(clips["mkv_h264_repeated_pts"][0]).timestamps()
    assert np.sum(np.diff(rep) == 0) == 1
    raw = open_video(clips["h264_raw_no_pts"][0])
    np.testing.assert_allclose(raw.timestamps(), np.arange(raw.num_frames) / raw.fps)


def test_probe_reports_the_container_and_every_frame(clips):
    for name, (_, data, _, ref) in clips.items():
        p = probe_video(data)
        assert (p["status"], p["container"], p["num_frames"]) == ("success", CLIPS[name].ext, len(ref)), name
    # a Matroska file cut in half is a shorter video: the check counts the frames that decode, no more
    path, data, _, ref = clips["mkv_h264_bframes"]
    cut = path.with_name("cut.mkv")
    cut.write_bytes(data[: len(data) // 2])
    p = probe_video(cut.read_bytes())
    assert p["status"] == "success" and 0 < p["num_frames"] < len(ref)
    np.testing.assert_array_equal(open_video(cut).read(range(p["num_frames"])), reference_frames(cut.read_bytes()))
    assert probe_video(data[:300])["status"] == "undecodable"


def _url_path(name: str) -> str:
    """Where the server has clip `name`: under its own extension, but the issue's AVI at a `.mp4` URL (the
    stored extension must come from the bytes)."""
    return f"/v/{name}.{'mp4' if name == 'avi_h264_bframes' else CLIPS[name].ext}"


def _meta(tmp: Path, base: str) -> Path:
    out = tmp / "meta.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["videoid", "contentUrl", "name"])
        w.writeheader()
        for i, name in enumerate(CLIPS):
            w.writerow({"videoid": i, "contentUrl": f"{base}{_url_path(name)}", "name": name})
    return out


def _window(ref: np.ndarray, frames: np.ndarray) -> int | None:
    """The start `s` with `ref[s:s+T] == frames`, or None."""
    return next((s for s in range(len(ref) - T + 1) if np.array_equal(ref[s:s + T], frames)), None)


def test_ingest_stores_each_container_and_every_sample_streams(clips, tmp_path):
    files = {_url_path(name): data for name, (_, data, _, _) in clips.items()}
    with FaultServer(files, nth_500=0, max_requests=100, max_seconds=120) as srv:
        proc = run_cli("ingest", "webvid", _meta(tmp_path, srv.url), "--out", tmp_path / "s",
                       "--samples-per-shard", "4", "--timeout", "10", "--retries", "0", "--allow-private-urls",
                       timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["by_status"] == {"success": len(CLIPS)}
    store = ShardStore(str(tmp_path / "s"))
    assert store.verify() == []
    names = list(CLIPS)
    members = {}
    for shard in store.shards():
        with tarfile.open(shard) as t:
            members |= {m.split(".")[0]: m.split(".", 1)[1] for m in t.getnames() if m.endswith(tuple(
                f".{s.ext}" for s in CLIPS.values()))}
            for m in t.getnames():
                if m.endswith(".json"):
                    j = json.loads(t.extractfile(m).read())
                    assert j["container"] == CLIPS[j["name"]].ext and j["num_frames"] == len(clips[j["name"]][3])
    assert members == {f"{i:09d}": CLIPS[n].ext for i, n in enumerate(names)}  # <key>.avi, <key>.mkv, ...

    # every sample streams: its first T frames, then a random window, each exactly the reference's
    for clip_start in ("start", "random"):
        stream = ClipStream(str(tmp_path / "s"), config=StreamConfig(num_frames=T, shuffle_buffer=0,
                                                                       clip_start=clip_start, seed=3))
        got = {item["key"]: item["frames"].permute(0, 2, 3, 1).numpy() for item in stream}
        assert sorted(got) == sorted(members) and stream.counters["yielded"] == len(CLIPS)
        assert stream.counters["skipped"] == {r: 0 for r in stream.counters["skipped"]}
        for key, frames in got.items():
            ref = clips[names[int(key)]][3]
            start = _window(ref, frames)
            assert start is not None, names[int(key)]
            if clip_start == "start":
                assert start == 0

    # sampled at 12 Hz by timestamp, the AVI with a 3-frame gap holds its last frame before the gap
    stream = ClipStream(str(tmp_path / "s"), config=StreamConfig(num_frames=16, fps=12, shuffle_buffer=0,
                                                                   clip_start="start"))
    gap_key = f"{names.index('avi_mpeg4_gap'):09d}"
    frames = next(item["frames"] for item in stream if item["key"] == gap_key).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(frames, clips["avi_mpeg4_gap"][3][list(range(12)) + [11, 11, 11, 12]])

    # webdataset's own reader reads the shards, the video member under its container's extension
    wds = pytest.importorskip("webdataset")
    for sample in wds.WebDataset(store.shards(), shardshuffle=False):
        name = names[int(sample["__key__"])]
        assert sample[CLIPS[name].ext] == clips[name][1]


@pytest.mark.parametrize("clip", ["mmaction2_demo.mp4", "mmaction2_test_video_structuralize.mp4"])
def test_real_webvid_clips_equal_the_front_to_back_decode(shared_data, clip):
    path = shared_data / "webvid" / "clips" / clip
    ref = reference_frames(path.read_bytes())
    v = open_video(path)
    assert v.num_frames == len(ref) and v.container == "mp4"
    idx = np.random.default_rng(0).integers(0, v.num_frames, 6)
    for case in (idx, np.arange(v.num_frames - T, v.num_frames)):
        np.testing.assert_array_equal(v.read(case), ref[case])
