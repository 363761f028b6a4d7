"""Integrity on read (issue 25, item 5): tiny stores made by real ingests (`ingest yam` with the jpeg and video
frame codecs, `ingest dino` on the jpeg store, `ingest webvid` of the shared video2dataset shard) are damaged
on disk, and the loaders must raise a `StoreDamagedError` naming the store, field, episode, step and file,
never serve the damaged bytes: a flipped byte in a JPEG chunk, an MP4, a low-dim chunk, a token chunk and
`meta/episode_ends`; a deleted low-dim chunk, frame shard and MP4; a truncated shard; a damaged shard index;
a damaged or truncated tar of a shard store. `verify_reads=False` skips the checksum checks (the damaged
bytes are then served, as before), but never serves a missing chunk as zeros."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import zarr
from conftest import loader_batches, run_cli
from vq_fixtures import TINY_MODEL, vq_data  # noqa: F401  (the session's store and tokens)

from shardyard.errors import StoreDamagedError
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.webvid import WebvidConfig, ingest_webvid
from shardyard.ingest.yam import YamConfig, YamSource
from shardyard.loaders import EpisodeDataset, EpisodeDatasetConfig
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.loaders.tokens import TokenDataset, TokenDatasetConfig
from shardyard.stores import open_store
from shardyard.stores.checksums import CHECKSUMS
from shardyard.stores.frames.jpeg import decode_frame
from shardyard.stores.frames.zarr_shard import read_shard_index, shard_file
from shardyard.testing import SyntheticConfig, write_synthetic_yam

FRAME = "obs.rgb.front"
EP, STEP = 1, 2  # the damaged frame: step 2 of episode 1


@pytest.fixture(scope="module")
def made(tmp_path_factory, shared_data, vq_data) -> dict[str, Path]:  # noqa: F811
    """The session's jpeg store of 4 synthetic YAM episodes (64x48) and its DINO tokens (`vq_data`), a video
    store of 3 such episodes, and the shard store of the shared video2dataset shard; each test damages a copy."""
    root = tmp_path_factory.mktemp("integrity")
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=3, steps=24, width=64, height=48))
    res = run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "video", frame_codec="video"))
    assert res.exit_code == 0
    ingest_webvid(shared_data / "webvid" / "video2dataset_shard", WebvidConfig(out=root / "shards"))
    jpeg, dino = vq_data
    assert open_store(str(jpeg)).manifest["provenance"]["config"]["frame_codec"] == "jpeg"
    return {"jpeg": jpeg, "dino": dino, "video": root / "video", "shards": root / "shards"}


def _copy(made: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[kind], tmp_path / kind))


def _flip(path: Path, offset: int) -> None:
    _flip_bits(path, offset, 0xFF)


def _flip_decodable_jpeg(shard: Path, off: int, n: int) -> None:
    """Flip a byte of the JPEG chunk at `off` (`n` bytes) such that it still decodes, to other pixels: the
    damage a decoder cannot see."""
    data = shard.read_bytes()
    for k in range(n // 2, n - 2):
        chunk = bytearray(data[off:off + n])
        chunk[k] ^= 0x10
        try:
            decode_frame(bytes(chunk), 3)
        except ValueError:
            continue
        return _flip_bits(shard, off + k, 0x10)
    raise AssertionError("no byte of the chunk flips to a decodable JPEG")


def _flip_bits(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _chunk(array_dir: Path, row: int) -> tuple[Path, int, int]:
    """(shard file, offset, length) of the one-row chunk `row` of a sharded array."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    path = Path(shard_file(str(array_dir), row // rows, len(meta["shape"])))
    off, n = read_shard_index(path, rows)[row % rows]
    return path, int(off), int(n)


def _dataset(store: Path, field: str = FRAME, verify: bool = True) -> EpisodeDataset:
    return EpisodeDataset(str(store), deltas={field: [0]}, config=EpisodeDatasetConfig(verify_reads=verify))


def _names(err: StoreDamagedError, store: Path, field: str, file: Path, step: int | None = STEP) -> None:
    """The error names the store, field, episode (key and index), step and file, as attributes and text."""
    key = open_store(str(store), verify_reads=False).episode_keys[EP]
    assert (err.store, err.field, err.key, err.episode_index, err.step, err.path) == \
        (str(store), field, key, EP, step, str(file))
    for part in (f"store={store}", f"field={field}", f"episode={key}", f"file={file}"):
        assert part in str(err), (part, str(err))


def test_flipped_byte_in_jpeg_chunk_is_named_through_two_workers(made, tmp_path):
    store = _copy(made, "jpeg", tmp_path)
    row = int(open_store(str(store)).episode_starts[EP]) + STEP
    shard, off, n = _chunk(store / "data" / FRAME, row)
    _flip_decodable_jpeg(shard, off, n)  # inside the entropy-coded data: only the crc32c can tell
    ds = _dataset(store)
    ds.fetch([row - 1, row + 1])  # its neighbours read fine
    with pytest.raises(StoreDamagedError) as e:
        ds.fetch([row])
    _names(e.value, store, FRAME, shard)
    assert "crc32c" in e.value.reason and f"row {row}" in e.value.reason
    with pytest.raises(StoreDamagedError, match=rf"crc32c.*field={FRAME}.*step={STEP}.*file={shard}"):
        loader_batches(ds)  # 2 forked workers: the worker's error reaches the training loop, named
    off_ds = _dataset(store, verify=False)  # the check skipped: the damaged frame is served
    served = torch.cat([b[FRAME] for b in loader_batches(off_ds)])
    clean = torch.cat([b[FRAME] for b in loader_batches(_dataset(made["jpeg"]))])
    assert len(served) == len(clean) and not torch.equal(served[row], clean[row])
    assert torch.equal(served[row - 1], clean[row - 1])


def test_flipped_byte_in_mp4_is_named(made, tmp_path):
    store = _copy(made, "video", tmp_path)
    mp4 = store / "data" / FRAME / "video" / f"{EP:06d}.mp4"
    _flip(mp4, mp4.read_bytes().index(b"mdat") + 40)  # inside a frame: the file still decodes
    row = int(open_store(str(store)).episode_starts[EP]) + STEP
    ds = _dataset(store)
    ds.fetch([0, row - STEP - 1])  # other episodes' files are intact
    with pytest.raises(StoreDamagedError) as e:
        ds.fetch([row])
    _names(e.value, store, FRAME, mp4, step=None)
    assert "video file crc32c" in e.value.reason
    assert len(_dataset(store, verify=False).fetch([row])[FRAME]) == 1  # unchecked: decoded as it is
    mp4.unlink()
    with pytest.raises(StoreDamagedError, match="video file missing") as e:
        _dataset(store, verify=False).fetch([row])
    _names(e.value, store, FRAME, mp4)


def test_flipped_byte_in_lowdim_chunk_is_named(made, tmp_path):
    store = _copy(made, "jpeg", tmp_path)
    chunk = store / "data" / "obs.eef_pos" / "c" / "0" / "0"
    _flip(chunk, chunk.stat().st_size - 3)
    ds = _dataset(store, "obs.eef_pos")  # opens: the array is loaded (and checked) on first read
    with pytest.raises(StoreDamagedError, match="sha256 differs from checksums.json") as e:
        ds.fetch([0])
    assert (e.value.store, e.value.field, e.value.path) == (str(store), "obs.eef_pos", str(chunk))
    with pytest.raises(StoreDamagedError, match=rf"field=obs.eef_pos, file={chunk}"):
        loader_batches(ds)


def test_flipped_byte_in_episode_ends_is_named_at_open(made, tmp_path):
    store = _copy(made, "jpeg", tmp_path)
    ends = store / "meta" / "episode_ends" / "c" / "0"
    intact = ends.read_bytes()
    _flip(ends, ends.stat().st_size - 2)
    with pytest.raises(StoreDamagedError, match="sha256 differs") as e:
        _dataset(store)
    assert (e.value.store, e.value.path) == (str(store), str(ends))
    # without checksums.json, the values themselves against the manifest's counts
    ends.write_bytes(intact)
    (store / CHECKSUMS).unlink()
    arr = zarr.open_array(str(store / "meta" / "episode_ends"), mode="r+")
    good = arr[:]
    for at, value, why in ((1, good[0] - 1, "decrease at episode 1"),
                           (-1, good[-1] + 4, f"stop at {good[-1] + 4}, the manifest says {good[-1]} steps"),
                           (0, 0, "first episode end 0 is not positive")):
        bad = good.copy()
        bad[at] = value
        arr[:] = bad
        with pytest.raises(StoreDamagedError, match=why) as e:
            _dataset(store)
        assert e.value.path == str(store / "meta" / "episode_ends")
    arr[:] = good
    assert len(_dataset(store)) == int(good[-1])


def test_deleted_chunks_are_errors_never_fill_values(made, tmp_path):
    store = _copy(made, "jpeg", tmp_path)
    gripper = store / "data" / "obs.gripper" / "c" / "0"
    gripper.unlink()  # zarr alone would read the fill value, 0
    with pytest.raises(StoreDamagedError, match="missing") as e:
        _dataset(store, "obs.gripper").fetch([5])
    assert (e.value.field, e.value.path) == ("obs.gripper", str(gripper))
    shard = Path(shard_file(str(store / "data" / FRAME), 0, 4))
    shard.unlink()
    row = int(open_store(str(store)).episode_starts[EP]) + STEP
    for verify in (True, False):  # a missing frame is never zeros, checks or not
        with pytest.raises(StoreDamagedError, match="chunk missing") as e:
            _dataset(store, verify=verify).fetch([row])
        _names(e.value, store, FRAME, shard)


@pytest.mark.parametrize("damage", ["truncated", "truncated_short", "index"])
def test_truncated_or_damaged_shard_is_named(made, tmp_path, damage):
    store = _copy(made, "jpeg", tmp_path)
    shard = Path(shard_file(str(store / "data" / FRAME), 0, 4))
    data = shard.read_bytes()
    if damage == "index":
        _flip(shard, len(data) - 7)
    else:
        shard.write_bytes(data[: 10 if damage == "truncated_short" else int(len(data) * 0.6)])
    row = int(open_store(str(store)).episode_starts[EP]) + STEP
    for verify in (True, False):  # not an OverflowError from os.pread nor a bare decoder ValueError
        with pytest.raises(StoreDamagedError, match=r"shard index fails its crc32c \(damaged or truncated") as e:
            _dataset(store, verify=verify).fetch([row])
        assert (e.value.store, e.value.field, e.value.path) == (str(store), FRAME, str(shard))


def test_token_chunk_damage_is_named_by_token_dataset(made, tmp_path):
    feats = _copy(made, "dino", tmp_path)
    source = open_store(str(made["jpeg"]))
    row = int(source.episode_starts[EP]) + STEP
    shard, off, n = _chunk(feats / "patch_tokens", row)
    clean = TokenDataset(made["dino"])[row]["dino.patch_tokens"]
    _flip(shard, off + n // 2)
    ds = TokenDataset(feats)
    assert torch.equal(ds[row + 1]["dino.patch_tokens"], TokenDataset(made["dino"])[row + 1]["dino.patch_tokens"])
    with pytest.raises(StoreDamagedError, match="crc32c") as e:
        ds[row]
    assert (e.value.store, e.value.field, e.value.key, e.value.episode_index, e.value.step, e.value.path) == \
        (str(feats), "dino.patch_tokens", source.episode_keys[EP], EP, STEP, str(shard))
    with pytest.raises(StoreDamagedError, match=rf"field=dino.patch_tokens.*step={STEP}.*file={shard}"):
        loader_batches(ds)
    served = TokenDataset(feats, config=TokenDatasetConfig(verify_reads=False))[row]["dino.patch_tokens"]
    assert not torch.equal(served, clean)  # unchecked: the flipped token is served
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated: its index is gone
    with pytest.raises(StoreDamagedError, match="shard index fails its crc32c"):
        TokenDataset(feats, config=TokenDatasetConfig(verify_reads=False))[row]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_shard_store_tar_damage_stops_clip_stream(made, tmp_path, damage):
    store = _copy(made, "shards", tmp_path)
    (tar,) = sorted((store / "shards").glob("*.tar"))
    cfg = dict(num_frames=4, size=(32, 24), shuffle_buffer=0, clip_start="start")
    clean = [i["key"] for i in ClipStream(store, config=StreamConfig(**cfg))]
    assert clean
    data = tar.read_bytes()
    if damage == "flip":
        _flip(tar, len(data) // 2)
    elif damage == "truncate":
        tar.write_bytes(data[: len(data) // 2])
    else:
        tar.unlink()
    why = {"flip": "sha256 differs from the manifest", "truncate": f"is {len(data) // 2} bytes, the manifest says",
           "delete": "listed in the manifest is missing"}[damage]
    with pytest.raises(StoreDamagedError, match=why) as e:
        list(ClipStream(store, config=StreamConfig(**cfg)))
    assert (e.value.store, e.value.path) == (str(store), str(tar))
    if damage == "flip":  # through DataLoader workers, and skipped with verify_reads=False
        # a spawned worker: this process has decoded clips (FFmpeg threads) and left other loaders' threads
        # behind. One: the store has one shard, and a second spawned worker still starting when the first one's
        # error shuts the loader down finds its queue's semaphore gone and exits 1 (torch then warns)
        loader = torch.utils.data.DataLoader(ClipStream(store, config=StreamConfig(**cfg)), batch_size=None,
                                             num_workers=1, multiprocessing_context="spawn")
        with pytest.raises(StoreDamagedError, match=rf"{why}.*file={tar}"):
            list(loader)
        unchecked = ClipStream(store, config=StreamConfig(**cfg, verify_reads=False))
        list(unchecked)  # served as read (a flipped byte inside a clip decodes or is skipped as before)
        assert unchecked.counters["seen"] == 6


def _flip_low_bit_of_every_chunk(array_dir: Path) -> None:
    """Flip the lowest mantissa bit of each stored token chunk's first value: every row is damaged, and
    the unchecked values stay finite."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    for s in range(-(-meta["shape"][0] // rows)):
        shard = Path(shard_file(str(array_dir), s, len(meta["shape"])))
        data = bytearray(shard.read_bytes())
        for off, _ in read_shard_index(shard, rows):
            if off != 2**64 - 1:
                data[int(off)] ^= 0x01
        shard.write_bytes(bytes(data))


def test_train_cli_stops_on_damaged_tokens_unless_told_not_to_check(made, tmp_path):
    feats = _copy(made, "dino", tmp_path)
    for array in ("patch_tokens", "cls_token"):
        _flip_low_bit_of_every_chunk(feats / array)
    opts = ["--store", made["jpeg"], "--features", feats, "--steps", "1", "--window", "4", "--pred-size", "16",
            "--batch-size", "4", "--eval-every", "0", "--plot-every", "0", "--device", "cpu",
            *sum((["--model-opt", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])]
    bad = run_cli("train", "volume-query", *opts, "--out", tmp_path / "checked")
    text = bad.stdout + bad.stderr
    assert bad.returncode == 1, text[-3000:]
    assert "crc32c" in text and "field=dino." in text and f"store={feats}" in text, text[-3000:]
    ok = run_cli("train", "volume-query", *opts, "--out", tmp_path / "unchecked", "--no-verify-reads")
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]
