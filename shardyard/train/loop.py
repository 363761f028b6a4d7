"""Pieces shared by the flat trainers (DESIGN.md, "train/"): checkpoints, the learning-rate schedule, the
metric logger and the data-wait timer. The training loops themselves stay flat, one per file.

Checkpoints (`latest.pth`) hold the model, the optimizer, the step, the sampler state, the RNG states
(torch CPU, CUDA when present, numpy's global, Python's) and the trainer config; they are written to a
temp file and renamed, so a kill never leaves a half-written `latest.pth`. Loading restores every piece,
so a resumed run continues exactly as an uninterrupted one would (same batches, same updates).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT = "latest.pth"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, and CUDA when available), numpy's global generator and Python's."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by `rng_state` (CUDA only when present both then and now)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """`torch.save(state)` to a temp file beside `path`, then rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, sampler: dict[str, Any], config: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename); returns its path. `model` may be DDP-wrapped
    (its `.module` is saved). `sampler`: the sampler's `state_dict` at this step."""
    net = getattr(model, "module", model)
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": int(step),
             "sampler": sampler, "rng": rng_state(), "config": config, "extra": extra or {}}
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore model (and optimizer, RNG) from `path`; returns the checkpoint dict (step, sampler, config,
    extra). Raises FileNotFoundError when there is none."""
    # weights_only=False: the file holds RNG states (numpy arrays, tuples) written by this module only
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    getattr(model, "module", model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


@dataclass
class LRSchedule:
    """nanoGPT's schedule: linear warmup over `warmup_steps`, then cosine decay to `min_lr` at
    `decay_steps` (constant `lr` after warmup when `decay_steps` is 0)."""

    lr: float
    warmup_steps: int = 0
    decay_steps: int = 0
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        if self.decay_steps <= 0:
            return self.lr
        if step >= self.decay_steps:
            return self.min_lr
        ratio = (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)


class MetricLogger:
    """Appends one JSON object per record to `RUN/metrics.jsonl`. `resume_step`: drop records with
    `step > resume_step` left by an interrupted run, so the file matches an uninterrupted one."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l.strip()
                    and json.loads(l).get("step", -1) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v)
                                for k, v in record.items()}) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file."""
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


class DataWait:
    """Time spent waiting for the next batch as a fraction of the whole step time.

    Call `wait_start()` before fetching a batch, `wait_end()` once it is there, `step_end()` after the
    optimizer step; `fraction()` returns sum(wait) / sum(step) since the last `reset()`.
    """

    def __init__(self) -> None:
        self.reset()
        self._t0 = self._tw = time.perf_counter()

    def reset(self) -> None:
        self.wait_s = 0.0
        self.step_s = 0.0
        self.steps = 0

    def wait_start(self) -> None:
        self._t0 = self._tw = time.perf_counter()

    def wait_end(self) -> None:
        self.wait_s += time.perf_counter() - self._tw

    def step_end(self) -> None:
        self.step_s += time.perf_counter() - self._t0
        self.steps += 1

    def fraction(self) -> float:
        return self.wait_s / self.step_s if self.step_s > 0 else 0.0

    def steps_per_s(self) -> float:
        return self.steps / self.step_s if self.step_s > 0 else 0.0
