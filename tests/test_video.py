import numpy as np
import pytest
from conftest import YAM_EPISODES

from shardyard.errors import SourceError
from shardyard.video import open_video, write_video


@pytest.fixture(scope="module")
def real_video(shared_data):
    return sorted(YAM_EPISODES.rglob("top-images-rgb.mp4"))[0]


def test_pyav_random_access_equals_sequential(real_video):
    v = open_video(real_video)
    seq = v.read(range(v.num_frames))
    assert seq.shape == (v.num_frames, 480, 640, 3)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, v.num_frames, 12)
    np.testing.assert_array_equal(v.read(idx), seq[idx])
    # consecutive frames of this synthetic scene differ, so an off-by-one read would be caught
    assert not np.array_equal(seq[10], seq[11])


def test_pyav_timestamps_and_count(real_video):
    v = open_video(real_video)
    ts = v.timestamps()
    assert len(ts) == v.num_frames and v.fps == pytest.approx(30.0)
    np.testing.assert_allclose(np.diff(ts), 1 / 30, atol=1e-3)


@pytest.mark.parametrize("pattern", ["sequential", "strided"])
def test_decord_equals_pyav_for_full_native_reads(real_video, pattern):
    """Decord is optional; ingest only uses it for whole-video native-size reads, which must equal PyAV."""
    pytest.importorskip("decord")
    a, b = open_video(real_video, "pyav"), open_video(real_video, "decord")
    assert a.num_frames == b.num_frames
    idx = np.arange(a.num_frames) if pattern == "sequential" else np.arange(0, a.num_frames, 7)
    np.testing.assert_array_equal(b.read(idx), a.read(idx))


def test_resize_and_roundtrip_encode(tmp_path):
    frames = np.zeros((8, 48, 64, 3), np.uint8)
    for t in range(8):
        frames[t, :, t * 8:(t + 1) * 8] = 255
    write_video(tmp_path / "x.mp4", frames, fps=10)
    v = open_video(tmp_path / "x.mp4")
    assert v.num_frames == 8 and (v.width, v.height) == (64, 48)
    out = v.read(range(8))
    assert np.abs(out.astype(int) - frames).mean() < 6
    assert v.read([3], size=(32, 24)).shape == (1, 24, 32, 3)


def test_truncated_and_missing_video_raise_source_error(tmp_path, real_video):
    data = real_video.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(SourceError) as e:
        v = open_video(bad)
        v.read(range(v.num_frames))
    assert "cut.mp4" in str(e.value)
    with pytest.raises(SourceError, match="missing"):
        open_video(tmp_path / "nope.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError):
        open_video(garbage)



# -- decode_each: the streaming form of read ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    """48 frames, a keyframe every 7 (B-frames on): reads starting past frame 0 seek. Each frame has its own
    grey level in the top band; returns (path, source frames)."""
    import av

    frames = np.zeros((48, 48, 64, 3), np.uint8)
    for t in range(48):
        frames[t, :, (t % 8) * 8:(t % 8) * 8 + 8] = 255
        frames[t, :8] = (t * 5) % 256
    path = tmp_path_factory.mktemp("video") / "gop.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "18", "preset": "fast", "g": "8", "keyint_min": "8", "bf": "2"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, frames


# repeats, out of order, first and last frame, a run of neighbours; on the GOP video, starts past a keyframe
DECODE_EACH_CASES = {
    "yam": {"shuffled_repeats": [40, 3, 3, 17, 159, 40, 0, 25, 17, 26, 27, 3], "one_frame_twice": [77, 77],
            "sorted": list(range(50, 60))},
    "gop": {"shuffled_repeats": [30, 9, 9, 17, 47, 30, 12, 25, 17, 26, 27], "one_frame_twice": [22, 22],
            "sorted": list(range(15, 23))},
}


def _delivered(reader, indices, size):
    """Run `decode_each`, copying each frame (it is only valid during the call); returns the calls."""
    calls: list[tuple[np.ndarray, list[int]]] = []
    reader.decode_each(indices, lambda frame, positions: calls.append((frame.copy(), list(positions))), size)
    return calls


@pytest.fixture(scope="module")
def sequential(real_video, gop_video):
    """`sequential(video, size)`: every frame of the video, decoded front to back once (cached)."""
    paths = {"yam": real_video, "gop": gop_video[0]}
    cache = {}

    def get(video, size):
        if (video, size) not in cache:
            v = open_video(paths[video])
            cache[video, size] = v.read(range(v.num_frames), size)
        return cache[video, size]

    return paths, get


@pytest.mark.parametrize("size", [None, (100, 76)])
@pytest.mark.parametrize("case", ["shuffled_repeats", "one_frame_twice", "sorted"])
@pytest.mark.parametrize("video", ["yam", "gop"])
def test_pyav_decode_each_delivers_what_read_returns(sequential, gop_video, video, case, size):
    """Each distinct frame comes once, in stream order, with every position it fills; together the calls
    give exactly `read(indices, size)`, which equals the front-to-back decode at those frames."""
    paths, seq = sequential
    indices = DECODE_EACH_CASES[video][case]
    v = open_video(paths[video])
    calls = _delivered(v, indices, size)
    w, h = size or (v.width, v.height)
    assert all(frame.shape == (h, w, 3) and frame.dtype == np.uint8 for frame, _ in calls)
    assert sorted(sorted(p) for _, p in calls) == \
        sorted([pos for pos, j in enumerate(indices) if j == i] for i in set(indices))
    assert [indices[p[0]] for _, p in calls] == sorted(set(indices))  # stream order
    out = v.read(indices, size)
    assert out.shape == (len(indices), h, w, 3)
    for frame, positions in calls:
        for pos in positions:
            np.testing.assert_array_equal(frame, out[pos], err_msg=f"position {pos} (frame {indices[pos]})")
    np.testing.assert_array_equal(out, seq(video, size)[indices])
    if video == "gop" and size is None:  # and each is its own frame, not a neighbour (grey level in the top band)
        src = gop_video[1]
        for frame, positions in calls:
            i = indices[positions[0]]
            err = [np.abs(frame[:8].astype(int) - src[j][:8]).mean() for j in (i - 1, i, i + 1) if 0 <= j < 48]
            assert int(np.argmin(err)) == (1 if i > 0 else 0), (i, err)


def test_decord_decode_each_delivers_what_read_returns(real_video):
    pytest.importorskip("decord")
    indices = DECODE_EACH_CASES["yam"]["shuffled_repeats"]
    d, a = open_video(real_video, "decord"), open_video(real_video, "pyav")
    calls = _delivered(d, indices, None)
    assert sorted(p for _, positions in calls for p in positions) == list(range(len(indices)))
    out = d.read(indices)
    for frame, positions in calls:
        for pos in positions:
            np.testing.assert_array_equal(frame, out[pos])
    np.testing.assert_array_equal(out, a.read(indices))  # decord's frames are PyAV's
    with pytest.raises(SourceError, match="native size"):
        d.decode_each(indices, lambda frame, positions: None, (160, 120))


def test_decord_decode_each_once_per_distinct_frame(real_video):
    pytest.importorskip("decord")
    indices = DECODE_EACH_CASES["yam"]["shuffled_repeats"]
    calls = _delivered(open_video(real_video, "decord"), indices, None)
    assert [indices[p[0]] for _, p in calls] == sorted(set(indices))
