"""Where the single writer saturates (issue 22, item 5): the episodic writer alone, fed with frame chunks
already encoded, against what one reader core produces.

Input: the real G1 frames (`harness.g1_frames`, 640x480), cut into episodes of `--steps` frames with a small
low-dim state and action per step. Per codec (`jpeg`, `video`):
- the reader side, one core: frames/s of decoding the source AV1 and encoding the frames into store chunks
  (`FrameEncoding.encode_array`: JPEG chunks with the stats sample, or an H.264 MP4 per episode), which a
  reader worker (a process of the pool, or a Ray task) does per episode;
- the writer side: episodes whose frames were encoded before timing, in memory as a Ray reader's come back
  (`EncodedRows` chunk bytes; a video episode's MP4 a hard link in the spill folder, as a pool worker leaves
  it), written by `EpisodicWriter.write` with its commits (`commit_every` 32): frames/s and MB/s of
  encoded bytes after a first group (imports, array creation), the finish (stats pass, tables, checksums)
  timed apart.
Figures: `writer_saturation.<codec>.frames_per_s` against one reader core's frames/s (the ratio is the
number of reader cores one writer keeps up with) and `writer_saturation.<codec>.mb_per_s`.
`--smoke` runs 8 small episodes (a check that the script runs, not a figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_common_args, figure, g1_frames  # noqa: E402

FIELD = "obs.rgb.cam_high"


def _schema(shape: tuple[int, ...]):
    from shardyard.schema import FieldSpec, Schema

    return Schema({FIELD: FieldSpec("uint8", shape, kind="image"), "obs.state": FieldSpec("float32", (14,)),
                   "action": FieldSpec("float32", (14,))})


def reader_rate(codec, episodes: list[np.ndarray], spill: Path) -> tuple[float, list]:
    """Frames/s of one core encoding `episodes` with the store's `codec` (a reader worker's work per
    episode, the stats sample included; the source decode is timed by `decode_rate`), and the encoded
    episodes with their stats parts, as a reader worker hands them over (a video's MP4 in `spill`)."""
    from shardyard.schema import FieldSpec
    from shardyard.stores.frames.encoding import FrameEncoding
    from shardyard.stores.frames.video import VideoCodec
    from shardyard.stores.stats import StatsConfig, sampled_frames_part

    cfg = StatsConfig()
    enc = FrameEncoding(codec, cfg.image_frame_stride, cfg.image_pixel_stride,
                        str(spill) if isinstance(codec, VideoCodec) else None)
    spec = FieldSpec("uint8", episodes[0].shape[1:], kind="image")
    out = []
    t0 = time.perf_counter()
    for frames in episodes:
        value = enc.encode_array(frames)
        value.stats_part = sampled_frames_part(value.sample, spec, cfg)
        value.sample = None
        out.append(value)
    return sum(len(e) for e in episodes) / (time.perf_counter() - t0), out


def decode_rate(n: int) -> float:
    """Frames/s of one core decoding the source AV1 (640x480) with PyAV."""
    t0 = time.perf_counter()
    frames = g1_frames(max_frames=n)
    return len(frames) / (time.perf_counter() - t0)


def _episodes(writer, encoded: list, num_episodes: int) -> list:
    """`num_episodes` episodes cycling over `encoded` (a video episode's MP4 is renamed into place by the
    writer: each gets a hard link of its own in the spill folder, made here, before the clock starts)."""
    from shardyard.schema import Episode
    from shardyard.stores.frames.video import EncodedVideo

    rng = np.random.default_rng(0)
    out = []
    for i in range(num_episodes):
        value = encoded[i % len(encoded)]
        if isinstance(value, EncodedVideo):
            link = writer.spill_dir / f"ep{i}.mp4"
            os.link(value.path, link)
            value = EncodedVideo(index=value.index, shape=value.shape, dtype=value.dtype, path=str(link),
                                 stats_part=value.stats_part, crc32c=value.crc32c)
        t = value.shape[0]
        out.append(Episode(f"ep{i:06d}", {FIELD: value, "obs.state": rng.normal(size=(t, 14)).astype(np.float32),
                                          "action": rng.normal(size=(t, 14)).astype(np.float32)},
                           meta={"task": "pick", "fps": 30.0}))
    return out


def one_trial(codec: str, episodes: list[np.ndarray], num_episodes: int, out: Path) -> dict[str, float]:
    """One reader core's encode rate, then the writer fed with `num_episodes` episodes: frames/s and MB/s of
    `write` (its commits included), and the finish's seconds."""
    from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
    from shardyard.stores.stats import compute_stats

    cfg = EpisodicWriterConfig(frame_codec=codec, commit_every=32)
    writer = EpisodicWriter(out, _schema(tuple(episodes[0].shape[1:])), config=cfg,
                            stats_fn=lambda store: compute_stats(store, frame_parts=writer.stats_parts))
    with writer:
        encode, encoded = reader_rate(writer.codecs[FIELD], episodes, writer.spill_dir)
        feed = _episodes(writer, encoded, num_episodes)
        warm, feed = feed[:max(1, len(feed) // 8)], feed[max(1, len(feed) // 8):]
        for ep in warm:  # first commit: lazy imports, zarr's event loop, array creation
            writer.write(ep)
        writer.commit()
        frames, nbytes = sum(e.num_steps for e in feed), sum(e.steps[FIELD].nbytes for e in feed)
        t0 = time.perf_counter()
        for ep in feed:
            writer.write(ep)
        writer.commit()
        loop = time.perf_counter() - t0
        for value in encoded:  # the masters of the links
            if getattr(value, "path", None):
                Path(value.path).unlink(missing_ok=True)
        t0 = time.perf_counter()
    return {"encode_fps": encode, "frames_per_s": frames / loop, "mb_per_s": nbytes / loop / 1e6,
            "finish_s": time.perf_counter() - t0, "bytes_per_frame": nbytes / frames}


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), trials=3)
    ap.add_argument("--steps", type=int, default=60, help="frames per episode (2 s at 30 Hz)")
    ap.add_argument("--episodes", type=int, default=200, help="episodes the writer is fed")
    args = ap.parse_args()
    trials = 1 if args.smoke else args.trials
    frames = g1_frames(size=(160, 120) if args.smoke else None, max_frames=4 * 10 if args.smoke else None)
    steps = 10 if args.smoke else args.steps
    episodes = [frames[i:i + steps] for i in range(0, len(frames) - steps + 1, steps)][:4 if args.smoke else 8]
    num = 8 if args.smoke else args.episodes
    decode = 0.0 if args.smoke else decode_rate(600)
    for codec in ("jpeg", "video"):
        readers, writers = [], []
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as tmp:
                got = one_trial(codec, episodes, num, Path(tmp) / "store")
                readers.append(1.0 / (1.0 / got["encode_fps"] + (1.0 / decode if decode else 0.0)))
                writers.append(got)
        fps = [w["frames_per_s"] for w in writers]
        label = (f"`EpisodicWriter.write` of {num} episodes of {steps} real G1 {frames.shape[2]}x{frames.shape[1]} "
                 f"frames, `{codec}` chunks encoded beforehand, one process")
        figure(f"writer_saturation.{codec}.frames_per_s", statistics.median(fps), "frames/s",
               "one reader core: decode AV1 + encode", statistics.median(readers),
               ratio=statistics.median(f / r for f, r in zip(fps, readers)), label=label,
               finish_s=statistics.median(w["finish_s"] for w in writers),
               bytes_per_frame=statistics.median(w["bytes_per_frame"] for w in writers), trials=trials)
        made = [r * w["bytes_per_frame"] / 1e6 for r, w in zip(readers, writers)]  # one core's encoded MB/s
        figure(f"writer_saturation.{codec}.mb_per_s", statistics.median(w["mb_per_s"] for w in writers), "MB/s",
               "one reader core's encoded output", statistics.median(made),
               ratio=statistics.median(w["mb_per_s"] / m for w, m in zip(writers, made)),
               label=label + ": encoded bytes written", trials=trials)


if __name__ == "__main__":
    main()
