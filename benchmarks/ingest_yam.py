"""Ingest speed of `ingest yam` against decoding the same videos alone, in the same run.

Input: the shared YAM episodes (i2rt recorder layout, two 640x480 H.264 cameras, FK through MuJoCo), copied
`--repeat` times under new keys (default 6: 36 episodes, 11,424 frames) so the run is long enough to time;
an ingest's fixed costs (schema probe, MuJoCo model compile, the scikit-learn import for the rotation
k-means, stats and manifest: about 3 s here) weigh ~25 % on 18 episodes (`--repeat 3`).
Figures (frames = steps x cameras):
- `ingest_yam.frames` against `pyav_decode_only_<n>proc`: every video decoded to a `(T, H, W, 3)` frame
  array with the project's PyAV reader (`VideoReader.read`) by the same number of processes, and nothing
  else (no FK, no alignment, no compression, no writing). Goal ratio >= 0.7 with 2 workers.
- `ingest_yam.frames_vs_decode_loop` against `pyav_decode_loop_<n>proc`: the stricter floor, each frame
  decoded to RGB and dropped at once (`VideoReader.decode_each` with a no-op callback), which is what the
  ingest itself does before compressing a frame.
Each side is timed `--trials` times, alternated, and the median of each is used, so that a noisy
neighbour on a shared machine hits both alike (`benchmarks/harness.py`).

Inputs (`--frames`): `sim`, the recorder's own videos (flat simulated renders, which compress unrealistically
well), and `real`, the same episodes with every camera video re-encoded (H.264, crf 18, like the recorder)
from real camera frames: the Unitree G1 episodes of `../shared/data/lerobot`, 640x480 like the YAM cameras,
cycled. Both by default; figure names end in `_sim` / `_real`.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import YAM_EPISODES, YAM_MODEL, add_common_args, figure, g1_frames, median_ratio  # noqa: E402


def _decode_all(path: str) -> int:
    from shardyard.video import open_video

    v = open_video(path)
    return len(v.read(range(v.num_frames)))


def _decode_loop(path: str) -> int:
    from shardyard.video import open_video

    v = open_video(path)
    seen = []
    v.decode_each(range(v.num_frames), lambda frame, positions: seen.append(len(positions)))
    return sum(seen)


def _timed_decode(pool: ProcessPoolExecutor, fn, videos: list[str]) -> tuple[int, float]:
    t = time.perf_counter()
    frames = sum(pool.map(fn, videos))
    return frames, time.perf_counter() - t


def build_raw(raw: Path, repeat: int, real: bool, limit: int | None = None) -> list[str]:
    """Copy the shared episodes (the first `limit`) `repeat` times under new keys, their videos re-encoded once
    from G1 frames when `real` (the copies share those bytes); returns the video paths."""
    from shardyard.video import open_video, write_video

    base = raw.parent / "base"
    for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:limit]:
        shutil.copytree(ep, base / ep.relative_to(YAM_EPISODES))
    if real:
        frames = g1_frames()
        k = 0
        for v in sorted(base.rglob("*-images-*.mp4")):
            reader = open_video(v)
            n, fps, size = reader.num_frames, reader.fps or 30.0, (reader.width, reader.height)
            reader.close()
            if frames.shape[1:3] != (size[1], size[0]):
                raise RuntimeError(f"G1 frames are {frames.shape[1:3]}, YAM video {v} is {size}")
            write_video(v, frames[np.arange(k, k + n) % len(frames)], fps=fps)
            k += n
    for r in range(repeat):
        shutil.copytree(base, raw / f"copy{r}")
    shutil.rmtree(base)
    return sorted(str(p) for p in raw.rglob("*-images-*.mp4"))


def bench(raw: Path, videos: list[str], tmp: Path, workers: int, trials: int) -> dict:
    """Alternated trials of decode-only, decode-loop and ingest; returns the frames and the medians."""
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    read_s, loop_s, ingest_s = [], [], []
    for _ in range(trials):
        # The decode pool is closed before the ingest runs: its manager thread would make run_ingest
        # spawn its readers instead of forking them, as the CLI does.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_decode_all, videos[:2]))  # warm the workers and the page cache
            frames, s = _timed_decode(pool, _decode_all, videos)
            read_s.append(s)
            loop_s.append(_timed_decode(pool, _decode_loop, videos)[1])
        source = YamSource(YamConfig(root=raw, robot_model=YAM_MODEL))
        out = tmp / "store"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        res = run_ingest(source, IngestConfig(out=out, workers=workers))
        ingest_s.append(time.perf_counter() - t)
    cams = len([k for k in source.schema().keys() if k.startswith("obs.rgb.")])
    return {"frames": frames, "episodes": res.num_keys, "ingest": [res.num_steps * cams / s for s in ingest_s],
            "read": [frames / s for s in read_s], "loop": [frames / s for s in loop_s]}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--frames", choices=("sim", "real", "both"), default="both")
    args = parser.parse_args()
    repeat, trials = (1, 1) if args.smoke else (args.repeat, args.trials)
    for kind in (("sim", "real") if args.frames == "both" else (args.frames,)):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw"
            videos = build_raw(raw, repeat, kind == "real", 1 if args.smoke else None)
            m = bench(raw, videos, Path(tmp), args.workers, trials)
        extra = {"workers": args.workers, "frames": m["frames"], "episodes": m["episodes"]}
        what = "simulated renders" if kind == "sim" else "real G1 camera frames"
        med = statistics.median
        figure(f"ingest_yam.frames_{kind}", med(m["ingest"]), "frames/s", f"PyAV decode only, {args.workers} processes",
               med(m["read"]), ratio=median_ratio(m["ingest"], m["read"]), goal=">= 0.7",
               label=f"`ingest yam`, {m['episodes']} episodes, 2 cameras 640x480, {what}, `--workers "
                     f"{args.workers}`, end to end", **extra)
        figure(f"ingest_yam.frames_vs_decode_loop_{kind}", med(m["ingest"]), "frames/s",
               f"PyAV decode loop dropping frames, {args.workers} processes", med(m["loop"]),
               ratio=median_ratio(m["ingest"], m["loop"]),
               label=f"the same {m['episodes']} episodes against the stricter decode loop ({what})",
               **extra)


if __name__ == "__main__":
    main()
