"""The in-memory clip reader `ClipStream` decodes with (`shardyard.video_memory`): the same frames as an
independent front-to-back decode and as `PyAVReader`, for every window of every container it serves (B-frames,
open GOPs whose leading frames it skips undecoded, an MP4 edit list, WebM VP8/VP9), native size and resized;
the containers it does not serve fall back to `PyAVReader`; and a stream that decoded in the parent still
runs in forked DataLoader workers (nothing threaded of the parent's is freed there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clipfactory import CLIPS, ClipSpec, encode_clip, reference_frames
from torch.utils.data import DataLoader

from shardyard.loaders.clip_decode import decode_clip
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.stores.wds import Sample, ShardWriter
from shardyard.video import open_video_bytes
from shardyard.video_memory import open_memory_video

OPEN_GOP = {"preset": "fast", "crf": "18",
            "x264-params": "bframes=3:b-pyramid=normal:keyint=12:min-keyint=12:open-gop=1:scenecut=0"}
EXTRA = {"mp4_h264_open_gop": ClipSpec("mp4", "libx264", "mp4", 40, OPEN_GOP)}
SERVED = ["mkv_h264_bframes", "webm_vp8", "webm_vp9", "mov_h264_bframes", "mp4_h264_bframes", "mp4_edit_list",
          "mp4_h264_open_gop"]
T = 8


@pytest.fixture(scope="module")
def encoded() -> dict[str, tuple[bytes, np.ndarray]]:
    """Each clip by name: (file bytes, the reference front-to-back decode)."""
    out = {}
    for i, (name, spec) in enumerate({**CLIPS, **EXTRA}.items()):
        data, _ = encode_clip(spec, seed=i)
        out[name] = (data, reference_frames(data))
    return out


def _read(data: bytes, ext: str, idx, size=None) -> np.ndarray:
    video = open_memory_video(data, ext)
    assert video is not None
    try:
        return video.read(idx, size)
    finally:
        video.close()


@pytest.mark.parametrize("name", SERVED)
def test_every_window_equals_the_front_to_back_decode_and_pyav_reader(encoded, name):
    data, ref = encoded[name]
    ext = {**CLIPS, **EXTRA}[name].ext
    n = len(ref)
    with open_video_bytes(data, suffix=f".{ext}") as reader:
        video = open_memory_video(data, ext)
        assert (video.num_frames, video.width, video.height, video.fps) == \
            (n, reader.width, reader.height, reader.fps)
        np.testing.assert_array_equal(video.timestamps(), reader.timestamps())
        video.close()
        for start in range(n - T + 1):  # windows starting on, after and before keyframes
            idx = np.arange(start, start + T)
            np.testing.assert_array_equal(_read(data, ext, idx), ref[idx], err_msg=f"{name} window {start}")
        for idx in ([n - 1, 0, n // 2, n // 2], np.arange(n)):  # unordered, repeated, the whole video
            np.testing.assert_array_equal(_read(data, ext, idx), ref[idx])
            np.testing.assert_array_equal(_read(data, ext, idx, (40, 30)), reader.read(idx, (40, 30)))


@pytest.mark.parametrize("name", sorted(set(CLIPS) - set(SERVED)))
def test_other_containers_fall_back_to_pyav_reader_and_clips_stay_exact(encoded, name):
    data, ref = encoded[name]
    ext = CLIPS[name].ext
    assert open_memory_video(data, ext) is None  # AVI, repeated pts, pts written as dts, no pts at all
    opts = StreamConfig(num_frames=T, clip_start="start")
    frames, reason = decode_clip(data, "k", opts, 0, ext)
    assert reason is None
    np.testing.assert_array_equal(frames.permute(0, 2, 3, 1).numpy(), ref[:T])


def test_bad_requests_and_bytes_raise_or_skip(encoded):
    data, ref = encoded["mp4_h264_bframes"]
    video = open_memory_video(data, "mp4")
    with pytest.raises(IndexError):
        video.read([len(ref)])
    for idx in ([20, 21], [3, 4, 5], [29], [0]):  # one reader, several reads: each from a fresh decoder state
        np.testing.assert_array_equal(video.read(idx), ref[idx])
    video.close()
    assert open_memory_video(b"not a video at all" * 100, "mp4") is None
    opts = StreamConfig(num_frames=T, clip_start="start")
    assert decode_clip(data[: len(data) // 3], "k", opts, 0, "mp4") == (None, "undecodable")
    assert decode_clip(data, "k", StreamConfig(num_frames=len(ref) + 1), 0, "mp4") == (None, "too_short")


def test_stream_decoded_in_the_parent_still_runs_in_forked_workers(encoded, tmp_path):
    data, ref = encoded["mp4_h264_bframes"]
    with ShardWriter(tmp_path / "s") as w:
        for si in range(2):
            w.write_shard(si, [Sample(f"{si * 2 + j:09d}", {"mp4": data, "txt": b"c"}) for j in range(2)], [])
    stream = ClipStream(tmp_path / "s", config=StreamConfig(num_frames=T, size=(40, 30), clip_start="start"))
    first = next(iter(stream))["frames"]  # the parent decodes and scales before the workers fork
    loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60)
    items = list(loader)
    assert len(items) == 4 and all(torch.equal(i["frames"], first) for i in items)
