"""Cost of integrity on read (issue 25, item 5): samples/s with `verify_reads` on against off, in the same run.

Input: the G1 episodes of `../shared/data/lerobot/unitree_g1_inspire_v2.1` (AV1, 640x480, 30 Hz), ingested once
per frame codec (`--codecs`, default `jpeg,video`; `ingest lerobot`, 2 workers). Two read paths per codec:
- `frames_<codec>`: random single frames (`read_rows`) through a DataLoader with 2 workers, batch 32: the read
  path of `benchmarks/frame_codecs.py`;
- `samples_<codec>`: `EpisodeDataset` samples, a frame plus a 16-step action chunk, at shuffled indices,
  DataLoader 2 workers, batch 32: the shardyard side of `benchmarks/vs_lerobot.py`.
Each figure is samples/s with the checks on (the default: every frame chunk's crc32c, each MP4's crc32c when
its file is first opened, each low-dim array's sha256 when loaded), its baseline the same reads of a store
opened with `verify_reads=False`. The two sides alternate for `--trials` rounds (each side first in turn),
each with a new store object and new workers, so both pay the same start-up and the checks' one-off work
(loading the recorded crc arrays, hashing the low-dim files and MP4s) is counted; each worker's first batch
is not timed. Value and baseline are medians, the ratio the median of per-round ratios (goal >= 0.95: at most
5 % fewer samples/s). `--smoke`: 160x120 frames, 96 samples, one round (checks the script runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import G1_DATASET, add_common_args, figure, median_ratio  # noqa: E402

FIELD = "obs.rgb.cam_high"
CHUNK = 16


class Frames(torch.utils.data.Dataset):
    """Frame `rows[i]` of `FIELD` from `store` (the reader opens its files lazily in each worker)."""

    def __init__(self, store, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        r = int(self.rows[i])
        return torch.from_numpy(self.store.read_rows(FIELD, r, r + 1)[0])


def rate(ds, indices: list[int], workers: int = 2, batch: int = 32) -> float:
    """Samples/s of a DataLoader over `ds` at `indices`, each worker's first batch (start-up) not timed."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=batch,
                                         num_workers=workers, shuffle=False)
    it = iter(loader)
    for _ in range(workers):
        next(it)
    n, t = 0, time.perf_counter()
    for b in it:
        n += len(b[FIELD]) if isinstance(b, dict) else len(b)
    return n / max(time.perf_counter() - t, 1e-9)


def ingest(out: Path, codec: str, size: tuple[int, int] | None) -> None:
    """`ingest lerobot` of the G1 episodes into `out` with frame codec `codec` (2 workers)."""
    from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource
    from shardyard.ingest.runner import IngestConfig, run_ingest

    run_ingest(LeRobotSource(LeRobotConfig(root=str(G1_DATASET), image_size=size)),
               IngestConfig(out=out, workers=2, frame_codec=codec))


def side(path: Path, kind: str, verify: bool, indices: list[int]) -> float:
    """One timed run of read path `kind` ("frames" or "samples") on a store opened with `verify_reads=verify`."""
    from shardyard import open_store
    from shardyard.loaders import EpisodeDataset, EpisodeDatasetConfig

    if kind == "frames":
        return rate(Frames(open_store(str(path), verify_reads=verify), np.asarray(indices)), list(range(len(indices))))
    ds = EpisodeDataset(str(path), deltas={FIELD: [0], "action": range(CHUNK)},
                        config=EpisodeDatasetConfig(verify_reads=verify))
    return rate(ds, indices)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--samples", type=int, default=640, help="Samples timed per side and round.")
    parser.add_argument("--codecs", default="jpeg,video")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = (160, 120) if args.smoke else None
    samples, trials = (96, 1) if args.smoke else (args.samples, args.trials)
    codecs = args.codecs.split(",")[:1] if args.smoke else args.codecs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in codecs:
            path = Path(tmp) / codec
            ingest(path, codec, size)
            from shardyard import open_store

            n = open_store(str(path)).num_steps
            indices = np.random.default_rng(0).permutation(n)[:samples].tolist()
            for kind in ("frames", "samples"):
                on, off = [], []
                for trial in range(trials):  # alternated, each side first in turn
                    order = [(True, on), (False, off)] if trial % 2 == 0 else [(False, off), (True, on)]
                    for verify, out in order:
                        out.append(side(path, kind, verify, indices))
                what = (f"{samples:,} random frames (`read_rows`)" if kind == "frames" else
                        f"{samples:,} shuffled samples (frame + {CHUNK}-step action chunk, `EpisodeDataset`)")
                figure(f"read_integrity.{kind}_{codec}", statistics.median(on), "samples/s",
                       "same reads, `verify_reads=False`", statistics.median(off), ratio=median_ratio(on, off),
                       goal=">= 0.95", label=f"{what} of the `{codec}` G1 store ({n:,} frames) with read checks "
                       "on, DataLoader 2 workers, batch 32", frame_codec=codec, samples=samples, trials=trials,
                       smoke=args.smoke, trials_value=[round(v, 1) for v in on],
                       trials_baseline=[round(v, 1) for v in off])


if __name__ == "__main__":
    main()
