"""What every flat trainer shares (DESIGN.md, "train/"), once: the checkpoint layout and the resume check,
the metric log, the batch order, the learning-rate schedule, the data-wait timer, the result type and the
table printer. Device placement, DDP and autocast are in `train.runtime`. A trainer file keeps only its
model, its data and its loop.

Checkpoint `RUN/latest.pth` (one layout for every trainer): `model`, `optimizer`, `step`, `sampler` (the
batch order's state at `step`), `rng` (torch CPU, CUDA when present, numpy's global, Python's), `config`
(the trainer config as a dict), `extra` (trainer-specific state), plus one entry per extra module (e.g.
`backbone`, None when absent). It is written to a temp file and renamed, so a kill never leaves a torn
file; loading restores every piece, so a resumed run makes exactly the updates of an uninterrupted one.
It holds only tensors and plain values and is read with `torch.load(weights_only=True)` (`train.checkpoint`):
nothing in a run folder is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.loaders.sampler import ResumableSampler
from shardyard.pause import PausePoint
from shardyard.progress import PROGRESS_LOGGER, ProgressLog
from shardyard.train.checkpoint import atomic_torch_save, plain, read_checkpoint, rng_state, set_rng_state

__all__ = ["BatchOrder", "CHECKPOINT", "DataWait", "LRSchedule", "METRICS", "MetricLogger", "StepBatches",
           "TrainResult", "atomic_torch_save", "format_table", "keep_batch", "load_checkpoint", "pause_point",
           "read_metrics", "resume_state", "rng_state", "run_key", "save_checkpoint", "set_lr", "set_rng_state"]

log = logging.getLogger(__name__)

CHECKPOINT = "latest.pth"
METRICS = "metrics.jsonl"


# ---- checkpoint and resume ----------------------------------------------------------------------------
def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)                             # DDP keeps the model in .module


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, config: dict[str, Any], sampler: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None,
                    modules: dict[str, torch.nn.Module | None] | None = None, pause: PausePoint | None = None) -> Path:
    """Write the checkpoint (layout in the module docstring) atomically; returns its path. `model` may be
    DDP-wrapped. `modules`: further modules saved under their own key (None values saved as None).
    `pause` (`pause_point(cfg)`): reached once the file is in place, so a run paused there can be killed and
    resumed from exactly this step."""
    state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "step": int(step),
             "sampler": plain(sampler or {}, "sampler"), "rng": rng_state(), "config": plain(config, "config"),
             "extra": plain(extra or {}, "extra")}
    for name, m in (modules or {}).items():
        state[name] = _unwrap(m).state_dict() if m is not None else None
    saved = atomic_torch_save(path, state)
    if pause is not None:
        pause.reached(f"checkpoint at step {int(step)}")
    return saved


def pause_point(cfg: Any) -> PausePoint | None:
    """The run's `PausePoint` from its config's `pause_file` / `pause_after` (None without a file)."""
    return PausePoint.from_options(cfg.pause_file, cfg.pause_after)


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    modules: dict[str, torch.nn.Module | None] | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore model, optimizer, extra `modules` and RNG from `path`; returns the checkpoint dict.
    Raises FileNotFoundError when there is none, ConfigError naming the file when it holds anything but
    tensors and plain values (see `train.checkpoint.read_checkpoint`)."""
    return _restore(read_checkpoint(path), model=model, optimizer=optimizer, modules=modules,
                    restore_rng=restore_rng)


def _restore(state: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             modules: dict[str, torch.nn.Module | None] | None, restore_rng: bool) -> dict[str, Any]:
    _unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    for name, m in (modules or {}).items():
        if m is not None:
            _unwrap(m).load_state_dict(state[name])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def run_key(config: Any, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON form of a config (dataclass or dict) without the `ignore` fields: what a resumed run must
    share with its checkpoint."""
    d = asdict(config) if not isinstance(config, dict) else dict(config)
    return json.loads(json.dumps({k: v for k, v in d.items() if k not in ignore}, default=str))


def resume_state(path: Path, cfg: Any, ignore: Sequence[str], *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer,
                 modules: dict[str, torch.nn.Module | None] | None = None,
                 world_size: int | None = None) -> dict[str, Any] | None:
    """Load `path` when it exists (see `load_checkpoint`), after checking that it was written by the same
    run: every field of `cfg` but `ignore` must match, and with `world_size`, by as many processes (the
    per-rank lists of `extra["sums"]`). Returns None when there is no checkpoint.
    Raises ConfigError naming the differing fields or process counts otherwise, or the file when it is
    not a checkpoint readable without unpickling objects."""
    if not path.exists():
        return None
    state = read_checkpoint(path)  # read once: the config check and the restore use the same dict
    want, have = run_key(cfg, ignore), run_key(state["config"], ignore)
    diff = sorted(k for k in want if want[k] != have.get(k))
    if diff:
        raise ConfigError(f"{path} was written with another config (differs in {diff}); use another --out",
                          path=str(path))
    if world_size is not None:
        per_rank = state["extra"].get("sums", [None])
        if len(per_rank) != world_size:
            raise ConfigError(f"{path} was written by {len(per_rank)} processes, this run has {world_size}; use "
                              "another --out", path=str(path))
    state = _restore(state, model=model, optimizer=optimizer, modules=modules, restore_rng=True)
    logging.getLogger(PROGRESS_LOGGER).info("resumed from step %d (%s)", state["step"], path)
    return state


# ---- batch order ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchOrder:
    """Which samples make batch `step` of a rank: a pure function of (seed, step), so a run resumes from
    its step alone. Epoch `e = step // per_epoch` is `ResumableSampler`'s permutation of
    `default_rng([seed, e])` split by rank; it is cut into full batches (the short tail is dropped, so
    every step has `batch_size` samples; a share smaller than a batch is repeated to fill one)."""

    num_samples: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def _sampler(self) -> ResumableSampler:
        return ResumableSampler(self.num_samples, seed=self.seed, rank=self.rank, world_size=self.world_size)

    @property
    def per_epoch(self) -> int:
        """Batches per epoch and rank (at least 1)."""
        return max(self._sampler().per_rank // self.batch_size, 1)

    def epoch(self, step: int) -> int:
        """Epoch of batch `step`."""
        return step // self.per_epoch

    def indices(self, step: int) -> np.ndarray:
        """Sample indices `(batch_size,) int64` of batch `step` (0-based) of this rank."""
        epoch, i = divmod(step, self.per_epoch)
        share = self._sampler().rank_indices(epoch)
        if len(share) < self.batch_size:
            return np.resize(share, self.batch_size)
        return share[i * self.batch_size:(i + 1) * self.batch_size]

    def state(self, step: int, rank: int | None = None) -> dict[str, int]:
        """Position after `step` batches, in `ResumableSampler.state_dict`'s terms (of `rank`, default this)."""
        epoch, i = divmod(step, self.per_epoch)
        return {"seed": self.seed, "epoch": epoch, "offset": i * self.batch_size, "num_samples": self.num_samples,
                "world_size": self.world_size, "rank": self.rank if rank is None else rank,
                "batch_size": self.batch_size}


class StepBatches(torch.utils.data.IterableDataset):
    """Batches `start .. stop - 1` of `order` read from a map-style `dataset`, for
    `DataLoader(StepBatches(...), batch_size=None, num_workers=N)`: batch `s` is read by worker
    `(s - start) % N` with one `collate(dataset.__getitems__(indices))`; the DataLoader returns worker
    outputs round-robin, so the sequence is the same whatever N is."""

    def __init__(self, dataset: Any, order: BatchOrder, start: int, stop: int,
                 collate: Callable[[list[Any]], Any]) -> None:
        self.dataset, self.order, self.start, self.stop, self.collate = dataset, order, start, stop, collate

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for s in range(self.start + wid, self.stop, nw):
            yield self.collate(self.dataset.__getitems__(self.order.indices(s).tolist()))


def keep_batch(batch: Any) -> Any:
    """The DataLoader's per-batch convert step: keep the batch as collated (numpy, see
    `loaders.windows.collate_numpy`); `Runtime.to_device` makes tensors in the training process."""
    return batch


# ---- schedule, metric log, timer ----------------------------------------------------------------------
@dataclass
class LRSchedule:
    """nanoGPT's schedule: linear warmup over `warmup_steps`, then cosine decay to `min_lr` at
    `decay_steps` (constant `lr` after warmup when `decay_steps` is 0)."""

    lr: float
    warmup_steps: int = 0
    decay_steps: int = 0
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        if self.decay_steps <= 0:
            return self.lr
        if step >= self.decay_steps:
            return self.min_lr
        ratio = (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float | Sequence[float]) -> float:
    """Set the lr of every param group (`lr`), or of group i to `lr[i]`; returns the first group's."""
    lrs = [lr] * len(optimizer.param_groups) if isinstance(lr, (int, float)) else list(lr)
    for g, v in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = v
    return lrs[0]


class MetricLogger:
    """Appends one JSON object per record to a JSONL file (`RUN/metrics.jsonl`). `resume_step`: drop
    records with `step > resume_step` left by an interrupted run (logged after its last checkpoint), so
    the file matches an uninterrupted one; None starts the file over. `enabled=False` (ranks > 0) writes
    nothing. `total_steps` (with `name`, the trainer): each record with a `step` is also a progress line
    (`shardyard.progress`: step/total, steps/s, ETA and the loss), at most one every 10 s."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True, *,
                 total_steps: int | None = None, name: str = "") -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.progress = ProgressLog(f"train {name}".strip(), total_steps, "steps", prefix="step ",
                                    start=resume_step or 0) if enabled and total_steps else None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", -1) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` (numpy / torch scalars become floats)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v)
                                for k, v in record.items()}) + "\n")
        if self.progress is not None and isinstance(record.get("step"), int):
            loss = record.get("loss")
            self.progress.update(record["step"], "" if loss is None else f"loss {float(loss):.4g}")

    def records(self) -> list[dict[str, Any]]:
        """Every record of the file ([] when disabled)."""
        return read_metrics(self.path) if self.enabled else []


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class DataWait:
    """Time spent waiting for the next batch as a fraction of the whole step time.

    Call `wait_start()` before fetching a batch, `wait_end()` once it is there, `step_end()` after the
    optimizer step; `fraction()` returns sum(wait) / sum(step) since the last `reset()`.
    """

    def __init__(self) -> None:
        self.reset()
        self._t0 = self._tw = time.perf_counter()

    def reset(self) -> None:
        """Start a new measuring window."""
        self.wait_s = 0.0
        self.step_s = 0.0
        self.steps = 0

    def wait_start(self) -> None:
        """A step begins: the batch is being fetched."""
        self._t0 = self._tw = time.perf_counter()

    def wait_end(self) -> None:
        """The batch is there."""
        self.wait_s += time.perf_counter() - self._tw

    def step_end(self) -> None:
        """The optimizer step is done."""
        self.step_s += time.perf_counter() - self._t0
        self.steps += 1

    def fraction(self) -> float:
        """Waiting time over step time in this window (0 when empty)."""
        return self.wait_s / self.step_s if self.step_s > 0 else 0.0

    def steps_per_s(self) -> float:
        """Steps per second of step time in this window."""
        return self.steps / self.step_s if self.step_s > 0 else 0.0

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield from `batches`, timing each fetch (`wait_start` / `wait_end` around `next`)."""
        it = iter(batches)
        while True:
            self.wait_start()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_end()
            yield batch


# ---- result and table ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a trainer returns. out: run folder; step: optimizer updates done; resumed_from: the step this
    process started at (0 for a fresh run); records: the run's `metrics.jsonl` records (rank 0, else []);
    final: the last evaluation record ({} when none was made); losses: the training loss of each step run
    in this process; plots: PNGs written in this process."""

    out: Path
    step: int
    resumed_from: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        """`out/latest.pth`."""
        return self.out / CHECKPOINT

    @property
    def metrics(self) -> Path:
        """`out/metrics.jsonl`."""
        return self.out / METRICS


def format_table(records: list[dict[str, Any]], columns: Sequence[str], float_format: str = ".4g",
                 rule: bool = True) -> str:
    """Plain-text table of metric records, one row each, right-aligned: ints and strings as is, floats with
    `float_format`, "-" where a record lacks a column; `rule`: a line of dashes under the header."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, (int, str)):
            return str(v)
        # zero, and a subnormal (a sum's rounding residue of zero, else shown as 2.45e-315), print as 0
        return format(0.0 if abs(float(v)) < np.finfo(np.float64).tiny else v, float_format)

    rows = [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(x.rjust(w) for x, w in zip(cells, widths))

    head = [line(columns), line(["-" * w for w in widths])] if rule else [line(columns)]
    return "\n".join([*head, *map(line, rows)])
