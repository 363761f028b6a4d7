"""Random reads from an episodic store against the same arrays in a raw `np.memmap`, in the same run.

Stores (default codec of the day, as a user gets it): `sim`, the shared YAM episodes (flat simulated renders)
ingested with the top camera resized to 448x448 (the layout issue 7 measured); `real`, the Unitree G1 LeRobot
episodes (real 640x480 camera frames) through `ingest lerobot`. The memmap baseline holds the same decoded
frames as raw `uint8` arrays. Figures, each through a DataLoader with 2 workers (batch 32), the two sides
alternated `--trials` times, medians (`benchmarks/harness.py`):
- `frames_<store>`: random (episode, step) single-frame reads; goal ratio >= 0.5.
- `windows`: random 16-step windows of the low-dim fields (EEF pose, gripper, joints, action); goal >= 0.8.
Also, in one process without a DataLoader: `frames_1proc_<store>` against memmap and `zarr_python_1proc`
(what plain `zarr` array indexing gives, 300 reads) against the same reads from the memmap in that process,
alternated likewise.
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
from harness import G1_DATASET, YAM_MODEL, add_common_args, alternate, figure, median_ratio, yam_subset  # noqa: E402

LOWDIM = ["obs.eef_pos", "obs.eef_quat", "obs.gripper", "obs.joint_pos", "action"]
WINDOW = 16


class Reads(torch.utils.data.Dataset):
    """`fetch(episode, step)` at each (episode, step) of `index`; DataLoader workers fork, so `fetch` may be a
    closure, and each one opens its files lazily in the worker."""

    def __init__(self, index: np.ndarray, fetch):
        self.index, self.fetch = index, fetch

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        e, t = self.index[i]
        return self.fetch(int(e), int(t))


def lazy_memmaps(paths: dict[str, str]):
    """A getter of `np.load(..., mmap_mode="r")` arrays, opened on first use in each process."""
    opened: dict[int, dict[str, np.ndarray]] = {}

    def get() -> dict[str, np.ndarray]:
        import os

        pid = os.getpid()
        if pid not in opened:
            opened[pid] = {k: np.load(p, mmap_mode="r") for k, p in paths.items()}
        return opened[pid]

    return get


def _rate(ds, workers: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    for _ in range(workers):  # each worker's start-up (its first batch) is not part of the figure
        next(it)
    n, t = 0, time.perf_counter()
    for batch in it:
        n += len(batch) if isinstance(batch, torch.Tensor) else len(next(iter(batch.values())))
    return n / (time.perf_counter() - t)


def build_store(kind: str, out: Path, smoke: bool) -> str:
    """Ingest the `sim` (YAM top camera at 448x448) or `real` (G1) store at `out`; returns its image field."""
    from shardyard.ingest.runner import IngestConfig, run_ingest

    if (out / "manifest.json").exists():
        pass
    elif kind == "sim":
        from shardyard.ingest.yam import YamConfig, YamSource

        size = (112, 112) if smoke else (448, 448)
        root = yam_subset(out.parent / "yam_raw", 2 if smoke else None)
        run_ingest(YamSource(YamConfig(root=root, robot_model=YAM_MODEL, cameras=("top",), image_size=size)),
                   IngestConfig(out=out, workers=2))
    else:
        from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource

        run_ingest(LeRobotSource(LeRobotConfig(root=G1_DATASET, image_size=(160, 120) if smoke else None)),
                   IngestConfig(out=out, workers=2))
    from shardyard import open_store

    return next(k for k in open_store(str(out)).schema.of_kind("image"))


def frame_figures(kind: str, store_path: Path, tmp: Path, reads: int, trials: int) -> None:
    """Single-frame reads of one store against a memmap of the same frames (1 process, and a DataLoader)."""
    from shardyard import open_store

    field = build_store(kind, store_path, reads < 1000)
    store = open_store(str(store_path))
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    starts = store.episode_starts
    rng = np.random.default_rng(0)
    eps = rng.integers(0, store.num_episodes, reads)
    frame_index = np.stack([eps, rng.integers(0, lengths[eps])], axis=1)
    frames_path = str(tmp / f"frames_{kind}.npy")
    np.save(frames_path, np.concatenate([store.read(e, [field])[field] for e in range(store.num_episodes)]))
    mm = np.load(frames_path, mmap_mode="r")
    shape = "x".join(map(str, mm.shape[1:]))
    codec = store.manifest.get("extra", {}).get("frame_codecs", {}).get(field) or \
        store.manifest.get("provenance", {}).get("config", {}).get("frame_codec", "?")
    k = min(2000, reads)

    def one_mm() -> float:
        t0 = time.perf_counter()
        for e, t in frame_index[:k]:
            np.array(mm[starts[e] + t])
        return k / (time.perf_counter() - t0)

    def one_store() -> float:
        t0 = time.perf_counter()
        for e, t in frame_index[:k]:
            store.read(int(e), [field], int(t), int(t) + 1)
        return k / (time.perf_counter() - t0)

    r = alternate({"store": one_store, "mm": one_mm}, trials)
    what = "real G1 camera" if kind == "real" else "simulated renders"
    of = f"of {store.num_episodes} episodes ({what})"
    figure(f"read_episodic.frames_1proc_{kind}", statistics.median(r["store"]), "frames/s", "memmap, 1 process",
           statistics.median(r["mm"]), ratio=median_ratio(r["store"], r["mm"]), frame=shape, codec=codec, reads=k,
           label=f"{k:,} random frames, single {shape} reads {of}, one process, no DataLoader")
    frames_mm = lazy_memmaps({field: frames_path})
    r = alternate({
        "store": lambda: _rate(Reads(frame_index, lambda e, t: torch.from_numpy(
            store.read(e, [field], t, t + 1)[field][0])), 2),
        "mm": lambda: _rate(Reads(frame_index, lambda e, t: torch.from_numpy(
            np.array(frames_mm()[field][starts[e] + t]))), 2)}, trials)
    figure(f"read_episodic.frames_{kind}", statistics.median(r["store"]), "frames/s",
           "raw np.memmap, same loader", statistics.median(r["mm"]), ratio=median_ratio(r["store"], r["mm"]),
           goal=">= 0.5", frame=shape, codec=codec, reads=reads,
           label=f"{reads:,} random frames, single {shape} reads {of}, DataLoader 2 workers")
    if kind == "sim":
        zarr_figure(store_path, field, frame_index[:min(300, reads)], starts, mm, shape, of, trials)


def zarr_figure(store_path: Path, field: str, frame_index: np.ndarray, starts: np.ndarray, mm: np.ndarray,
                shape: str, of: str, trials: int) -> None:
    """Plain zarr-python `arr[i]` reads against the same frames from the memmap, both in this one process,
    alternated (zarr-python costs about 1 ms of Python per read: fewer reads than the other figures)."""
    import zarr

    za = zarr.open_group(str(store_path), mode="r")[f"data/{field}"]
    rows = [int(starts[e] + t) for e, t in frame_index]

    def rate(get) -> float:
        t0 = time.perf_counter()
        for i in rows:
            np.asarray(get(i))
        return len(rows) / (time.perf_counter() - t0)

    r = alternate({"zarr": lambda: rate(za.__getitem__), "mm": lambda: rate(lambda i: np.array(mm[i]))}, trials)
    figure("read_episodic.zarr_python_1proc", statistics.median(r["zarr"]), "frames/s", "memmap, 1 process",
           statistics.median(r["mm"]), ratio=median_ratio(r["zarr"], r["mm"]), frame=shape, reads=len(rows),
           label=f"plain zarr-python indexing, {len(rows)} random frames, single {shape} reads {of}, one process "
                 "(for scale)")


def window_figures(store_path: Path, tmp: Path, reads: int, trials: int) -> None:
    """Random 16-step low-dim windows against memmaps of the same arrays, DataLoader 2 workers."""
    from shardyard import open_store

    store = open_store(str(store_path))
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    starts = store.episode_starts
    rng = np.random.default_rng(1)
    weps = rng.integers(0, store.num_episodes, reads)
    win_index = np.stack([weps, rng.integers(0, np.maximum(lengths[weps] - WINDOW, 1))], axis=1)
    lowdim_paths = {}
    for k in LOWDIM:
        lowdim_paths[k] = str(tmp / f"{k}.npy")
        np.save(lowdim_paths[k], store.read_rows(k, 0, store.num_steps))
    lowdim_mm = lazy_memmaps(lowdim_paths)
    r = alternate({
        "store": lambda: _rate(Reads(win_index, lambda e, t: {k: torch.from_numpy(v) for k, v in
                                                             store.read(e, LOWDIM, t, t + WINDOW).items()}), 2),
        "mm": lambda: _rate(Reads(win_index, lambda e, t: {k: torch.from_numpy(np.array(
            m[starts[e] + t:starts[e] + t + WINDOW])) for k, m in lowdim_mm().items()}), 2)}, trials)
    figure("read_episodic.windows", statistics.median(r["store"]), "windows/s", "raw np.memmap, same loader",
           statistics.median(r["mm"]), ratio=median_ratio(r["store"], r["mm"]), goal=">= 0.8", steps=WINDOW,
           reads=reads, label=f"{reads:,} random {WINDOW}-step low-dim windows of {store.num_episodes} episodes "
                              "(simulated), DataLoader 2 workers")


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--store", type=Path, default=None, help="Reuse the sim store built by an earlier run.")
    args = parser.parse_args()
    reads, trials = (200, 1) if args.smoke else (args.reads, args.trials)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim = args.store or tmp_path / "sim"
        frame_figures("sim", sim, tmp_path, reads, trials)
        window_figures(sim, tmp_path, 10 * reads, trials)  # windows are ~100x cheaper: 10x as many
        frame_figures("real", tmp_path / "real", tmp_path, reads, trials)


if __name__ == "__main__":
    main()
