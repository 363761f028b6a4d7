"""`train depth`: a small NYU store (h5 layout) + tiny-random DINO tokens: runs, checkpoints, resumes
exactly, and its training SILog falls; the DPT decoder's shapes; the live-backbone path with BTS augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli

from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, ingest_nyu
from shardyard.ingest.runner import IngestConfig
from shardyard.models.backbones import BackboneConfig
from shardyard.models.dpt_depth import DPTConfig, DPTDepth
from shardyard.train.depth import DepthTrainConfig, train_depth
from shardyard.train.depth_augment import BTSAugmentConfig, bts_augment
from shardyard.train.loop import BatchOrder

H, W = 42, 56


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny convs on a shared 2-core machine: one intra-op thread is ~10x faster than two contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(n)


def _write_h5_nyu(root: Path) -> None:
    """Scenes of frames whose depth is a function of what the image shows (a learnable mapping)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    y, x = y / H, x / W
    for split, scene, n in (("train", "bedroom_0001", 8), ("train", "kitchen_0002", 8), ("val", "official", 4)):
        (root / split / scene).mkdir(parents=True)
        for i in range(n):
            a, b = rng.uniform(0.5, 2.0), rng.uniform(0, 1)
            depth = (1.0 + 6.0 * np.clip(a * x * 0.6 + b * y * 0.4, 0, 1)).astype(np.float32)   # 1..7 m
            shade = (255 * (depth - 1) / 6).astype(np.uint8)
            rgb = np.stack([shade, 255 - shade, np.full_like(shade, 128)])                      # (3, H, W)
            depth[:2, :3] = 0.0
            with h5py.File(root / split / scene / f"{i:05d}.h5", "w") as f:
                f["rgb"], f["depth"] = rgb, depth


@pytest.fixture(scope="module")
def nyu_tokens(tmp_path_factory):
    d = tmp_path_factory.mktemp("nyu_train")
    _write_h5_nyu(d / "raw")
    ingest_nyu(NyuSource(NyuConfig(root=d / "raw")), IngestConfig(out=d / "store"))
    ingest_dino(DinoConfig(store=str(d / "store"), out=d / "tokens", field="obs.rgb", batch_size=10,
                           backbone=BackboneConfig(layers=(0, 1), image_size=(W, H), device="cpu")))
    return d


def _cfg(d: Path, out: str, **kw) -> DepthTrainConfig:
    base = dict(store=str(d / "store"), features=str(d / "tokens"), out=d / out, steps=8, batch_size=4, lr=2e-3,
                warmup_steps=2, eval_every=1000, ckpt_every=1000, log_every=1, features_dim=16, device="cpu",
                reassemble_channels=(8, 8, 16, 16))
    return DepthTrainConfig(**{**base, **kw})


def test_dpt_shapes_and_softplus():
    model = DPTDepth(DPTConfig(hidden=8, num_layers=2, features=16, patch_size=14))
    out = model(torch.randn(3, 3 * 4, 16), (3, 4), out_hw=(H, W))
    assert out.shape == (3, 1, H, W) and (out > 0).all()
    assert float(out.detach().mean()) == pytest.approx(2.5, rel=0.3)                  # head bias starts at 2.5 m
    assert model(torch.randn(1, 12, 16), (3, 4)).shape == (1, 1, 42, 56)     # default: grid x patch
    with pytest.raises(ValueError):
        model(torch.randn(1, 12, 24), (3, 4))


def test_bts_augment_crops_and_keeps_depth_values():
    g = torch.Generator().manual_seed(0)
    img, depth = torch.rand(2, 3, 480, 640), torch.full((2, 1, 480, 640), 3.0)
    a_img, a_depth = bts_augment(img, depth, g, BTSAugmentConfig())
    assert a_img.shape == (2, 3, 416, 544) and a_depth.shape == (2, 1, 416, 544)
    assert set(torch.unique(a_depth).tolist()) <= {0.0, 3.0}               # nearest: no interpolated depths
    assert 0 <= float(a_img.min()) and float(a_img.max()) <= 1
    again = bts_augment(img, depth, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], a_img)                                     # draws come from the generator


def test_batch_order_is_a_pure_function_of_seed_and_step():
    a = [BatchOrder(10, 4, 0).indices(s).tolist() for s in range(6)]
    assert a == [BatchOrder(10, 4, 0).indices(s).tolist() for s in range(6)]
    assert sorted(sum(a[:2], [])) == sorted(set(sum(a[:2], [])))            # no repeats inside an epoch


def test_train_runs_checkpoints_and_silog_falls(nyu_tokens):
    res = train_depth(_cfg(nyu_tokens, "run_long", steps=30))
    run = nyu_tokens / "run_long"
    assert (run / "latest.pth").exists()
    assert res.step == 30 and res.resumed_from == 0
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert last < 0.7 * first, (first, last)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and rows[-1]["split"] == "val" and rows[-1]["num_images"] == 4
    for k in ("abs_rel", "sq_rel", "rmse", "log10", "silog", "delta1", "delta2", "delta3", "s_star",
              "scaled_abs_rel", "abs_rel_0_2m", "abs_rel_2_5m", "abs_rel_5_10m", "pred_min", "pred_max"):
        assert k in rows[-1]
    assert (run / "eval_step000030.png").stat().st_size > 5000
    train_rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 30  # one row a step, each with the share of its time spent reading the batch
    assert all(0 < r["data_wait_frac"] < 1 and r["steps_per_s"] > 0 for r in train_rows)


def test_resume_is_exact(nyu_tokens):
    straight = train_depth(_cfg(nyu_tokens, "run_a"))
    first = train_depth(_cfg(nyu_tokens, "run_b", stop_at=4))
    assert first.step == 4
    # a kill between a log row and the next checkpoint leaves rows past it: the resumed run drops them
    for name in ("train.jsonl", "metrics.jsonl"):
        with open(nyu_tokens / "run_b" / name, "a") as f:
            f.write(json.dumps({"step": 5, "loss": 0.0}) + "\n")
    resumed = train_depth(_cfg(nyu_tokens, "run_b"))
    assert resumed.resumed_from == 4 and resumed.step == 8
    assert straight.losses[4:] == resumed.losses
    a = torch.load(nyu_tokens / "run_a" / "latest.pth", weights_only=True)
    b = torch.load(nyu_tokens / "run_b" / "latest.pth", weights_only=True)
    assert a["step"] == b["step"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    train_rows = [json.loads(line) for line in (nyu_tokens / "run_b" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert [json.loads(line)["step"] for line in (nyu_tokens / "run_b" / "metrics.jsonl").read_text().splitlines()] \
        == [8]
    with pytest.raises(Exception, match="another config"):
        train_depth(_cfg(nyu_tokens, "run_b", lr=1e-3))


def test_cli_live_backbone_with_bts_augmentation(nyu_tokens):
    proc = run_cli("train", "depth", "--store", nyu_tokens / "store", "--features", nyu_tokens / "tokens",
                   "--out", nyu_tokens / "run_live", "--live-backbone", "--steps", "3", "--batch-size", "2",
                   "--features-dim", "16", "--reassemble-channels", "8,8,16,16", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "abs_rel" in proc.stdout and "step 3" in proc.stdout
    state = torch.load(nyu_tokens / "run_live" / "latest.pth", weights_only=True)
    assert state["backbone"] is not None and state["config"]["live_backbone"]
