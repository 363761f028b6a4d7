"""`shardyard train foveated-caption`: seed 002's foveated captioner on streamed WebVid shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import fail, train_app
from shardyard.errors import ShardyardError


def _model_opts(pairs: list[str]) -> dict:
    """`k=v` overrides of `FoveatedConfig`: ints, floats, true/false, none, else strings."""
    opts: dict = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise typer.BadParameter(f"--model-opt takes k=v, got {kv!r}")
        low = v.lower()
        if low in ("true", "false"):
            opts[k] = low == "true"
        elif low == "none":
            opts[k] = None
        else:
            try:
                opts[k] = int(v)
            except ValueError:
                try:
                    opts[k] = float(v)
                except ValueError:
                    opts[k] = v
    return opts


@train_app.command("foveated-caption")
def train_foveated_caption_cmd(
    shards: str = typer.Option(..., "--shards", help="WebVid shard store (path or http:// URL) of `ingest webvid`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl, samples.jsonl."),
    steps: int = typer.Option(200, help="Optimiser steps in total."),
    frames: int = typer.Option(16, help="Frames per clip T."), size: int = typer.Option(256, help="Clip side, px."),
    fps: Optional[float] = typer.Option(None, help="Sample clips at this rate, Hz (default: consecutive frames)."),
    batch_size: int = typer.Option(2), grad_accum: int = typer.Option(1),
    lr: float = typer.Option(3e-5), min_lr: float = typer.Option(0.0), warmup_steps: int = typer.Option(20),
    weight_decay: float = typer.Option(0.01),
    encoder: str = typer.Option("tiny-random-dinov2", help="DINO spec, local folder or random-dinov2-small."),
    lm: str = typer.Option("tiny-random-llama", help="Local causal-LM folder, tiny-random-llama, random-smollm-135m."),
    image_size: int = typer.Option(224, help="Encoder input side, px."),
    shallow: bool = typer.Option(False, "--shallow", help="Shallow query attention (the seed's comparison)."),
    temperature: float = typer.Option(1.0), top_k: int = typer.Option(0, help="Top-k attention (0: off)."),
    train_dino: bool = typer.Option(False, "--train-dino", help="Fine-tune the encoder (default frozen)."),
    model_opt: Optional[list[str]] = typer.Option(None, "--model-opt", help="FoveatedConfig override k=v."),
    coarse_mode_weight: float = typer.Option(0.0, help="Share of steps in coarse-only mode."),
    num_workers: int = typer.Option(0), shuffle_buffer: int = typer.Option(16), seed: int = typer.Option(0),
    log_every: int = typer.Option(10), ckpt_every: int = typer.Option(50), sample_every: int = typer.Option(50),
    attention_out: Optional[Path] = typer.Option(None, "--attention-out", help="Draw attention overlays here."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if RUN/latest.pth exists."),
    device: str = typer.Option("auto"),
) -> None:
    """Train seed 002's foveated one-token-per-frame captioner; prints losses, ratio and sample captions."""
    from shardyard.train.foveated_caption import FoveatedTrainConfig, run

    model = {"encoder": encoder, "lm": lm, "image_size": image_size, "deep": not shallow,
             "temperature": temperature, "top_k": top_k, "freeze_dino": not train_dino,
             **_model_opts(model_opt or [])}
    weights = {"caption": 1.0 - coarse_mode_weight, "coarse": coarse_mode_weight}
    try:
        result = run(FoveatedTrainConfig(
            shards=shards, out=str(out), frames=frames, size=size, fps=fps, model=model, steps=steps,
            batch_size=batch_size, grad_accum=grad_accum, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, mode_weights={k: v for k, v in weights.items() if v > 0},
            num_workers=num_workers, shuffle_buffer=shuffle_buffer, seed=seed, log_every=log_every,
            ckpt_every=ckpt_every, sample_every=sample_every, resume=not no_resume, device=device))
        if attention_out is not None:
            from shardyard.inspection_foveated import draw_run

            for p in draw_run(out, attention_out, model=result.model):
                typer.echo(f"picture: {p}")
    except ShardyardError as e:
        fail(e)
