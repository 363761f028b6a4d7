"""Ingest steps/s of `ingest libero` on generated LIBERO-layout files (50 demos x 150 steps, two 128x128
cameras) against reading the same arrays with h5py and encoding the same frames once with the store's own
frame codec, in the same run. Prints JSON lines (DESIGN.md).

Inputs (`--frames`): `noise` (the fixture's uniform-noise images, which no codec compresses: the worst case
for the write side) and `real` (real camera frames: the Unitree G1 episodes of `../shared/data/lerobot`
resized to 128x128, cycled over the demos), both by default.

Figures, per input:
- `ingest_libero.steps_<frames>`: against h5py reads + encode: every array the adapter reads, read whole
  with h5py from the page cache, plus each frame of both cameras encoded once with the chunk codec the store
  holds them in (taken from the ingested store's array metadata, so the baseline follows the default codec).
  That is the least any ingest that stores the frames must do. Goal ratio >= 0.6 (issue 12's restatement).
- `ingest_libero.steps_vs_read_<frames>`: against the h5py reads alone (no encoding), for scale.
Both baselines run in as many processes as the ingest has workers (`--workers`, default 2): a fork pool
started inside the timed span (the ingest starts its workers inside its own), the demos dealt out round-robin.
Each ingest runs in a fresh process, as the CLI runs it (`harness.in_fresh_process`: a second ingest in one
process would spawn its readers instead of forking them); its imports are done before the clock starts, as
the baselines' are: the modules it imports on first use too (`LAZY_IMPORTS`: MuJoCo for the wrist camera's
forward kinematics, pandas, which pyarrow imports at its first array), a one-off cost of a process rather
than of the data, whose median seconds each row gives (`import_s`). The sides are alternated `--trials`
times (default 3); medians (`benchmarks/harness.py`).
Each row also carries `cpu_s` (median CPU seconds of each side: the ingest's writer process with its reader
workers, the baselines' processes) and, on the headline row, `cpu_ratio` (baseline CPU / ingest CPU, median
of the trials): the ratio where the run gets no parallelism, as on a shared machine whose scheduler splits
the cores between sessions; the wall ratio lies between it and the fully parallel one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import (  # noqa: E402
    add_common_args,
    alternate,
    cpu_seconds,
    figure,
    g1_frames,
    in_fresh_process,
    median_ratio,
)
from libero_fixtures import write_libero_file  # noqa: E402

from shardyard.ingest.libero import LiberoConfig, LiberoSource  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402

DEMOS, STEPS, SIZE = 50, 150, 128
# What an ingest imports at its first use (libero_cameras, pyarrow, stats.robot), not when its module loads.
LAZY_IMPORTS = ("mujoco", "pandas", "scipy.cluster.vq", "threadpoolctl")
CAMERAS = ("obs/agentview_rgb", "obs/eye_in_hand_rgb")
ARRAYS = CAMERAS + ("obs/ee_pos", "obs/ee_ori", "obs/gripper_states", "obs/joint_states", "actions", "rewards",
                    "dones", "states")


def put_real_frames(path: Path, frames: np.ndarray) -> None:
    """Overwrite both cameras of every demo of `path` with `frames` `(N, H, W, 3)`, cycled."""
    k = 0
    with h5py.File(path, "r+") as f:
        for d in f["data"].values():
            for cam in CAMERAS:
                n = d[cam].shape[0]
                d[cam][...] = frames[np.arange(k, k + n) % len(frames)]
                k += n


def h5py_read(path: Path, demos: list[str], store: Path | None = None) -> tuple[int, float]:
    """Read every array the adapter reads of `demos` with h5py only and, with `store`, encode each camera
    frame once with its frame codec (`store_encoder`); returns (steps read, CPU seconds of this process)."""
    cpu = time.process_time()
    encode = store_encoder(store, "obs.rgb.agentview")[0] if store is not None else None
    steps = 0
    with h5py.File(path, "r") as f:
        for demo in demos:
            d = f["data"][demo]
            for name in ARRAYS:
                arr = d[name][()]
                if encode is not None and name in CAMERAS:
                    for frame in arr:
                        encode(frame)
            steps += len(arr)
    return steps, time.process_time() - cpu


def pool_read(path: Path, demos: list[str], workers: int,
              store: Path | None = None) -> tuple[int, float, float]:
    """`h5py_read` of `demos` dealt out over `workers` forked processes (started inside the timing; each
    reads the codec of `store`, which every ingest trial has rewritten whole before this runs); returns
    (steps, seconds, CPU seconds of the processes' work)."""
    t = time.perf_counter()
    parts = [demos[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        done = list(pool.map(h5py_read, [path] * workers, parts, [store] * workers))
    return sum(d[0] for d in done), time.perf_counter() - t, sum(d[1] for d in done)


def store_encoder(store: Path, field: str):
    """The encoder of the chunk codec `field` is stored with (one frame -> chunk bytes)."""
    from shardyard.stores.frames.registry import chunk_codec_of
    from shardyard.stores.frames.zarr_shard import load_array_meta

    meta = load_array_meta(str(store / "data" / field))
    codec = chunk_codec_of(meta)
    if codec is None:
        raise RuntimeError(f"{field} is not stored one frame per chunk; no encoder to compare with")
    return codec.encoder(), codec.name


def timed_ingest(path: Path, out: Path, workers: int) -> tuple[float, int, float, float]:
    """One `ingest libero` of `path` into a new store `out` (run it in a fresh process), after
    `LAZY_IMPORTS`; returns (seconds, steps stored, CPU seconds of the writer's process and its reader
    workers, seconds the lazy imports took)."""
    import importlib

    t = time.perf_counter()
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    imports = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    t, cpu = time.perf_counter(), cpu_seconds()
    res = run_ingest(LiberoSource(LiberoConfig(root=path)), IngestConfig(out=out, workers=workers))
    return time.perf_counter() - t, res.num_steps, cpu_seconds() - cpu, imports


def bench(path: Path, tmp: Path, workers: int, trials: int) -> dict:
    """Alternate ingest, read+encode and read-only trials on one input file; returns the medians."""
    out = tmp / "store"
    state: dict = {}
    cpu: dict[str, list[float]] = {"ingest": [], "encode": [], "read": []}
    imports: list[float] = []

    def ingest() -> float:
        seconds, state["steps"], used, took = in_fresh_process(timed_ingest, path, out, workers)
        cpu["ingest"].append(used)
        imports.append(took)
        return seconds

    def baseline(side: str, store: Path | None) -> float:
        _, seconds, used = pool_read(path, demos, workers, store)
        cpu[side].append(used)
        return seconds

    ingest()  # first run: learn the store's codec (and warm the page cache for every side)
    codec = store_encoder(out, "obs.rgb.agentview")[1]
    with h5py.File(path, "r") as f:
        demos = sorted(f["data"])
    n = pool_read(path, demos, workers)[0]
    cpu["ingest"].clear()  # the first run above was not a trial
    imports.clear()
    r = alternate({"ingest": ingest, "encode": lambda: baseline("encode", out),
                   "read": lambda: baseline("read", None)}, trials)
    steps = state["steps"]
    return {"rate": steps / statistics.median(r["ingest"]), "encode": n / statistics.median(r["encode"]),
            "read": n / statistics.median(r["read"]), "codec": codec, "steps": steps,
            "ratio_encode": median_ratio([steps / s for s in r["ingest"]], [n / s for s in r["encode"]]),
            "ratio_read": median_ratio([steps / s for s in r["ingest"]], [n / s for s in r["read"]]),
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "import_s": statistics.median(imports),
            "cpu_ratio": median_ratio(cpu["encode"], cpu["ingest"])}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", choices=("noise", "real", "both"), default="both")
    args = parser.parse_args()
    demos, steps, trials = (4, 20, 1) if args.smoke else (DEMOS, STEPS, args.trials)
    kinds = ("noise", "real") if args.frames == "both" else (args.frames,)
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "BENCH_demo.hdf5"
            write_libero_file(path, num_demos=demos, steps=steps - 1, size=SIZE, marker=False)
            if kind == "real":
                put_real_frames(path, g1_frames(size=(SIZE, SIZE), max_frames=400 if args.smoke else None))
            m = bench(path, Path(tmp), args.workers, trials)
        extra = {"workers": args.workers, "demos": demos, "steps": m["steps"], "image": SIZE, "codec": m["codec"],
                 "cpu_s": {k: round(v, 3) for k, v in m["cpu"].items()}, "import_s": round(m["import_s"], 3)}
        what = "noise images" if kind == "noise" else "real G1 frames at 128x128"
        procs = f"{args.workers} processes"
        figure(f"ingest_libero.steps_{kind}", m["rate"], "steps/s",
               f"h5py reads + {m['codec']} encode once, {procs}", m["encode"], ratio=m["ratio_encode"], goal=">= 0.6",
               cpu_ratio=round(m["cpu_ratio"], 4),
               label=f"`ingest libero`, {demos} demos x {steps} steps, 2 cameras, {what}, {args.workers} workers",
               **extra)
        figure(f"ingest_libero.steps_vs_read_{kind}", m["rate"], "steps/s", f"h5py reads only, {procs}", m["read"],
               ratio=m["ratio_read"], label=f"the same {demos} demos x {steps} steps against h5py reads alone "
                                            f"({what})", **extra)


if __name__ == "__main__":
    main()
