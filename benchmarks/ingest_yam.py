"""Ingest speed of `ingest yam` against the least it must do: decode the same videos and encode each frame
once with the store's frame codec, in the same run and the same number of processes.

Input: the shared YAM episodes (i2rt recorder layout, two 640x480 H.264 cameras, FK through MuJoCo), copied
`--repeat` times under new keys (default 6: 36 episodes, 11,424 frames) so the run is long enough to time;
an ingest's fixed costs (schema probe, MuJoCo model compile, stats with the rotation k-means, manifest:
about 3 s here before the k-means left scikit-learn and its 1.6 s import) weigh ~25 % on 18 episodes
(`--repeat 3`).
Figures (frames = steps x cameras):
- `ingest_yam.frames_<frames>` against `decode + <codec> encode, <n> processes`: every video opened once and
  decoded front to back with PyAV (default decoder threads, as the ingest's reader), each frame converted to
  RGB by one reused PyAV scaler (as the ingest's reader) and encoded once with the chunk codec the store
  holds it in (`ChunkCodec.encoder`, read from the ingested store's array metadata, so the baseline follows
  the default codec), by as many processes as the ingest has workers (`--workers`, default 2), the videos
  dealt out by a process pool; no other project code (not its frame-exact reader, which demuxes each file
  once more for its frame table), no FK, no alignment, no stats, no writing. Goal ratio >= 0.8 (issue 26).
- `ingest_yam.frames_vs_decode_loop_<frames>` against the same decode loop without the encode (each frame
  decoded to RGB and dropped), for scale: what the encode adds.
Each ingest runs in a fresh process, as the CLI runs it (`harness.in_fresh_process`: a second ingest in one
process would spawn its readers instead of forking them), its imports done before the clock starts; the
baselines run in a warm spawn pool. The three sides are alternated `--trials` times and the median of each
is used, so that a noisy neighbour on a shared machine hits them alike (`benchmarks/harness.py`). Each row
also carries `cpu_s` (median CPU seconds of each side: the ingest's writer process with its reader workers,
the baselines' pool tasks) and, on the headline row, `cpu_ratio` (baseline CPU / ingest CPU, median of the
trials): the ratio where the run gets no parallelism, as on a shared machine whose scheduler splits the cores
between sessions; the wall ratio lies between it and the fully parallel one.

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
from harness import (  # noqa: E402
    YAM_EPISODES,
    YAM_MODEL,
    add_common_args,
    alternate,
    cpu_seconds,
    figure,
    g1_frames,
    in_fresh_process,
    median_ratio,
)


def _decode_encode(path: str, codec=None) -> tuple[int, float]:
    """Decode every frame of one video with PyAV to RGB and, with `codec` (a `ChunkCodec`), encode it once;
    returns (frames, CPU seconds)."""
    import av
    from av.video.reformatter import VideoReformatter

    cpu = time.process_time()
    encode = codec.encoder() if codec is not None else None
    reformatter = VideoReformatter()
    frames = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            rgb = reformatter.reformat(frame, format="rgb24", width=frame.width, height=frame.height).to_ndarray()
            if encode is not None:
                encode(np.ascontiguousarray(rgb))
            frames += 1
    return frames, time.process_time() - cpu


def store_codec(store: Path):
    """The chunk codec of the first `obs.rgb.*` field of an ingested store (`ChunkCodec`)."""
    from shardyard.stores.frames.registry import chunk_codec_of
    from shardyard.stores.frames.zarr_shard import load_array_meta

    field = sorted(p.name for p in (store / "data").glob("obs.rgb.*"))[0]
    codec = chunk_codec_of(load_array_meta(str(store / "data" / field)))
    if codec is None:
        raise RuntimeError(f"{field} is not stored one frame per chunk; no encoder to compare with")
    return codec


def timed_ingest(raw: Path, out: Path, workers: int) -> tuple[float, int, int, float]:
    """One `ingest yam` of `raw` into a new store `out` (run it in a fresh process); returns (seconds, frames
    stored = steps x cameras, episodes, CPU seconds of the writer's process and its reader workers)."""
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    shutil.rmtree(out, ignore_errors=True)
    source = YamSource(YamConfig(root=raw, robot_model=YAM_MODEL))
    t, cpu = time.perf_counter(), cpu_seconds()
    res = run_ingest(source, IngestConfig(out=out, workers=workers))
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    cams = len([k for k in source.schema().keys() if k.startswith("obs.rgb.")])
    return seconds, res.num_steps * cams, res.num_keys, cpu


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
    """Alternated trials of ingest, decode + encode and the decode loop; returns the rates per trial."""
    out = tmp / "store"
    state: dict = {}
    cpu: dict[str, list[float]] = {"ingest": [], "encode": [], "loop": []}

    def ingest() -> float:
        seconds, state["frames"], state["episodes"], used = in_fresh_process(timed_ingest, raw, out, workers)
        cpu["ingest"].append(used)
        return state["frames"] / seconds

    def pool_rate(side: str, fn, *args) -> float:
        t = time.perf_counter()
        done = list(pool.map(fn, videos, *([a] * len(videos) for a in args)))
        seconds = time.perf_counter() - t
        state["decoded"] = sum(d[0] for d in done)
        cpu[side].append(sum(d[1] for d in done))
        return state["decoded"] / seconds

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_decode_encode, videos[:workers]))  # start and warm the workers
        r = alternate({"ingest": ingest,
                       "encode": lambda: pool_rate("encode", _decode_encode, store_codec(out)),  # the ingest's codec
                       "loop": lambda: pool_rate("loop", _decode_encode)}, trials)
    return {"frames": state["decoded"], "episodes": state["episodes"], "codec": store_codec(out).name,
            "cpu": {k: statistics.median(v) for k, v in cpu.items()},
            "cpu_ratio": median_ratio(cpu["encode"], cpu["ingest"]), **r}


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
        extra = {"workers": args.workers, "frames": m["frames"], "episodes": m["episodes"], "codec": m["codec"],
                 "cpu_s": {k: round(v, 3) for k, v in m["cpu"].items()}}
        what = "simulated renders" if kind == "sim" else "real G1 camera frames"
        procs = f"{args.workers} processes"
        med = statistics.median
        figure(f"ingest_yam.frames_{kind}", med(m["ingest"]), "frames/s", f"PyAV decode + {m['codec']} encode, {procs}",
               med(m["encode"]), ratio=median_ratio(m["ingest"], m["encode"]), goal=">= 0.8",
               cpu_ratio=round(m["cpu_ratio"], 4),
               label=f"`ingest yam`, {m['episodes']} episodes, 2 cameras 640x480, {what}, `--workers "
                     f"{args.workers}`, end to end", **extra)
        figure(f"ingest_yam.frames_vs_decode_loop_{kind}", med(m["ingest"]), "frames/s",
               f"PyAV decode to RGB alone, {procs}", med(m["loop"]),
               ratio=median_ratio(m["ingest"], m["loop"]),
               label=f"the same {m['episodes']} episodes against decoding alone, no encode ({what})", **extra)


if __name__ == "__main__":
    main()
