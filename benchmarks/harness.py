"""Shared bits of the benchmark scripts: the JSON figure line (DESIGN.md, "Conventions"), alternated trials
with their medians, the common options (`--trials`, `--smoke`) and the real camera frames the figures are
measured on.

Method every benchmark follows: the measured side and its baseline run on the same data, produce the same
output, use the same number of processes and threads and see the same cache state; they are timed in
`--trials` (>= 3) alternated trials, so a noisy neighbour on a shared machine hits both alike, and each figure
is the median of its trials (the ratio is the median of the per-trial ratios). `--smoke` runs the same code
on tiny inputs with one trial: the test suite does that for every script, so none breaks unseen; its figures
mean nothing.

Rows: each benchmark name is unique (`<script stem>.<figure>`, with the size or variant in the name when one
figure is measured at several, e.g. `scale.e1000.open_store_s`), and each label names the sizes measured: a
count followed by what it counts (`SIZE_UNITS`), e.g. "1,500 random frames of 8 episodes" (`names_size`,
checked by tests/test_benchmarks.py on every script's smoke run). A figure measured once rather than as a
median of trials says so in its label and carries `trials: 1`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["G1_DATASET", "SHARED", "SIZE_UNITS", "YAM_EPISODES", "YAM_MODEL", "add_common_args", "alternate",
           "cpu_seconds", "figure", "g1_frames", "in_fresh_process", "median_ratio", "names_size", "yam_subset"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YAM_EPISODES = SHARED / "yam" / "episodes"
YAM_MODEL = SHARED / "yam" / "model" / "station" / "yam_station_linear_4310_d405" / \
    "yam_station_linear_4310_d405_sim_scene.xml"
G1_DATASET = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"

SIZE_UNITS = ("episodes", "frames", "clips", "steps", "samples", "images", "windows", "reads", "demos", "videos",
              "shards", "files", "rows")
# a count (digits, thousands commas, or 10^k), at most one word between (e.g. "random"), then the unit
_SIZE = re.compile(r"(?<![\w.])(?:\d[\d,]*|10\^\d+)\s+(?:[\w`-]+\s+)?(?:%s)\b" %
                   "|".join(u.rstrip("s") + "s?" for u in SIZE_UNITS), re.IGNORECASE)


def names_size(label: str) -> bool:
    """Whether a row label names a size: a count followed by one of `SIZE_UNITS` (singular or plural), with at
    most one word between, e.g. "36 episodes", "1,500 random frames", "10^4 episodes"."""
    return bool(_SIZE.search(label))


def figure(name: str, value: float, unit: str, baseline: str, baseline_value: float, *,
           ratio: float | None = None, label: str = "", goal: str = "", **extra) -> dict:
    """Print one figure as a JSON line and return it.

    Keys: `benchmark` (`<script stem>.<figure>`), `value`, `unit`, `baseline` (what it is compared with, measured
    in the same run), `baseline_value`, `ratio` (value / baseline unless given, e.g. a median of per-trial
    ratios), `label` (one line for the benchmark table), `goal` (e.g. ">= 0.5" on the ratio), plus any `extra`.
    """
    if ratio is None:
        ratio = value / baseline_value if baseline_value else math.nan
    row = {"benchmark": name, "value": round(float(value), 4), "unit": unit, "baseline": baseline,
           "baseline_value": round(float(baseline_value), 4), "ratio": round(float(ratio), 4), "label": label,
           "goal": goal, **extra}
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
    return row


def alternate(sides: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    """Run each side once per trial, in turn (A B A B ...), and return each side's results per trial.

    A side returns one number (a rate, or seconds). Alternating is what keeps a shared machine's load swings
    from landing on one side only."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(trials):
        for name, fn in sides.items():
            out[name].append(float(fn()))
    return out


def median_ratio(values: list[float], baselines: list[float]) -> float:
    """Median over trials of value_i / baseline_i (the pairs come from the same trial)."""
    return statistics.median(v / b for v, b in zip(values, baselines))


def add_common_args(parser: argparse.ArgumentParser, trials: int = 3) -> argparse.ArgumentParser:
    """Add `--trials N` (alternated trials per side, default 3) and `--smoke` (tiny inputs, one trial)."""
    parser.add_argument("--trials", type=int, default=trials, help="alternated trials per side (median kept)")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, one trial: checks the script runs")
    return parser


def g1_frames(size: tuple[int, int] | None = None, max_frames: int | None = None) -> np.ndarray:
    """Real camera frames: the Unitree G1 episodes of `../shared/data/lerobot` (640x480 AV1) decoded with
    PyAV, episode after episode, optionally resized to `size` `(W, H)` with an area filter.

    Returns `(N, H, W, 3) uint8`. Raises `FileNotFoundError` when the shared data is absent."""
    from shardyard.video import open_video

    videos = sorted((G1_DATASET / "videos").rglob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no G1 videos under {G1_DATASET}")
    out = []
    left = max_frames
    for v in videos:
        r = open_video(v)
        n = r.num_frames if left is None else min(r.num_frames, left)
        out.append(r.read(range(n), size=size))
        r.close()
        if left is not None:
            left -= n
            if left <= 0:
                break
    return np.concatenate(out)


def yam_subset(dest: Path, n: int | None) -> Path:
    """The shared YAM episodes folder, or (with `n`) a copy of its first `n` episodes under `dest`."""
    import shutil

    if n is None:
        return YAM_EPISODES
    for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:n]:
        shutil.copytree(ep, dest / ep.relative_to(YAM_EPISODES))
    return dest


def in_fresh_process(fn: Callable, *args):
    """`fn(*args)` in a new (spawned) Python process, as the CLI runs each command: one ingest per process.

    Why: the first `run_ingest` in a process leaves zarr's I/O threads running, so a second one in the same
    process spawns its readers (each re-imports and re-warms the source) instead of forking them; a benchmark
    that ran trial after trial in one process would time that slower path, which no CLI run takes. `fn` must
    be importable (module level); the child's imports happen before `fn` runs, so `fn` times only its work."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process, all its threads, and its children that have
    exited and been waited for (a closed process pool's workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def random_vits(folder: Path) -> str:
    """A DINOv2-small-shaped ViT (hidden 384, 12 blocks, 6 heads, patch 14) with random weights, saved
    as a local transformers folder that `load_backbone` reads like a downloaded model."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                             image_size=518, mlp_ratio=4)).save_pretrained(folder)
    return str(folder)


def data_wait_share(rows: list[dict]) -> float:
    """A trainer's share of step time spent waiting for batches over its logged rows (each with the
    `data_wait_frac` and `steps_per_s` of its steps, `train.loop.DataWait`): sum of waits / sum of step times."""
    step_s = [1.0 / r["steps_per_s"] for r in rows]
    return sum(r["data_wait_frac"] * t for r, t in zip(rows, step_s)) / sum(step_s)


def clip_shard_store(root: Path, copies: int, per_shard: int = 4) -> list[Path]:
    """A shard store at `root` of `copies` x the shared WebVid sample clips (`webvid/clips/*.mp4`, `per_shard`
    a shard, keys `000000000`, ... in order, the file's stem as caption); returns the clip paths in sample
    order."""
    from shardyard.stores.wds import Sample, ShardWriter

    files = sorted((SHARED / "webvid" / "clips").glob("*.mp4"))
    paths = [files[i % len(files)] for i in range(copies * len(files))]
    with ShardWriter(root) as w:
        for si in range(0, len(paths), per_shard):
            w.write_shard(si // per_shard, [Sample(f"{i:09d}", {"mp4": p.read_bytes(), "txt": p.stem.encode()})
                                            for i, p in enumerate(paths[si:si + per_shard], start=si)], [])
    return paths
