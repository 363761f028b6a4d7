"""Cost curves: how each cost of a store grows with its number of episodes (issue 14, item 3).

Per size E (default 10^2, 10^3, 10^4; docs/clusters-and-buckets.md also reports 10^5; episodes of 8 steps: 16x16 RGB frames
and realistic low-dim fields, EEF position in metres, unit quaternions, gripper, 7-D action): in one fresh
process, ingest seconds per episode (`run_ingest`, one process), its peak RSS, and stats-pass seconds
(`compute_stats` on the finished store); then in another fresh process, as a training job would meet the
store, `open_store` seconds (after a first open has started zarr's event loop), `EpisodeDataset`
construction seconds and first-batch latency (DataLoader, 2 forked workers), and RSS per DataLoader worker
after its first batch. Goal: per-episode costs flat (within 1.5x from the smallest size to the largest),
open time and worker memory sub-linear.

Prints one JSON line per figure and size, the smallest size as the baseline: `scale.<figure>` with `episodes`.
`--smoke` runs 10 and 100 episodes (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import figure  # noqa: E402

STEPS, SIDE = 8, 16


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
        t = np.linspace(0, 1, STEPS, dtype=np.float32)[:, None]
        pos = (np.array([0.4, 0.0, 0.05]) + t * rng.uniform(-0.2, 0.2, 3) + [0, 0, 0.1] * t).astype(np.float32)
        quat = Rotation.from_rotvec(rng.normal(0, 0.3, (STEPS, 3))).as_quat().astype(np.float32)
        K, T = default_camera(SIDE, SIDE)
        return Episode(key, {
            "obs.rgb.front": rng.integers(0, 255, (STEPS, SIDE, SIDE, 3), dtype=np.uint8),
            "obs.eef_pos": pos, "obs.eef_quat": quat,
            "obs.gripper": (t > 0.5).astype(np.float32),
            "action": rng.normal(0, 0.1, (STEPS, 7)).astype(np.float32)},
            meta={"task": "pick", "fps": 15.0,
                  "cameras": {"front": {"K": K.tolist(), "T_world_cam": T.tolist(), "width": SIDE,
                                        "height": SIDE, "moving": False}}})


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

    t0 = time.perf_counter()
    run_ingest(SyntheticSource(num_episodes), IngestConfig(out=out, commit_every=256))
    ingest = time.perf_counter() - t0
    peak_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = open_store(str(out))
    t0 = time.perf_counter()
    compute_stats(store)
    stats = time.perf_counter() - t0
    return {"ingest_s_per_episode": ingest / num_episodes, "ingest_peak_rss_mb": peak_ingest / 1024,
            "stats_s_per_episode": stats / num_episodes}


def load_phase(out: Path) -> dict:
    """What a training process pays, in a fresh process that did not ingest (so its forked workers do not
    inherit the ingest's heap): open, `EpisodeDataset` construction, first batch, RSS per worker."""
    import torch

    from shardyard import open_store
    from shardyard.loaders import EpisodeDataset

    open_store(str(out))  # zarr's event-loop thread and imports: once per process, not per store
    t0 = time.perf_counter()
    open_store(str(out))
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = EpisodeDataset(str(out), {"obs.rgb.front": [0], "action": list(range(4)), "obs.eef_pos": [-1, 0]})
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    dl = torch.utils.data.DataLoader(_WithRss(ds), batch_size=32, shuffle=True, num_workers=2,
                                     multiprocessing_context="fork", generator=torch.Generator().manual_seed(0))
    batch = next(iter(dl))
    first = time.perf_counter() - t0
    return {"open_store_s": opened, "dataset_init_s": built, "first_batch_s": first,
            "worker_rss_mb": float(batch["rss_kb"].max()) / 1024}


def _run_phase(phase: str, n: int, out: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--one", str(n), "--out", out],
                          capture_output=True, text=True, env=os.environ.copy(), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000,10000", help="episodes per store, comma-separated (10^5: see docs/clusters-and-buckets.md)")
    ap.add_argument("--smoke", action="store_true", help="10 and 100 episodes")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=["ingest", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = ingest_phase(args.one, Path(args.out)) if args.phase == "ingest" else load_phase(Path(args.out))
        sys.stdout.write(json.dumps(row) + "\n")
        return
    sizes = [10, 100] if args.smoke else [int(s) for s in args.sizes.split(",")]
    units = {"ingest_s_per_episode": "s", "ingest_peak_rss_mb": "MB", "open_store_s": "s",
             "stats_s_per_episode": "s", "dataset_init_s": "s", "first_batch_s": "s", "worker_rss_mb": "MB"}
    base = None
    for n in sizes:  # each size's figures as soon as it is done (10^5 takes most of an hour)
        with tempfile.TemporaryDirectory() as tmp:
            row = {"episodes": n, **_run_phase("ingest", n, f"{tmp}/store"), **_run_phase("load", n, f"{tmp}/store")}
        base = base or row
        for k, unit in units.items():
            figure(f"scale.{k}", row[k], unit, f"{base['episodes']} episodes", base[k], episodes=row["episodes"])
        sys.stdout.flush()

if __name__ == "__main__":
    main()
