"""`shardyard train MODEL ...`: thin wrappers over the flat trainers in `shardyard.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import fail, parse_size, train_app
from shardyard.errors import ShardyardError


@train_app.command("patch-predict")
def train_patch_predict_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino --fps`."),
    gap: int = typer.Option(8, help="Rows (frames at the store's --fps) between input and target."),
    gaps: Optional[str] = typer.Option(None, help="Comma-separated gaps: one run each + seed 004's table."),
    model: str = typer.Option("mlp", help="copy, linear or mlp."), steps: int = typer.Option(200),
    batch_size: int = typer.Option(32), lr: float = typer.Option(1e-3), eval_every: int = typer.Option(50),
    stream: Optional[str] = typer.Option(None, "--stream", help="Shard store / folder of tars to stream clips from."),
    live_backbone: bool = typer.Option(False, "--live-backbone", help="Tokens from the frozen backbone per step."),
    backbone: str = typer.Option("tiny-random-dinov2"), image_size: int = typer.Option(224),
    stream_fps: float = typer.Option(8.0), seed: int = typer.Option(0), device: str = typer.Option("cpu"),
) -> None:
    """Predict future DINO patches (seed 004): cosine / MSE vs the copy baseline, per gap."""
    from shardyard.train.patch_predict import PatchPredictConfig, format_table, run, run_gaps

    try:
        cfg = PatchPredictConfig(out=str(out), features=features, gap=gap, model=model, steps=steps,
                                 batch_size=batch_size, lr=lr, eval_every=eval_every, ckpt_every=eval_every,
                                 stream=stream, live_backbone=live_backbone, backbone=backbone,
                                 image_size=image_size, stream_fps=stream_fps, seed=seed, device=device)
        if gaps:
            typer.echo(format_table(run_gaps(cfg, [int(g) for g in gaps.split(",")]), model), nl=False)
        else:
            r = run(cfg)
            typer.echo(f"gap {gap} {model}: cos {r['cos']:.4f} mse {r['mse']:.4f} | copy cos "
                       f"{r['copy_cos']:.4f} mse {r['copy_mse']:.4f} | improvement {r['improvement']:+.1f}%")
    except (ShardyardError, ValueError) as e:
        fail(e)


@train_app.command("volume-query")
def train_volume_query_cmd(
    store: str = typer.Option(..., "--store", help="Episodic store with robot stats (ingest yam/libero/lerobot)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl, plots/ (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino` on STORE."),
    steps: int = typer.Option(300, help="Optimiser steps in total."),
    batch_size: int = typer.Option(8), lr: float = typer.Option(5e-5), weight_decay: float = typer.Option(1e-4),
    warmup_steps: int = typer.Option(0), decay_steps: int = typer.Option(0, help="Cosine decay end (0: constant)."),
    window: int = typer.Option(8, help="Future steps T."), frame_stride: int = typer.Option(3),
    pred_size: int = typer.Option(56), camera: Optional[str] = typer.Option(None),
    robot: Optional[str] = typer.Option(None, help="Robot prefix of the stats (default the first)."),
    rotation_mode: Optional[str] = typer.Option(None, help="1d_pca or kmeans (default: the stats' choice)."),
    model_opt: Optional[list[str]] = typer.Option(None, "--model-opt", help="VolumeQueryConfig override k=v."),
    backbone: str = typer.Option("tiny-random-dinov2", help="Live backbone when no --features."),
    num_workers: int = typer.Option(0), seed: int = typer.Option(0), log_every: int = typer.Option(10),
    ckpt_every: int = typer.Option(100), plot_every: int = typer.Option(100),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if RUN/latest.pth exists."),
    device: str = typer.Option("auto"),
) -> None:
    """Train seed 001's volume-query trajectory model; prints the metric table and where the plots are."""
    from shardyard.train.volume_query import TrainConfig, run

    opts = {}
    for kv in model_opt or []:
        k, _, v = kv.partition("=")
        opts[k] = float(v) if "." in v else int(v)
    try:
        run(TrainConfig(store=store, out=str(out), features=features, backbone=backbone, camera=camera, robot=robot,
                        rotation_mode=rotation_mode, window=window, frame_stride=frame_stride, pred_size=pred_size,
                        model=opts, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, decay_steps=decay_steps, num_workers=num_workers, seed=seed,
                        log_every=log_every, ckpt_every=ckpt_every, plot_every=plot_every,
                        resume=not no_resume, device=device))
    except ShardyardError as e:
        fail(e)


@train_app.command("depth")
def train_depth_cmd(
    store: str = typer.Option(..., "--store", help="Episodic store with obs.rgb + obs.depth (ingest nyu)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl, PNGs (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Tokens of `ingest dino --layers` on STORE."),
    steps: int = typer.Option(2000, help="Optimiser steps in total (the schedule's length)."),
    stop_at: Optional[int] = typer.Option(None, help="Stop at this step (checkpointed; rerun to resume)."),
    batch_size: int = typer.Option(4), lr: float = typer.Option(1e-4, help="Decoder lr."),
    encoder_lr: float = typer.Option(5e-6, help="Backbone lr with --live-backbone."),
    weight_decay: float = typer.Option(0.01), warmup_steps: int = typer.Option(500),
    eta_min: float = typer.Option(1e-6), silog_lambda: float = typer.Option(0.85),
    features_dim: int = typer.Option(64, help="DPT fusion width D."),
    reassemble_channels: str = typer.Option("48,96,192,384", help="DPT reassemble widths per level."),
    live_backbone: bool = typer.Option(False, "--live-backbone", help="Fine-tune the ViT with BTS augmentation."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No BTS augmentation in live mode."),
    model: str = typer.Option("tiny-random-dinov2", help="Live backbone when no --features."),
    layers: str = typer.Option("-1", help="Live backbone layers when no --features."),
    image_size: str = typer.Option("224", help="Live backbone input S or WxH when no --features."),
    eval_every: int = typer.Option(500), ckpt_every: int = typer.Option(500), log_every: int = typer.Option(10),
    eval_max_images: Optional[int] = typer.Option(None), seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Train seed 003's DPT depth decoder (SILog) on cached DINO tokens; prints the metric table."""
    from shardyard.train.depth import DepthTrainConfig, train_depth
    from shardyard.train.depth_metrics import format_table

    try:
        cfg = DepthTrainConfig(
            store=store, out=out, features=features, steps=steps, stop_at=stop_at, batch_size=batch_size, lr=lr,
            encoder_lr=encoder_lr, weight_decay=weight_decay, warmup_steps=warmup_steps, eta_min=eta_min,
            silog_lambda=silog_lambda, features_dim=features_dim, live_backbone=live_backbone,
            reassemble_channels=tuple(int(x) for x in reassemble_channels.split(",")),
            augment=not no_augment, model=model, layers=tuple(int(x) for x in layers.split(",")),
            image_size=parse_size(image_size), eval_every=eval_every, ckpt_every=ckpt_every,
            log_every=log_every, eval_max_images=eval_max_images, seed=seed, device=device)
        result = train_depth(cfg)
    except ShardyardError as e:
        fail(e)
    if result.resumed_from:
        typer.echo(f"resumed from step {result.resumed_from}")
    if result.metrics:
        typer.echo(format_table([result.metrics]))
    typer.echo(f"step {result.step}: checkpoint {out / 'latest.pth'}, metrics {out / 'metrics.jsonl'}")
