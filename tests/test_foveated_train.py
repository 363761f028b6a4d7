"""`shardyard train foveated-caption` on the shard store ingested from the shared WebVid sample: metrics and
sample captions are logged, a run killed with SIGKILL and resumed over loopback HTTP ends with bit-identical
weights, and `shardyard inspect RUN` draws the attention overlays (PNG and GIF)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, run_cli, serve_directory, sigkill_group, start_paused_cli, wait_paused
from PIL import Image

from shardyard.errors import ConfigError
from shardyard.ingest.webvid import WebvidConfig, ingest_webvid
from shardyard.train.foveated_caption import FoveatedTrainConfig, ModeWeights, step_mode
from shardyard.train.loop import read_metrics

STEPS = 12
ARGS = ["--frames", "2", "--size", "32", "--image-size", "28", "--steps", str(STEPS), "--ckpt-every", "3",
        "--log-every", "3", "--sample-every", "6", "--lr", "1e-3", "--warmup-steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """`ingest webvid` of the real video2dataset shard: 3 videos with captions (3 JPEG members skipped)."""
    out = tmp_path_factory.mktemp("fov") / "webvid"
    ingest_webvid(SHARED / "webvid" / "video2dataset_shard", WebvidConfig(out=out))
    return out


@pytest.fixture(scope="module")
def run_a(store) -> Path:
    """An uninterrupted run of STEPS steps."""
    run = store.parent / "run_a"
    proc = run_cli("train", "foveated-caption", "--shards", store, "--out", run, *ARGS, check=True)
    assert "loss_fine" in proc.stdout and "truth:" in proc.stdout
    return run


def test_metrics_and_samples_are_logged(run_a):
    recs = read_metrics(run_a / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 3, 6, 9, 12]
    for r in recs:
        for k in ("loss_fine", "loss_coarse", "ratio", "entropy_fine", "entropy_coarse", "max_attn_fine",
                  "max_attn_coarse", "clips_per_s", "data_wait_frac", "lr"):
            assert k in r and r[k] == r[k], k
        assert r["ratio"] == pytest.approx(r["loss_coarse"] / r["loss_fine"])
        assert 0 < r["max_attn_fine"] <= 1 and 0 <= r["data_wait_frac"] <= 1
    assert recs[-1]["loss_fine"] < recs[0]["loss_fine"] and recs[-1]["loss_coarse"] < recs[0]["loss_coarse"]
    samples = [json.loads(line) for line in (run_a / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [6, 12]
    assert all(s["caption"] and isinstance(s["fine"], str) and isinstance(s["coarse"], str) for s in samples)


def test_sigkill_then_resume_over_http_is_bit_identical(store, run_a):
    run = store.parent / "run_b"
    # Paused after its first checkpoint (step 3) while the file exists: the kill lands there however busy the
    # machine is, instead of racing the run to the end.
    proc = start_paused_cli("train", "foveated-caption", "--shards", store, "--out", run, *ARGS,
                            pause_file=store.parent / "pause_b", after=1)
    wait_paused(proc)
    sigkill_group(proc)
    killed_at = torch.load(run / "latest.pth", weights_only=True)["step"]
    assert killed_at == 3
    server, base = serve_directory(store.parent)
    try:
        run_cli("train", "foveated-caption", "--shards", f"{base}/{store.name}", "--out", run, *ARGS, check=True)
    finally:
        server.shutdown()
    a, b = (torch.load(r / "latest.pth", weights_only=True) for r in (run_a, run))
    assert b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    losses = lambda r: [(x["step"], x["loss_fine"], x["loss_coarse"]) for x in read_metrics(r / "metrics.jsonl")]  # noqa: E731
    assert losses(run) == losses(run_a)


def test_inspect_run_draws_attention_overlays(run_a, tmp_path):
    out = tmp_path / "att"
    proc = run_cli("inspect", run_a, "--out", out, "--max-episodes", "1", check=True)
    png, gif = sorted(out.glob("attention_*.png")), sorted(out.glob("attention_*.gif"))
    assert len(png) == len(gif) == 1 and str(png[0]) in proc.stdout
    with Image.open(gif[0]) as im:
        assert im.n_frames == 2
    assert Image.open(png[0]).size[0] > 100


def test_mode_is_drawn_per_step_and_validated(store):
    cfg = FoveatedTrainConfig(shards=str(store), out="x", mode_weights={"caption": 0.5, "coarse": 0.5})
    modes = [step_mode(cfg, s) for s in range(40)]
    assert set(modes) == {"caption", "coarse"} and modes == [step_mode(cfg, s) for s in range(40)]
    with pytest.raises(ConfigError, match="mode_weights"):
        FoveatedTrainConfig(shards=str(store), out="x", mode_weights={"video-only": 1.0})


def test_ingest_dino_layers_all_feeds_the_cached_path(store, tmp_path):
    """`ingest dino --layers all` on the shard store: (L + 1) * D channels, keyed "all", and the captioner
    takes T consecutive rows of it as hidden states."""
    from shardyard.models.foveated import FoveatedCaptioner, FoveatedConfig
    from shardyard.stores.features import open_features

    feats = tmp_path / "feats"
    proc = run_cli("ingest", "dino", store, "--model", "tiny-random-dinov2", "--layers", "all", "--fps", "2",
                   "--image-size", "28", "--out", feats)
    assert proc.returncode == 2, proc.stderr                                  # the 3 JPEG members: masked
    fs = open_features(feats)
    assert fs.embed_dim == 3 * 32 and fs.key["model"]["layers"] == "all"
    start = int(np.flatnonzero(~fs.missing)[0])                               # the first row of a video
    hidden = torch.from_numpy(fs.patch_tokens(start, start + 2)).float()[None]  # (1, T=2, N=4, 96)
    model = FoveatedCaptioner(FoveatedConfig(image_size=28, device="cpu"))
    out = model(None, ["two people holding flowers"], hidden=hidden)
    assert torch.isfinite(out["loss"]) and out["fine"].shape[:2] == (1, 2)


def test_resume_refuses_another_config_naming_the_field(store, run_a):
    """The shared resume check (`train.loop.resume_state`): a longer schedule is another run."""
    proc = run_cli("train", "foveated-caption", "--shards", store, "--out", run_a, *ARGS, "--steps", "13")
    assert proc.returncode == 1 and "['steps']" in proc.stderr, proc.stderr


def test_cli_options_come_from_the_config(store, tmp_path):
    """`--help` shows the dataclass defaults; `--mode-weights` / `--model-opt` are converted by field type."""
    helptext = run_cli("train", "foveated-caption", "--help", check=True).stdout
    for shown in ("--attention-out", "--mode-weights", "--model-opt", "3e-05", "tiny-random-llama", "[default: 16]"):
        assert shown in helptext, shown
    cfg = FoveatedTrainConfig(shards=str(store), out="x", mode_weights={"coarse": 1.0})
    assert cfg.mode_weights == ModeWeights(caption=0.0, coarse=1.0)
    assert {step_mode(cfg, s) for s in range(10)} == {"coarse"}
    with pytest.raises(ConfigError, match="image_size"):
        FoveatedTrainConfig(shards=str(store), out="x", model={"image_size": 56})
    proc = run_cli("train", "foveated-caption", "--shards", store, "--out", tmp_path / "r", "--mode-weights",
                   "video=1")
    assert proc.returncode == 2 and "ModeWeights has no field 'video'" in proc.stderr, proc.stderr
