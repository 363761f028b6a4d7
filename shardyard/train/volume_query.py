"""Flat trainer of seed 001's `DinoVolumeQuery` (`train_smith300_volume.py`), nanoGPT-style: init, then one
loop of (fetch, step, log, evaluate, plot, checkpoint).

    shardyard train volume-query --store S [--features F] --out RUN [--steps N]
    python -m torch.distributed.run --nproc_per_node 2 -m shardyard.cli train volume-query --store S ...

Data: `loaders.windows.EpisodeWindows` over the train split, batches in `train.loop.BatchOrder` (a function
of (seed, step), split by rank, read by DataLoader workers in turn). With `--features` the model reads
cached DINO tokens; without, it runs the frozen backbone (`--backbone`) on the frames every step.
Optimiser: AdamW (lr 5e-5, weight decay 1e-4); autocast per `--amp` (auto: bf16 on CUDA, off on CPU).
Under torchrun the model is wrapped in DDP (`train.runtime`: nccl on CUDA, gloo on CPU);
rank 0 writes `RUN/latest.pth`, `RUN/metrics.jsonl` and `RUN/plots/step_XXXXXX.png`.

Metrics, averaged over the steps since the previous record and over ranks: `loss`, `volume`, `gripper`,
`rotation` (the loss parts); `train_pix_argmax`: Euclidean error of the argmax-decoded cell in pixels of the
source frame (seed 001's headline "pixel error"; a cell of the `pred_size` grid is `W / P` by `H / P`
pixels), and `train_pix_argmax_cells` the same in cells of the grid; `pix_start_baseline` (pixels) and
`pix_start_baseline_cells`: the error of the trivial prediction "the EEF stays at its start cell", for scale;
`grip_acc`, `rot_acc`, `err3d_m` (metres between the true EEF and the argmax cell + height bin centre
decoded with `geometry.unproject_at_height`), `data_wait_frac` (time waiting for batches over step time),
`steps_per_s`, `lr` (and `peak_mem_gib` on CUDA). Every `eval_every` steps (a multiple of it ends the
run with one), the row also holds the same metrics on the held-out `val` episodes (`val_loss`,
`val_pix_argmax`, `val_pix_argmax_cells`, `val_grip_acc`, ...; the seed headlines the train metric because
val is multimodal, but both are reported). A rerun with the same `--out` resumes from `latest.pth` exactly
(model, optimiser, batch position, RNG, metric accumulators).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.loaders.targets import decode_positions
from shardyard.loaders.windows import EpisodeWindows, WindowConfig, collate_numpy
from shardyard.models.volume_query import DinoVolumeQuery, VolumeQueryConfig, decode, volume_query_loss
from shardyard.procs import loader_worker_init
from shardyard.train.configs import PAUSE_FIELDS, TrainConfig
from shardyard.train.loop import (
    CHECKPOINT,
    METRICS,
    BatchOrder,
    DataWait,
    LRSchedule,
    MetricLogger,
    StepBatches,
    TrainResult,
    format_table,
    keep_batch,
    pause_point,
    resume_state,
    save_checkpoint,
    set_lr,
)
from shardyard.train.runtime import Runtime, setup_runtime

__all__ = ["LOSSES", "RESUME_IGNORES", "SUMS", "TABLE_COLUMNS", "batch_sums", "build_model", "evaluate",
           "frame_sizes", "open_data", "pixel_error", "plot_first", "plot_trajectories", "run", "summarise", "train"]

log = logging.getLogger(__name__)

LOSSES = ("loss", "volume", "gripper", "rotation")
SUMS = (*LOSSES, "pix_err", "pix_err_cells", "pix_err_start", "pix_err_start_cells", "grip_ok", "rot_ok",
        "err3d", "n_steps", "n_valid")
# fields a resumed run may change: where and how long it runs, how often it reports
RESUME_IGNORES = ("out", "steps", "num_workers", "log_every", "ckpt_every", "plot_every", "eval_every",
                  "val_max_samples", "resume", "device", "amp", "verify_reads", *PAUSE_FIELDS)


def pixel_error(pred_cells: np.ndarray, true_cells: np.ndarray, image_wh: np.ndarray,
                pred_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors between cells `(B, T, 2) (x, y)` of the `pred_size` grid: `(B, T)` float64 in pixels of the
    source frame (`image_wh (B, 2)` its width and height; a cell is `W / P` by `H / P` pixels), and in
    cells."""
    d = (np.asarray(pred_cells, np.float64) - np.asarray(true_cells, np.float64))           # (B, T, 2)
    scale = np.asarray(image_wh, np.float64)[:, None, :] / pred_size                      # (B, 1, 2) px/cell
    return np.linalg.norm(d * scale, axis=-1), np.linalg.norm(d, axis=-1)


def batch_sums(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], mcfg: VolumeQueryConfig,
               height_edges: np.ndarray, image_wh: np.ndarray) -> dict[str, float]:
    """Sums over the batch's valid steps: pixel errors (px and cells), start baseline, gripper/rotation
    hits, 3-D error (m), and the count of valid steps. `image_wh (B, 2)`: source frame sizes (px)."""
    pred = {k: v.cpu().numpy() for k, v in decode(out, mcfg).items()}
    b = {k: batch[k].cpu().numpy() for k in ("mask", "pix", "start_pix", "K_grid", "T_world_cam", "future_pos",
                                             "gripper_bin", "rot_bin")}
    m = b["mask"]
    err, err_c = pixel_error(pred["pix"], b["pix"], image_wh, mcfg.pred_size)
    err0, err0_c = pixel_error(np.broadcast_to(b["start_pix"][:, None], b["pix"].shape), b["pix"], image_wh,
                               mcfg.pred_size)
    xyz = decode_positions(pred["pix"], pred["height_bin"], b["K_grid"], b["T_world_cam"][:, None], height_edges)
    e3 = np.linalg.norm(xyz - b["future_pos"], axis=-1)
    return {"pix_err": float(err[m].sum()), "pix_err_cells": float(err_c[m].sum()),
            "pix_err_start": float(err0[m].sum()), "pix_err_start_cells": float(err0_c[m].sum()),
            "grip_ok": float((pred["gripper_bin"] == b["gripper_bin"])[m].sum()),
            "rot_ok": float((pred["rot_bin"] == b["rot_bin"])[m].sum()),
            "err3d": float(np.nan_to_num(e3[m], nan=0.0).sum()), "n_valid": float(m.sum())}


def summarise(s: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Means of summed metrics (`SUMS`): losses per step, the rest per valid step; keys prefixed."""
    nv, ns = max(s["n_valid"], 1.0), max(s["n_steps"], 1.0)
    out = {k: s[k] / ns for k in LOSSES}
    out |= {"pix_argmax": s["pix_err"] / nv, "pix_argmax_cells": s["pix_err_cells"] / nv,
            "pix_start_baseline": s["pix_err_start"] / nv, "pix_start_baseline_cells": s["pix_err_start_cells"] / nv,
            "grip_acc": s["grip_ok"] / nv, "rot_acc": s["rot_ok"] / nv, "err3d_m": s["err3d"] / nv}
    return {prefix + k: v for k, v in out.items()}


def frame_sizes(data: EpisodeWindows, index: torch.Tensor) -> np.ndarray:
    """`(B, 2)` width and height (px) of the source frames of samples `index`."""
    return np.asarray([data.cams[int(data.episode_of[int(i)])]["wh"] for i in index], np.float64)


@torch.no_grad()
def evaluate(model: DinoVolumeQuery, val: EpisodeWindows, rt: Runtime, mcfg: VolumeQueryConfig,
             cfg: TrainConfig, height_edges: np.ndarray) -> dict[str, float]:
    """Loss and metrics on (up to `val_max_samples` of) the held-out windows, split over the ranks and
    summed across them; keys `val_loss`, `val_pix_argmax` (px), `val_pix_argmax_cells`, `val_grip_acc`..."""
    was_training = model.training
    model.eval()
    idx = np.arange(min(len(val), cfg.val_max_samples))[rt.rank::rt.world_size]
    sums = dict.fromkeys(SUMS, 0.0)
    for a in range(0, len(idx), cfg.batch_size):
        batch = rt.to_device(collate_numpy(val.__getitems__(idx[a:a + cfg.batch_size].tolist())))
        with rt.autocast():
            out = model(batch["start_pix"], batch.get("patch_tokens"), batch.get("cls_token"), batch.get("image"))
            losses = volume_query_loss(out, batch, mcfg)
        n = len(batch["index"])
        for k in LOSSES:                     # per-step means over equal batches: weight by batch size
            sums[k] += float(losses[k]) * n
        for k, v in batch_sums(out, batch, mcfg, height_edges, frame_sizes(val, batch["index"])).items():
            sums[k] += v
        sums["n_steps"] += n
    model.train(was_training)
    s = rt.all_reduce_sums(sums)
    return summarise(s, "val_") if s["n_steps"] else {}


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


def plot_first(path: Path, data: EpisodeWindows, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor],
               mcfg: VolumeQueryConfig, step: int) -> Path:
    """`plot_trajectories` of the batch's first sample."""
    pred, i = decode(out, mcfg), int(batch["index"][0])
    first = {k: batch[k][0].cpu().numpy() for k in ("pix", "mask", "start_pix")}
    return plot_trajectories(path, data.frame(i), first["pix"], pred["pix"][0].cpu().numpy(), first["mask"],
                             first["start_pix"], mcfg.pred_size, title=f"step {step}, sample {i}")


def open_data(cfg: TrainConfig) -> tuple[EpisodeWindows, EpisodeWindows | None]:
    """Train windows and held-out val windows (None, with a warning, when the store has no usable val
    split). Raises ConfigError / StoreError for bad inputs (see EpisodeWindows)."""
    kw = dict(window=cfg.window, frame_stride=cfg.frame_stride, camera=cfg.camera,
              config=WindowConfig(cfg.pred_size, cfg.robot, cfg.rotation_mode, verify_reads=cfg.verify_reads))
    data = EpisodeWindows(cfg.store, cfg.features, split="train", **kw)
    kw["camera"] = data.field  # the camera train picked (the first when none was given, said once)
    val = None
    if cfg.eval_every > 0 and not len(data.store.split.get("val") or []):
        log.warning("no validation pass: the store's split has no validation episode (all %d in train), so no "
                    "val_* metrics; hold some out with `shardyard stats %s --val-fraction F` (or ingest with "
                    "--val-fraction F)", data.store.num_episodes, cfg.store)
    elif cfg.eval_every > 0:
        try:
            val = EpisodeWindows(cfg.store, cfg.features, split="val", **kw)
        except ConfigError as e:                       # no val split, or no valid window in it
            log.warning("no validation pass: %s", e)
    return data, val


def build_model(cfg: TrainConfig, data: EpisodeWindows, device: torch.device
                ) -> tuple[DinoVolumeQuery, VolumeQueryConfig]:
    """The model (with the live backbone when there are no cached features) and its config."""
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
    return DinoVolumeQuery(mcfg, backbone=backbone).to(device), mcfg


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) per `cfg`; returns the run's records and paths. Raises ConfigError / StoreError
    for bad inputs (see EpisodeWindows), ConfigError when a backbone is not available or `out` holds a
    checkpoint of another config."""
    # ---- init: runtime, data, model, optimiser, resume ----------------------------------------------------
    rt = setup_runtime(cfg.device, cfg.amp)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    data, val = open_data(cfg)
    model, mcfg = build_model(cfg, data, rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = LRSchedule(cfg.lr, cfg.warmup_steps, cfg.decay_steps)
    order = BatchOrder(len(data), cfg.batch_size, cfg.seed, rt.rank, rt.world_size)
    step, sums = 0, dict.fromkeys(SUMS, 0.0)
    state = resume_state(out_dir / CHECKPOINT, cfg, RESUME_IGNORES, model=model, optimizer=optimizer,
                         world_size=rt.world_size) if cfg.resume else None
    if state is not None:
        step, sums = state["step"], state["extra"]["sums"][rt.rank]
    start, pause = step, pause_point(cfg)
    logger = MetricLogger(out_dir / METRICS, resume_step=step if step else None, enabled=rt.is_main,
                          total_steps=cfg.steps, name="volume-query")
    net = rt.wrap(model)
    loader = torch.utils.data.DataLoader(StepBatches(data, order, step, cfg.steps, collate_numpy), batch_size=None,
                                         num_workers=cfg.num_workers, collate_fn=keep_batch,
                                         worker_init_fn=loader_worker_init())
    timer, plots, losses = DataWait(), [], []
    log.info("training %d params on %s, rank %d/%d, %d batches/rank/epoch, from step %d",
             sum(p.numel() for p in model.parameters()), rt.device, rt.rank, rt.world_size, order.per_epoch, step)

    # ---- the loop -------------------------------------------------------------------------------------------
    for batch in timer.timed(loader):
        batch = rt.to_device(batch)
        lr = set_lr(optimizer, schedule(step))
        with rt.autocast():
            out = net(batch["start_pix"], batch.get("patch_tokens"), batch.get("cls_token"), batch.get("image"))
            loss = volume_query_loss(out, batch, mcfg)
        optimizer.zero_grad(set_to_none=True)
        loss["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        losses.append(float(loss["loss"].detach()))
        for k in LOSSES:
            sums[k] += float(loss[k].detach())
        for k, v in batch_sums(out, batch, mcfg, data.spec.height_edges, frame_sizes(data, batch["index"])).items():
            sums[k] += v
        sums["n_steps"] += 1
        timer.step_end()

        evaluate_now = val is not None and step % cfg.eval_every == 0   # not at a shorter run's end: resumable logs
        if step % cfg.log_every == 0 or step == 1 or step == cfg.steps or evaluate_now:
            row = {f"train_{k}" if k.startswith("pix_argmax") else k: v
                   for k, v in summarise(rt.all_reduce_sums(sums)).items()}
            if evaluate_now:
                row |= evaluate(model, val, rt, mcfg, cfg, data.spec.height_edges)
            if rt.peak_memory_gib() is not None:
                row["peak_mem_gib"] = rt.peak_memory_gib()
            logger.log({"step": step, "epoch": order.epoch(step - 1), "lr": lr, **row,
                        "data_wait_frac": timer.fraction(), "steps_per_s": timer.steps_per_s()})
            sums = dict.fromkeys(SUMS, 0.0)
            timer.reset()
        if rt.is_main and cfg.plot_every > 0 and (step % cfg.plot_every == 0 or step == cfg.steps):
            plots.append(plot_first(out_dir / "plots" / f"step_{step:06d}.png", data, batch, out, mcfg, step))
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            all_sums = rt.gather(sums)                 # each rank's accumulators since the last record
            if rt.is_main:
                save_checkpoint(out_dir / CHECKPOINT, model=net, optimizer=optimizer, step=step,
                                sampler=order.state(step), config=asdict(cfg) | {"model_config": asdict(mcfg)},
                                extra={"samplers": [order.state(step, r) for r in range(rt.world_size)],
                                       "sums": all_sums}, pause=pause)
            rt.barrier()
    rt.barrier()
    return TrainResult(out=out_dir, step=step, resumed_from=start, records=logger.records(), losses=losses,
                       plots=plots, final=next((r for r in reversed(logger.records()) if "val_loss" in r), {}))


TABLE_COLUMNS = ("step", "loss", "volume", "gripper", "rotation", "train_pix_argmax", "pix_start_baseline",
                 "grip_acc", "rot_acc", "err3d_m", "val_pix_argmax", "val_grip_acc", "data_wait_frac",
                 "steps_per_s")


def run(cfg: TrainConfig) -> TrainResult:
    """Train and, on rank 0, print the metric table and where the files are (the CLI's body)."""
    result = train(cfg)
    if result.records:                                   # rank 0 only
        print(format_table(result.records, TABLE_COLUMNS))
        first, last = result.records[0], result.records[-1]
        print(f"\ntrain_pix_argmax: {first['train_pix_argmax']:.2f} px (step {first['step']}) -> "
              f"{last['train_pix_argmax']:.2f} px (step {last['step']}) in source-frame pixels "
              f"({last['train_pix_argmax_cells']:.3f} cells of the {cfg.pred_size}x{cfg.pred_size} grid)")
        if result.final:
            print(f"val_pix_argmax: {result.final['val_pix_argmax']:.2f} px at step {result.final['step']}")
        print(f"checkpoint: {result.checkpoint}\nmetrics: {result.metrics}")
        for p in result.plots:
            print(f"plot: {p}")
    if torch.distributed.is_initialized():            # the torchrun group train() joined
        torch.distributed.destroy_process_group()
    return result

