"""Flat trainer of seed 002's foveated captioner, streaming clips and captions from WebVid shards.

    shardyard train foveated-caption --shards STORE|http://HOST/STORE --out RUN [--steps 200]
    shardyard train foveated-caption --urls META.csv|.parquet --out RUN [--cache DIR] [--min-success 0.5]

Data: `loaders.streaming.ClipStream` (T = `--frames` 16 frames at `--size` 256 px by default), a DataLoader
with `num_workers` workers; the stream's position is saved with every checkpoint, so a rerun with the same
`--out` resumes mid-stream exactly (model, optimiser, stream position, RNG: bit-identical weights to an
uninterrupted run). Each optimiser step takes `grad_accum` batches; the mode of each step is drawn from
`mode_weights` by a generator seeded with (seed, step), one mode for the whole step (BUG-003). LR: linear
warmup then cosine decay to `min_lr` at `steps` (`train.loop.LRSchedule`). AdamW (seed: lr 3e-5). Runtime
(`train.runtime`): autocast per `--amp` (auto: bf16 on CUDA, off on CPU), batches pinned and copied
`non_blocking`, gradient checkpointing of the LM on CUDA (`--checkpointing auto`). Under torchrun the model
is wrapped in DDP and each rank streams its own shards (`shards[rank::world_size]`); the checkpoint holds
every rank's stream position. DDP needs a gradient for every parameter, so coarse-only steps (which leave
the fine pass's `q_init` and `query_head` unused) are refused there, as are fewer shards than ranks.

`--urls`: the clips come straight from a WebVid URL list (`loaders.url_stream.UrlClipStream`: downloads ahead,
failures counted by reason, exact resume with the failed rows recorded in the checkpoint; `--cache DIR` keeps
what was downloaded as `ingest webvid` shards). Each metrics record then also has `stream_ok`,
`stream_failed` and `stream_failed_<reason>` (rows the workers finished in the interval), and the run stops
with a `SourceError` naming the counts when fewer than `--min-success` of a worker's last
`--min-success-window` downloads gave a clip.

Writes `RUN/latest.pth` (`train.loop`'s layout; a rerun refuses a checkpoint of another config, naming the
differing fields), `RUN/metrics.jsonl` (per record: `loss_fine`, `loss_coarse`, `ratio` = mean coarse
over mean fine loss, `entropy_fine` / `entropy_coarse` (nats) and `max_attn_fine` / `max_attn_coarse` of the
last block's query attention, `clips_per_s`, `data_wait_frac`, `lr`, `epoch`), and every `sample_every` steps
`RUN/samples.jsonl`: ground truth, fine and coarse greedy captions of the step's first clips.

Source: seed 002 (`scripts/train_captioning_scaled.py`: batch 2 x 4, lr 3e-5 with warmup; the success metric
`loss_fine < loss_coarse`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from shardyard.errors import ConfigError, SourceError
from shardyard.ingest.fetch import FetchConfig
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.loaders.url_stream import UrlClipStream, UrlStreamConfig, worker_error
from shardyard.models.foveated import FoveatedCaptioner, FoveatedConfig
from shardyard.procs import loader_worker_init
from shardyard.train.configs import PAUSE_FIELDS, FoveatedTrainConfig, ModeWeights
from shardyard.train.loop import (
    CHECKPOINT,
    METRICS,
    DataWait,
    LRSchedule,
    MetricLogger,
    TrainResult,
    format_table,
    pause_point,
    resume_state,
    save_checkpoint,
    set_lr,
)
from shardyard.train.runtime import Runtime, setup_runtime

__all__ = ["FoveatedTrainConfig", "ModeWeights", "build_model", "step_mode", "train", "run", "write_samples"]

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
SUMS = ("loss_fine", "loss_coarse", "entropy_fine", "entropy_coarse", "max_attn_fine", "max_attn_coarse",
        "n_fine", "n_coarse", "clips")
# may change between a run and its resume: where it is read from (a store served over HTTP), how it logs, runs
RESUME_IGNORES = ("shards", "out", "log_every", "ckpt_every", "sample_every", "sample_clips", "sample_tokens",
                  "checkpointing", "resume", "device", "amp", "verify_reads", "urls", "cache", "in_flight", "ahead",
                  "fetch_ahead", "fetch_ahead_mb", "min_success", "min_success_window", "allow_private_urls", "fetch",
                  *PAUSE_FIELDS)
COLUMNS = ("step", "loss_fine", "loss_coarse", "ratio", "entropy_fine", "entropy_coarse", "max_attn_fine",
           "max_attn_coarse", "clips_per_s", "data_wait_frac")


# ---- model ----------------------------------------------------------------------------------------------
def build_model(cfg: FoveatedTrainConfig, device: torch.device) -> FoveatedCaptioner:
    """The captioner of a run config on `device` (also used by `inspect RUN`)."""
    ckpt = cfg.checkpointing == "on" or (cfg.checkpointing == "auto" and device.type == "cuda")
    return FoveatedCaptioner(FoveatedConfig(**{**cfg.model, "encoder": cfg.encoder, "lm": cfg.lm,
                                               "image_size": cfg.image_size, "checkpointing": ckpt,
                                               "device": str(device)}))


def step_mode(cfg: FoveatedTrainConfig, step: int) -> str:
    """The mode of optimiser step `step`: a pure function of (seed, step), one for the whole batch (BUG-003).
    Modes of weight 0 are left out of the draw."""
    weights = asdict(cfg.mode_weights) if not isinstance(cfg.mode_weights, dict) else cfg.mode_weights
    modes = [m for m in sorted(weights) if weights[m] > 0]
    p = np.array([weights[m] for m in modes], dtype=np.float64)
    return modes[int(np.random.default_rng([cfg.seed, step]).choice(len(modes), p=p / p.sum()))]


def write_samples(samples: MetricLogger, model: FoveatedCaptioner, batch: dict[str, Any], step: int, n: int,
                  max_new_tokens: int) -> None:
    """Log greedy captions (fine, coarse) beside the ground truth of the first `n` clips of `batch`
    (`frames (B, T, 3, H, W) uint8`, `caption`, `key`), one record per clip."""
    was = model.training
    model.eval()
    caps = model.generate(batch["frames"][:n], max_new_tokens=max_new_tokens)
    model.train(was)
    for i in range(len(caps["fine"])):
        samples.log({"step": step, "key": batch["key"][i], "caption": batch["caption"][i],
                     "fine": caps["fine"][i], "coarse": caps["coarse"][i]})


# ---- data -----------------------------------------------------------------------------------------------
def open_stream(cfg: FoveatedTrainConfig, ordered: bool = False) -> ClipStream | UrlClipStream:
    """The training clip stream (`frames (T, 3, size, size) uint8`, `caption`, `key`): over the shard store,
    or (`--urls`) straight from the URL list (`ordered`: in file order from each clip's first frame, no cache)."""
    if cfg.urls is not None:
        fetch = FetchConfig(**{"allow_private_urls": cfg.allow_private_urls, **cfg.fetch})
        return UrlClipStream(cfg.urls, UrlStreamConfig(
            num_frames=cfg.frames, size=cfg.size, resize=cfg.resize, fps=cfg.fps, seed=cfg.seed,
            in_flight=cfg.in_flight, ahead=cfg.ahead, fetch_ahead=cfg.fetch_ahead,
            fetch_ahead_mb=cfg.fetch_ahead_mb, fetch=fetch, cache=None if ordered else cfg.cache,
            min_success=cfg.min_success, window=cfg.min_success_window, shuffle=not ordered,
            clip_start="start" if ordered else "random"))
    return ClipStream(cfg.shards, config=StreamConfig(num_frames=cfg.frames, size=cfg.size, resize=cfg.resize,
                                                      fps=cfg.fps, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                                                      verify_reads=cfg.verify_reads))


def clip_batches(stream: ClipStream, cfg: FoveatedTrainConfig, pin: bool) -> Iterator[dict[str, Any]]:
    """Batches of `batch_size` clips, epoch after epoch (`stream.set_epoch`), endlessly. Raises ConfigError
    when an epoch yields no clip."""
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         pin_memory=pin, worker_init_fn=loader_worker_init())
    while True:
        n = 0
        try:
            for n, batch in enumerate(loader, 1):
                yield batch
        except SourceError as e:                        # a URL stream's worker gave up (min_success)
            raise worker_error(e) from None
        if n == 0 and isinstance(stream, UrlClipStream):
            raise ConfigError(f"{cfg.urls}: no clip of {cfg.frames} frames in an epoch: {stream.summary()}")
        if n == 0:
            raise ConfigError(f"{cfg.shards}: no clip of {cfg.frames} frames in the shard store")
        stream.set_epoch(stream.epoch + 1)


# ---- loop -----------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """A run ready to train: runtime, model (and its DDP wrapper `net`), optimiser, schedule, stream,
    the step it starts at, the running sums and the two logs."""

    rt: Runtime
    model: FoveatedCaptioner
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    stream: ClipStream | UrlClipStream
    step: int
    sums: dict[str, float]
    logger: MetricLogger
    samples: MetricLogger


def setup(cfg: FoveatedTrainConfig) -> Setup:
    """Runtime, model, optimiser and stream of `cfg`, resumed from `out/latest.pth` when there is one of
    the same config. Raises ConfigError for a checkpoint of another config or another process count."""
    rt = setup_runtime(cfg.device, cfg.amp)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    model = build_model(cfg, rt.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = open_stream(cfg)
    units = len(stream.shards) if isinstance(stream, ClipStream) else stream.meta.num_blocks
    if rt.world_size > 1 and units < rt.world_size:                  # a rank without shards would never step
        raise ConfigError(f"{cfg.shards or cfg.urls}: {units} shards (or blocks of URLs) for {rt.world_size} "
                          "processes; each rank streams its own")
    if rt.world_size > 1 and cfg.mode_weights.coarse > 0:             # DDP needs a gradient for every parameter
        raise ConfigError("coarse-only steps leave the fine pass's parameters without gradients, which DDP "
                          "refuses: under torchrun train with --mode-weights coarse=0")
    step, sums = 0, dict.fromkeys(SUMS, 0.0)
    state = resume_state(out / CHECKPOINT, cfg, RESUME_IGNORES, model=model, optimizer=optimizer,
                         world_size=rt.world_size) if cfg.resume else None
    if state is not None:
        step, sums = state["step"], state["extra"]["sums"][rt.rank]
        stream.load_state_dict(state["extra"]["streams"][rt.rank])
    resume_step = step if step else None
    return Setup(rt, model, rt.wrap(model), optimizer, LRSchedule(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr),
                 stream, step, sums, MetricLogger(out / METRICS, resume_step=resume_step, enabled=rt.is_main,
                                                    total_steps=cfg.steps, name="foveated-caption"),
                 MetricLogger(out / SAMPLES, resume_step=resume_step, enabled=rt.is_main))


def accumulate(sums: dict[str, float], out: dict[str, Any], mode: str, clips: int, accum: int) -> None:
    """Add one micro-batch's losses and attention statistics to the running sums."""
    sums["clips"] += clips
    for p in (("coarse", "fine") if mode == "caption" else ("coarse",)):
        for k in (f"loss_{p}", f"entropy_{p}", f"max_attn_{p}"):
            sums[k] += float(out[k].detach()) / accum
        sums[f"n_{p}"] += 1 / accum


def record(sums: dict[str, float], timer: DataWait, **head: Any) -> dict[str, Any]:
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


def train_step(s: Setup, cfg: FoveatedTrainConfig, batches: Iterator[dict[str, Any]], timer: DataWait,
               mode: str) -> tuple[dict[str, Any], float]:
    """One optimiser step over `grad_accum` micro-batches in `mode`; returns the last batch (on the device)
    and the step's loss."""
    s.optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for micro in range(cfg.grad_accum):
        t0 = time.perf_counter()
        batch = next(batches)
        if micro == 0:
            timer.wait_end()
        else:                                                   # the timer's step started before micro 0
            timer.wait_s += time.perf_counter() - t0
        s.stream.record(batch)                                  # before the copy: positions stay on the CPU
        batch = s.rt.to_device(batch)
        last = micro == cfg.grad_accum - 1
        # DDP: all-reduce the gradients once per step, on its last micro-batch
        sync = contextlib.nullcontext() if last or s.net is s.model else s.net.no_sync()
        with sync:
            with s.rt.autocast():
                out = s.net(batch["frames"], batch["caption"], mode=mode)
            (out["loss"] / cfg.grad_accum).backward()
        accumulate(s.sums, out, mode, len(batch["caption"]), cfg.grad_accum)
        loss += float(out["loss"].detach()) / cfg.grad_accum
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], cfg.grad_clip)
    s.optimizer.step()
    return batch, loss


def train(cfg: FoveatedTrainConfig) -> TrainResult:
    """Train (or resume) per `cfg`; returns `train.loop.TrainResult` (records of metrics.jsonl, the loss of
    each step run here). Raises StoreError for an unusable shard store, ConfigError for options or a
    checkpoint of another config in `out`."""
    s = setup(cfg)
    out_dir, start = Path(cfg.out), s.step
    batches, timer, losses = clip_batches(s.stream, cfg, pin=s.rt.device.type == "cuda"), DataWait(), []
    pause = pause_point(cfg)
    s.model.train()
    log.info("training %d params (%d trainable) on %s, rank %d/%d, from step %d",
             sum(p.numel() for p in s.model.parameters()),
             sum(p.numel() for p in s.model.parameters() if p.requires_grad), s.rt.device, s.rt.rank,
             s.rt.world_size, s.step)
    while s.step < cfg.steps:
        timer.wait_start()
        lr, mode = set_lr(s.optimizer, s.schedule(s.step)), step_mode(cfg, s.step)
        batch, loss = train_step(s, cfg, batches, timer, mode)
        s.step += 1
        losses.append(loss)
        timer.step_end()
        step = s.step
        if step % cfg.log_every == 0 or step == 1 or step == cfg.steps:
            counts = s.stream.take_metrics() if isinstance(s.stream, UrlClipStream) else {}  # URL rows per reason
            counts = {k: int(v) for k, v in s.rt.all_reduce_sums(counts).items()}
            s.logger.log(record(s.rt.all_reduce_sums(s.sums), timer, step=step, epoch=s.stream.epoch, lr=lr,
                                mode=mode) | counts)
            s.sums = dict.fromkeys(SUMS, 0.0)
            timer.reset()
        if s.rt.is_main and cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == cfg.steps):
            write_samples(s.samples, s.model, batch, step, cfg.sample_clips, cfg.sample_tokens)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            streams, sums = s.rt.gather(s.stream.state_dict()), s.rt.gather(s.sums)
            if s.rt.is_main:
                save_checkpoint(out_dir / CHECKPOINT, model=s.net, optimizer=s.optimizer, step=step,
                                sampler=streams[0], config=asdict(cfg) | {"model_config": asdict(s.model.config)},
                                extra={"streams": streams, "sums": sums}, pause=pause)
            s.rt.barrier()
    s.rt.barrier()
    return TrainResult(out=out_dir, step=s.step, resumed_from=start, records=s.logger.records(), losses=losses)


def run(cfg: FoveatedTrainConfig) -> TrainResult:
    """Train, then (rank 0) print the metric table, the last sample captions and where the files are (the
    CLI's body)."""
    result = train(cfg)
    if not result.records:                                              # ranks > 0
        return result
    print(format_table(result.records, COLUMNS))
    totals = {k[7:]: sum(r.get(k, 0) for r in result.records) for k in result.records[-1] if k.startswith("stream_")}
    if totals:                                          # --urls: the rows of every interval, resumed runs included
        print("stream rows: " + ", ".join(f"{k} {v}" for k, v in totals.items() if v or k == "ok"))
    samples = result.out / SAMPLES
    if samples.exists():
        lines = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        for r in lines[-cfg.sample_clips:]:
            print(f"\nstep {r['step']} {r['key']}\n  truth:  {r['caption']!r}\n  fine:   {r['fine']!r}\n"
                  f"  coarse: {r['coarse']!r}")
    print(f"\ncheckpoint: {result.checkpoint}\nmetrics: {result.metrics}\nsamples: {samples}")
    return result

