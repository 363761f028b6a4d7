"""Ingest speed of `ingest yam` against decoding the same videos alone, in the same run.

Input: the shared YAM episodes (i2rt recorder layout, two 640x480 H.264 cameras, FK through MuJoCo), copied
`--repeat` times under new keys (default 8: 48 episodes, 15,232 frames) so the run is long enough to time;
an ingest's fixed costs (schema probe, MuJoCo model compile, the scikit-learn import for the rotation
k-means, stats and manifest: about 3 s here) weigh ~25 % on 18 episodes (`--repeat 3`). Figures (frames = steps x cameras):
- `ingest_yam.frames` against `pyav_decode_only_<n>proc`: every video decoded to a `(T, H, W, 3)` frame
  array with the project's PyAV reader (`VideoReader.read`) by the same number of processes, and nothing
  else (no FK, no alignment, no compression, no writing). Goal ratio >= 0.7 with 2 workers.
- `ingest_yam.frames_vs_decode_loop` against `pyav_decode_loop_<n>proc`: the stricter floor, each frame
  decoded to RGB and dropped at once (`VideoReader.decode_each` with a no-op callback), which is what the
  ingest itself does before compressing a frame.
Each side is timed `--trials` times, alternated, and the median of each is used, so that a noisy
neighbour on a shared machine hits both alike.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import YAM_EPISODES, YAM_MODEL, figure  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for r in range(args.repeat):
            for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json")):
                shutil.copytree(ep, raw / f"copy{r}" / ep.relative_to(YAM_EPISODES))
        videos = sorted(str(p) for p in raw.rglob("*-images-*.mp4"))

        read_s, loop_s, ingest_s = [], [], []
        for _ in range(args.trials):
            # The decode pool is closed before the ingest runs: its manager thread would make run_ingest
            # spawn its readers instead of forking them, as the CLI does.
            with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
                list(pool.map(_decode_all, videos[:2]))  # warm the workers and the page cache
                frames, s = _timed_decode(pool, _decode_all, videos)
                read_s.append(s)
                loop_s.append(_timed_decode(pool, _decode_loop, videos)[1])
            source = YamSource(YamConfig(root=raw, robot_model=YAM_MODEL))
            out = Path(tmp) / "store"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            res = run_ingest(source, IngestConfig(out=out, workers=args.workers))
            ingest_s.append(time.perf_counter() - t)
        cams = len([k for k in source.schema().keys() if k.startswith("obs.rgb.")])
        ingest_fps = res.num_steps * cams / statistics.median(ingest_s)
    extra = {"workers": args.workers, "frames": frames, "episodes": res.num_keys}
    figure("ingest_yam.frames", ingest_fps, "frames/s", f"pyav_decode_only_{args.workers}proc",
           frames / statistics.median(read_s), **extra)
    figure("ingest_yam.frames_vs_decode_loop", ingest_fps, "frames/s", f"pyav_decode_loop_{args.workers}proc",
           frames / statistics.median(loop_s), **extra)


if __name__ == "__main__":
    main()
