"""Frame codecs of the episodic store on real camera frames (issue 15): size, ingest speed, random reads.

Input: the G1 episodes of `../shared/data/lerobot/unitree_g1_inspire_v2.1` (AV1 video, 640x480, 30 Hz),
ingested with `ingest lerobot` once per codec (`--workers 2`). Figures per codec, as JSON lines:
- `<codec>.bytes_per_frame`: the frame field's bytes in the store per frame, baseline the source video's
  bytes per frame (goal: default codec <= 8x, video <= 1.5x);
- `<codec>.ingest`: frames/s of the whole ingest, baseline the lz4 ingest of the same run (no row for lz4
  itself);
- `<codec>.reads`: random single-frame reads/s through a DataLoader with 2 workers (batch 32), baseline the
  same reads from a raw `np.memmap` of the same frames (goal: default codec >= 0.5).
- `video.reads_vs_decode_limit`, `jpeg.reads_vs_decode_limit` (goal >= 0.8): the same store reads against the
  decoder alone on the same stored bytes, the same random frames, through the same loader (2 worker processes,
  one decoder thread each, as the store's reader): for `video`, PyAV opening each MP4 of the store once per
  worker, seeking to the keyframe at or before each frame (`seek(pts, backward=True)`) and decoding forward to
  it, RGB through one reused single-threaded `VideoReformatter` (less CPU per frame than a threaded one, as
  in the store); for `jpeg`, a bare `simplejpeg.decode_jpeg` (the store's flags) of the frame's chunk bytes,
  read through the shard index once up front. No store code runs in either, and both give the store's pixels
  exactly (checked on a few frames before timing).
Ingests and reads alternate over the codecs for `--trials` rounds (memmap's reads in each round too); each
figure is the median, its ratio the median of per-round ratios (`benchmarks/harness.py`). `--smoke` resizes
frames to 160x120, does few reads and one round (a check that the script runs, not a figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, add_common_args, figure, median_ratio  # noqa: E402

G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
FIELD = "obs.rgb.cam_high"
CODECS = ["jpeg", "video", "lz4", "none"]


class Reads(torch.utils.data.Dataset):
    """`fetch(row)` at each global row of `rows` (workers fork: each opens its files lazily)."""

    def __init__(self, rows: np.ndarray, fetch):
        self.rows, self.fetch = rows, fetch

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.fetch(int(self.rows[i]))


def _rate(ds, workers: int = 2) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
    it = iter(loader)
    for _ in range(workers):  # worker start-up is not part of the figure
        next(it)
    n, t = 0, time.perf_counter()
    for batch in it:
        n += len(batch)
    return n / (time.perf_counter() - t)


class BareVideo:
    """The decode limit of the `video` store's reads: global row -> `(H, W, 3) uint8` by PyAV alone on the
    store's MP4s (`files[episode]`; `pts[episode]` the pts of each step, `starts` each episode's first row).
    Each process opens every file once and keeps it open; every read seeks to the keyframe at or before its
    frame and decodes forward to it."""

    def __init__(self, files: list[str], pts: list[list[int]], starts: np.ndarray) -> None:
        self.files, self.pts, self.starts = files, pts, starts
        self._pid, self._open, self._rgb, self._inherited = -1, {}, None, []

    def __call__(self, row: int) -> torch.Tensor:
        """Global row `row`'s frame, `(H, W, 3) uint8`."""
        import av
        from av.video.reformatter import VideoReformatter

        if self._pid != os.getpid():  # opened lazily in each DataLoader worker
            # a forked child must not free its parent's PyAV objects (a scaler's threads are gone: it hangs)
            self._inherited.append((self._open, self._rgb))
            self._pid, self._open, self._rgb = os.getpid(), {}, VideoReformatter()
        ep = int(np.searchsorted(self.starts, row, side="right") - 1)
        if ep not in self._open:
            c = av.open(self.files[ep])
            c.streams.video[0].codec_context.thread_count = 1
            self._open[ep] = c
        c = self._open[ep]
        s, target = c.streams.video[0], self.pts[ep][row - int(self.starts[ep])]
        c.seek(target, stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            if frame.pts == target:
                return torch.from_numpy(self._rgb.reformat(frame, format="rgb24", threads=1).to_ndarray())
        raise RuntimeError(f"pts {target} not found in {self.files[ep]}")


def bare_video(field_dir: Path, starts: np.ndarray) -> BareVideo:
    """`BareVideo` over a video field's MP4s; the pts of every frame come from demuxing each file once (no
    decode): with no B-frames, frame t of an episode is its t-th smallest pts."""
    import av

    files = sorted(str(f) for f in (field_dir / "video").glob("*.mp4"))
    pts = []
    for f in files:
        with av.open(f) as c:
            pts.append(sorted(int(p.pts) for p in c.demux(c.streams.video[0]) if p.pts is not None))
    return BareVideo(files, pts, starts)


def bare_jpeg(field_dir: Path, rows: np.ndarray):
    """The decode limit of the `jpeg` store's reads: row `rows[k]` -> `simplejpeg.decode_jpeg` of its stored
    chunk bytes, read here once per distinct row through the shard index (`(offset, length)` pairs at the end
    of each shard file). Returns `fetch(row) -> (H, W, 3) uint8 tensor`."""
    import simplejpeg

    from shardyard.stores.frames.zarr_shard import load_array_meta, read_shard_index, shard_file

    meta = load_array_meta(str(field_dir))
    per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner = meta["codecs"][0]["configuration"]["chunk_shape"][0]
    if inner != 1:
        raise RuntimeError(f"{field_dir}: {inner} frames per chunk; the bare decode wants one")
    chunks = {}
    for row in sorted(set(rows.tolist())):
        s, k = divmod(row, per_shard)
        path = shard_file(str(field_dir), s, len(meta["shape"]))
        offset, length = read_shard_index(path, per_shard)[k]
        with open(path, "rb") as f:
            f.seek(int(offset))
            chunks[row] = f.read(int(length))

    def fetch(row: int) -> torch.Tensor:
        return torch.from_numpy(simplejpeg.decode_jpeg(chunks[row], colorspace="RGB", fastdct=False,
                                                       fastupsample=False))
    return fetch


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _ingest(out: Path, codec: str, size: tuple[int, int] | None) -> float:
    from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource
    from shardyard.ingest.runner import IngestConfig, run_ingest

    t = time.perf_counter()
    res = run_ingest(LeRobotSource(LeRobotConfig(root=str(G1), image_size=size)),
                     IngestConfig(out=out, workers=2, frame_codec=codec))
    return res.num_steps / (time.perf_counter() - t)


GOALS = {"jpeg": ("<= 8", ">= 0.5"), "video": ("<= 1.5", "")}
LIMIT_BASE = {"video": "PyAV seek to keyframe + decode forward, same MP4s, same loader",
              "jpeg": "bare simplejpeg decode of the same chunks, same loader"}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--reads", type=int, default=1500)
    parser.add_argument("--codecs", default=",".join(CODECS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = (160, 120) if args.smoke else None
    reads, trials = (300, 1) if args.smoke else (args.reads, args.trials)
    codecs = [c for c in args.codecs.split(",") if not (args.smoke and c == "none")]  # a smoke: 3 of 4 paths
    order = ["lz4"] + [c for c in codecs if c != "lz4"]
    from shardyard import open_store

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    ingest: dict[str, list[float]] = {c: [] for c in order}
    for _ in range(trials):  # alternated: every codec once per round
        for codec in order:
            shutil.rmtree(root / codec, ignore_errors=True)
            ingest[codec].append(_ingest(root / codec, codec, size))
    stores = {c: open_store(str(root / c)) for c in order}
    ref = stores["lz4"]
    n = ref.num_steps
    videos = [G1 / "videos" / "chunk-000" / "observation.images.cam_high" / f"{k}.mp4" for k in ref.episode_keys]
    src_per_frame = sum(p.stat().st_size for p in videos) / n
    frames_path = root / "frames.npy"
    np.save(frames_path, ref.read_rows(FIELD, 0, n))
    rows = np.random.default_rng(0).integers(0, n, reads)
    opened: dict[str, np.ndarray] = {}

    def memmap_row(i: int) -> torch.Tensor:
        if "mm" not in opened:
            opened["mm"] = np.load(frames_path, mmap_mode="r")
        return torch.from_numpy(np.array(opened["mm"][i]))

    limits = {c: bare_video(root / c / "data" / FIELD, ref.episode_starts) if c == "video" else
              bare_jpeg(root / c / "data" / FIELD, rows) for c in codecs if c in ("video", "jpeg")}
    for codec, fetch in limits.items():  # the limit must do the store's work: the same pixels
        same = Reads(rows[:3], lambda i, f=fetch, s=stores[codec]: torch.tensor(np.array_equal(
            f(i).numpy(), s.read_rows(FIELD, i, i + 1)[0])))
        # in a worker: a PyAV scaler used here and then dropped in a forked worker would hang it
        if not all(bool(x) for x in torch.utils.data.DataLoader(same, batch_size=None, num_workers=1)):
            raise RuntimeError(f"the bare {codec} decode differs from the store's reads of rows {rows[:3]}")
    mm: list[float] = []
    got: dict[str, list[float]] = {c: [] for c in codecs}
    limit: dict[str, list[float]] = {c: [] for c in limits}
    for _ in range(trials):
        mm.append(_rate(Reads(rows, memmap_row)))
        for codec in codecs:
            got[codec].append(_rate(Reads(rows, lambda i, s=stores[codec]: torch.from_numpy(
                s.read_rows(FIELD, i, i + 1)[0]))))
            if codec in limits:
                limit[codec].append(_rate(Reads(rows, limits[codec])))
    shape = "x".join(map(str, ref.schema[FIELD].shape))
    med = statistics.median
    eps = f"{ref.num_episodes} episodes"
    for codec in codecs:
        size_goal, read_goal = GOALS.get(codec, ("", ""))
        per_frame = _bytes(root / codec / "data" / FIELD) / n
        figure(f"frame_codecs.{codec}.bytes_per_frame", per_frame, "bytes/frame", "source AV1 video, bytes/frame",
               src_per_frame, frame=shape, frames=n, goal=size_goal,
               label=f"`{codec}` store bytes per real G1 {shape} frame, over {n:,} frames of {eps}")
        if codec != "lz4":  # the baseline itself: its rate is every other ingest row's baseline value
            figure(f"frame_codecs.{codec}.ingest", med(ingest[codec]), "frames/s", "`lz4` ingest, same run",
                   med(ingest["lz4"]), ratio=median_ratio(ingest[codec], ingest["lz4"]), workers=2,
                   label=f"`ingest lerobot --frame-codec {codec}` of the G1 set ({n:,} frames, {eps}), 2 workers")
        figure(f"frame_codecs.{codec}.reads", med(got[codec]), "frames/s", "raw np.memmap, same loader", med(mm),
               ratio=median_ratio(got[codec], mm), goal=read_goal, reads=reads,
               label=f"{reads:,} random frames, single {shape} reads of {eps} from the `{codec}` store, "
                     "DataLoader 2 workers")
        if codec in limits:
            figure(f"frame_codecs.{codec}.reads_vs_decode_limit", med(got[codec]), "frames/s", LIMIT_BASE[codec],
                   med(limit[codec]), ratio=median_ratio(got[codec], limit[codec]), goal=">= 0.8", reads=reads,
                   label=f"the same {reads:,} random frames from the `{codec}` store against the decoder alone "
                         "on its bytes, same loader")
    tmp.cleanup()


if __name__ == "__main__":
    main()
