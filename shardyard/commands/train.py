"""`shardyard train MODEL ...`: thin wrappers over the flat trainers in `shardyard.train`. Options come from
the trainers' config dataclasses (`train/configs.py`, through `commands/options.py`): a default lives
there only. The trainers (and torch) are imported when a command runs, not when the CLI starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from shardyard.commands.common import train_app
from shardyard.commands.options import config_command
from shardyard.errors import ConfigError
from shardyard.train.configs import DepthTrainConfig, FoveatedTrainConfig, PatchPredictConfig, TrainConfig

__all__ = ["COMMON_HELP", "EXTRA", "FOVEATED_EXTRA", "depth", "foveated_caption", "patch_predict", "volume_query"]

COMMON_HELP = {
    "out": "Run folder: latest.pth, metrics.jsonl (resumed when it holds a checkpoint of the same config).",
    "steps": "Optimiser steps in total (a resumed run goes on to this count).",
    "device": "auto, cpu, cuda or cuda:N.",
    "amp": "Autocast: auto (bf16 on CUDA, off on CPU), bf16, fp16 or off.",
    "seed": "Seed of the batch order and the initial weights.",
    "verify_reads": "Check every read against the store's recorded checksums (StoreDamagedError on damage).",
    "pause_file": "While this file exists, wait after each checkpoint (from the --pause-after-th on); delete it to go "
                  "on. A paused run can be killed and resumed from that checkpoint.",
    "pause_after": "First checkpoint of this run at which --pause-file is honoured.",
}


def volume_query(cfg: TrainConfig) -> None:
    """Train seed 001's volume-query model; the trainer prints the metric table and the file paths."""
    from shardyard.train.volume_query import run

    run(cfg)


config_command(
    train_app, "volume-query", TrainConfig, volume_query,
    help="Train seed 001's volume-query trajectory model; prints the metric table and where the plots are.",
    names={"model": "--model-opt"},
    option_help=COMMON_HELP | {
        "store": "Episodic store with robot stats (ingest yam/libero/lerobot).",
        "features": "Feature store of `ingest dino` on STORE (else the live --backbone runs every step).",
        "backbone": "Live backbone when no --features.",
        "camera": "Camera to train on: a role (top) or a field (obs.rgb.top); default the store's first camera, "
                  "named in a warning when the store has several.",
        "frame_stride": "Steps s between the T future steps.",
        "window": "Future steps T.", "pred_size": "Side P of the prediction grid (cells).",
        "robot": "Robot prefix of the stats (default the first).",
        "rotation_mode": "1d_pca or kmeans (default: the stats' choice).",
        "model": "VolumeQueryConfig override, e.g. d_feat=8.",
        "decay_steps": "Cosine decay end (0: constant lr after warmup).",
        "eval_every": "Validation pass on the held-out episodes every N steps (0: none).",
        "resume": "Resume from RUN/latest.pth if it exists (--no-resume starts over).",
    })


def depth(cfg: DepthTrainConfig) -> None:
    """Train seed 003's DPT decoder and print the last eval row."""
    from shardyard.train.depth import train_depth
    from shardyard.train.depth_metrics import format_table

    result = train_depth(cfg)
    if result.resumed_from:
        typer.echo(f"resumed from step {result.resumed_from}")
    if result.final:
        typer.echo(format_table([result.final]))
    typer.echo(f"step {result.step}: checkpoint {result.checkpoint}, metrics {result.metrics}")


config_command(
    train_app, "depth", DepthTrainConfig, depth,
    help="Train seed 003's DPT depth decoder (SILog) on cached DINO tokens; prints the metric table.",
    option_help=COMMON_HELP | {
        "store": "Episodic store with obs.rgb + obs.depth (ingest nyu).",
        "features": "Tokens of `ingest dino --layers` on STORE.",
        "steps": "Optimiser steps in total (the schedule's length).",
        "stop_at": "Stop at this step (checkpointed; rerun to resume).",
        "lr": "Decoder lr.", "encoder_lr": "Backbone lr with --live-backbone.",
        "features_dim": "DPT fusion width D.", "reassemble_channels": "DPT reassemble widths per level.",
        "live_backbone": "Fine-tune the ViT with BTS augmentation.",
        "augment": "BTS augmentation in live mode.",
        "model": "Live backbone when no --features.", "layers": "Live backbone layers when no --features.",
        "image_size": "Live backbone input S or WxH when no --features.",
        "augment_cfg": "BTS augmentation setting, e.g. flip_p=0.",
    })


def patch_predict(cfg: PatchPredictConfig, gaps: str | None = None) -> None:
    """One run, or one per gap with seed 004's table (`--gaps`)."""
    from shardyard.train.patch_predict import gap_table, run, run_gaps

    if gaps:
        try:
            values = [int(g) for g in gaps.split(",")]
        except ValueError:
            raise ConfigError(f"--gaps takes comma-separated integers, got {gaps!r}") from None
        typer.echo(gap_table(run_gaps(cfg, values), cfg.model), nl=False)
        return
    r = run(cfg).final
    typer.echo(f"gap {cfg.gap} {cfg.model}: cos {r['cos']:.4f} mse {r['mse']:.4f} | copy cos "
               f"{r['copy_cos']:.4f} mse {r['copy_mse']:.4f} | improvement {r['improvement']:+.1f}%")


EXTRA: dict[str, tuple[Any, Any]] = {
    "gaps": (Optional[str], typer.Option(None, help="Comma-separated gaps: one run each + seed 004's table.")),
}

config_command(
    train_app, "patch-predict", PatchPredictConfig, patch_predict, extra=EXTRA,
    help="Predict future DINO patches (seed 004): cosine / MSE vs the copy baseline, per gap.",
    option_help=COMMON_HELP | {
        "features": "Feature store of `ingest dino --fps`.",
        "gap": "Rows (frames at the store's --fps) between input and target.",
        "model": "copy, linear or mlp.",
        "stream": "Shard store / folder of tars to stream clips from.",
        "live_backbone": "Tokens from the frozen backbone per step.",
    })


def foveated_caption(cfg: FoveatedTrainConfig, attention_out: Path | None = None) -> None:
    """Train seed 002's captioner (the trainer prints the table and sample captions); then, with
    `--attention-out`, draw the attention overlays of the trained model."""
    from shardyard.train.foveated_caption import run

    result = run(cfg)
    if attention_out is not None and result.records:                   # rank 0 only
        from shardyard.tools.inspect.foveated import draw_run

        for p in draw_run(result.out, attention_out):
            typer.echo(f"picture: {p}")


FOVEATED_EXTRA: dict[str, tuple[Any, Any]] = {
    "attention_out": (Optional[Path], typer.Option(None, "--attention-out",
                                                   help="Draw attention overlays (PNG + GIF) here after training.")),
}

config_command(
    train_app, "foveated-caption", FoveatedTrainConfig, foveated_caption, extra=FOVEATED_EXTRA,
    help="Train seed 002's foveated one-token-per-frame captioner; prints losses, ratio and sample captions.",
    names={"model": "--model-opt", "fetch": "--fetch-opt"},
    option_help=COMMON_HELP | {
        "shards": "WebVid shard store (path or http:// URL) of `ingest webvid`.",
        "urls": "Or stream straight from a WebVid URL list (CSV, parquet or save_to_disk folder) with no local copy.",
        "cache": "--urls: write downloaded blocks here as `ingest webvid` shards (finish with `ingest webvid META "
                 "--out DIR --retry-failed`).",
        "in_flight": "--urls: downloads at once per DataLoader worker.",
        "ahead": "--urls: clips decoded ahead per worker (memory: T x 3 x size^2 bytes each).",
        "fetch_ahead": "--urls: rows whose download starts ahead per worker: covers stalled and slow downloads.",
        "fetch_ahead_mb": "--urls: MB of downloaded, not yet decoded bodies a worker holds at most.",
        "min_success": "--urls: stop when fewer than this fraction of a worker's recent downloads give a clip.",
        "min_success_window": "--urls: downloads per worker the success rate is taken over.",
        "allow_private_urls": "--urls: fetch from loopback/private addresses too (only for metadata you trust).",
        "fetch": "--urls: download setting, e.g. timeout_s=10, retries=2, backoff_s=0.5.",
        "out": "Run folder: latest.pth, metrics.jsonl, samples.jsonl (resumed when it holds a checkpoint of the "
               "same config).",
        "steps": "Optimiser steps in total (the cosine schedule's length).",
        "frames": "Frames per clip T.", "size": "Clip side, px.",
        "resize": "How a clip of another aspect ratio becomes size x size: stretch (squashed, the default), crop "
                  "(aspect kept, centre cut) or pad (aspect kept, centred on black).",
        "fps": "Sample clips at this rate, Hz (default: consecutive frames).",
        "encoder": "DINO spec, local folder or random-dinov2-small.",
        "lm": "Local causal-LM folder, tiny-random-llama or random-smollm-135m.",
        "image_size": "Encoder input side, px.",
        "model": "FoveatedConfig override, e.g. deep=false (shallow), temperature=2, top_k=8, freeze_dino=false.",
        "batch_size": "Clips per micro-batch.", "grad_accum": "Micro-batches per optimiser step.",
        "min_lr": "End of the cosine decay.", "warmup_steps": "Linear warmup steps.",
        "mode_weights": "Weight of each mode per step, e.g. coarse=0.5 (caption=1 unless given).",
        "shuffle_buffer": "Clips held for shuffling per worker.",
        "sample_every": "Greedy captions into samples.jsonl every N steps (0: none).",
        "sample_clips": "Clips captioned per sample.", "sample_tokens": "Tokens generated per caption.",
        "checkpointing": "Gradient checkpointing: auto (on CUDA), on or off.",
        "resume": "Resume from RUN/latest.pth if it exists (--no-resume starts over).",
    })
