"""The frame-codec registry (`stores.frames.registry.FRAME_CODECS`, issue 20): every codec parses its own token
and is as lossy as it says, and the `png` codec, added as one file (`stores/frames/png.py`) and one dict entry,
goes through the CLI's ingest, verify, edit and recode unchanged, frame for frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_cli

from shardyard import open_store
from shardyard.errors import ConfigError
from shardyard.stores.frames.codec import CHUNKS, VIDEO
from shardyard.stores.frames.encoding import FrameEncoding
from shardyard.stores.frames.png import PngFrames
from shardyard.stores.frames.registry import FRAME_CODECS, codec_of, frame_codec, parse_frame_codecs
from shardyard.stores.frames.zarr_shard import load_array_meta
from shardyard.tools.recode import recode_store
from shardyard.tools.verify import verify_store


def _frames_like_a_camera(n: int = 6, h: int = 32, w: int = 48) -> np.ndarray:
    """`(n, h, w, 3) uint8`: gradients that move from frame to frame, a bright block, mild sensor noise; no
    lossy codec gives them back exactly."""
    t, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    rgb = np.stack([(x * 5 + t * 40) % 256, y * 7, (x + y) * 3 + t * 10], axis=-1).astype(np.int64)
    rgb[:, 8:24, 10:30] = 200
    rgb += np.random.default_rng(0).integers(-6, 7, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


FRAMES = _frames_like_a_camera()


def _stored(codec, frames: np.ndarray) -> np.ndarray:
    """`frames` as the store gives them back after `codec` encoded them: each chunk decoded by the codec's
    own decoder, or for the video layout the MP4 decoded once (the sample every step, full resolution)."""
    if codec.layout == VIDEO:
        return FrameEncoding(codec, sample_every=1).encode_array(frames).sample
    encode, decode = codec.encoder(), codec.decoder(frames.shape[1:], frames.dtype)
    return np.stack([decode(encode(np.ascontiguousarray(f))) for f in frames])


@pytest.mark.parametrize("name", list(FRAME_CODECS))
def test_every_codec_parses_its_own_token_and_is_as_lossy_as_it_says(name):
    cls = FRAME_CODECS[name]
    codec = frame_codec(name)
    assert cls.name == name and isinstance(codec, cls) and codec.layout in (CHUNKS, VIDEO)
    assert frame_codec(codec.token()) == codec  # the token a stored field's codec gives back parses to it
    assert parse_frame_codecs(f"{name},obs.rgb.x={codec.token()}") == {"": name, "obs.rgb.x": codec.token()}
    with pytest.raises(ConfigError, match="frame-codec"):
        parse_frame_codecs(f"{name}:x:y")
    back = _stored(codec, FRAMES)
    assert back.shape == FRAMES.shape and back.dtype == np.uint8
    assert np.array_equal(back, FRAMES) is not cls.lossy, (name, cls.lossy)
    if cls.lossy:  # lossy, yet each frame is its own: closer to its input than to another frame
        err = np.abs(back.astype(int) - FRAMES.astype(int)).mean()
        assert err < np.abs(back[0].astype(int) - FRAMES[1].astype(int)).mean() / 2, (name, err)


def test_png_levels_and_gray(tmp_path):
    gray = FRAMES[:, :, :, 1]
    for level in (0, 9):
        codec = frame_codec(f"png:{level}")
        assert codec == PngFrames(level=level) and np.array_equal(_stored(codec, gray), gray)
    assert len(PngFrames(level=9).encoder()(FRAMES[0])) < len(PngFrames(level=0).encoder()(FRAMES[0]))
    assert PngFrames().why_not((32, 48), "float32") and PngFrames().why_not((32, 48, 4), "uint8")


def _frames(store_dir: Path) -> dict[str, np.ndarray]:
    store = open_store(str(store_dir))
    return {f: store.read_rows(f, 0, store.num_steps) for f in store.schema.of_kind("image")}


def _codecs(store_dir: Path) -> set[str]:
    fields = open_store(str(store_dir)).schema.of_kind("image")
    return {codec_of(load_array_meta(str(store_dir / "data" / f))).token() for f in fields}


def test_png_store_through_ingest_verify_edit_and_recode(tmp_path, tiny_yam_dir):
    raw = tiny_yam_dir(num_episodes=3)
    png, ref = tmp_path / "png", tmp_path / "ref"
    run_cli("ingest", "yam", raw, "--out", png, "--frame-codec", "png", check=True)
    run_cli("ingest", "yam", raw, "--out", ref, "--frame-codec", "none", check=True)
    want = _frames(ref)
    assert want and _codecs(png) == {"png:1"}
    got = _frames(png)
    for f in want:  # lossless: the raw store's frames exactly, through the shard reader and through zarr-python
        np.testing.assert_array_equal(got[f], want[f])
        np.testing.assert_array_equal(zarr.open_group(str(png), mode="r")[f"data/{f}"][:], want[f])
    assert open_store(str(png)).stats["fields"] == open_store(str(ref)).stats["fields"]
    assert verify_store(png).ok

    # an edit copies the PNG chunks as stored (the output keeps the codec) and verifies
    run_cli("edit", "delete-episodes", png, "--episodes", "1", "--out", tmp_path / "del", check=True)
    ends = open_store(str(ref)).episode_ends
    keep = np.r_[0:ends[0], ends[1]:ends[2]]
    assert _codecs(tmp_path / "del") == {"png:1"}
    for f, frames in _frames(tmp_path / "del").items():
        np.testing.assert_array_equal(frames, want[f][keep])
    assert verify_store(tmp_path / "del").ok

    # recode away from png and back: the same frames, the asked codec
    recode_store(png, "lz4", tmp_path / "lz4")
    run_cli("recode", tmp_path / "lz4", "--frame-codec", "png:6", "--out", tmp_path / "back", check=True)
    assert _codecs(tmp_path / "lz4") == {"lz4"} and _codecs(tmp_path / "back") == {"png:6"}
    for f, frames in _frames(tmp_path / "back").items():
        np.testing.assert_array_equal(frames, want[f])
    assert verify_store(tmp_path / "back").ok

    # a flipped byte inside a PNG chunk is damage that verify names
    shard = next(p for p in sorted((png / "data").rglob("c/*/*/*/*")) if p.is_file())
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = run_cli("verify", png)
    assert bad.returncode == 1 and "crc32c" in bad.stdout
