"""Seed 004's patch prediction (issue 6): metrics by hand, copy baseline, learnt predictors on a sequence
whose future is a fixed linear map of its past, the `--gaps` table on tokens of real videos, the live
stream path, and exact resume from latest.pth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, run_cli
from test_dino_shards import write_shard_store

from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.models.backbones import BackboneConfig
from shardyard.models.patch_predict import (
    CopyPredictor,
    PatchPredictorConfig,
    build_predictor,
    improvement,
    patch_cosine,
    patch_mse,
)
from shardyard.stores.features import FeatureLayout, FeatureWriter, FeatureWriterConfig, write_batch
from shardyard.stores.wds import Sample, write_tar
from shardyard.train.loop import read_metrics
from shardyard.train.patch_predict import FeaturePairs, PatchPredictConfig, make_pairs, run

CLIPS = SHARED / "webvid" / "clips"


def test_metrics_by_hand():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # (B=1, P=2, D=2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    assert patch_mse(pred, target).item() == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert patch_cosine(pred, target).item() == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)
    assert improvement(2.0, 1.5) == pytest.approx(25.0) and improvement(2.0, 3.0) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        patch_mse(pred, target[:, :1])


def test_copy_cosine_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    copy = CopyPredictor(PatchPredictorConfig("copy", 7))
    xn, yn = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    direct = np.mean([[xn[b, p] @ yn[b, p] / np.linalg.norm(xn[b, p]) / np.linalg.norm(yn[b, p])
                       for p in range(5)] for b in range(3)])
    assert patch_cosine(copy(x), y).item() == pytest.approx(direct, abs=1e-6)
    assert patch_mse(copy(x), y).item() == pytest.approx(np.mean((xn - yn) ** 2), rel=1e-6)
    for kind in ("linear", "mlp"):                           # residual predictors start as the copy baseline
        torch.testing.assert_close(build_predictor(PatchPredictorConfig(kind, 7))(x), x)


def test_make_pairs_stay_inside_episodes_and_skip_missing():
    missing = np.zeros(10, bool)
    missing[2] = True
    pairs = make_pairs(np.array([4, 10]), missing, gap=2)
    assert pairs.tolist() == [[1, 3], [4, 6], [5, 7], [6, 8], [7, 9]]


def synthetic_store(path: Path, episodes: int = 5, steps: int = 24, grid=(2, 2), dim: int = 8) -> np.ndarray:
    """Feature store whose tokens follow x[t+1] = x[t] @ A.T per patch (A a fixed rotation); returns A."""
    rng = np.random.default_rng(0)
    a, _ = np.linalg.qr(np.eye(dim) + 0.6 * rng.standard_normal((dim, dim)))
    seqs = []
    for _ in range(episodes):
        x = rng.standard_normal((grid[0] * grid[1], dim)) * 2
        for _ in range(steps):
            seqs.append(x)
            x = x @ a.T
    tokens = np.stack(seqs).astype(np.float32)                 # (N, P, D)
    n = len(tokens)
    layout = FeatureLayout(num_samples=n, grid=grid, embed_dim=dim, patch_size=14, dtype="float32",
                           batch_size=steps)
    ends = list(range(steps, n + 1, steps))
    with FeatureWriter(path, key={"synthetic": "linear-map"}, layout=layout,
                       config=FeatureWriterConfig(episode_ends=ends)) as w:
        for s, e in w.layout.batches():
            write_batch(path, s, tokens[s:e], tokens[s:e, 0], np.zeros(e - s, bool))
    return a


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("pp") / "features"
    synthetic_store(path)
    return path


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_learnt_predictors_beat_copy_on_a_linear_map(synthetic, tmp_path, kind):
    r = run(PatchPredictConfig(out=str(tmp_path / kind), features=str(synthetic), gap=1, model=kind, steps=150,
                               lr=3e-2 if kind == "linear" else 5e-3, eval_every=150, ckpt_every=150)).final
    copy = run(PatchPredictConfig(out=str(tmp_path / "copy"), features=str(synthetic), gap=1, model="copy")).final
    assert r["copy_mse"] == pytest.approx(copy["mse"]) and r["copy_cos"] == pytest.approx(copy["cos"])
    assert r["mse"] < 0.3 * r["copy_mse"] and r["cos"] > r["copy_cos"] and r["improvement"] > 70
    rows = read_metrics(tmp_path / kind / "metrics.jsonl")
    assert [x["step"] for x in rows if x["split"] == "val"] == [0, 150]
    assert rows[0]["mse"] == pytest.approx(rows[0]["copy_mse"])  # step 0: the copy baseline
    train = [x for x in rows if x["split"] == "train"]  # each row: the read share of its steps' time
    assert train and all(0 < x["data_wait_frac"] < 1 and x["steps_per_s"] > 0 for x in train)


def test_resume_from_latest_equals_uninterrupted(synthetic, tmp_path):
    base = dict(features=str(synthetic), gap=2, model="mlp", batch_size=8, eval_every=5, ckpt_every=5,
                log_every=1)
    run(PatchPredictConfig(out=str(tmp_path / "a"), steps=20, **base))
    run(PatchPredictConfig(out=str(tmp_path / "b"), steps=10, **base))  # stopped at step 10
    (tmp_path / "b" / "metrics.jsonl").open("a").write('{"step": 11, "split": "train", "loss": 0}\n')  # a torn tail
    run(PatchPredictConfig(out=str(tmp_path / "b"), steps=20, **base))
    sa = torch.load(tmp_path / "a" / "latest.pth", weights_only=True)
    sb = torch.load(tmp_path / "b" / "latest.pth", weights_only=True)
    assert sa["step"] == sb["step"] == 20
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=0)
    timing = ("data_wait_frac", "steps_per_s")  # wall-clock figures: the only fields a resumed run changes
    a, b = ([{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / x / "metrics.jsonl")]
            for x in ("a", "b"))
    assert a == b and len(a) == 25


@pytest.fixture(scope="module")
def video_features(tmp_path_factory, shared_data):
    """Tokens of the shared clips at 4 fps (tiny random backbone, grid 4x4): episodes of 40, 5, 40, 1 rows."""
    root = tmp_path_factory.mktemp("pp_video")
    write_shard_store(root / "shards")
    res = ingest_dino(DinoConfig(store=str(root / "shards"), out=root / "features", fps=4.0, batch_size=16,
                                 backbone=BackboneConfig(image_size=(56, 56))))
    assert res.exit_code == 2  # the jpeg member is masked
    return root / "features"


def test_gaps_table_via_cli(video_features, tmp_path):
    out = tmp_path / "gaps"
    proc = run_cli("train", "patch-predict", "--features", video_features, "--gaps", "1,2,4,8,12",
                   "--model", "linear", "--steps", "15", "--eval-every", "15", "--out", out, check=True)
    table = json.loads((out / "gaps.json").read_text())["rows"]
    assert [r["gap"] for r in table] == [1, 2, 4, 8, 12]
    assert [r["time_s"] for r in table] == pytest.approx([0.25, 0.5, 1.0, 2.0, 3.0])
    for r in table:
        assert -1 <= r["copy_cos"] <= 1 and r["copy_mse"] > 0 and r["pairs"] > 0
        assert r["improvement"] == pytest.approx(improvement(r["copy_mse"], r["model_mse"]))
    # copy is an independent computation over the same held-out pairs (the last usable video)
    fp = FeaturePairs(str(video_features), 4, 0.2)
    x, y = fp.tokens(fp.val[:, 0]), fp.tokens(fp.val[:, 1])
    assert table[2]["copy_cos"] == pytest.approx(patch_cosine(x, y).item(), rel=1e-5)
    assert table[2]["pairs"] == len(fp.val) and fp.val.min() >= 45 and fp.val.max() < 85  # ends 40, 45, 85, 86
    assert proc.stdout.startswith("| Gap | Time |") and proc.stdout.count("\n") == 7
    assert (out / "gaps.md").read_text() == proc.stdout
    assert (out / "gap_12" / "latest.pth").exists()


@pytest.fixture(scope="module")
def tar_folder(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("pp_stream")
    samples = [Sample(p.stem.replace(".", "_"), {"mp4": p.read_bytes(), "txt": p.stem.encode()})
               for p in sorted(CLIPS.glob("*.mp4"))]
    with open(d / "clips-000000.tar", "wb") as f:
        write_tar(f, samples)
    return d


def test_stream_live_backbone_smoke_via_cli(tar_folder, tmp_path):
    out = tmp_path / "stream"
    proc = run_cli("train", "patch-predict", "--stream", tar_folder, "--live-backbone", "--gap", "2",
                   "--model", "mlp", "--steps", "3", "--eval-every", "3", "--image-size", "56",
                   "--stream-fps", "4", "--out", out, check=True)
    assert "improvement" in proc.stdout
    rows = read_metrics(out / "metrics.jsonl")
    online = [r for r in rows if r["split"] == "stream"]
    assert len(online) == 1 and online[0]["step"] == 3 and online[0]["clips"]["yielded"] >= 6
    assert np.isfinite(online[0]["mse"]) and 0 < online[0]["copy_cos"] <= 1
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(0 < r["data_wait_frac"] < 1 and r["steps_per_s"] > 0 for r in train)
    state = torch.load(out / "latest.pth", weights_only=True)
    assert state["step"] == 3 and state["sampler"]["stream"]["consumed"]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_equals_uninterrupted(tar_folder, tmp_path, workers):
    """With the clips decoded in this process or by 2 DataLoader workers (each batch recorded as it is used,
    prefetched ones not), a run stopped at step 2 and resumed makes exactly the updates of one that was not."""
    base = dict(stream=str(tar_folder), live_backbone=True, gap=1, model="linear", image_size=28,
                stream_fps=2.0, stream_size=64, clips_per_step=1, eval_every=2, ckpt_every=2, log_every=1,
                num_workers=workers)
    run(PatchPredictConfig(out=str(tmp_path / "a"), steps=4, **base))
    run(PatchPredictConfig(out=str(tmp_path / "b"), steps=2, **base))
    run(PatchPredictConfig(out=str(tmp_path / "b"), steps=4, **base))
    sa = torch.load(tmp_path / "a" / "latest.pth", weights_only=True)
    sb = torch.load(tmp_path / "b" / "latest.pth", weights_only=True)
    assert sa["sampler"] == sb["sampler"]
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=0)

    def strip(rows):  # stream counters count what this process decoded, timings are wall clock; the rest
        return [{k: v for k, v in r.items() if k not in ("clips", "data_wait_frac", "steps_per_s")} for r in rows]

    a, b = (read_metrics(tmp_path / run_dir / "metrics.jsonl") for run_dir in ("a", "b"))
    assert strip(a) == strip(b) and len(a) == 6  # 4 train rows, 2 online eval rows
