"""`ingest dino --fps F` on a shard store of videos (issues 3 and 6): one token sequence per video with
`episode_ends` = sampled frame counts, an image stored as `.mp4` masked and reported, SIGKILL then resume
gives identical arrays, and the key holds the fps and the shard checksums."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, run_cli, sigkill_group, start_paused_cli, wait_paused

from shardyard.errors import ConfigError
from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.ingest.dino_frames import ShardFrameReader, ShardFramesConfig, sample_times
from shardyard.models.backbones import BackboneConfig
from shardyard.stores.features import open_features
from shardyard.stores.wds import Sample, ShardWriter, ShardWriterConfig
from shardyard.video import open_video

CLIPS = SHARED / "webvid" / "clips"
ARGS = ["--model", "tiny-random-dinov2", "--image-size", "56", "--batch-size", "4", "--fps", "2"]


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard_store(root: Path) -> list[str]:
    """Two shards: the three shared clips (with captions) and an image stored as `.mp4`. Returns the keys."""
    clips = sorted(CLIPS.glob("*.mp4"))
    samples = [Sample(f"{i:09d}", {"mp4": p.read_bytes(), "txt": p.stem.encode(),
                                   "json": json.dumps({"key": f"{i:09d}"}).encode()})
               for i, p in enumerate(clips)]
    samples.append(Sample(f"{len(clips):09d}", {"mp4": _jpeg(), "txt": b"a jpeg in disguise"}))
    with ShardWriter(root, config=ShardWriterConfig()) as w:
        w.write_shard(0, samples[:2], [])
        w.write_shard(1, samples[2:], [])
    return [s.key for s in samples]


def expected_counts(fps: float = 2.0) -> list[int]:
    """Frames sampled at `fps` from each shared clip, computed from its timestamps directly."""
    out = []
    for p in sorted(CLIPS.glob("*.mp4")):
        ts = open_video(p).timestamps()
        out.append(int(np.floor((ts[-1] - ts[0]) * fps + 1e-6)) + 1)
    return out


def _cfg(store, out, fps=2.0):
    """In-process equivalent of `ingest dino STORE --out OUT` + ARGS."""
    return DinoConfig(store=str(store), out=out, backbone=BackboneConfig(image_size=(56, 56)), batch_size=4,
                      fps=fps)


def _arrays(path):
    fs = open_features(path)
    n = fs.num_samples
    return fs.patch_tokens(0, n), fs.cls_token(0, n), fs.missing.copy(), fs.episode_ends


@pytest.fixture(scope="module")
def shard_features(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("dino_shards")
    store = root / "shards"
    keys = write_shard_store(store)
    out = root / "feat"
    proc = run_cli("ingest", "dino", store, "--out", out, *ARGS)
    assert proc.returncode == 2, proc.stderr  # one masked video: exit 2, as with missing frames
    return store, out, keys


def test_sample_times_rule():
    ts = np.arange(10) / 4.0                                   # 4 Hz, 0 .. 2.25 s
    np.testing.assert_array_equal(sample_times(ts, 2.0), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(sample_times(ts, 8.0), np.repeat(np.arange(10), 2)[:19])


def test_token_counts_per_video_and_metadata(shard_features):
    store, out, keys = shard_features
    fs = open_features(out)
    counts = expected_counts() + [1]                           # the image keeps one masked row
    np.testing.assert_array_equal(np.diff(fs.episode_ends, prepend=0), counts)
    assert fs.num_samples == sum(counts) and fs.grid == (4, 4) and fs.embed_dim == 32
    assert fs.manifest["source"]["episode_keys"] == keys
    assert fs.manifest["source"]["captions"][:3] == [p.stem for p in sorted(CLIPS.glob("*.mp4"))]
    videos = json.loads((out / "videos.json").read_text())["videos"]
    assert [v["stop"] - v["start"] for v in videos] == counts
    assert videos[0]["times"][:3] == pytest.approx([0.0, 0.5, 1.0], abs=1 / 25)
    # the key carries fps and every shard's sha256 from the manifest
    man = json.loads((store / "manifest.json").read_text())
    assert fs.key["fps"] == 2.0 and [s["sha256"] for s in fs.key["shards"]] == [f["sha256"] for f in man["files"]]


def test_image_member_is_masked_and_reported(shard_features):
    _, out, keys = shard_features
    fs = open_features(out)
    n = fs.num_samples
    assert fs.missing.tolist() == [False] * (n - 1) + [True]
    np.testing.assert_array_equal(fs.patch_tokens(n - 1, n), 0)
    assert np.abs(fs.patch_tokens(0, n - 1).astype(np.float32)).sum(axis=(1, 2)).min() > 0
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [n - 1] and report["errors"][0]["key"] == keys[-1]
    assert "image" in report["errors"][0]["reason"]


def test_tokens_equal_backbone_on_decoded_frames(shard_features):
    """Row k of video 1 is the backbone's output on the frame shown at k / fps, decoded independently."""
    import torch

    from shardyard.models.backbones import BackboneConfig, load_backbone

    _, out, _ = shard_features
    fs = open_features(out)
    bb = load_backbone(BackboneConfig(image_size=(56, 56)))
    clip = sorted(CLIPS.glob("*.mp4"))[1]
    r = open_video(clip)
    idx = sample_times(r.timestamps(), 2.0)
    frames = torch.from_numpy(r.read(idx)).permute(0, 3, 1, 2).float() / 255
    ref = bb(frames).patch_tokens.numpy().astype(np.float16)
    a, b = int(fs.episode_ends[0]), int(fs.episode_ends[1])
    np.testing.assert_allclose(fs.patch_tokens(a, b).astype(np.float32), ref.astype(np.float32), atol=2e-3)


def test_sigkill_then_resume_is_identical(shard_features, tmp_path):
    store, ref, _ = shard_features
    out = tmp_path / "killed"
    proc = start_paused_cli("ingest", "dino", store, "--out", out, *ARGS, pause_file=tmp_path / "pause", after=2)
    wait_paused(proc)
    assert sigkill_group(proc) == -signal.SIGKILL
    done = len(list((out / "progress").glob("*.json")))
    assert done == 2 and not (out / "manifest.json").exists()  # of 11: 44 rows in batches of 4
    res = ingest_dino(_cfg(store, out))
    assert res.exit_code == 2 and res.num_batches_done_before == done
    for x, y in zip(_arrays(ref), _arrays(out)):
        np.testing.assert_array_equal(x, y)


def test_different_fps_is_refused(shard_features):
    store, out, _ = shard_features
    with pytest.raises(ConfigError, match=r"fps: 2.0 -> 3.0"):
        ingest_dino(_cfg(store, out, fps=3.0))


def test_fps_required_for_shards(shard_features):
    store, _, _ = shard_features
    with pytest.raises(ConfigError, match="fps"):
        ShardFrameReader(ShardFramesConfig(store=str(store), fps=None))


def test_ray_path_equals_local(shard_features, tmp_path):
    store, ref, _ = shard_features
    res = ingest_dino(DinoConfig(store=str(store), out=tmp_path / "ray", fps=2.0, batch_size=4, ray=True,
                                 workers=2, backbone=BackboneConfig(image_size=(56, 56))))
    assert res.exit_code == 2 and len(res.errors) == 1
    for x, y in zip(_arrays(ref), _arrays(tmp_path / "ray")):
        np.testing.assert_array_equal(x, y)
