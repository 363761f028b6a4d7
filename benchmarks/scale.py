"""Cost curves: how each cost of a store grows with its number of episodes (issue 14, item 3).

Per size E (default 10^2, 10^3, 10^4; docs/clusters-and-buckets.md reports 10^3 to 10^6; episodes of 8 steps,
every 100th of 4: 16x16 RGB frames and realistic low-dim fields, EEF position in metres, unit quaternions,
gripper, 7-D action): in one fresh process, ingest seconds per episode (`run_ingest`, one process, the stats
pass included, after a 10-episode ingest has paid the imports), its peak RSS, and stats-pass seconds
(`compute_stats` on the finished store); then in another fresh process, as a training job would meet the
store, `open_store` seconds (after a first open has started zarr's event loop), `store.episode_meta(i)` of
random episodes, `EpisodeDataset` construction seconds and
first-batch latency (DataLoader, 2 forked workers), and RSS per DataLoader worker after its first batch; then
in a third, `edit delete-episodes --where 'length < 5'` (the 1 % short episodes) into a new store, seconds per
episode and peak RSS. Goal: per-episode costs flat (within 1.5x from the smallest size to the largest),
open time, metadata reads and worker memory sub-linear.

Every size is built and measured once per round, the sizes in turn, for `--trials` rounds (default 3; the
10^5 size takes most of an hour a round, so a run with it may pass `--trials 1`: its rows then say "single
run"). Figures: `scale.e<E>.<figure>` for each size E above the smallest, the median over rounds, against the
same figure at the smallest size (the baseline; its ratio the median of per-round ratios), so a row says how
a cost grew from the smallest size to E. `--smoke` runs 10 and 100 episodes, one round (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_common_args, figure, median_ratio  # noqa: E402

STEPS, SIDE = 8, 16
SHORT = 4  # every 100th episode has 4 steps, so that `edit delete-episodes --where 'length < 5'` drops 1 %


class SyntheticSource:
    """In-memory episodes (no raw files, so the curve is the store's, not the decoder's)."""

    name = "synthetic"

    def __init__(self, num_episodes: int) -> None:
        self.num_episodes = num_episodes

    def schema(self):
        """One 16x16 camera and the low-dim fields of a YAM store."""
        from shardyard.schema import FieldSpec, Schema

        return Schema({"obs.rgb.front": FieldSpec("uint8", (SIDE, SIDE, 3), kind="image"),
                       "obs.eef_pos": FieldSpec("float32", (3,), unit="m"),
                       "obs.eef_quat": FieldSpec("float32", (4,), kind="vector"),
                       "obs.gripper": FieldSpec("float32", (1,), unit="normalised"),
                       "action": FieldSpec("float32", (7,))})

    def keys(self) -> list[str]:
        """`task/demo_0000000`, ... in order."""
        return [f"task/demo_{i:07d}" for i in range(self.num_episodes)]

    def describe(self) -> dict:
        """Provenance of the synthetic set."""
        return {"name": self.name, "num_episodes": self.num_episodes}

    def read(self, key: str):
        """Episode `key`: seeded by its index, so every run writes the same store."""
        from scipy.spatial.transform import Rotation

        from shardyard.schema import Episode
        from shardyard.testing import default_camera

        i = int(key.rsplit("_", 1)[1])
        rng = np.random.default_rng(i)
        steps = SHORT if i % 100 == 9 else STEPS
        t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
        pos = (np.array([0.4, 0.0, 0.05]) + t * rng.uniform(-0.2, 0.2, 3) + [0, 0, 0.1] * t).astype(np.float32)
        quat = Rotation.from_rotvec(rng.normal(0, 0.3, (steps, 3))).as_quat().astype(np.float32)
        if not hasattr(self, "_camera"):  # one rig: the same intrinsics and pose for every episode
            self._camera = tuple(m.tolist() for m in default_camera(SIDE, SIDE))
        K, T = self._camera
        return Episode(key, {
            "obs.rgb.front": rng.integers(0, 255, (steps, SIDE, SIDE, 3), dtype=np.uint8),
            "obs.eef_pos": pos, "obs.eef_quat": quat,
            "obs.gripper": (t > 0.5).astype(np.float32),
            "action": rng.normal(0, 0.1, (steps, 7)).astype(np.float32)},
            meta={"task": "pick", "fps": 15.0,
                  "cameras": {"front": {"K": K, "T_world_cam": T, "width": SIDE,
                                        "height": SIDE, "moving": False}}})


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: on a shared machine, what a phase cost itself."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class _WithRss:
    """Dataset wrapper adding the worker's resident set (kB) to each item."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return {**self.ds[i], "rss_kb": _rss_kb()}


def ingest_phase(num_episodes: int, out: Path) -> dict:
    """Ingest and the stats pass, in this process."""
    from shardyard import open_store
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.stores.stats import compute_stats

    # a 10-episode ingest first, into a scratch store: the library's imports are paid once per process, not
    # per episode, and would otherwise be most of a small store's "per-episode" cost
    with tempfile.TemporaryDirectory() as tmp:
        run_ingest(SyntheticSource(10), IngestConfig(out=Path(tmp) / "warm", commit_every=256))
    t0, cpu0 = time.perf_counter(), _cpu_s()
    run_ingest(SyntheticSource(num_episodes), IngestConfig(out=out, commit_every=256))
    ingest, ingest_cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    peak_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = open_store(str(out))
    t0 = time.perf_counter()
    compute_stats(store)
    stats = time.perf_counter() - t0
    return {"ingest_s_per_episode": ingest / num_episodes, "ingest_cpu_s_per_episode": ingest_cpu / num_episodes,
            "ingest_peak_rss_mb": peak_ingest / 1024,
            "stats_s_per_episode": stats / num_episodes}


def load_phase(out: Path) -> dict:
    """What a training process pays, in a fresh process that did not ingest (so its forked workers do not
    inherit the ingest's heap): open, `EpisodeDataset` construction, first batch, RSS per worker."""
    import torch

    from shardyard import open_store
    from shardyard.loaders import EpisodeDataset, ResumableSampler

    open_store(str(out))  # zarr's event-loop thread and imports: once per process, not per store
    t0 = time.perf_counter()
    store = open_store(str(out))
    opened = time.perf_counter() - t0
    picks = np.random.default_rng(0).integers(0, store.num_episodes, 100)  # mostly cold row groups
    t0 = time.perf_counter()
    for i in picks:
        store.episode_meta(int(i))
    meta = (time.perf_counter() - t0) / len(picks)
    t0 = time.perf_counter()
    ds = EpisodeDataset(str(out), {"obs.rgb.front": [0], "action": list(range(4)), "obs.eef_pos": [-1, 0]})
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the sampler the README's loader uses; torch's RandomSampler spends ~1 s on `randperm(n).tolist()` at 8e6
    dl = torch.utils.data.DataLoader(_WithRss(ds), batch_size=32, sampler=ResumableSampler(len(ds), seed=0),
                                     num_workers=2, multiprocessing_context="fork")
    batch = next(iter(dl))
    first = time.perf_counter() - t0
    return {"open_store_s": opened, "episode_meta_s": meta, "dataset_init_s": built, "first_batch_s": first,
            "worker_rss_mb": float(batch["rss_kb"].max()) / 1024}


def edit_phase(num_episodes: int, out: Path) -> dict:
    """`shardyard edit delete-episodes --where 'length < 5'` (1 % of the episodes) into a new store, in a
    fresh process: the selection on the metadata columns, the copy (frame chunks as stored) and the stats."""
    import shutil

    from shardyard.tools.edit import EditTarget, EpisodeSelection, delete_episodes

    edited = Path(f"{out}-edited")
    t0, cpu0 = time.perf_counter(), _cpu_s()
    delete_episodes(str(out), EpisodeSelection(where="length < 5"), EditTarget(out=str(edited)))
    took, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    shutil.rmtree(edited)
    return {"edit_s_per_episode": took / num_episodes, "edit_cpu_s_per_episode": cpu / num_episodes,
            "edit_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_phase(phase: str, n: int, out: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--one", str(n), "--out", out],
                          capture_output=True, text=True, env=os.environ.copy(), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# figure -> (unit, label (before the sizes), goal on the ratio to the smallest size: "flat" or "sub-linear")
FIGURES = {
    "ingest_s_per_episode": ("s", "`run_ingest` seconds per episode, one process", "flat"),
    "ingest_cpu_s_per_episode": ("s", "`run_ingest` CPU seconds (user + system) per episode", "flat"),
    "ingest_peak_rss_mb": ("MB", "peak RSS of the ingest process", ""),
    "open_store_s": ("s", "`open_store` seconds (zarr already started)", "sub-linear"),
    "episode_meta_s": ("s", "`store.episode_meta(i)` seconds, random episodes (cold row groups)", "sub-linear"),
    "stats_s_per_episode": ("s", "`compute_stats` seconds per episode", "flat"),
    "dataset_init_s": ("s", "`EpisodeDataset` construction seconds", ""),
    "first_batch_s": ("s", "first-batch latency (batch 32, `ResumableSampler`), DataLoader 2 forked workers", ""),
    "worker_rss_mb": ("MB", "RSS per DataLoader worker after its first batch", "sub-linear"),
    "edit_s_per_episode": ("s", "`edit delete-episodes --where 'length < 5'` seconds per episode", "flat"),
    "edit_cpu_s_per_episode": ("s", "the same edit's CPU seconds (user + system) per episode", "flat"),
    "edit_peak_rss_mb": ("MB", "peak RSS of the edit process", ""),
}


def report(runs: dict[int, list[dict]], trials: int, why_single: str = "--trials 1") -> None:
    """One figure per size above the smallest and per cost, against the same cost at the smallest size."""
    sizes = sorted(runs)
    base = sizes[0]
    for n in sizes[1:]:
        for k, (unit, what, goal) in FIGURES.items():
            vals, bases = [r[k] for r in runs[n]], [r[k] for r in runs[base]]
            single = f" (single run: {why_single})" if trials == 1 else f", median of {trials} rounds"
            figure(f"scale.e{n}.{k}", statistics.median(vals), unit, f"the same at {base:,} episodes",
                   statistics.median(bases), ratio=median_ratio(vals, bases),
                   goal={"flat": "<= 1.5", "sub-linear": f"< {n / base:g}"}.get(goal, ""),
                   label=f"{what}, store of {n:,} episodes of {STEPS} steps vs {base:,} episodes{single}",
                   episodes=n, baseline_episodes=base, steps_per_episode=STEPS, trials=trials)


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--sizes", default="100,1000,10000",
                    help="episodes per store, comma-separated, at least two (10^5: see docs/clusters-and-buckets.md)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=["ingest", "load", "edit"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        phases = {"ingest": lambda: ingest_phase(args.one, Path(args.out)), "load": lambda: load_phase(Path(args.out)),
                  "edit": lambda: edit_phase(args.one, Path(args.out))}
        row = phases[args.phase]()
        sys.stdout.write(json.dumps(row) + "\n")
        return
    sizes = [10, 100] if args.smoke else sorted({int(s) for s in args.sizes.split(",")})
    if len(sizes) < 2:
        ap.error("--sizes needs at least two sizes: each is compared with the smallest")
    trials = 1 if args.smoke else args.trials
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(trials):  # alternated: every size once per round
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                runs[n].append({k: v for phase in ("ingest", "load", "edit")
                                for k, v in _run_phase(phase, n, f"{tmp}/store").items()})
    report(runs, trials, "--smoke" if args.smoke else "--trials 1")


if __name__ == "__main__":
    main()
