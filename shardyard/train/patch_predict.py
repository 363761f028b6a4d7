"""`shardyard train patch-predict`: predict the DINO patch tokens of frame t + gap from those of frame t
(issue 6; seed 004's experiments 1-3). One flat loop: init, eval and checkpoint, step, log.

Data, either
- `features`: a feature store of `ingest dino --fps F` on a shard store of videos (or any feature store:
  pairs never cross an episode boundary and skip rows marked missing). Pairs `(t, t + gap)` of the last
  `val_fraction` of the episodes are held out for evaluation. Training batch `k` is drawn from
  `(seed, k)` alone, so a run resumed from `latest.pth` makes exactly the updates of an uninterrupted one.
- `stream` + `live_backbone`: clips of `gap + 1` frames at `stream_fps` from `ClipStream`, decoded by
  `num_workers` DataLoader workers (0: in the training process), through the frozen backbone on every step,
  without caching; pairs are every `(t, t + gap)` of each clip. With 2 workers and a ViT-S/14-sized backbone
  on the CPU the step waits for its clips 2.6 % of the time, 6.3 % with the clips decoded in the training
  process (`benchmarks/train_patch_predict.py`, the benchmark table's run). The stream's `state_dict` (the
  batches used so far) goes into `latest.pth`, so a resumed run with the same worker count continues with the
  next clip. Evaluation there is online: the metrics of each training batch before its update.

Outputs in `out`: `metrics.jsonl` (train rows: step, loss, lr, data_wait_frac (share of step time spent
reading the batch), steps_per_s; eval rows: cos, mse, copy_cos, copy_mse,
improvement in % of the copy MSE), `latest.pth`, `result.json`. `run_gaps` trains one run per gap in
`out/gap_<g>/` and writes seed 004's gap table to `out/gaps.json` and `out/gaps.md`.

"step" in every record is the number of optimizer updates done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from shardyard.errors import ConfigError, SourceError
from shardyard.models.patch_predict import PatchPredictorConfig, build_predictor, improvement, patch_cosine, patch_mse
from shardyard.pause import PausePoint
from shardyard.procs import loader_worker_init
from shardyard.stores.atomic import atomic_write_json
from shardyard.train.configs import PAUSE_FIELDS, PatchPredictConfig
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

__all__ = ["FeaturePairs", "RESUME_IGNORES", "Setup", "after_step", "evaluate", "finish", "gap_table", "live_pairs",
           "make_pairs", "run", "run_features", "run_gaps", "run_stream", "setup", "stream_batches", "train_step"]

log = logging.getLogger(__name__)

# fields a resumed run may change: how long it runs, how often it reports, where it runs
RESUME_IGNORES = ("out", "steps", "eval_every", "ckpt_every", "log_every", "max_eval_pairs", "resume", "device",
                  "amp", "verify_reads", *PAUSE_FIELDS)


# ---- data: cached features ----------------------------------------------------------------------------
def make_pairs(episode_ends: np.ndarray, missing: np.ndarray, gap: int) -> np.ndarray:
    """`(M, 2) int64` rows `(t, t + gap)` inside each episode, both not missing, in index order."""
    out, start = [], 0
    for end in np.asarray(episode_ends, dtype=np.int64).tolist():
        t = np.arange(start, end - gap, dtype=np.int64)
        t = t[~missing[t] & ~missing[t + gap]]
        out.append(np.stack([t, t + gap], axis=1))
        start = end
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


class FeaturePairs:
    """Train / val pairs of a feature store: the last `val_fraction` of the episodes that hold a pair at
    this gap (at least one, when two or more do) are held out. `tokens(rows)` -> `(len(rows), P, D)` float32.
    Raises `ConfigError` when no pair fits `gap` (episodes too short)."""

    def __init__(self, path: str, gap: int, val_fraction: float, verify_reads: bool = True) -> None:
        from shardyard.stores.features import open_features

        self.fs = open_features(path, verify_reads=verify_reads)
        ends = self.fs.episode_ends if len(self.fs.episode_ends) else np.asarray([self.fs.num_samples])
        pairs = make_pairs(ends, self.fs.missing, gap)
        episode = np.searchsorted(ends, pairs[:, 0], side="right")          # episode of each pair
        usable = np.unique(episode)                                        # episodes with >= 1 pair
        n_val = min(max(int(round(len(usable) * val_fraction)), 1), len(usable) - 1) if len(usable) > 1 else 0
        held = np.isin(episode, usable[len(usable) - n_val:]) if n_val else np.zeros(len(pairs), bool)
        self.train, self.val = pairs[~held], pairs[held]
        if n_val == 0:
            log.warning("one usable episode only: evaluating on the training pairs")
            self.val = self.train
        if not len(self.train):
            raise ConfigError(f"no (t, t+{gap}) pairs: episodes are too short for this gap", path=path)
        self.fps = self.fs.key.get("fps")

    def tokens(self, rows: np.ndarray) -> torch.Tensor:
        """Patch tokens `(len(rows), P, D)` float32 of feature rows `rows` (one read per run of rows)."""
        uniq, inverse = np.unique(rows, return_inverse=True)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = np.split(uniq, breaks)
        x = np.concatenate([self.fs.patch_tokens(int(r[0]), int(r[-1]) + 1) for r in runs])[inverse]
        return torch.from_numpy(x.astype(np.float32))                         # (n, P, D)


@torch.no_grad()
def evaluate(model: torch.nn.Module, pairs: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
             val: np.ndarray, chunk: int = 128) -> dict[str, float]:
    """Model and copy-baseline cosine / MSE to the future patches over the rows `val (M, 2)` (`pairs` reads
    their tokens `(m, P, D)` onto the device), and the improvement (%)."""
    sums = np.zeros(4)
    for i in range(0, len(val), chunk):
        p = val[i:i + chunk]
        x, y = pairs(p)
        pred = model(x)
        sums += len(p) * np.asarray([patch_cosine(pred, y).item(), patch_mse(pred, y).item(),
                                     patch_cosine(x, y).item(), patch_mse(x, y).item()])
    cos, mse, ccos, cmse = (sums / len(val)).tolist()
    return {"cos": cos, "mse": mse, "copy_cos": ccos, "copy_mse": cmse, "improvement": improvement(cmse, mse),
            "pairs": int(len(val))}


# ---- data: live stream ------------------------------------------------------------------------------
def stream_batches(stream: Any, clips: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Endless `(clips, T, 3, H, W) uint8` batches from a `ClipStream`, epoch after epoch, decoded by a
    DataLoader with `num_workers` worker processes (0: in this process); each batch is recorded in the
    stream's resume state as it is handed out (`ClipStream.record`), and an epoch's last clips that do not
    fill a batch are left out (as the in-process version always did). Raises `SourceError` when a whole epoch
    yields no clip."""
    loader = torch.utils.data.DataLoader(stream, batch_size=clips, drop_last=True, num_workers=num_workers,
                                         worker_init_fn=loader_worker_init() if num_workers else None)
    while True:
        got = 0
        for batch in loader:
            got += 1
            stream.record(batch)
            yield batch["frames"]
        if not got:
            raise SourceError(f"stream yielded no batch of {clips} clips in an epoch (counters {stream.counters})")
        stream.set_epoch(stream.epoch + 1)


def live_pairs(backbone: Any, frames: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames `(B, T, 3, H, W) uint8` -> backbone tokens `(B, T, P, D)` -> pairs `x, y (B*(T-gap), P, D)`."""
    b, t = frames.shape[:2]
    tok = backbone(frames.flatten(0, 1).float() / 255.0).patch_tokens      # (B*T, P, D), inference tensor
    tok = tok.unflatten(0, (b, t)).clone()                                # (B, T, P, D), usable in autograd
    return tok[:, :-gap].flatten(0, 1), tok[:, gap:].flatten(0, 1)


# ---- shared by both modes ---------------------------------------------------------------------------
@dataclass
class Setup:
    """What both modes build: the runtime, the predictor, its optimizer (None for `copy`) and schedule, the
    step to start from, the loaded checkpoint (None on a fresh start) and the metric log."""

    rt: Runtime
    model: torch.nn.Module
    opt: torch.optim.Optimizer | None
    schedule: LRSchedule
    start: int
    state: dict[str, Any] | None
    metrics: MetricLogger
    pause: PausePoint | None = None   # `pause_point(cfg)`, reached after each checkpoint


def setup(cfg: PatchPredictConfig, rt: Runtime, embed_dim: int) -> Setup:
    """Build the predictor and optimizer, resume from `out/latest.pth` when present (and `cfg.resume`).
    Raises `ConfigError` for a checkpoint of another run."""
    out = Path(cfg.out)
    model = build_predictor(PatchPredictorConfig(kind=cfg.model, embed_dim=embed_dim, hidden=cfg.hidden))
    model = model.to(rt.device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
    state = None
    if opt is not None and cfg.resume:
        state = resume_state(out / CHECKPOINT, cfg, RESUME_IGNORES, model=model, optimizer=opt)
    start = state["step"] if state else 0
    return Setup(rt, model, opt, LRSchedule(cfg.lr, warmup_steps=cfg.warmup_steps), start, state,
                 MetricLogger(out / METRICS, resume_step=start or None, total_steps=cfg.steps,
                              name="patch-predict"), pause_point(cfg))


def train_step(s: Setup, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on pairs `x, y (B, P, D)`; returns the prediction and the MSE loss."""
    set_lr(s.opt, s.schedule(step))
    with s.rt.autocast():
        pred = s.model(x)                                                  # (B, P, D)
        loss = patch_mse(pred.float(), y)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    return pred.detach().float(), loss.detach()


def after_step(cfg: PatchPredictConfig, s: Setup, done: int, loss: torch.Tensor, sampler: dict[str, Any],
               timer: DataWait) -> None:
    """Log the train row (with the data-wait share and steps/s of the steps since the last row: `timer`) and
    write the checkpoint when `done` (updates so far) calls for them."""
    if done % cfg.log_every == 0 or done == cfg.steps:
        s.metrics.log({"step": done, "split": "train", "loss": loss.item(), "lr": s.schedule(done - 1),
                       "data_wait_frac": timer.fraction(), "steps_per_s": timer.steps_per_s()})
        timer.reset()
    if done % cfg.ckpt_every == 0 or done == cfg.steps:
        save_checkpoint(Path(cfg.out) / CHECKPOINT, model=s.model, optimizer=s.opt, step=done, sampler=sampler,
                        config=asdict(cfg), pause=s.pause)


def finish(cfg: PatchPredictConfig, s: Setup, final: dict[str, Any], step: int) -> TrainResult:
    """Write `out/result.json` (or, for a finished run resumed with nothing left to do, read it back)."""
    out = Path(cfg.out)
    if not final and (out / "result.json").exists():
        final = json.loads((out / "result.json").read_text())
    else:
        final = final | {"gap": cfg.gap, "model": cfg.model}
        atomic_write_json(out / "result.json", final)
    return TrainResult(out=out, step=step, resumed_from=s.start, records=s.metrics.records(), final=final)


# ---- the loops ----------------------------------------------------------------------------------------
def run(cfg: PatchPredictConfig) -> TrainResult:
    """Train (or, for `copy`, only evaluate) on cached features or on a live stream; `result.final` is the
    last eval record. Resumes from `out/latest.pth` when present (`cfg.resume`). Raises `ConfigError` for
    a checkpoint of another run."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    rt = setup_runtime(cfg.device, cfg.amp)
    if rt.world_size > 1:
        raise ConfigError("train patch-predict runs in one process (no DDP yet); start it without torchrun")
    torch.manual_seed(cfg.seed)
    return run_features(cfg, rt) if cfg.features else run_stream(cfg, rt)


def run_features(cfg: PatchPredictConfig, rt: Runtime) -> TrainResult:
    """Cached-feature mode: batches of train pairs in `BatchOrder`, eval on the held-out pairs every
    `eval_every` steps and at the end."""
    data = FeaturePairs(cfg.features, cfg.gap, cfg.val_fraction, cfg.verify_reads)
    val = data.val[np.sort(np.random.default_rng(cfg.seed).permutation(len(data.val))[:cfg.max_eval_pairs])]
    s = setup(cfg, rt, data.fs.embed_dim)
    order = BatchOrder(len(data.train), cfg.batch_size, cfg.seed)

    def pairs(p: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xy = rt.to_device({"x": data.tokens(p[:, 0]), "y": data.tokens(p[:, 1])})
        return xy["x"], xy["y"]

    final: dict[str, Any] = {}
    timer = DataWait()
    for step in range(s.start, cfg.steps + 1):
        if s.opt is None or (step % cfg.eval_every == 0 or step == cfg.steps) and not step == s.start > 0:
            s.model.eval()
            final = {"step": step, "split": "val", **evaluate(s.model, pairs, val)}
            s.metrics.log(final)
            log.info("step %d: val cos %.4f mse %.4f (copy %.4f / %.4f)", step, final["cos"], final["mse"],
                     final["copy_cos"], final["copy_mse"])
            s.model.train()
        if step == cfg.steps or s.opt is None:                             # copy: nothing to train
            break
        timer.wait_start()
        x, y = pairs(data.train[order.indices(step)])
        timer.wait_end()
        _, loss = train_step(s, step, x, y)
        timer.step_end()
        after_step(cfg, s, step + 1, loss, {"kind": "batch_order", **order.state(step + 1)}, timer)
    return finish(cfg, s, final, cfg.steps if s.opt is not None else 0)


def run_stream(cfg: PatchPredictConfig, rt: Runtime) -> TrainResult:
    """Stream mode: clips through the frozen backbone every step; the eval is online (each batch's
    metrics before its update, averaged over `eval_every` steps)."""
    from shardyard.loaders.streaming import ClipStream, StreamConfig
    from shardyard.models.backbones import BackboneConfig, load_backbone

    backbone = load_backbone(BackboneConfig(spec=cfg.backbone, image_size=(cfg.image_size, cfg.image_size),
                                            device=str(rt.device)))
    stream = ClipStream(cfg.stream, config=StreamConfig(num_frames=cfg.gap + 1, fps=cfg.stream_fps,
                                                       size=cfg.stream_size, seed=cfg.seed, shuffle_buffer=8,
                                                       verify_reads=cfg.verify_reads))
    s = setup(cfg, rt, backbone.embed_dim)
    if s.state is not None:
        stream.load_state_dict(s.state["sampler"]["stream"])
    batches = stream_batches(stream, cfg.clips_per_step, cfg.num_workers)
    if s.opt is None:                                                      # copy: one batch, model == copy
        x, y = live_pairs(backbone, next(batches), cfg.gap)
        cos, mse = patch_cosine(x, y).item(), patch_mse(x, y).item()
        final = {"step": 0, "split": "stream", "cos": cos, "mse": mse, "copy_cos": cos, "copy_mse": mse,
                 "improvement": 0.0}
        s.metrics.log(final)
        return finish(cfg, s, final, 0)
    window: list[list[float]] = []
    final: dict[str, Any] = {}
    timer = DataWait()
    for step in range(s.start, cfg.steps):
        timer.wait_start()
        frames = rt.to_device({"frames": next(batches)})["frames"]
        timer.wait_end()
        x, y = live_pairs(backbone, frames, cfg.gap)
        pred, loss = train_step(s, step, x, y)
        timer.step_end()
        window.append([patch_cosine(pred, y).item(), loss.item(), patch_cosine(x, y).item(), patch_mse(x, y).item()])
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            cos, mse, ccos, cmse = np.mean(window, axis=0).tolist()
            final = {"step": done, "split": "stream", "cos": cos, "mse": mse, "copy_cos": ccos,
                     "copy_mse": cmse, "improvement": improvement(cmse, mse), "clips": stream.counters}
            s.metrics.log(final)
            window = []
        after_step(cfg, s, done, loss, {"kind": "stream", "stream": stream.state_dict()}, timer)
    return finish(cfg, s, final, cfg.steps)


# ---- seed 004's gap table ---------------------------------------------------------------------------
def run_gaps(cfg: PatchPredictConfig, gaps: list[int]) -> list[dict[str, Any]]:
    """One run per gap in `out/gap_<g>/`; rows `{gap, time_s, copy_cos, copy_mse, model_cos, model_mse,
    improvement}` (time_s = gap / fps of the feature store, None when unknown), also written to
    `out/gaps.json` and, as seed 004's markdown table, `out/gaps.md`."""
    if not gaps or min(gaps) < 1:
        raise ConfigError(f"--gaps must be positive integers, got {gaps}")
    rows = []
    for g in gaps:
        r = run(replace(cfg, gap=g, out=str(Path(cfg.out) / f"gap_{g}"))).final
        fps = FeaturePairs(cfg.features, g, cfg.val_fraction).fps if cfg.features else cfg.stream_fps
        rows.append({"gap": g, "time_s": g / fps if fps else None, "copy_cos": r["copy_cos"],
                     "copy_mse": r["copy_mse"], "model_cos": r["cos"], "model_mse": r["mse"],
                     "improvement": r["improvement"], "pairs": r.get("pairs")})
    atomic_write_json(Path(cfg.out) / "gaps.json", {"model": cfg.model, "rows": rows})
    (Path(cfg.out) / "gaps.md").write_text(gap_table(rows, cfg.model))
    return rows


def gap_table(rows: list[dict[str, Any]], model: str) -> str:
    """Seed 004's experiment 1 + 3 table: gap, time, copy cosine / MSE, model cosine / MSE, improvement."""
    head = (f"| Gap | Time | Copy cos | Copy MSE | {model} cos | {model} MSE | Improvement |\n"
            "|-----|------|----------|----------|-----|-----|-------------|\n")
    body = ""
    for r in rows:
        t = "-" if r["time_s"] is None else f"{r['time_s']:.3f}s"
        body += (f"| {r['gap']} | {t} | {r['copy_cos']:.3f} | {r['copy_mse']:.3f} | {r['model_cos']:.3f} | "
                 f"{r['model_mse']:.3f} | {r['improvement']:+.1f}% |\n")
    return head + body
