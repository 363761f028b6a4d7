"""Flat trainer of seed 002's foveated captioner, streaming clips and captions from WebVid shards.

    shardyard train foveated-caption --shards STORE|http://HOST/STORE --out RUN [--steps 200]

Data: `loaders.streaming.ClipStream` (T = `--frames` 16 frames at `--size` 256 px by default), a DataLoader
with `num_workers` workers; the stream's position is saved with every checkpoint, so a rerun with the same
`--out` resumes mid-stream exactly (model, optimiser, stream position, RNG: bit-identical weights to an
uninterrupted run). Each optimiser step takes `grad_accum` batches; the mode of each step is drawn from
`mode_weights` by a generator seeded with (seed, step), one mode for the whole step (BUG-003). LR: linear
warmup then cosine decay to `min_lr` at `steps` (`train.loop.LRSchedule`). AdamW (seed: lr 3e-5). On CUDA:
bf16 autocast and gradient checkpointing of the LM.

Writes `RUN/latest.pth`, `RUN/metrics.jsonl` (per record: `loss_fine`, `loss_coarse`, `ratio` = mean coarse
over mean fine loss, `entropy_fine` / `entropy_coarse` (nats) and `max_attn_fine` / `max_attn_coarse` of the
last block's query attention, `clips_per_s`, `data_wait_frac`, `lr`, `epoch`), and every `sample_every` steps
`RUN/samples.jsonl`: ground truth, fine and coarse greedy captions of the step's first clips.

Source: seed 002 (`scripts/train_captioning_scaled.py`: batch 2 x 4, lr 3e-5 with warmup; the success metric
`loss_fine < loss_coarse`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.models.backbones import best_device
from shardyard.models.foveated import MODES, FoveatedCaptioner, FoveatedConfig
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

SAMPLES = "samples.jsonl"
_SUMS = ("loss_fine", "loss_coarse", "entropy_fine", "entropy_coarse", "max_attn_fine", "max_attn_coarse",
         "n_fine", "n_coarse", "clips")


@dataclass
class FoveatedTrainConfig:
    """Options of `train foveated-caption`.

    shards: shard store path or http(s) URL; out: run folder. frames / size / fps: clip length T, side in px,
    sampling rate in Hz (None: consecutive frames). model: overrides of `FoveatedConfig` fields (encoder, lm,
    deep, temperature, top_k, freeze_dino, query_dim, ...). steps: optimiser steps in total (a resumed run
    goes on to this count). batch_size: clips per micro-batch; grad_accum: micro-batches per step.
    mode_weights: probability of each mode per step. log_every / ckpt_every / sample_every: in steps
    (sample_every 0: no samples). checkpointing: gradient checkpointing (None: on CUDA only). bf16: autocast
    on CUDA. device: "auto", "cpu", "cuda".
    """

    shards: str
    out: str
    frames: int = 16
    size: int = 256
    fps: float | None = None
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 3e-5
    min_lr: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mode_weights: dict[str, float] = field(default_factory=lambda: {"caption": 1.0})
    num_workers: int = 0
    shuffle_buffer: int = 16
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    sample_every: int = 50
    sample_clips: int = 2
    sample_tokens: int = 32
    checkpointing: bool | None = None
    bf16: bool = True
    resume: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = set(self.mode_weights) - set(MODES)
        if bad or not self.mode_weights or min(self.mode_weights.values()) < 0 or sum(self.mode_weights.values()) <= 0:
            raise ConfigError(f"mode_weights {self.mode_weights}: modes of {MODES} with weights >= 0, sum > 0")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.frames < 1:
            raise ConfigError("steps, batch_size, grad_accum and frames must be >= 1")


@dataclass
class FoveatedTrainResult:
    """records: metrics.jsonl records; checkpoint, metrics, samples: paths; model: the trained captioner."""

    records: list[dict[str, Any]]
    checkpoint: Path
    metrics: Path
    samples: Path
    model: FoveatedCaptioner


def build_model(cfg: FoveatedTrainConfig, device: torch.device) -> FoveatedCaptioner:
    """The captioner of a run config (also used by `inspect RUN`)."""
    ckpt = cfg.checkpointing if cfg.checkpointing is not None else device.type == "cuda"
    mcfg = FoveatedConfig(**{"image_size": 224, "checkpointing": ckpt, **cfg.model, "device": str(device)})
    return FoveatedCaptioner(mcfg)


def step_mode(cfg: FoveatedTrainConfig, step: int) -> str:
    """The mode of optimiser step `step`: a pure function of (seed, step), one for the whole batch."""
    modes = sorted(cfg.mode_weights)
    p = np.array([cfg.mode_weights[m] for m in modes], dtype=np.float64)
    return modes[int(np.random.default_rng([cfg.seed, step]).choice(len(modes), p=p / p.sum()))]


def _truncate_jsonl(path: Path, step: int | None) -> None:
    """Keep the records with `step <= step` (all gone when `step` is None): a resumed run's file then equals
    an uninterrupted one's."""
    if not path.exists():
        return
    keep = [] if step is None else [line for line in path.read_text().splitlines() if line.strip()
                                    and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def write_samples(path: Path, model: FoveatedCaptioner, batch: dict[str, Any], step: int, n: int,
                  max_new_tokens: int) -> None:
    """Append greedy captions (fine, coarse) beside the ground truth of the first `n` clips of `batch`."""
    was = model.training
    model.eval()
    caps = model.generate(batch["frames"][:n], max_new_tokens=max_new_tokens)
    model.train(was)
    with open(path, "a") as f:
        for i in range(len(caps["fine"])):
            f.write(json.dumps({"step": step, "key": batch["key"][i], "caption": batch["caption"][i],
                                "fine": caps["fine"][i], "coarse": caps["coarse"][i]}) + "\n")


def _next_batch(it: Any, loader: Any, stream: ClipStream, cfg: FoveatedTrainConfig) -> tuple[dict[str, Any], Any]:
    """The next batch, starting the next epoch when the stream is exhausted; returns (batch, iterator)."""
    batch = next(it, None)
    if batch is None:
        stream.set_epoch(stream.epoch + 1)
        it = iter(loader)
        batch = next(it, None)
        if batch is None:
            raise ConfigError(f"{cfg.shards}: no clip of {cfg.frames} frames in the shard store")
    return batch, it


def _accumulate(sums: dict[str, float], out: dict[str, Any], mode: str, clips: int, accum: int) -> None:
    """Add one micro-batch's losses and attention statistics to the running sums."""
    sums["clips"] += clips
    names = ("coarse", "fine") if mode == "caption" else ("coarse",)
    for p in names:
        for k in (f"loss_{p}", f"entropy_{p}", f"max_attn_{p}"):
            sums[k] += float(out[k].detach()) / accum
        sums[f"n_{p}"] += 1 / accum


def _record(sums: dict[str, float], timer: DataWait, **head: Any) -> dict[str, Any]:
    """One metrics record from the sums since the last one (means per step; ratio of the mean losses)."""
    rec = dict(head)
    for p in ("coarse", "fine"):
        if sums[f"n_{p}"] > 0:
            rec.update({k: sums[k] / sums[f"n_{p}"] for k in (f"loss_{p}", f"entropy_{p}", f"max_attn_{p}")})
    if "loss_fine" in rec:
        rec["ratio"] = rec["loss_coarse"] / max(rec["loss_fine"], 1e-12)
    rec.update(clips_per_s=sums["clips"] / timer.step_s if timer.step_s > 0 else 0.0,
               data_wait_frac=timer.fraction(), steps_per_s=timer.steps_per_s())
    return rec


def train(cfg: FoveatedTrainConfig) -> FoveatedTrainResult:
    """Train (or resume) per `cfg`. Raises StoreError for an unusable shard store, ConfigError for options."""
    # ---- init: device, model, optimiser, data, resume -----------------------------------------------------
    device = best_device(cfg.device)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    model = build_model(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = LRSchedule(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)
    stream = ClipStream(cfg.shards, config=StreamConfig(num_frames=cfg.frames, size=cfg.size, fps=cfg.fps,
                                                        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed))
    step, sums = 0, dict.fromkeys(_SUMS, 0.0)
    ckpt_path, samples_path = out_dir / CHECKPOINT, out_dir / SAMPLES
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer)
        step, sums = state["step"], state["extra"]["sums"]
        stream.load_state_dict(state["sampler"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    logger = MetricLogger(out_dir / METRICS, resume_step=step if step else None)
    _truncate_jsonl(samples_path, step if step else None)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    it, timer = iter(loader), DataWait()
    model.train()
    log.info("training %d params (%d trainable) on %s from step %d", sum(p.numel() for p in model.parameters()),
             sum(p.numel() for p in params), device, step)

    # ---- the loop ---------------------------------------------------------------------------------------
    while step < cfg.steps:
        timer.wait_start()
        lr, mode = schedule(step), step_mode(cfg, step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch, it = _next_batch(it, loader, stream, cfg)
            if micro == 0:
                timer.wait_end()
            else:                                               # the timer's step started before micro 0
                timer.wait_s += time.perf_counter() - t0
            stream.record(batch)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16):
                out = model(batch["frames"], batch["caption"], mode=mode)
            (out["loss"] / cfg.grad_accum).backward()
            _accumulate(sums, out, mode, len(batch["caption"]), cfg.grad_accum)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        timer.step_end()

        if step % cfg.log_every == 0 or step == 1 or step == cfg.steps:
            logger.log(_record(sums, timer, step=step, epoch=stream.epoch, lr=lr, mode=mode))
            sums = dict.fromkeys(_SUMS, 0.0)
            timer.reset()
        if cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == cfg.steps):
            write_samples(samples_path, model, batch, step, cfg.sample_clips, cfg.sample_tokens)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, step=step, sampler=stream.state_dict(),
                            config=asdict(cfg) | {"model_config": asdict(model.config)}, extra={"sums": sums})

    return FoveatedTrainResult(records=logger.records(), checkpoint=ckpt_path, metrics=out_dir / METRICS,
                               samples=samples_path, model=model)


COLUMNS = ("step", "loss_fine", "loss_coarse", "ratio", "entropy_fine", "entropy_coarse", "max_attn_fine",
           "max_attn_coarse", "clips_per_s", "data_wait_frac")


def format_table(records: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Plain-text table of metric records (the CLI's summary)."""
    cell = lambda r, c: str(r["step"]) if c == "step" else f"{r.get(c, float('nan')):.4g}"  # noqa: E731
    rows = [[cell(r, c) for c in columns] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(x.rjust(w) for x, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def run(cfg: FoveatedTrainConfig) -> FoveatedTrainResult:
    """Train, then print the metric table, the last sample captions and where the files are (the CLI's body)."""
    result = train(cfg)
    print(format_table(result.records))
    if result.samples.exists():
        lines = [json.loads(line) for line in result.samples.read_text().splitlines() if line.strip()]
        for s in lines[-cfg.sample_clips:]:
            print(f"\nstep {s['step']} {s['key']}\n  truth:  {s['caption']!r}\n  fine:   {s['fine']!r}\n"
                  f"  coarse: {s['coarse']!r}")
    print(f"\ncheckpoint: {result.checkpoint}\nmetrics: {result.metrics}\nsamples: {result.samples}")
    return result


if __name__ == "__main__":
    from shardyard.cli import main as _cli_main

    sys.argv = [sys.argv[0], "train", "foveated-caption", *sys.argv[1:]]
    _cli_main()
