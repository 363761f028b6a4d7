"""The volume-query trainer: exact resume from latest.pth, live-backbone mode, plots, the pixel metric in
source-frame pixels (by hand), the validation pass in bf16 autocast on CPU, and a 2-process torchrun (gloo)
smoke run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from vq_fixtures import TINY_MODEL, vq_data  # noqa: F401  (fixture)

from shardyard.train.loop import read_metrics
from shardyard.train.volume_query import TrainConfig, pixel_error, train

TIMING = ("data_wait_frac", "steps_per_s")


def _cfg(store, features, out, **kw) -> TrainConfig:
    return TrainConfig(**{"store": str(store), "features": str(features) if features else None, "out": str(out),
                          "window": 4, "pred_size": 16, "model": TINY_MODEL, "batch_size": 16, "lr": 1e-3,
                          "log_every": 2, "ckpt_every": 4, "plot_every": 0, **kw})


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_resume_from_latest_equals_uninterrupted(vq_data, tmp_path):
    store, features = vq_data
    full = train(_cfg(store, features, tmp_path / "full", steps=8, plot_every=8))
    # 3 train episodes (~70 samples) in batches of 16: the epoch ends at step 5, between the two halves
    assert full.records[-1]["epoch"] == 1
    assert [p.name for p in full.plots] == ["step_000008.png"] and full.plots[0].stat().st_size > 1000
    half = train(_cfg(store, features, tmp_path / "run", steps=4))
    assert half.records[-1]["step"] == 4 and (tmp_path / "run" / "latest.pth").exists()
    # an interrupted run may have logged past its checkpoint: those records are dropped on resume
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
    resumed = train(_cfg(store, features, tmp_path / "run", steps=8))
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert a["sampler"] == b["sampler"]
    assert _strip(read_metrics(resumed.metrics)) == _strip(full.records)
    first, last = full.records[0], full.records[-1]
    for key in ("loss", "volume", "gripper", "rotation", "train_pix_argmax", "grip_acc", "rot_acc", "err3d_m"):
        assert key in last and last[key] == last[key]                     # present and not NaN
    assert last["loss"] < first["loss"] and 0.0 <= last["data_wait_frac"] < 1.0


def test_live_backbone_mode_runs(vq_data, tmp_path):
    store, _ = vq_data
    res = train(_cfg(store, None, tmp_path / "live", steps=2, batch_size=4, backbone="tiny-random-dinov2"))
    assert [r["step"] for r in res.records] == [1, 2]
    assert torch.load(res.checkpoint, weights_only=True)["config"]["model_config"]["grid"] == (16, 16)


def test_torchrun_two_processes_gloo(vq_data, tmp_path):
    store, features = vq_data
    out = tmp_path / "ddp"
    opts = sum((["--model-opt", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "shardyard.cli", "train", "volume-query", "--store", str(store), "--features", str(features),
           "--out", str(out), "--steps", "3", "--window", "4", "--pred-size", "16", "--batch-size", "8",
           "--log-every", "1", "--ckpt-every", "3", "--plot-every", "3", "--device", "cpu", *opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("train_pix_argmax") == 2                  # the table printed once, by rank 0
    ckpt = torch.load(out / "latest.pth", weights_only=True)
    samplers = ckpt["extra"]["samplers"]
    assert [s["rank"] for s in samplers] == [0, 1] and all(s["world_size"] == 2 for s in samplers)
    assert all(s["offset"] == 24 for s in samplers)                    # 3 steps x 8 samples, on each rank
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert (out / "plots" / "step_000003.png").exists()


def test_pixel_error_by_hand():
    # a 640x480 frame on an 8x8 grid: a cell is 80 px wide and 60 px high
    pred = np.array([[[4, 5], [2, 2]]])                                # (B=1, T=2, 2) cells (x, y)
    true = np.array([[[1, 1], [2, 2]]])
    px, cells = pixel_error(pred, true, np.array([[640, 480]]), 8)
    assert cells.tolist() == [[5.0, 0.0]]                                  # (3, 4) cells: 5 cells
    assert px[0, 0] == pytest.approx(np.hypot(3 * 80, 4 * 60)) and px[0, 1] == 0.0   # 339.41 px


def test_validation_pass_in_bf16_on_cpu(vq_data, tmp_path):
    store, features = vq_data
    res = train(_cfg(store, features, tmp_path / "bf16", steps=4, eval_every=2, amp="bf16", device="cpu"))
    rows = res.records
    assert [r["step"] for r in rows] == [1, 2, 4] and "val_loss" not in rows[0]
    for r in rows[1:]:                                                  # eval rows: train and val metrics
        assert np.isfinite(r["val_loss"]) and np.isfinite(r["loss"]) and 0 <= r["val_grip_acc"] <= 1
        # frames are 64x48 on a 16x16 grid: a cell is 4 x 3 px, so px error lies in [3, 4] x cells error
        for split in ("train_", "val_"):
            px, cells = r[split + "pix_argmax"], r[split + "pix_argmax_cells"]
            assert 3 * cells - 1e-9 <= px <= 4 * cells + 1e-9 and cells > 0
        assert 3 * r["pix_start_baseline_cells"] - 1e-9 <= r["pix_start_baseline"]
    assert res.final["step"] == 4 and res.final["val_pix_argmax"] == rows[-1]["val_pix_argmax"]
    assert torch.load(res.checkpoint, weights_only=True)["config"]["amp"] == "bf16"
