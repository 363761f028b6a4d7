"""Clips/s of `ClipStream` (16 frames at 256x256, 2 DataLoader workers) against decoding the same clips of
the same mp4 files with one decoder alone, sequentially, in the same run.

`stream_clips.clips`: baseline = the fastest decoder that returns the same frames (PyAV at 256 px; decord
cannot resize exactly, so it does not qualify). `stream_clips.clips_vs_decord_native`: baseline = decord
reading the same 16 frames at native size without resizing (checked equal to PyAV's native frames): a
cheaper job than the stream's, reported so the gap to the fastest raw decoder is visible.

    .venv/bin/python benchmarks/stream_clips.py [--copies 16] [--workers 2]

    .venv/bin/python benchmarks/stream_clips.py [--copies 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.stores.wds import Sample, ShardWriter
from shardyard.video import open_video

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "webvid" / "clips"
T, SIZE = 16, (256, 256)


def build_store(root: Path, copies: int, per_shard: int = 4) -> list[Path]:
    files = sorted(CLIPS.glob("*.mp4"))
    paths = [files[i % len(files)] for i in range(copies * len(files))]
    with ShardWriter(root) as w:
        for si in range(0, len(paths), per_shard):
            w.write_shard(si // per_shard, [Sample(f"{i:09d}", {"mp4": p.read_bytes(), "txt": p.stem.encode()})
                                            for i, p in enumerate(paths[si:si + per_shard], start=si)], [])
    return paths


def time_decoder(paths: list[Path], backend: str) -> float:
    size = SIZE if backend == "pyav" else None  # decord reads exactly only at native size
    t0 = time.perf_counter()
    for p in paths:
        r = open_video(p, backend=backend)
        r.read(range(T), size=size)
        r.close()
    return len(paths) / (time.perf_counter() - t0)


def decord_exact(paths: list[Path]) -> bool:
    for p in sorted(set(paths)):
        a = open_video(p, backend="pyav").read(range(T))
        b = open_video(p, backend="decord").read(range(T))
        if not np.array_equal(a, b):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_store(Path(tmp) / "store", args.copies)
        stream = ClipStream(Path(tmp) / "store", config=StreamConfig(num_frames=T, size=SIZE, shuffle_buffer=8,
                                                                     clip_start="start"))
        list(DataLoader(stream, batch_size=None, num_workers=args.workers))  # warm the page cache
        stream.reset_counters()
        t0 = time.perf_counter()
        n = sum(1 for _ in DataLoader(stream, batch_size=None, num_workers=args.workers))
        stream_rate = n / (time.perf_counter() - t0)
        rates = {"pyav": time_decoder(paths, "pyav")}
        exact = False
        try:
            exact = decord_exact(paths)
            if exact:
                rates["decord"] = time_decoder(paths, "decord")
        except Exception as e:  # decord missing or failing: PyAV is the only exact decoder
            print(f"decord not used: {e}", file=sys.stderr)
        print(json.dumps({"detail": {"clips": n, "counters": stream.counters, "decoders_clips_per_s": rates,
                                     "decord_exact_native": exact, "workers": args.workers}}), file=sys.stderr)
        print(json.dumps({"benchmark": "stream_clips.clips", "value": round(stream_rate, 2), "unit": "clips/s",
                          "baseline": "pyav sequential 256px", "baseline_value": round(rates["pyav"], 2),
                          "ratio": round(stream_rate / rates["pyav"], 3)}))
        if "decord" in rates:
            print(json.dumps({"benchmark": "stream_clips.clips_vs_decord_native", "value": round(stream_rate, 2),
                              "unit": "clips/s", "baseline": "decord sequential native size",
                              "baseline_value": round(rates["decord"], 2),
                              "ratio": round(stream_rate / rates["decord"], 3)}))


if __name__ == "__main__":
    main()
