"""`shardyard train patch-predict`: predict the DINO patch tokens of frame t + gap from those of frame t
(issue 6; seed 004's experiments 1-3). One flat loop: init, eval and checkpoint, step, log.

Data, either
- `features`: a feature store of `ingest dino --fps F` on a shard store of videos (or any feature store:
  pairs never cross an episode boundary and skip rows marked missing). Pairs `(t, t + gap)` of the last
  `val_fraction` of the episodes are held out for evaluation. Training batch `k` is drawn from
  `(seed, k)` alone, so a run resumed from `latest.pth` makes exactly the updates of an uninterrupted one.
- `stream` + `live_backbone`: clips of `gap + 1` frames at `stream_fps` from `ClipStream`, through the
  frozen backbone on every step, without caching; pairs are every `(t, t + gap)` of each clip. The stream's
  `state_dict` goes into `latest.pth`, so a resumed run continues with the next clip. Evaluation there is
  online: the metrics of each training batch before its update.

Outputs in `out`: `metrics.jsonl` (train rows: step, loss, lr; eval rows: cos, mse, copy_cos, copy_mse,
improvement in % of the copy MSE), `latest.pth`, `result.json`. `run_gaps` trains one run per gap in
`out/gap_<g>/` and writes seed 004's gap table to `out/gaps.json` and `out/gaps.md`.

"step" in every record is the number of optimizer updates done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from shardyard.errors import ConfigError, SourceError
from shardyard.models.patch_predict import PatchPredictorConfig, build_predictor, improvement, patch_cosine, patch_mse
from shardyard.stores.atomic import atomic_write_json
from shardyard.train.loop import CHECKPOINT, METRICS, LRSchedule, MetricLogger, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

_SAME_RUN = ("features", "stream", "gap", "model", "hidden", "batch_size", "seed", "clips_per_step")


@dataclass
class PatchPredictConfig:
    """features: feature store path; or stream (shard store / folder of tars / URL) with live_backbone.
    gap: frames between input and target (in rows of the feature store, i.e. at its --fps). model: copy,
    linear or mlp. steps: optimizer updates. lr, weight_decay, warmup_steps: AdamW, constant after warmup.
    eval_every / ckpt_every / log_every: in steps. val_fraction: episodes held out. max_eval_pairs: cap.
    Stream only: backbone (spec), image_size (px), stream_fps (Hz), clips_per_step, stream_size (decode
    size, px). device: "cpu", "cuda" or "auto"."""

    out: str
    features: str | None = None
    gap: int = 8
    model: str = "mlp"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    hidden: int = 0
    eval_every: int = 50
    ckpt_every: int = 50
    log_every: int = 10
    val_fraction: float = 0.2
    max_eval_pairs: int = 1024
    seed: int = 0
    resume: bool = True
    device: str = "cpu"
    stream: str | None = None
    live_backbone: bool = False
    backbone: str = "tiny-random-dinov2"
    image_size: int = 224
    stream_fps: float = 8.0
    clips_per_step: int = 2
    stream_size: int = 128

    def __post_init__(self) -> None:
        if (self.features is None) == (self.stream is None):
            raise ConfigError("give exactly one of --features or --stream")
        if self.stream is not None and not self.live_backbone:
            raise ConfigError("--stream computes tokens on the fly: add --live-backbone")
        if self.gap < 1 or self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"need gap >= 1, steps >= 0, batch_size >= 1 (got {self.gap}, {self.steps}, "
                              f"{self.batch_size})")


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

    def __init__(self, path: str, gap: int, val_fraction: float) -> None:
        from shardyard.stores.features import open_features

        self.fs = open_features(path)
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
        uniq, inverse = np.unique(rows, return_inverse=True)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = np.split(uniq, breaks)
        x = np.concatenate([self.fs.patch_tokens(int(r[0]), int(r[-1]) + 1) for r in runs])[inverse]
        return torch.from_numpy(x.astype(np.float32))                         # (n, P, D)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: FeaturePairs, pairs: np.ndarray, device: torch.device,
             chunk: int = 128) -> dict[str, float]:
    """Model and copy-baseline cosine / MSE to the future patches over `pairs`, and the improvement (%)."""
    sums = np.zeros(4)
    for i in range(0, len(pairs), chunk):
        p = pairs[i:i + chunk]
        x, y = data.tokens(p[:, 0]).to(device), data.tokens(p[:, 1]).to(device)
        pred = model(x)
        sums += len(p) * np.asarray([patch_cosine(pred, y).item(), patch_mse(pred, y).item(),
                                     patch_cosine(x, y).item(), patch_mse(x, y).item()])
    cos, mse, ccos, cmse = (sums / len(pairs)).tolist()
    return {"cos": cos, "mse": mse, "copy_cos": ccos, "copy_mse": cmse, "improvement": improvement(cmse, mse),
            "pairs": int(len(pairs))}


# ---- data: live stream ------------------------------------------------------------------------------
def stream_batches(stream: Any, clips: int) -> Iterator[torch.Tensor]:
    """Endless `(clips, T, 3, H, W) uint8` batches from a `ClipStream`, epoch after epoch. Raises
    `SourceError` when a whole epoch yields no clip."""
    while True:
        got = 0
        buf: list[torch.Tensor] = []
        for item in stream:
            got += 1
            buf.append(item["frames"])
            if len(buf) == clips:
                yield torch.stack(buf)
                buf = []
        if not got:
            raise SourceError(f"stream yielded no clip (counters {stream.counters})")
        stream.set_epoch(stream.epoch + 1)


def live_pairs(backbone: Any, frames: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames `(B, T, 3, H, W) uint8` -> backbone tokens `(B, T, P, D)` -> pairs `x, y (B*(T-gap), P, D)`."""
    b, t = frames.shape[:2]
    tok = backbone(frames.flatten(0, 1).float() / 255.0).patch_tokens      # (B*T, P, D), inference tensor
    tok = tok.unflatten(0, (b, t)).clone()                                # (B, T, P, D), usable in autograd
    return tok[:, :-gap].flatten(0, 1), tok[:, gap:].flatten(0, 1)


# ---- the loop ---------------------------------------------------------------------------------------
def run(cfg: PatchPredictConfig) -> dict[str, Any]:
    """Train (or, for `copy`, only evaluate) and return the final eval record; resumes from
    `out/latest.pth` when present (`cfg.resume`). Raises `ConfigError` for a checkpoint of another run."""
    from shardyard.models.backbones import BackboneConfig, best_device, load_backbone

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = best_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = backbone = stream = batches = None
    if cfg.features:
        data = FeaturePairs(cfg.features, cfg.gap, cfg.val_fraction)
        embed_dim = data.fs.embed_dim
        rng = np.random.default_rng(cfg.seed)
        val = data.val[np.sort(rng.permutation(len(data.val))[:cfg.max_eval_pairs])]
    else:
        from shardyard.loaders.streaming import ClipStream, StreamConfig

        backbone = load_backbone(BackboneConfig(spec=cfg.backbone, image_size=(cfg.image_size, cfg.image_size),
                                                device=cfg.device))
        embed_dim = backbone.embed_dim
        stream = ClipStream(cfg.stream, config=StreamConfig(num_frames=cfg.gap + 1, fps=cfg.stream_fps,
                                                           size=cfg.stream_size, seed=cfg.seed, shuffle_buffer=8))
    model = build_predictor(PatchPredictorConfig(kind=cfg.model, embed_dim=embed_dim, hidden=cfg.hidden)).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
    schedule = LRSchedule(cfg.lr, warmup_steps=cfg.warmup_steps)
    start, ckpt = 0, out / CHECKPOINT
    if opt is not None and cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        diff = {k: (state["config"].get(k), getattr(cfg, k)) for k in _SAME_RUN
                if state["config"].get(k) != getattr(cfg, k)}
        if diff:
            raise ConfigError(f"{ckpt} belongs to another run ({diff}); use another --out", path=str(ckpt))
        state = load_checkpoint(ckpt, model=model, optimizer=opt)
        start = state["step"]
        if stream is not None:
            stream.load_state_dict(state["sampler"]["stream"])
        log.info("resumed from %s at step %d", ckpt, start)
    metrics = MetricLogger(out / METRICS, resume_step=start if start else None)
    if stream is not None:
        batches = stream_batches(stream, cfg.clips_per_step)
    if opt is None:                                                        # copy: nothing to train
        final = {"step": 0, "split": "val", **evaluate(model, data, val, device)} if data else None
        if final is None:
            x, y = live_pairs(backbone, next(batches), cfg.gap)
            final = {"step": 0, "split": "stream", "cos": patch_cosine(x, y).item(), "mse": patch_mse(x, y).item(),
                     "copy_cos": patch_cosine(x, y).item(), "copy_mse": patch_mse(x, y).item(), "improvement": 0.0}
        metrics.log(final)
        atomic_write_json(out / "result.json", final | {"gap": cfg.gap, "model": cfg.model})
        return final
    window: list[list[float]] = []
    final: dict[str, Any] = {}
    for step in range(start, cfg.steps + 1):
        # eval (cached features: the held-out pairs; stream: the online window since the last eval)
        if data is not None and (step % cfg.eval_every == 0 or step == cfg.steps) and not (step == start > 0):
            model.eval()
            final = {"step": step, "split": "val", **evaluate(model, data, val, device)}
            metrics.log(final)
            log.info("step %d: val cos %.4f mse %.4f (copy %.4f / %.4f)", step, final["cos"], final["mse"],
                     final["copy_cos"], final["copy_mse"])
            model.train()
        if step == cfg.steps:
            break
        # step
        for g in opt.param_groups:
            g["lr"] = schedule(step)
        if data is not None:
            idx = np.random.default_rng([cfg.seed, step]).integers(len(data.train), size=cfg.batch_size)
            p = data.train[idx]
            x, y = data.tokens(p[:, 0]).to(device), data.tokens(p[:, 1]).to(device)
        else:
            x, y = live_pairs(backbone, next(batches), cfg.gap)
            x, y = x.to(device), y.to(device)
        pred = model(x)                                                    # (B, P, D)
        loss = patch_mse(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # log and checkpoint
        done = step + 1
        if stream is not None:
            with torch.no_grad():
                window.append([patch_cosine(pred, y).item(), loss.item(), patch_cosine(x, y).item(),
                               patch_mse(x, y).item()])
            if done % cfg.eval_every == 0 or done == cfg.steps:
                cos, mse, ccos, cmse = np.mean(window, axis=0).tolist()
                final = {"step": done, "split": "stream", "cos": cos, "mse": mse, "copy_cos": ccos,
                         "copy_mse": cmse, "improvement": improvement(cmse, mse), "clips": stream.counters}
                metrics.log(final)
                window = []
        if done % cfg.log_every == 0 or done == cfg.steps:
            metrics.log({"step": done, "split": "train", "loss": loss.item(), "lr": schedule(step)})
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            sampler = {"kind": "stream", "stream": stream.state_dict()} if stream is not None else {"kind": "seed"}
            save_checkpoint(ckpt, model=model, optimizer=opt, step=done, sampler=sampler, config=asdict(cfg))
    if not final and (out / "result.json").exists():                      # resumed a finished run
        return json.loads((out / "result.json").read_text())
    atomic_write_json(out / "result.json", final | {"gap": cfg.gap, "model": cfg.model})
    return final


# ---- seed 004's gap table ---------------------------------------------------------------------------
def run_gaps(cfg: PatchPredictConfig, gaps: list[int]) -> list[dict[str, Any]]:
    """One run per gap in `out/gap_<g>/`; rows `{gap, time_s, copy_cos, copy_mse, model_cos, model_mse,
    improvement}` (time_s = gap / fps of the feature store, None when unknown), also written to
    `out/gaps.json` and, as seed 004's markdown table, `out/gaps.md`."""
    if not gaps or min(gaps) < 1:
        raise ConfigError(f"--gaps must be positive integers, got {gaps}")
    rows = []
    for g in gaps:
        r = run(replace(cfg, gap=g, out=str(Path(cfg.out) / f"gap_{g}")))
        fps = FeaturePairs(cfg.features, g, cfg.val_fraction).fps if cfg.features else cfg.stream_fps
        rows.append({"gap": g, "time_s": g / fps if fps else None, "copy_cos": r["copy_cos"],
                     "copy_mse": r["copy_mse"], "model_cos": r["cos"], "model_mse": r["mse"],
                     "improvement": r["improvement"], "pairs": r.get("pairs")})
    atomic_write_json(Path(cfg.out) / "gaps.json", {"model": cfg.model, "rows": rows})
    (Path(cfg.out) / "gaps.md").write_text(format_table(rows, cfg.model))
    return rows


def format_table(rows: list[dict[str, Any]], model: str) -> str:
    """Seed 004's experiment 1 + 3 table: gap, time, copy cosine / MSE, model cosine / MSE, improvement."""
    head = (f"| Gap | Time | Copy cos | Copy MSE | {model} cos | {model} MSE | Improvement |\n"
            "|-----|------|----------|----------|-----|-----|-------------|\n")
    body = ""
    for r in rows:
        t = "-" if r["time_s"] is None else f"{r['time_s']:.3f}s"
        body += (f"| {r['gap']} | {t} | {r['copy_cos']:.3f} | {r['copy_mse']:.3f} | {r['model_cos']:.3f} | "
                 f"{r['model_mse']:.3f} | {r['improvement']:+.1f}% |\n")
    return head + body
