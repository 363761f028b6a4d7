"""`shardyard train depth --store S --features F --out RUN`: seed 003's DPT decoder on cached DINO tokens.

One flat loop (init, eval and checkpoint, step, log), as nanoGPT's `train.py`:

- data: rows of the store's `train` split (official NYU train when the ingest found it); tokens from the
  feature store aligned index for index (`ingest dino --field obs.rgb --layers ...`); frames whose tokens are
  missing are left out. Depth targets are the stored `obs.depth (H, W)` metres, 0 = invalid.
- loss: dense SILog (`dpt_depth.silog_loss`, lambda 0.85, per image); AdamW (decoder lr 1e-4, weight decay
  0.01), linear warmup then cosine to `eta_min` (seed 003 v15: 500 warmup steps, eta_min 1e-6); bf16 autocast
  on CUDA only.
- `--live-backbone`: the ViT runs in the loop and is fine-tuned at its own lr (5e-6, the seed's corrected
  DINOv2 rate) on BTS-augmented frames (`depth_augment.py`); tokens then come from the model, not the cache.
- checkpoint `RUN/latest.pth` (model, optimizer, step, config; written by temp + rename) every
  `ckpt_every` steps and at the end. Rerunning with the same config resumes exactly: data order is a pure
  function of (seed, epoch) and augmentation draws of (seed, step), so an interrupted run ends with the same
  weights as an uninterrupted one (on the same device and thread count).
- eval on the `val` split (Eigen crop, 1e-3..10 m; `depth_metrics.py`) every `eval_every` steps and at the
  end: `RUN/metrics.jsonl`, `RUN/eval_step<NNNNNN>.png`; `RUN/train.jsonl` logs loss, lr and seconds since this process's loop began.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.models.dpt_depth import DPTConfig, DPTDepth, silog_loss
from shardyard.train.depth_augment import BTSAugmentConfig, bts_augment
from shardyard.train.depth_data import DepthData, open_depth_data
from shardyard.train.depth_metrics import DepthMetrics, format_table, write_depth_png
from shardyard.train.loop import LRSchedule, atomic_torch_save

log = logging.getLogger(__name__)

CKPT = "latest.pth"


@dataclass
class DepthTrainConfig:
    """Options of `train_depth`. `stop_at` ends the run early at that step (as a kill would, after a
    checkpoint) without changing the schedule, whose length is `steps`. `model`/`layers`/`image_size`
    configure the live backbone when no feature store is given (else they come from the store's key)."""

    store: str
    out: Path
    features: str | None = None
    steps: int = 2000
    stop_at: int | None = None
    batch_size: int = 4
    lr: float = 1e-4
    encoder_lr: float = 5e-6
    weight_decay: float = 0.01
    warmup_steps: int = 500
    eta_min: float = 1e-6
    silog_lambda: float = 0.85
    features_dim: int = 64
    reassemble_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    live_backbone: bool = False
    augment: bool = True
    model: str = "tiny-random-dinov2"
    layers: tuple[int, ...] = (-1,)
    image_size: tuple[int, int] = (224, 224)
    eval_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    eval_max_images: int | None = None
    png_samples: int = 2
    rgb_field: str = "obs.rgb"
    depth_field: str = "obs.depth"
    seed: int = 0
    device: str = "auto"
    augment_cfg: BTSAugmentConfig = field(default_factory=BTSAugmentConfig)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.features is None and not self.live_backbone:
            raise ConfigError("train depth needs --features (cached tokens) or --live-backbone")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")

    def resume_key(self) -> dict[str, Any]:
        """The config fields a resumed run must share with the checkpoint (all but stop/eval/logging)."""
        d = asdict(self)
        for k in ("out", "stop_at", "eval_every", "ckpt_every", "log_every", "eval_max_images", "png_samples",
                  "device"):
            d.pop(k)
        return json.loads(json.dumps(d, default=str))


def lr_at(step: int, base: float, cfg: DepthTrainConfig) -> float:
    """The shared warmup + cosine schedule (`train.loop.LRSchedule`) from `base` to `eta_min` over the run,
    with warmup capped at a tenth of the run so that short runs still decay."""
    warm = min(cfg.warmup_steps, max(cfg.steps // 10, 1))
    return LRSchedule(base, warmup_steps=warm, decay_steps=cfg.steps, min_lr=min(cfg.eta_min, base))(step)


def batch_indices(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Positions (into the train rows, `n` of them) of the batch at `step`: epoch `e = step // (n // batch)`
    uses the permutation of `default_rng([seed, e])`; a pure function of (seed, step)."""
    per_epoch = max(n // batch, 1)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        return np.resize(perm, batch)
    return perm[i * batch:(i + 1) * batch]


@dataclass
class TrainResult:
    """Final step, last eval row (metrics dict), losses logged in this process, run folder."""

    step: int
    metrics: dict[str, Any]
    losses: list[float]
    out: Path
    resumed_from: int


@torch.no_grad()
def evaluate(model: DPTDepth, data: DepthData, cfg: DepthTrainConfig, step: int, device: torch.device
             ) -> dict[str, Any]:
    """Metrics on the val rows (Eigen crop from the store metadata), a PNG of the first `png_samples`."""
    model.eval()
    rows = data.val_rows[: cfg.eval_max_images] if cfg.eval_max_images else data.val_rows
    metrics = DepthMetrics(crop=data.eval_crop)
    shown: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for a in range(0, len(rows), cfg.batch_size):
        idx = rows[a:a + cfg.batch_size]
        pred = data.predict(model, idx, device)                            # (b, H, W) metres
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


def train_depth(cfg: DepthTrainConfig) -> TrainResult:
    """Train (or resume) the decoder; see the module docstring. Raises `ConfigError` on a store/feature
    mismatch, or a checkpoint in `cfg.out` written with another config."""
    # -- init ------------------------------------------------------------------------------------------
    cfg.out.mkdir(parents=True, exist_ok=True)
    from shardyard.models.backbones import best_device

    device = best_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = open_depth_data(cfg, device)
    model = DPTDepth(DPTConfig(hidden=data.hidden, num_layers=data.num_layers, features=cfg.features_dim,
                               out_channels=tuple(cfg.reassemble_channels), patch_size=data.patch_size)).to(device)
    groups = [{"params": list(model.parameters()), "base_lr": cfg.lr}]
    if data.backbone is not None:
        groups.append({"params": [p for p in data.backbone.model.parameters()], "base_lr": cfg.encoder_lr})
    opt = torch.optim.AdamW([{**g, "lr": g["base_lr"]} for g in groups], weight_decay=cfg.weight_decay)
    step = 0
    ckpt = cfg.out / CKPT
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["config"] != cfg.resume_key():
            diff = sorted(k for k in state["config"] if state["config"][k] != cfg.resume_key().get(k))
            raise ConfigError(f"{ckpt} was written with another config (differs in {diff}); use another --out",
                              path=str(ckpt))
        model.load_state_dict(state["model"])
        if data.backbone is not None:
            data.backbone.model.load_state_dict(state["backbone"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log.info("resumed %s at step %d", ckpt, step)
    resumed_from = step
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    losses: list[float] = []
    last_eval: dict[str, Any] = {}
    model.train()
    t0 = time.perf_counter()

    def checkpoint() -> None:
        atomic_torch_save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "config": cfg.resume_key(),
                     "backbone": data.backbone.model.state_dict() if data.backbone is not None else None})

    # -- loop ------------------------------------------------------------------------------------------
    while step < stop:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, g["base_lr"], cfg)
        idx = data.train_rows[batch_indices(step, len(data.train_rows), cfg.batch_size, cfg.seed)]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        with autocast:
            if data.backbone is None:
                tokens, target = data.tokens(idx, device), data.depth_tensor(idx, device)   # (B, N, LC), (B,1,H,W)
                pred = model(tokens, data.grid, out_hw=target.shape[-2:])
            else:
                images, target = data.images_tensor(idx), data.depth_tensor(idx, torch.device("cpu"))
                if cfg.augment:
                    images, target = bts_augment(images, target, gen, cfg.augment_cfg)
                images, target = images.to(device), target.to(device)
                pred = model(data.live_tokens(images), data.grid, out_hw=target.shape[-2:])
            loss = silog_loss(pred.float(), target, lam=cfg.silog_lambda)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == stop:
            with open(cfg.out / "train.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "loss": losses[-1], "lr": opt.param_groups[0]["lr"],
                                     "elapsed_s": round(time.perf_counter() - t0, 4)}) + "\n")
        if step % cfg.ckpt_every == 0 or step == stop:
            checkpoint()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_eval = evaluate(model, data, cfg, step, device) | {"train_loss": losses[-1]}
            with open(cfg.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(last_eval) + "\n")
            log.info("step %d\n%s", step, format_table([last_eval]))
    return TrainResult(step=step, metrics=last_eval, losses=losses, out=cfg.out, resumed_from=resumed_from)
