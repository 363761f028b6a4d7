"""Frame codecs of the episodic store on real camera frames (issue 15): size, ingest speed, random reads.

Input: the G1 episodes of `../shared/data/lerobot/unitree_g1_inspire_v2.1` (AV1 video, 640x480, 30 Hz),
ingested with `ingest lerobot` once per codec (`--workers 2`). Figures per codec, as JSON lines:
- `<codec>.bytes_per_frame`: the frame field's bytes in the store per frame, baseline the source video's
  bytes per frame (goal: default codec <= 8x, video <= 1.5x);
- `<codec>.ingest`: frames/s of the whole ingest, baseline the lz4 ingest of the same run;
- `<codec>.reads`: random single-frame reads/s through a DataLoader with 2 workers (batch 32), baseline the
  same reads from a raw `np.memmap` of the same frames (goal: default codec >= 0.5).
Ingests and reads alternate over the codecs for `--trials` rounds (memmap's reads in each round too); each
figure is the median, its ratio the median of per-round ratios (`benchmarks/harness.py`). `--smoke` resizes
frames to 160x120, does few reads and one round (a check that the script runs, not a figure).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, add_common_args, figure, median_ratio  # noqa: E402

G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
FIELD = "obs.rgb.cam_high"
CODECS = ["jpeg", "video", "lz4", "none"]


class Reads(torch.utils.data.Dataset):
    """`fetch(row)` at each global row of `rows` (workers fork: each opens its files lazily)."""

    def __init__(self, rows: np.ndarray, fetch):
        self.rows, self.fetch = rows, fetch

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.fetch(int(self.rows[i]))


def _rate(ds, workers: int = 2) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
    it = iter(loader)
    for _ in range(workers):  # worker start-up is not part of the figure
        next(it)
    n, t = 0, time.perf_counter()
    for batch in it:
        n += len(batch)
    return n / (time.perf_counter() - t)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _ingest(out: Path, codec: str, size: tuple[int, int] | None) -> float:
    from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource
    from shardyard.ingest.runner import IngestConfig, run_ingest

    t = time.perf_counter()
    res = run_ingest(LeRobotSource(LeRobotConfig(root=str(G1), image_size=size)),
                     IngestConfig(out=out, workers=2, frame_codec=codec))
    return res.num_steps / (time.perf_counter() - t)


GOALS = {"jpeg": ("<= 8", ">= 0.5"), "video": ("<= 1.5", "")}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--reads", type=int, default=1500)
    parser.add_argument("--codecs", default=",".join(CODECS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = (160, 120) if args.smoke else None
    reads, trials = (300, 1) if args.smoke else (args.reads, args.trials)
    codecs = [c for c in args.codecs.split(",") if not (args.smoke and c == "none")]  # a smoke: 3 of 4 paths
    order = ["lz4"] + [c for c in codecs if c != "lz4"]
    from shardyard import open_store

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    ingest: dict[str, list[float]] = {c: [] for c in order}
    for _ in range(trials):  # alternated: every codec once per round
        for codec in order:
            shutil.rmtree(root / codec, ignore_errors=True)
            ingest[codec].append(_ingest(root / codec, codec, size))
    stores = {c: open_store(str(root / c)) for c in order}
    ref = stores["lz4"]
    n = ref.num_steps
    videos = [G1 / "videos" / "chunk-000" / "observation.images.cam_high" / f"{k}.mp4" for k in ref.episode_keys]
    src_per_frame = sum(p.stat().st_size for p in videos) / n
    frames_path = root / "frames.npy"
    np.save(frames_path, ref.read_rows(FIELD, 0, n))
    rows = np.random.default_rng(0).integers(0, n, reads)
    opened: dict[str, np.ndarray] = {}

    def memmap_row(i: int) -> torch.Tensor:
        if "mm" not in opened:
            opened["mm"] = np.load(frames_path, mmap_mode="r")
        return torch.from_numpy(np.array(opened["mm"][i]))

    mm: list[float] = []
    got: dict[str, list[float]] = {c: [] for c in codecs}
    for _ in range(trials):
        mm.append(_rate(Reads(rows, memmap_row)))
        for codec in codecs:
            got[codec].append(_rate(Reads(rows, lambda i, s=stores[codec]: torch.from_numpy(
                s.read_rows(FIELD, i, i + 1)[0]))))
    shape = "x".join(map(str, ref.schema[FIELD].shape))
    med = statistics.median
    for codec in codecs:
        size_goal, read_goal = GOALS.get(codec, ("", ""))
        per_frame = _bytes(root / codec / "data" / FIELD) / n
        figure(f"frame_codecs.{codec}.bytes_per_frame", per_frame, "bytes/frame", "source AV1 video, bytes/frame",
               src_per_frame, frame=shape, frames=n, goal=size_goal,
               label=f"`{codec}` store bytes per real G1 {shape} frame")
        figure(f"frame_codecs.{codec}.ingest", med(ingest[codec]), "frames/s", "`lz4` ingest, same run",
               med(ingest["lz4"]), ratio=median_ratio(ingest[codec], ingest["lz4"]), workers=2,
               label=f"`ingest lerobot --frame-codec {codec}` of the G1 set, 2 workers")
        figure(f"frame_codecs.{codec}.reads", med(got[codec]), "frames/s", "raw np.memmap, same loader", med(mm),
               ratio=median_ratio(got[codec], mm), goal=read_goal,
               label=f"random single G1 frames from the `{codec}` store, DataLoader 2 workers")
    tmp.cleanup()


if __name__ == "__main__":
    main()
