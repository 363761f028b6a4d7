"""Depth metrics and the SILog loss against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shardyard.models.dpt_depth import silog_loss
from shardyard.train.depth_metrics import DepthMetrics, eval_mask, format_table, image_metrics, write_depth_png

LN2 = math.log(2.0)


def test_image_metrics_by_hand():
    # gt 1, 2, 4 m; pred 2, 2, 2 m
    m = image_metrics(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 4.0]))
    assert m["abs_rel"] == pytest.approx((1 / 1 + 0 + 2 / 4) / 3)          # 0.5
    assert m["sq_rel"] == pytest.approx((1 / 1 + 0 + 4 / 4) / 3)           # 2/3
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt(2 * LN2 ** 2 / 3))
    assert m["silog"] == pytest.approx(math.sqrt(2 * LN2 ** 2 / 3))         # mean log error is 0
    assert m["log10"] == pytest.approx(2 * math.log10(2) / 3)
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # ratios 2, 1, 2
    assert m["s_star"] == pytest.approx(1.0) and m["scaled_abs_rel"] == pytest.approx(0.5)


def test_accumulator_masks_averages_and_bins():
    gt1, pred1 = np.array([[1.0, 2.0], [4.0, 0.0]]), np.array([[2.0, 2.0], [2.0, 5.0]])   # 0 = invalid gt
    gt2, pred2 = np.full((2, 2), 3.0), np.full((2, 2), 1.5)
    acc = DepthMetrics(crop=None)
    acc.update(np.stack([pred1, pred2]), np.stack([gt1, gt2]))
    out = acc.compute()
    assert out["num_images"] == 2
    assert out["abs_rel"] == pytest.approx((0.5 + 0.5) / 2)
    assert out["s_star"] == pytest.approx((1.0 + 2.0) / 2)                  # image 2: median 3 / median 1.5
    assert out["scaled_abs_rel"] == pytest.approx((0.5 + 0.0) / 2)
    # per-range AbsRel pools pixels: 0-2 m {gt 1: 1.0}; 2-5 m {gt 2: 0, gt 4: 0.5, 4 x gt 3: 0.5}
    assert out["abs_rel_0_2m"] == pytest.approx(1.0)
    assert out["abs_rel_2_5m"] == pytest.approx((0 + 0.5 + 4 * 0.5) / 6)
    assert out["abs_rel_5_10m"] is None
    assert (out["pred_min"], out["pred_max"]) == (1.5, 2.0)               # pred 5 sits on invalid gt
    assert (out["gt_min"], out["gt_max"]) == (1.0, 4.0)


def test_predictions_clipped_to_range_and_gt_range_applied():
    acc = DepthMetrics(crop=None)
    acc.update(np.array([[20.0, 1e-6, 3.0]]), np.array([[5.0, 1.0, 12.0]]))  # gt 12 m is outside 1e-3..10
    out = acc.compute()
    # pred 20 -> 10 against gt 5 (rel 1), pred 1e-6 -> 1e-3 against gt 1 (rel 0.999)
    assert out["abs_rel"] == pytest.approx((1.0 + 0.999) / 2)
    assert out["pred_max"] == 20.0                                           # range is before clipping


def test_eigen_crop_mask():
    gt = np.ones((480, 640))
    m = eval_mask(gt)
    assert m.sum() == (471 - 45) * (601 - 41)
    assert m[45, 41] and not m[44, 41] and not m[45, 40] and m[470, 600] and not m[471, 600]


def test_silog_loss_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])                          # (1, 2, 2), one invalid pixel
    pred = 2 * gt + 0.5 * (gt == 0)
    # g = ln 2 everywhere valid: sqrt(ln2^2 - 0.85 ln2^2) = ln2 sqrt(0.15)
    assert float(silog_loss(pred, gt, lam=0.85)) == pytest.approx(LN2 * math.sqrt(0.15), rel=1e-5)
    assert float(silog_loss(pred, gt, lam=1.0)) == pytest.approx(0.0, abs=2e-3)  # scale-invariant at lambda 1
    # per image vs pooled: image 2 is exact, so per-image averages (x, sqrt(eps) = 1e-3)
    pred2, gt2 = torch.stack([pred[0], torch.ones(2, 2)]), torch.stack([gt[0], torch.ones(2, 2)])
    assert float(silog_loss(pred2, gt2, lam=0.85)) == pytest.approx((LN2 * math.sqrt(0.15) + 1e-3) / 2, rel=1e-4)
    g = torch.tensor([LN2] * 3 + [0.0] * 4)
    pooled = math.sqrt(float((g ** 2).mean()) - 0.85 * float(g.mean()) ** 2)
    assert float(silog_loss(pred2, gt2, lam=0.85, per_image=False)) == pytest.approx(pooled, rel=1e-4)


def test_table_and_png(tmp_path):
    acc = DepthMetrics()
    gt = np.linspace(0.5, 8.5, 480 * 640).reshape(480, 640)
    acc.update(gt * 1.1, gt)
    row = {"step": 3, **acc.compute()}
    assert row["abs_rel"] == pytest.approx(0.1) and row["s_star"] == pytest.approx(1 / 1.1)
    text = format_table([row])
    assert "abs_rel" in text.splitlines()[0] and "0.1000" in text.splitlines()[1]
    rgb = np.zeros((480, 640, 3), np.uint8)
    p = write_depth_png(tmp_path / "e.png", rgb, gt.astype(np.float32), (gt * 1.1).astype(np.float32))
    assert p.stat().st_size > 10000
