"""Ingest steps/s of `ingest libero` on a generated LIBERO-layout file (50 demos x 150 steps, 128x128 images)
against reading the same arrays with h5py alone, in the same run. Prints one JSON line (DESIGN.md)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from libero_fixtures import write_libero_file  # noqa: E402

from shardyard.ingest.libero import LiberoConfig, LiberoSource  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402

DEMOS, STEPS, SIZE = 50, 150, 128


def h5py_read(path: Path) -> int:
    """Read every array the adapter reads, with h5py only; returns steps read."""
    steps = 0
    with h5py.File(path, "r") as f:
        for d in f["data"].values():
            for name in ("obs/agentview_rgb", "obs/eye_in_hand_rgb", "obs/ee_pos", "obs/ee_ori", "obs/gripper_states",
                         "obs/joint_states", "actions", "rewards", "dones", "states"):
                arr = d[name][()]
            steps += len(arr)
    return steps


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "BENCH_demo.hdf5"
        # equal lengths: write_libero_file varies length by demo index mod 3; keep steps ~150
        write_libero_file(path, num_demos=DEMOS, steps=STEPS - 1, size=SIZE, marker=False)
        t = time.perf_counter()
        n_h5 = h5py_read(path)
        h5_rate = n_h5 / (time.perf_counter() - t)
        t = time.perf_counter()
        result = run_ingest(LiberoSource(LiberoConfig(root=path)), IngestConfig(out=Path(tmp) / "store", workers=workers))
        rate = result.num_steps / (time.perf_counter() - t)
    print(json.dumps({"benchmark": "ingest_libero.steps", "value": round(rate, 1), "unit": "steps/s",
                      "baseline": "h5py_read", "baseline_value": round(h5_rate, 1),
                      "ratio": round(float(rate / h5_rate), 3), "workers": workers,
                      "demos": DEMOS, "steps": int(np.round(result.num_steps / DEMOS)), "image": SIZE}))


if __name__ == "__main__":
    main()
