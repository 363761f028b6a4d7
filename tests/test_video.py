import numpy as np
import pytest

from shardyard.errors import SourceError
from shardyard.video import open_video, write_video

from conftest import YAM_EPISODES


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
    """decord is optional; ingest only uses it for whole-video native-size reads, which must equal PyAV."""
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
