"""`shardyard train depth --store S --features F --out RUN`: seed 003's DPT decoder on cached DINO tokens.

One flat loop (init, eval and checkpoint, step, log), as nanoGPT's `train.py`:

- data: rows of the store's `train` split (official NYU train when the ingest found it); tokens from the
  feature store aligned index for index (`ingest dino --field obs.rgb --layers ...`); frames whose tokens are
  missing are left out. Depth targets are the stored `obs.depth (H, W)` metres, 0 = invalid.
- loss: dense SILog (`dpt_depth.silog_loss`, lambda 0.85, per image); AdamW (decoder lr 1e-4, weight decay
  0.01), linear warmup then cosine to `eta_min` (seed 003 v15: 500 warmup steps, eta_min 1e-6); autocast per
  `amp` (`train.runtime`: auto = bf16 on CUDA, off on CPU). Batches: `train.loop.BatchOrder` over the train rows.
- `--live-backbone`: the ViT runs in the loop and is fine-tuned at its own lr (5e-6, the seed's corrected
  DINOv2 rate) on BTS-augmented frames (`depth_augment.py`); tokens then come from the model, not the cache.
- checkpoint `RUN/latest.pth` (`train.loop`'s layout, plus `backbone` in live mode) every `ckpt_every` steps
  and at the end. Rerunning with the same config resumes exactly: data order is a pure
  function of (seed, epoch) and augmentation draws of (seed, step), so an interrupted run ends with the same
  weights as an uninterrupted one (on the same device and thread count).
- eval on the `val` split (Eigen crop, 1e-3..10 m; `depth_metrics.py`) every `eval_every` steps and at the
  end: `RUN/metrics.jsonl`, `RUN/eval_step<NNNNNN>.png`; `RUN/train.jsonl` logs loss, lr, seconds since
  this process's loop began, and the share of step time spent reading batches (`data_wait_frac`, read in the
  training process) and `steps_per_s` over the steps since the previous row. Both logs drop the rows past the
  checkpoint on resume (`MetricLogger`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.models.dpt_depth import DPTConfig, DPTDepth, silog_loss
from shardyard.train.configs import PAUSE_FIELDS, DepthTrainConfig
from shardyard.train.depth_augment import bts_augment
from shardyard.train.depth_data import DepthData, open_depth_data
from shardyard.train.depth_metrics import DepthMetrics, format_table, write_depth_png
from shardyard.train.loop import (
    CHECKPOINT,
    METRICS,
    BatchOrder,
    DataWait,
    LRSchedule,
    MetricLogger,
    TrainResult,
    pause_point,
    resume_state,
    save_checkpoint,
    set_lr,
)
from shardyard.train.runtime import Runtime, setup_runtime

__all__ = ["RESUME_IGNORES", "TRAIN_LOG", "build", "evaluate", "fetch_batch", "lr_schedule", "train_depth"]

log = logging.getLogger(__name__)

TRAIN_LOG = "train.jsonl"
# fields a resumed run may change: where it stops, how often it reports, where it runs
RESUME_IGNORES = ("out", "stop_at", "eval_every", "ckpt_every", "log_every", "eval_max_images", "png_samples",
                  "device", "amp", "verify_reads", *PAUSE_FIELDS)


def lr_schedule(base: float, cfg: DepthTrainConfig) -> LRSchedule:
    """The shared warmup + cosine schedule from `base` to `eta_min` over the run, with warmup capped at a
    tenth of the run so that short runs still decay."""
    warm = min(cfg.warmup_steps, max(cfg.steps // 10, 1))
    return LRSchedule(base, warmup_steps=warm, decay_steps=cfg.steps, min_lr=min(cfg.eta_min, base))


@torch.no_grad()
def evaluate(model: DPTDepth, data: DepthData, cfg: DepthTrainConfig, step: int, rt: Runtime
             ) -> dict[str, Any]:
    """Metrics on the val rows (Eigen crop from the store metadata), a PNG of the first `png_samples`."""
    model.eval()
    rows = data.val_rows[: cfg.eval_max_images] if cfg.eval_max_images else data.val_rows
    metrics = DepthMetrics(crop=data.eval_crop)
    shown: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for a in range(0, len(rows), cfg.batch_size):
        idx = rows[a:a + cfg.batch_size]
        pred = data.predict(model, idx, rt)                                # (b, H, W) metres
        gt = data.depth(idx)                                               # (b, H, W)
        metrics.update(pred, gt)
        for j in range(len(idx)):
            if len(shown) < cfg.png_samples:
                shown.append((data.rgb(idx[j:j + 1])[0], gt[j], pred[j]))
    out = {"step": step, "split": data.val_name, **metrics.compute()}
    if shown:
        write_depth_png(cfg.out / f"eval_step{step:06d}.png", np.stack([s[0] for s in shown]),
                        np.stack([s[1] for s in shown]), np.stack([s[2] for s in shown]), data.eval_crop)
    model.train()
    return out


def build(cfg: DepthTrainConfig, data: DepthData, device: torch.device
          ) -> tuple[DPTDepth, torch.optim.Optimizer, list[LRSchedule]]:
    """The decoder, AdamW over it (and the live backbone at `encoder_lr`) and each group's schedule."""
    model = DPTDepth(DPTConfig(hidden=data.hidden, num_layers=data.num_layers, features=cfg.features_dim,
                               out_channels=tuple(cfg.reassemble_channels), patch_size=data.patch_size)).to(device)
    groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    if data.backbone is not None and not cfg.freeze_backbone:
        groups.append({"params": list(data.backbone.model.parameters()), "lr": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    return model, opt, [lr_schedule(g["lr"], cfg) for g in groups]


def fetch_batch(data: DepthData, cfg: DepthTrainConfig, idx: np.ndarray, step: int, rt: Runtime) -> dict[str, Any]:
    """The batch of rows `idx` on the device: cached `tokens (B, N, L*C)` float32 and `depth (B, 1, H, W)`
    metres, or, with the live backbone, `image (B, 3, H, W)` [0, 1] (BTS-augmented with draws that are a
    function of (seed, step), so a resumed run sees the same batches) and `depth`."""
    if data.backbone is None:
        return rt.to_device(data.cached_batch(idx))
    images, depth = data.images_tensor(idx), torch.from_numpy(data.depth(idx)[:, None])
    if cfg.augment:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        images, depth = bts_augment(images, depth, gen, cfg.augment_cfg)
    return rt.to_device({"image": images, "depth": depth})


def train_depth(cfg: DepthTrainConfig) -> TrainResult:
    """Train (or resume) the decoder; see the module docstring. Raises `ConfigError` on a store/feature
    mismatch, or a checkpoint in `cfg.out` written with another config."""
    # -- init ------------------------------------------------------------------------------------------
    cfg.out.mkdir(parents=True, exist_ok=True)
    rt = setup_runtime(cfg.device, cfg.amp)
    if rt.world_size > 1:
        raise ConfigError("train depth runs in one process (no DDP yet); start it without torchrun")
    torch.manual_seed(cfg.seed)
    data = open_depth_data(cfg, rt.device)
    model, opt, schedules = build(cfg, data, rt.device)
    backbone = {"backbone": data.backbone.model if data.backbone is not None else None}
    order = BatchOrder(len(data.train_rows), cfg.batch_size, cfg.seed)
    state = resume_state(cfg.out / CHECKPOINT, cfg, RESUME_IGNORES, model=model, optimizer=opt, modules=backbone)
    step = resumed_from = state["step"] if state else 0
    train_log = MetricLogger(cfg.out / TRAIN_LOG, resume_step=step or None, total_steps=cfg.stop_at or cfg.steps,
                             name="depth")
    eval_log = MetricLogger(cfg.out / METRICS, resume_step=step or None)
    stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    losses: list[float] = []
    last_eval: dict[str, Any] = {}
    pause = pause_point(cfg)
    model.train()
    t0, timer = time.perf_counter(), DataWait()

    # -- loop ------------------------------------------------------------------------------------------
    while step < stop:
        lr = set_lr(opt, [s(step) for s in schedules])
        idx = data.train_rows[order.indices(step)]
        with rt.autocast():
            timer.wait_start()
            batch = fetch_batch(data, cfg, idx, step, rt)
            timer.wait_end()
            tokens = batch["tokens"] if data.backbone is None else data.live_tokens(batch["image"])
            pred = model(tokens, data.grid, out_hw=batch["depth"].shape[-2:])
            loss = silog_loss(pred.float(), batch["depth"], lam=cfg.silog_lambda)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        timer.step_end()
        if step % cfg.log_every == 0 or step == stop:
            train_log.log({"step": step, "loss": losses[-1], "lr": lr,
                           "elapsed_s": round(time.perf_counter() - t0, 4), "data_wait_frac": timer.fraction(),
                           "steps_per_s": timer.steps_per_s()})
            timer.reset()
        if step % cfg.ckpt_every == 0 or step == stop:
            save_checkpoint(cfg.out / CHECKPOINT, model=model, optimizer=opt, step=step, config=asdict(cfg),
                            sampler=order.state(step), modules=backbone, pause=pause)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = evaluate(model, data, cfg, step, rt) | {"train_loss": losses[-1]}
            eval_log.log(last_eval)
            log.info("step %d\n%s", step, format_table([last_eval]))
    return TrainResult(out=cfg.out, step=step, resumed_from=resumed_from, records=eval_log.records(),
                       final=last_eval, losses=losses)
