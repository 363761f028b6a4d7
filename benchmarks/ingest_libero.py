"""Ingest steps/s of `ingest libero` on a generated LIBERO-layout file (50 demos x 150 steps, 128x128 images)
against reading the same arrays with h5py alone, in the same run. Prints JSON lines (DESIGN.md).

Figures:
- `ingest_libero.steps`: against `h5py_read` (every array the adapter reads, read whole from the page
  cache): the issue's figure, goal >= 0.6.
- `ingest_libero.steps_vs_copy`: against `h5py_read_and_write`, the same reads plus writing the image bytes
  once to a file in the same folder. Any ingest that stores the frames does at least this; with the
  fixture's images (uniform noise, which no codec compresses) the write is what bounds the ingest.

Usage: `python benchmarks/ingest_libero.py [--workers 2] [--trials 3]`; each figure takes the median of
the trials for both sides, alternated, so that a noisy neighbour hits both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import figure  # noqa: E402
from libero_fixtures import write_libero_file  # noqa: E402

from shardyard.ingest.libero import LiberoConfig, LiberoSource  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402

DEMOS, STEPS, SIZE = 50, 150, 128
ARRAYS = ("obs/agentview_rgb", "obs/eye_in_hand_rgb", "obs/ee_pos", "obs/ee_ori", "obs/gripper_states",
          "obs/joint_states", "actions", "rewards", "dones", "states")


def h5py_read(path: Path, write_to: Path | None = None) -> tuple[int, float]:
    """Read every array the adapter reads with h5py only (and, with `write_to`, write the image bytes to
    that file); returns (steps, seconds)."""
    t = time.perf_counter()
    steps = 0
    out = open(write_to, "wb") if write_to is not None else None
    try:
        with h5py.File(path, "r") as f:
            for d in f["data"].values():
                for name in ARRAYS:
                    arr = d[name][()]
                    if out is not None and name.endswith("_rgb"):
                        out.write(arr.data)
                steps += len(arr)
    finally:
        if out is not None:
            out.close()
            os.unlink(write_to)
    return steps, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "BENCH_demo.hdf5"
        write_libero_file(path, num_demos=DEMOS, steps=STEPS - 1, size=SIZE, marker=False)
        read_s, copy_s, ingest_s = [], [], []
        for trial in range(args.trials):
            n, s = h5py_read(path)
            read_s.append(s)
            copy_s.append(h5py_read(path, Path(tmp) / "copy.bin")[1])
            out = Path(tmp) / "store"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            result = run_ingest(LiberoSource(LiberoConfig(root=path)), IngestConfig(out=out, workers=args.workers))
            ingest_s.append(time.perf_counter() - t)
        rate = result.num_steps / statistics.median(ingest_s)
        extra = {"workers": args.workers, "demos": DEMOS, "steps": result.num_steps, "image": SIZE}
        figure("ingest_libero.steps", rate, "steps/s", "h5py_read", n / statistics.median(read_s), **extra)
        figure("ingest_libero.steps_vs_copy", rate, "steps/s", "h5py_read_and_write", n / statistics.median(copy_s), **extra)


if __name__ == "__main__":
    main()
