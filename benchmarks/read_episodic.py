"""Random reads from an episodic store against the same arrays in a raw `np.memmap`, in the same run.

Store: the shared YAM episodes ingested with the top camera resized to 448x448 (one 448x448x3 frame per
chunk, the layout issue 7 measured), lz4. Figures, each through a DataLoader with 2 workers (batch 32):
- `frames`: random (episode, step) single-frame reads; goal ratio >= 0.5.
- `windows`: random 16-step windows of the low-dim fields (EEF pose, gripper, joints, action); goal >= 0.8.
Also, in one process without a DataLoader: `frames_1proc` against memmap and `zarr_python_1proc` (what
plain `zarr` array indexing gives) against memmap.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import YAM_EPISODES, YAM_MODEL, figure  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=6000)
    parser.add_argument("--store", type=Path, default=None, help="Reuse a store built by an earlier run.")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from shardyard import open_store
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    tmp = tempfile.TemporaryDirectory()
    store_path = args.store or Path(tmp.name) / "store"
    if not (store_path / "manifest.json").exists():
        src = YamSource(YamConfig(root=YAM_EPISODES, robot_model=YAM_MODEL, cameras=("top",), image_size=(448, 448)))
        run_ingest(src, IngestConfig(out=store_path, workers=2))
    store = open_store(str(store_path))
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    starts = store.episode_starts
    rng = np.random.default_rng(0)
    eps = rng.integers(0, store.num_episodes, args.reads)
    frame_index = np.stack([eps, rng.integers(0, lengths[eps])], axis=1)
    # windows are ~100x cheaper than frames: 10x as many keep the timed part well above a second
    weps = rng.integers(0, store.num_episodes, 10 * args.reads)
    win_index = np.stack([weps, rng.integers(0, np.maximum(lengths[weps] - WINDOW, 1))], axis=1)

    mm_dir = Path(tmp.name) / "memmap"
    mm_dir.mkdir()
    frames_path = str(mm_dir / "frames.npy")
    np.save(frames_path, np.concatenate([store.read(e, ["obs.rgb.top"])["obs.rgb.top"] for e in range(store.num_episodes)]))
    lowdim_paths = {}
    for k in LOWDIM:
        lowdim_paths[k] = str(mm_dir / f"{k}.npy")
        np.save(lowdim_paths[k], store.read_rows(k, 0, store.num_steps))

    # one process, no DataLoader
    import zarr

    mm = np.load(frames_path, mmap_mode="r")
    for e, t in frame_index[:200]:  # warm the page cache for both
        np.array(mm[starts[e] + t]); store.read(int(e), ["obs.rgb.top"], int(t), int(t) + 1)
    t0 = time.perf_counter()
    for e, t in frame_index[:2000]:
        np.array(mm[starts[e] + t])
    mm_rate = 2000 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for e, t in frame_index[:2000]:
        store.read(int(e), ["obs.rgb.top"], int(t), int(t) + 1)
    store_rate = 2000 / (time.perf_counter() - t0)
    za = zarr.open_group(str(store_path), mode="r")["data/obs.rgb.top"]
    t0 = time.perf_counter()
    for e, t in frame_index[:300]:
        za[starts[e] + t]
    zarr_rate = 300 / (time.perf_counter() - t0)
    figure("read_episodic.frames_1proc", store_rate, "frames/s", "memmap_1proc", mm_rate)
    figure("read_episodic.zarr_python_1proc", zarr_rate, "frames/s", "memmap_1proc", mm_rate)

    # through a DataLoader with 2 workers, as training reads
    frames_mm = lazy_memmaps({"obs.rgb.top": frames_path})
    mm_frames = _rate(Reads(frame_index, lambda e, t: torch.from_numpy(
        np.array(frames_mm()["obs.rgb.top"][starts[e] + t]))), 2)
    st_frames = _rate(Reads(frame_index, lambda e, t: torch.from_numpy(
        store.read(e, ["obs.rgb.top"], t, t + 1)["obs.rgb.top"][0])), 2)
    figure("read_episodic.frames", st_frames, "frames/s", "memmap_dataloader_2workers", mm_frames,
           frame="448x448x3", codec="lz4")
    lowdim_mm = lazy_memmaps(lowdim_paths)
    mm_win = _rate(Reads(win_index, lambda e, t: {k: torch.from_numpy(np.array(m[starts[e] + t:starts[e] + t + WINDOW]))
                                                  for k, m in lowdim_mm().items()}), 2)
    st_win = _rate(Reads(win_index, lambda e, t: {k: torch.from_numpy(v) for k, v in
                                                  store.read(e, LOWDIM, t, t + WINDOW).items()}), 2)
    figure("read_episodic.windows", st_win, "windows/s", "memmap_dataloader_2workers", mm_win, steps=WINDOW)
    tmp.cleanup()


if __name__ == "__main__":
    main()
