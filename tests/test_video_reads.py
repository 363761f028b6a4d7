"""Fast reads of frame stores (issue 26): planar and in-place reads give the plain reads' pixels, a video store
read in a parent keeps working in a forked DataLoader worker, and new video files are CAVLC with the recorded
GOP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sigkill_group

from shardyard import open_store
from shardyard.loaders import EpisodeDataset
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.jpeg import decode_frame, encode_frame
from shardyard.video import open_video

G1_VIDEO = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lerobot" / "unitree_g1_inspire_v2.1"
            / "videos" / "chunk-000" / "observation.images.cam_high" / "episode_000001.mp4")
H, W = 120, 160
LENGTHS = [15, 25]
FIELD = "obs.rgb.top"
# backward seeks, a run across the episode boundary, one frame twice, the last frames
ACCESS = [(39, 40), (0, 1), (17, 23), (3, 4), (3, 4), (10, 30), (38, 40), (0, 40)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """The same 40 real G1 frames (160x120, two episodes) in a `video`, a `jpeg` and an `lz4` store."""
    if not G1_VIDEO.exists():
        pytest.skip("shared G1 sample missing")
    frames = open_video(G1_VIDEO).read(list(range(0, 200, 5)), size=(W, H))
    schema = Schema({FIELD: FieldSpec("uint8", (H, W, 3), None, "image"),
                     "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector")})
    starts = np.cumsum([0] + LENGTHS)
    out = {}
    for codec in ("video", "jpeg", "lz4"):
        path = out[codec] = tmp_path_factory.mktemp(codec) / "s"
        with EpisodicWriter(path, schema, config=EpisodicWriterConfig(frame_codec=codec)) as w:
            for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
                w.write(Episode(key=f"ep{i}", steps={FIELD: frames[a:b], "obs.eef_pos": np.full((b - a, 3), i,
                                                                                                np.float32)},
                                meta={"fps": 10.0}))
    return out


@pytest.mark.parametrize("codec", ["video", "jpeg", "lz4"])
def test_planar_and_in_place_reads_give_the_plain_reads_pixels(stores, codec):
    """`read_rows(channels_first=True)` is the plain read transposed and `read_rows(out=)` fills and returns
    `out` with it, in any read order; bad requests are refused."""
    store = open_store(str(stores[codec]))
    plain = {ab: open_store(str(stores[codec])).read_rows(FIELD, *ab) for ab in set(ACCESS)}
    for a, b in ACCESS:
        planes = store.read_rows(FIELD, a, b, channels_first=True)
        assert planes.shape == (b - a, 3, H, W) and planes.flags.c_contiguous
        np.testing.assert_array_equal(planes, plain[a, b].transpose(0, 3, 1, 2), err_msg=f"rows {a}:{b}")
        buf = np.zeros((b - a, H, W, 3), np.uint8)
        assert store.read_rows(FIELD, a, b, out=buf) is buf
        np.testing.assert_array_equal(buf, plain[a, b])
        buf = np.zeros((b - a, 3, H, W), np.uint8)
        assert store.read_rows(FIELD, a, b, out=buf, channels_first=True) is buf
        np.testing.assert_array_equal(buf, plain[a, b].transpose(0, 3, 1, 2))
    with pytest.raises(ValueError):
        store.read_rows(FIELD, 0, 2, out=np.zeros((3, H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="channels_first"):
        store.read_rows("obs.eef_pos", 0, 2, channels_first=True)


def test_episode_dataset_serves_the_same_images_from_every_codec(stores):
    """A batch through a DataLoader (2 workers, frames split into planes in the workers) holds
    exactly the frames of plain reads, `(B, K, C, H, W)` uint8, whichever the codec."""
    indices = [39, 0, 16, 15, 14, 3, 3, 27, 28]
    for codec in ("video", "jpeg"):
        ds = EpisodeDataset(str(stores[codec]), deltas={FIELD: [-1, 0], "obs.eef_pos": [0]})
        store = open_store(str(stores[codec]))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=len(indices),
                                             num_workers=2)
        batch = next(iter(loader))
        img = batch[FIELD]
        assert img.shape == (len(indices), 2, 3, H, W) and img.dtype == torch.uint8
        for j, i in enumerate(indices):
            ep = 0 if i < LENGTHS[0] else 1
            prev = max(i - 1, 0 if ep == 0 else LENGTHS[0])
            want = store.read_rows(FIELD, prev, prev + 1)[0], store.read_rows(FIELD, i, i + 1)[0]
            for k in range(2):
                np.testing.assert_array_equal(img[j, k].permute(1, 2, 0).numpy(), want[k], err_msg=f"{codec} {i}")


FORK_SCRIPT = r"""
import sys, numpy as np, torch
from shardyard import open_store
store = open_store(sys.argv[1])
first = store.read_rows("obs.rgb.top", 5, 6)  # the parent reads (and so builds its PyAV objects) first
class Frames(torch.utils.data.Dataset):
    def __len__(self): return 4
    def __getitem__(self, i): return torch.from_numpy(store.read_rows("obs.rgb.top", 10 * i, 10 * i + 1)[0])
got = torch.stack(list(torch.utils.data.DataLoader(Frames(), batch_size=None, num_workers=1)))
want = np.stack([store.read_rows("obs.rgb.top", 10 * i, 10 * i + 1)[0] for i in range(4)])
print("same" if np.array_equal(got.numpy(), want) else "differ")
"""


def test_a_video_store_read_in_the_parent_reads_in_a_forked_worker(stores):
    """The parent reads a frame, then a forked DataLoader worker reads others: the worker builds its own
    decoder and scaler (a parent's threaded scaler freed in the child used to hang it forever), and gives
    the parent's pixels."""
    proc = subprocess.Popen([sys.executable, "-c", FORK_SCRIPT, str(stores["video"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        sigkill_group(proc)  # the hung worker too
        pytest.fail("the forked DataLoader worker hung reading the video store")
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "same"


def test_video_files_are_cavlc_with_the_recorded_gop(stores):
    """The encoder's own record in each MP4 (x264's settings SEI) says CAVLC and the field's GOP, as the field's
    `frame_codec` attribute does."""
    import zarr

    field = zarr.open_group(str(stores["video"]), mode="r")[f"data/{FIELD}"]
    codec = field.attrs["frame_codec"]
    assert codec["entropy"] == "cavlc"
    for mp4 in sorted((stores["video"] / "data" / FIELD / "video").glob("*.mp4")):
        data = mp4.read_bytes()
        assert b"cabac=0" in data and f"keyint={codec['gop']} ".encode() in data, mp4


def test_jpeg_decodes_into_a_buffer_only_of_its_own_size():
    """`decode_frame(out=)` writes the frame into `out` itself; a frame of another size is an error, never a
    partly filled buffer taken for a frame."""
    frame = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    data = encode_frame(frame)
    out = np.zeros((24, 32, 3), np.uint8)
    np.testing.assert_array_equal(decode_frame(data, 3, out), out)
    np.testing.assert_array_equal(out, decode_frame(data, 3))
    for shape in [(25, 32, 3), (23, 32, 3)]:
        with pytest.raises(ValueError):
            decode_frame(data, 3, np.zeros(shape, np.uint8))
