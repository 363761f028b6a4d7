"""Clips/s of `ClipStream` (16 frames at 256x256, 2 DataLoader workers) against decoding the same clips of the
same mp4 files, resized the same way, by the same number of processes, in the same run.

`stream_clips.clips`: the stream (tar shards read and checked against the manifest's sha256, members split,
frames decoded and resized by PyAV, shuffled, delivered through a DataLoader with `--workers` worker processes)
against a bare PyAV decode of the same files delivered through the same DataLoader: a map-style dataset whose
item `i` opens file `i`, decodes its first 16 frames, converts each to 256 px RGB with one scaler and copies it
channel-first into a `(16, 3, 256, 256)` array (no project code, no tar, no checks, no shuffle). That is the
stream's output (checked equal on one clip before timing) with the stream's decoder and scaler settings (one
thread each, one process per core), carried to the training process the same way (DataLoader's shared-memory
transport, about 15 % of a clip's cost here): like for like in processes, threads, output and delivery, so
the ratio is what the stream's own code costs above the decoder.
`stream_clips.clips_vs_pool`: the same stream against the bare decode in a `--workers`-process fork pool that
returns only a frame count (no delivery of the frames at all), for scale.

Start-up is timed alike: each trial of each side forks its `--workers` processes inside the timed span (a fresh
DataLoader iterator; a fresh fork pool) and ends when they are done; every parent has PyAV imported before it
forks. The page cache is warm for all (one untimed pass first). Alternated `--trials`, medians
(`benchmarks/harness.py`). Goal: ratio >= 0.8.

    .venv/bin/python benchmarks/stream_clips.py [--copies 16] [--workers 2] [--trials 3] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_common_args, alternate, clip_shard_store, figure, median_ratio  # noqa: E402

from shardyard.loaders.streaming import ClipStream, StreamConfig  # noqa: E402

T, SIZE = 16, (256, 256)


def _frames(path: str) -> np.ndarray:
    """The baseline's work for one clip, in plain PyAV: the first T frames of a front-to-back decode, each
    converted to SIZE RGB (area) and copied channel-first, as `(T, 3, H, W) uint8`."""
    import av
    from av.video.reformatter import VideoReformatter

    (w, h), n = SIZE, 0
    out = np.empty((T, 3, h, w), dtype=np.uint8)
    reformatter = VideoReformatter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            out[n] = reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA",
                                          threads=1).to_ndarray().transpose(2, 0, 1)
            n += 1
            if n == T:
                break
    return out[:n]


def _decode(path: str) -> int:
    return len(_frames(path))


class BareClips(torch.utils.data.Dataset):
    """Item `i`: `_frames(paths[i])` as a tensor, the bare decode behind the same DataLoader as the stream."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_frames(self.paths[i]))


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    copies, trials = (1, 1) if args.smoke else (args.copies, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in clip_shard_store(Path(tmp) / "store", copies)]
        stream = ClipStream(Path(tmp) / "store", config=StreamConfig(num_frames=T, size=SIZE, shuffle_buffer=8,
                                                                     clip_start="start"))
        items = iter(stream)  # the same output as the baseline (sample `i` is `paths[i]`)
        first = next(items)
        items.close()
        assert torch.equal(first["frames"], torch.from_numpy(_frames(paths[int(first["key"])]))), "outputs differ"
        list(DataLoader(stream, batch_size=None, num_workers=args.workers))  # warm the page cache

        def stream_rate() -> float:
            t0 = time.perf_counter()
            n = sum(1 for _ in DataLoader(stream, batch_size=None, num_workers=args.workers,
                                          multiprocessing_context="fork"))
            return n / (time.perf_counter() - t0)

        def decode_rate() -> float:
            t0 = time.perf_counter()
            n = sum(1 for _ in DataLoader(BareClips(paths), batch_size=None, num_workers=args.workers,
                                          multiprocessing_context="fork"))
            return n / (time.perf_counter() - t0)

        def pool_rate() -> float:
            t0 = time.perf_counter()
            with ProcessPoolExecutor(args.workers, mp_context=get_context("fork")) as pool:
                n = sum(1 for _ in pool.map(_decode, paths))
            return n / (time.perf_counter() - t0)

        r = alternate({"stream": stream_rate, "decode": decode_rate, "pool": pool_rate}, trials)
    label = (f"`ClipStream`, {len(paths)} clips of {T} frames at 256 px, {args.workers} DataLoader workers, "
             "worker start-up timed on all sides")
    figure("stream_clips.clips", statistics.median(r["stream"]), "clips/s",
           f"bare PyAV decode, same DataLoader ({args.workers} workers)", statistics.median(r["decode"]),
           ratio=median_ratio(r["stream"], r["decode"]), goal=">= 0.8", label=label, workers=args.workers,
           clips=len(paths), trials_value=[round(v, 1) for v in r["stream"]],
           trials_baseline=[round(v, 1) for v in r["decode"]])
    figure("stream_clips.clips_vs_pool", statistics.median(r["stream"]), "clips/s",
           f"bare PyAV decode, {args.workers}-process pool, frames not delivered", statistics.median(r["pool"]),
           ratio=median_ratio(r["stream"], r["pool"]), label=label, workers=args.workers, clips=len(paths))


if __name__ == "__main__":
    main()
