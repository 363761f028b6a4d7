"""Flat trainer of seed 001's `DinoVolumeQuery` (`train_smith300_volume.py`), nanoGPT-style: init, then one
loop of (fetch, step, log, plot, checkpoint).

    shardyard train volume-query --store S [--features F] --out RUN [--steps N]
    python -m torch.distributed.run --nproc_per_node 2 -m shardyard.train.volume_query --store S ...

Data: `loaders.windows.EpisodeWindows` over the train split, in the order of `loaders.sampler`
(a function of (seed, epoch), split by rank, then by DataLoader worker). With `--features` the model reads
cached DINO tokens; without, it runs the frozen backbone (`--backbone`) on the frames every step.
Optimiser: AdamW (lr 5e-5, weight decay 1e-4), bf16 autocast on CUDA only. Under torchrun (WORLD_SIZE > 1)
the model is wrapped in DDP (gloo on CPU, nccl on CUDA) and each rank reads its own part of every epoch;
rank 0 writes `RUN/latest.pth`, `RUN/metrics.jsonl` and `RUN/plots/step_XXXXXX.png`.

Metrics, averaged over the steps since the previous record and over ranks: `loss`, `volume`, `gripper`,
`rotation` (the loss parts), `train_pix_argmax` (Euclidean error of the argmax-decoded cell, in cells of the
`pred_size` grid: the seed's headline metric), `pix_start_baseline` (the same error for the trivial
prediction "the EEF stays at its start cell", for scale), `grip_acc`, `rot_acc`, `err3d_m` (metres between the true
EEF and the argmax cell + height bin centre decoded with `geometry.unproject_at_height`), `data_wait_frac`
(time waiting for batches over step time), `steps_per_s`, `lr`. A rerun with the same `--out` resumes
from `latest.pth` exactly (model, optimiser, sampler position, RNG, metric accumulators).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shardyard.loaders.sampler import BatchStream, ResumableSampler
from shardyard.loaders.targets import decode_positions
from shardyard.loaders.windows import EpisodeWindows, WindowConfig, collate_numpy
from shardyard.models.volume_query import DinoVolumeQuery, VolumeQueryConfig, decode, volume_query_loss
from shardyard.train.loop import (
    CHECKPOINT,
    METRICS,
    DataWait,
    LRSchedule,
    MetricLogger,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

_SUMS = ("loss", "volume", "gripper", "rotation", "pix_err", "pix_err_start", "grip_ok", "rot_ok", "err3d", "n_steps", "n_valid")


@dataclass
class TrainConfig:
    """Options of the volume-query trainer (defaults from seed 001).

    store, features: episodic store and (optional) its feature store; out: run folder. backbone: spec of the
    live backbone used without features. model: overrides of `VolumeQueryConfig` fields (d_feat, n_blocks...).
    steps: optimiser steps in total (a resumed run goes on to this count). num_workers: DataLoader workers.
    log_every / ckpt_every / plot_every: in steps (0 disables plots). device: "auto", "cpu", "cuda"...
    """

    store: str
    out: str
    features: str | None = None
    backbone: str = "tiny-random-dinov2"
    camera: str | None = None
    robot: str | None = None
    rotation_mode: str | None = None
    window: int = 8
    frame_stride: int = 3
    pred_size: int = 56
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    decay_steps: int = 0
    grad_clip: float = 1.0
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    plot_every: int = 100
    resume: bool = True
    device: str = "auto"


@dataclass
class TrainResult:
    """records: the metrics.jsonl records; checkpoint, metrics: paths; plots: PNG paths written this run."""

    records: list[dict[str, Any]]
    checkpoint: Path
    metrics: Path
    plots: list[Path]


def _keep_numpy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DataLoader's per-batch convert step: keep numpy (see `loaders.windows.collate_numpy`)."""
    return batch


def _batch_metrics(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], mcfg: VolumeQueryConfig,
                   height_edges: np.ndarray) -> dict[str, float]:
    """Sums over the batch's valid steps: pixel error (cells), gripper/rotation hits, 3-D error (m)."""
    pred = decode(out, mcfg)
    m = batch["mask"].cpu().numpy()
    pix_t, pix_p = batch["pix"].cpu().numpy(), pred["pix"].cpu().numpy()
    err = np.linalg.norm((pix_p - pix_t).astype(np.float64), axis=-1)
    err0 = np.linalg.norm((batch["start_pix"].cpu().numpy()[:, None] - pix_t).astype(np.float64), axis=-1)
    xyz = decode_positions(pix_p, pred["height_bin"].cpu().numpy(), batch["K_grid"].cpu().numpy(),
                           batch["T_world_cam"].cpu().numpy()[:, None], height_edges)
    e3 = np.linalg.norm(xyz - batch["future_pos"].cpu().numpy(), axis=-1)
    hit = lambda k: (pred[k].cpu().numpy() == batch[k].cpu().numpy())  # noqa: E731
    return {"pix_err": float(err[m].sum()), "pix_err_start": float(err0[m].sum()), "grip_ok": float(hit("gripper_bin")[m].sum()),
            "rot_ok": float(hit("rot_bin")[m].sum()), "err3d": float(np.nan_to_num(e3[m], nan=0.0).sum()),
            "n_valid": float(m.sum())}


def plot_trajectories(path: Path, frame: np.ndarray, true_pix: np.ndarray, pred_pix: np.ndarray,
                      mask: np.ndarray, start_pix: np.ndarray, pred_size: int, title: str = "") -> Path:
    """PNG of true (green) and predicted (red) future EEF cells `(T, 2) (x, y)` over `frame (H, W, 3)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = frame.shape[:2]
    to_img = lambda p: ((p[:, 0] + 0.5) * w / pred_size - 0.5, (p[:, 1] + 0.5) * h / pred_size - 0.5)  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 6 * h / w))
    ax.imshow(frame)
    for pix, colour, label in ((true_pix, "lime", "true"), (pred_pix, "red", "predicted")):
        u, v = to_img(pix[mask] if mask.any() else pix)
        ax.plot(u, v, "-o", color=colour, ms=3, lw=1.5, label=label)
    su, sv = to_img(start_pix[None])
    ax.plot(su, sv, "x", color="yellow", ms=8, mew=2, label="start")
    ax.set_axis_off()
    ax.legend(loc="lower right", fontsize=6)
    ax.set_title(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) per `cfg`; returns the run's records and paths. Raises ConfigError / StoreError
    for bad inputs (see EpisodeWindows) and ConfigError when a backbone is not available."""
    # ---- init: distributed, device, data, model, optimiser, resume ------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    data = EpisodeWindows(cfg.store, cfg.features, window=cfg.window, frame_stride=cfg.frame_stride,
                          camera=cfg.camera, split="train",
                          config=WindowConfig(cfg.pred_size, cfg.robot, cfg.rotation_mode))
    backbone = None
    if data.features is not None:
        embed_dim, grid = data.features.embed_dim, tuple(data.features.grid)
    else:
        from shardyard.models.backbones import BackboneConfig, load_backbone

        backbone = load_backbone(BackboneConfig(spec=cfg.backbone, device=str(device)))
        embed_dim, grid = backbone.embed_dim, tuple(backbone.grid)
    spec = data.spec
    mcfg = VolumeQueryConfig(**{"embed_dim": embed_dim, "grid": grid, "pred_size": cfg.pred_size,
                                "window": cfg.window, "n_height_bins": spec.n_height_bins,
                                "n_gripper_bins": spec.n_gripper_bins, "n_rot_bins": spec.n_rot_bins, **cfg.model})
    model = DinoVolumeQuery(mcfg, backbone=backbone).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = LRSchedule(cfg.lr, cfg.warmup_steps, cfg.decay_steps)
    sampler = ResumableSampler(len(data), seed=cfg.seed, rank=rank, world_size=world)
    step, sums = 0, dict.fromkeys(_SUMS, 0.0)
    ckpt_path = out_dir / CHECKPOINT
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer)
        step = state["step"]
        sampler.load_state_dict({**state["extra"]["samplers"][rank], "rank": rank})
        sums = state["extra"]["sums"]
        log.info("resumed from %s at step %d", ckpt_path, step)
    logger = MetricLogger(out_dir / METRICS, resume_step=step if step else None, enabled=rank == 0)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loader = torch.utils.data.DataLoader(BatchStream(data, sampler, cfg.batch_size, collate_numpy), batch_size=None,
                                         num_workers=cfg.num_workers, collate_fn=_keep_numpy,
                                         pin_memory=device.type == "cuda")
    timer, plots = DataWait(), []
    it, consumed = iter(loader), 0
    log.info("training %d params on %s, rank %d/%d, %d samples/rank/epoch, from step %d",
             sum(p.numel() for p in model.parameters()), device, rank, world, sampler.per_rank, step)

    # ---- the loop -----------------------------------------------------------------------------------------
    while step < cfg.steps:
        timer.wait_start()
        batch = next(it, None)
        if batch is None:                                   # epoch done: the next one, from its start
            sampler.set_epoch(sampler.epoch + 1)
            it, consumed = iter(loader), 0
            batch = next(it)
        timer.wait_end()
        batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
        lr = schedule(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(batch["start_pix"], batch.get("patch_tokens"), batch.get("cls_token"), batch.get("image"))
            losses = volume_query_loss(out, batch, mcfg)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        consumed += len(batch["row"])
        for k in ("loss", "volume", "gripper", "rotation"):
            sums[k] += float(losses[k].detach())
        for k, v in _batch_metrics(out, batch, mcfg, spec.height_edges).items():
            sums[k] += v
        sums["n_steps"] += 1
        timer.step_end()

        if step % cfg.log_every == 0 or step == 1 or step == cfg.steps:
            tot = torch.tensor([sums[k] for k in _SUMS], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(tot)
            s = dict(zip(_SUMS, tot.tolist()))
            nv, ns = max(s["n_valid"], 1.0), max(s["n_steps"], 1.0)
            logger.log({"step": step, "epoch": sampler.epoch, "lr": lr,
                        **{k: s[k] / ns for k in ("loss", "volume", "gripper", "rotation")},
                        "train_pix_argmax": s["pix_err"] / nv, "pix_start_baseline": s["pix_err_start"] / nv,
                        "grip_acc": s["grip_ok"] / nv,
                        "rot_acc": s["rot_ok"] / nv, "err3d_m": s["err3d"] / nv,
                        "data_wait_frac": timer.fraction(), "steps_per_s": timer.steps_per_s()})
            sums = dict.fromkeys(_SUMS, 0.0)
            timer.reset()
        if rank == 0 and cfg.plot_every > 0 and (step % cfg.plot_every == 0 or step == cfg.steps):
            pred = decode(out, mcfg)
            i = int(batch["index"][0])
            plots.append(plot_trajectories(
                out_dir / "plots" / f"step_{step:06d}.png", data.frame(i), batch["pix"][0].cpu().numpy(),
                pred["pix"][0].cpu().numpy(), batch["mask"][0].cpu().numpy(), batch["start_pix"][0].cpu().numpy(),
                mcfg.pred_size, title=f"step {step}, sample {i}"))
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            states = [sampler.state_dict(consumed)]
            if world > 1:
                states = [None] * world
                dist.all_gather_object(states, sampler.state_dict(consumed))
            if rank == 0:
                save_checkpoint(ckpt_path, model=net, optimizer=optimizer, step=step, sampler=states[0],
                                config=asdict(cfg) | {"model_config": asdict(mcfg)},
                                extra={"samplers": states, "sums": sums})
            if world > 1:
                dist.barrier()

    records = logger.records() if rank == 0 else []
    if world > 1:
        dist.barrier()
    return TrainResult(records=records, checkpoint=ckpt_path, metrics=out_dir / METRICS, plots=plots)


TABLE_COLUMNS = ("step", "loss", "volume", "gripper", "rotation", "train_pix_argmax", "pix_start_baseline",
                 "grip_acc", "rot_acc", "err3d_m", "data_wait_frac", "steps_per_s")


def format_table(records: list[dict[str, Any]], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """Plain-text table of metric records (the CLI's summary)."""
    rows = [[f"{r.get(c, float('nan')):.4g}" if c != "step" else str(r["step"]) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(x.rjust(w) for x, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def run(cfg: TrainConfig) -> TrainResult:
    """Train and, on rank 0, print the metric table and where the files are (the CLI's body)."""
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(result.records))
        if result.records:
            first, last = result.records[0], result.records[-1]
            print(f"\ntrain_pix_argmax: {first['train_pix_argmax']:.3f} (step {first['step']}) -> "
                  f"{last['train_pix_argmax']:.3f} (step {last['step']}) cells of {cfg.pred_size}x{cfg.pred_size}")
        print(f"checkpoint: {result.checkpoint}\nmetrics: {result.metrics}")
        for p in result.plots:
            print(f"plot: {p}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    from shardyard.cli import main as _cli_main

    sys.argv = [sys.argv[0], "train", "volume-query", *sys.argv[1:]]
    _cli_main()
