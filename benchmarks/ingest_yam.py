"""Ingest speed of `ingest yam` against decoding the same videos alone, in the same run.

Input: the shared YAM episodes (i2rt recorder layout, two 640x480 H.264 cameras, FK through MuJoCo), copied
`--repeat` times under new keys so the run is long enough to time. Baseline: every video decoded to RGB
frames with PyAV by the same number of processes, and nothing else (no FK, no alignment, no writing).
Figure: frames/s (frames = steps x cameras), goal ratio >= 0.7 with 2 workers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import YAM_EPISODES, YAM_MODEL, figure  # noqa: E402


def _decode_all(path: str) -> int:
    from shardyard.video import open_video

    v = open_video(path)
    return len(v.read(range(v.num_frames)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for r in range(args.repeat):
            for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json")):
                shutil.copytree(ep, raw / f"copy{r}" / ep.relative_to(YAM_EPISODES))
        videos = sorted(str(p) for p in raw.rglob("*-images-*.mp4"))

        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_decode_all, videos[:2]))  # warm the workers and the page cache
            t = time.perf_counter()
            frames = sum(pool.map(_decode_all, videos))
            decode_fps = frames / (time.perf_counter() - t)

        source = YamSource(YamConfig(root=raw, robot_model=YAM_MODEL))
        t = time.perf_counter()
        res = run_ingest(source, IngestConfig(out=Path(tmp) / "store", workers=args.workers))
        ingest_s = time.perf_counter() - t
        cams = len([k for k in source.schema().keys() if k.startswith("obs.rgb.")])
        ingest_fps = res.num_steps * cams / ingest_s
    figure("ingest_yam.frames", ingest_fps, "frames/s", f"pyav_decode_only_{args.workers}proc", decode_fps,
           workers=args.workers, frames=frames)


if __name__ == "__main__":
    main()
