"""shardyard's `EpisodeDataset` against LeRobot's own `LeRobotDataset` on the same episodes and samples.

Method (issue 15): the shared Unitree G1 LeRobot v2.1 episodes are ingested with `ingest lerobot` (frame codec
from `--frame-codec`, or the ingest's default) into a store S, and S is written back out with
`shardyard export lerobot S --out E`, which encodes with LeRobot's own defaults (SVT-AV1, yuv420p, `g=2`,
crf 30). Both sides then serve the same sample, a frame of `observation.images.cam_high` plus a 16-step
action chunk with its padding mask (LeRobot: `delta_timestamps={"action": [k / fps for k in range(16)]}`;
shardyard: `deltas={"action": range(16)}`), for the same shuffled sample indices, through the same
`torch.utils.data.DataLoader` settings (`--workers` 2, `--batch` 32). Each side's first batch per worker (its
start-up) is not timed. The sides alternate for `--trials` (3) trials and each figure is the median.

Each side runs as its users are told to: LeRobot with the DataLoader's default collate, shardyard with
`collate_fn=SharedCollate()` (`docs/loaders.md`: batches equal to the default collate's, carried through
shared-memory slots each worker reuses). A fourth side, the store with the default collate, gives
`vs_lerobot.samples_per_s_<codec>_default_collate`, the comparison with the transport held equal.

LeRobot runs in its own virtualenv (`make lerobot-venv`: lerobot 0.4.4, torchcodec 0.13 on Debian's ffmpeg),
as a subprocess of this same file (`peer-rate`; `peer-dump` writes what `LeRobotDataset` returns to an .npz
for `tests/test_export_lerobot.py`), so this file imports only the standard library, numpy and torch at the
top. Figures (JSON lines, DESIGN.md "Conventions"):
- `vs_lerobot.samples_per_s`: EpisodeDataset samples/s against LeRobotDataset's on the export.
- `vs_lerobot.bytes_per_frame`: the store's bytes per stored frame of the camera against the export's mp4.
- `vs_lerobot.samples_per_s_<codec>_of_decode_limit` (`jpeg`, `video`): the store against its decode limit,
  a third side alternated with the others: `DecodeLimit`, the same sample with no store code (the frame
  decoded by the bare decoder from the store's own bytes, as `frame_codecs.py`'s limits, split into planes by
  OpenCV; the action chunk sliced from arrays in memory), through the same DataLoader settings and collate,
  checked equal to `EpisodeDataset`'s samples before it is timed.
- `vs_lerobot.decode_limit_<codec>`: that limit against LeRobot: for `jpeg`, the most any store of these
  frame bytes can serve in this loader, so the ceiling of the goal's ratio; for `video`, the same with one
  decode per sample (sharing GOPs between the samples of a batch goes above it).

`--smoke` resizes the frames to 160x120 on ingest and times 160 samples (the last 96) once per side, for the
first `--frame-codec` only (checks the plumbing, not a figure). Goals (issue 26): >= 6x LeRobot's samples/s
with `jpeg` (the default frame codec), >= 4x with `video` while its bytes per frame stay at most LeRobot's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, figure, median_ratio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".venv-lerobot" / "bin" / "python"
G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
CAMERA = "observation.images.cam_high"
FIELD = "obs.rgb.cam_high"  # CAMERA in the store (`lerobot_names.field_from_feature`; not imported: peer venv)
CHUNK = 16


def peer_python() -> Path:
    """The LeRobot virtualenv's python; raises FileNotFoundError naming the make target when it is missing."""
    if not (PEER_PYTHON.parent.parent / ".installed").exists():
        raise FileNotFoundError(f"{PEER_PYTHON.parent.parent} is missing or incomplete: run `make lerobot-venv`")
    return PEER_PYTHON


def run_peer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this file under the LeRobot venv's python with `args`; raises CalledProcessError with its stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(peer_python()), str(Path(__file__).resolve()), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _lerobot_dataset(root: Path, chunk: int):
    """`LeRobotDataset` on the local folder `root` with a `chunk`-step action chunk (peer venv only)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    return LeRobotDataset("local/export", root=root, delta_timestamps={"action": [k / fps for k in range(chunk)]},
                          video_backend="torchcodec")


def peer_dump(root: Path, out: Path, chunk: int) -> None:
    """Write every sample `LeRobotDataset` returns on `root` to `out` (.npz), in index order.

    Arrays: `<camera>` (N, H, W, 3) uint8 (LeRobot's float [0, 1] frames times 255, rounded: exact),
    `action` (N, chunk, A) float32, `action_is_pad` (N, chunk) bool, `episode_index` and `frame_index` (N,).
    """
    ds = _lerobot_dataset(root, chunk)
    cams = list(ds.meta.video_keys)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in [*cams, "action", "action_is_pad", "episode_index",
                                                          "frame_index"]}
    for i in range(len(ds)):
        item = ds[i]
        for k in cams:
            rows[k].append((item[k] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        for k in ("action", "action_is_pad", "episode_index", "frame_index"):
            rows[k].append(np.asarray(item[k]))
    np.savez(out, **{k: np.stack(v) for k, v in rows.items()})


def loader_rate(ds, indices: list[int], workers: int, batch: int, collate_fn=None) -> tuple[float, int]:
    """Samples/s of a DataLoader over `ds` at `indices` (in that order), and the samples timed; `collate_fn`
    None is the DataLoader's default collate.

    Each worker's first batch (its start-up: forking, opening files, the decoder) is not timed.
    """
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=batch,
                                         num_workers=workers, shuffle=False, persistent_workers=False,
                                         collate_fn=collate_fn)
    it = iter(loader)
    for _ in range(max(workers, 1)):
        next(it)
    n, t = 0, time.perf_counter()
    for b in it:
        n += len(b["action"])
    return n / max(time.perf_counter() - t, 1e-9), n


def peer_rate(root: Path, indices_file: Path, workers: int, batch: int, chunk: int) -> None:
    """Print `{"samples_per_s", "samples"}` of LeRobotDataset on `root` at the indices in `indices_file`."""
    ds = _lerobot_dataset(root, chunk)
    indices = json.loads(indices_file.read_text())
    rate, n = loader_rate(ds, indices, workers, batch)
    sys.stdout.write(json.dumps({"samples_per_s": rate, "samples": n}) + "\n")


def shardyard_rate(store: Path, indices: list[int], workers: int, batch: int, chunk: int,
                   shared: bool = True) -> float:
    """Samples/s of `EpisodeDataset` on `store`, the same sample (camera frame + `chunk`-step action chunk),
    collated by `SharedCollate` (or, `shared` False, the DataLoader's default collate)."""
    from shardyard.loaders import EpisodeDataset, SharedCollate

    ds = EpisodeDataset(str(store), deltas={CAMERA: [0], "action": range(chunk)})
    return loader_rate(ds, indices, workers, batch, SharedCollate() if shared else None)[0]


class DecodeLimit(torch.utils.data.Dataset):
    """The benchmark's sample with no store code: what serving it from these frame bytes costs, one decode
    per sample (a store that decodes a GOP once for all the samples of a batch in it can do better).

    The frame comes from the codec's decoder alone on the store's own bytes (`frame_codecs.bare_jpeg`:
    simplejpeg on each frame's chunk, read once up front; `frame_codecs.bare_video`: PyAV seeking to the
    keyframe and decoding forward), split into one batch-wide planes buffer by OpenCV as `EpisodeDataset`
    does; the action chunk and its pad mask (edge step repeated, as LeRobot's) are slices of arrays held in
    memory. Same keys, shapes and dtypes as `EpisodeDataset`'s sample: `CAMERA` `(1, 3, H, W)` uint8 with
    `CAMERA_is_pad (1,)`, `action (chunk, A)` float32 with `action_is_pad (chunk,)`, and the three indices."""

    def __init__(self, fetch, action: np.ndarray, episode_ends: np.ndarray, chunk: int) -> None:
        self.fetch, self.action, self.ends, self.chunk = fetch, action, episode_ends, chunk
        self.starts = np.concatenate([[0], episode_ends[:-1]])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitems__(self, rows: list[int]) -> list[dict]:
        import cv2

        first = self.fetch(rows[0]).numpy()
        planes = np.empty((len(rows), 1, first.shape[2], *first.shape[:2]), np.uint8)
        out = []
        for k, row in enumerate(rows):
            cv2.split(first if k == 0 else self.fetch(row).numpy(), list(planes[k, 0]))
            ep = int(np.searchsorted(self.ends, row, side="right"))
            want = row + np.arange(self.chunk)
            out.append({CAMERA: torch.from_numpy(planes[k]), f"{CAMERA}_is_pad": torch.zeros(1, dtype=torch.bool),
                        "action": torch.from_numpy(self.action[np.minimum(want, self.ends[ep] - 1)]),
                        "action_is_pad": torch.from_numpy(want >= self.ends[ep]), "episode_index": ep,
                        "frame_index": row - int(self.starts[ep]), "index": row})
        return out


def decode_limit(store: Path, codec: str, indices: list[int], chunk: int) -> DecodeLimit:
    """`DecodeLimit` over `store`, whose camera field has frame codec `codec` (`jpeg` or `video`), checked
    before it is timed: its samples at the first 3 `indices` equal `EpisodeDataset`'s (raises RuntimeError
    when they differ)."""
    from frame_codecs import bare_jpeg, bare_video

    from shardyard import open_store
    from shardyard.loaders import EpisodeDataset

    s = open_store(str(store))
    field_dir = store / "data" / FIELD
    fetch = bare_video(field_dir, s.episode_starts) if codec == "video" else bare_jpeg(field_dir, np.asarray(indices))
    limit = DecodeLimit(fetch, s.read_rows("action", 0, s.num_steps), np.asarray(s.episode_ends), chunk)
    ours = EpisodeDataset(str(store), deltas={CAMERA: [0], "action": range(chunk)})
    # compared in a worker, as timed: a PyAV scaler made here and then dropped in a forked worker would hang it
    pairs = torch.utils.data.DataLoader(torch.utils.data.Subset(_Same(limit, ours), indices[:3]), batch_size=None,
                                        num_workers=1)
    if not all(bool(x) for x in pairs):
        raise RuntimeError(f"{store}: the bare decode's samples differ from EpisodeDataset's at {indices[:3]}")
    return limit


class _Same(torch.utils.data.Dataset):
    """Whether `a`'s and `b`'s samples at an index are equal, every key (a bool tensor)."""

    def __init__(self, a, b) -> None:
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.b)

    def __getitem__(self, i: int) -> torch.Tensor:
        x, y = self.a.__getitems__([i])[0], self.b[i]
        return torch.tensor(x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k]))
                                                         for k in x))


def lerobot_rate(export: Path, indices_file: Path, workers: int, batch: int, chunk: int) -> float:
    """Samples/s of `LeRobotDataset` on `export`, measured in the peer venv."""
    proc = run_peer("peer-rate", "--root", str(export), "--indices", str(indices_file), "--workers", str(workers),
                    "--batch", str(batch), "--chunk", str(chunk))
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"])


def _cli(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "shardyard.cli", *args], capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 2):  # 2: some episodes listed in the source's meta have no files (said so)
        raise RuntimeError(f"shardyard {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(work: Path, frame_codec: str, image_size: str | None) -> tuple[Path, Path]:
    """Ingest the G1 episodes into `work/store_<codec>` and, once, export them (LeRobot's own encoding) to
    `work/export`; returns both paths."""
    store, export = work / f"store_{frame_codec.replace(':', '_')}", work / "export"
    if not (store / "manifest.json").exists():
        args = ["ingest", "lerobot", str(G1), "--out", str(store), "--overwrite", "--frame-codec", frame_codec]
        if image_size:
            args += ["--image-size", image_size]
        _cli(*args)
    if not (export / "meta" / "info.json").exists():
        _cli("export", "lerobot", str(store), "--out", str(export), "--overwrite")
    return store, export


GOALS = {"jpeg": ">= 6", "video": ">= 4"}
LIMIT_DECODER = {"jpeg": "simplejpeg", "video": "PyAV seek + decode forward"}
BYTES_GOALS = {"video": "<= 1"}


def compare(work: Path, codec: str, args: argparse.Namespace, samples: int, trials: int) -> None:
    """Alternate LeRobot and shardyard on the same shuffled samples for one store codec; print the figures."""
    from shardyard import open_store

    store, export = build(work, codec, "160x120" if args.smoke else None)
    n = open_store(str(store)).num_steps
    indices = np.random.default_rng(0).permutation(n)[:samples].tolist()
    samples = len(indices)  # a store of fewer steps than asked serves each step once
    indices_file = work / "indices.json"
    indices_file.write_text(json.dumps(indices))
    name = codec.split(":")[0]
    limit = decode_limit(store, name, indices, args.chunk) if name in ("jpeg", "video") else None
    from shardyard.loaders import SharedCollate

    ours, theirs, bare, plain = [], [], [], []
    rates = {"lerobot": (theirs, lambda: lerobot_rate(export, indices_file, args.workers, args.batch, args.chunk)),
             "shardyard": (ours, lambda: shardyard_rate(store, indices, args.workers, args.batch, args.chunk)),
             "default_collate": (plain, lambda: shardyard_rate(store, indices, args.workers, args.batch, args.chunk,
                                                               shared=False))}
    if limit is not None:
        rates["limit"] = (bare, lambda: loader_rate(limit, indices, args.workers, args.batch, SharedCollate())[0])
    for trial in range(trials):  # alternated, each side first in turn
        for side in list(rates) if trial % 2 == 0 else list(rates)[::-1]:
            rates[side][0].append(rates[side][1]())
    extra = {"frame_codec": codec, "samples": samples, "trials": trials, "workers": args.workers,
             "batch": args.batch, "chunk": args.chunk, "smoke": args.smoke,
             "trials_value": [round(v, 1) for v in ours], "trials_baseline": [round(v, 1) for v in theirs]}
    figure(f"vs_lerobot.samples_per_s_{name}", statistics.median(ours), "samples/s",
           "LeRobot 0.4.4 `LeRobotDataset` on its own encoding (AV1, g=2)", statistics.median(theirs),
           ratio=median_ratio(ours, theirs), goal=GOALS.get(name, ""),
           label=f"{samples:,} samples (frame + {args.chunk}-step action chunk) of {n:,} G1 steps, `{codec}` store "
                 f"(SharedCollate) vs LeRobot (default collate), DataLoader {args.workers} workers, batch "
                 f"{args.batch}, shuffled", **extra)
    figure(f"vs_lerobot.samples_per_s_{name}_default_collate", statistics.median(plain), "samples/s",
           "LeRobot 0.4.4 `LeRobotDataset` on its own encoding (AV1, g=2)", statistics.median(theirs),
           ratio=median_ratio(plain, theirs), frame_codec=codec, samples=samples, trials=trials,
           trials_value=[round(v, 1) for v in plain],
           label=f"the same {samples:,} samples from the `{codec}` store with the DataLoader's default collate, "
                 "as LeRobot's: the transport held equal")
    if limit is not None:
        what = f"the same {samples:,} samples"
        figure(f"vs_lerobot.samples_per_s_{name}_of_decode_limit", statistics.median(ours), "samples/s",
               f"decode limit: {LIMIT_DECODER[name]} on the store's bytes, no store code", statistics.median(bare),
               ratio=median_ratio(ours, bare), frame_codec=codec, samples=samples, trials=trials,
               trials_baseline=[round(v, 1) for v in bare],
               label=f"{what} from the `{codec}` store against the decoder alone on its bytes, same loader and "
                     "collate (SharedCollate)")
        figure(f"vs_lerobot.decode_limit_{name}", statistics.median(bare), "samples/s",
               "LeRobot 0.4.4 `LeRobotDataset` on its own encoding (AV1, g=2)", statistics.median(theirs),
               ratio=median_ratio(bare, theirs), frame_codec=codec, samples=samples, trials=trials,
               label=f"{what}, the decode limit of the `{codec}` store's bytes (one decode per sample, no store "
                     "code, SharedCollate) against LeRobot, same loader")
    store_bytes = _bytes(store / "data" / FIELD) / n
    export_bytes = _bytes(export / "videos" / CAMERA) / n
    figure(f"vs_lerobot.bytes_per_frame_{name}", store_bytes, "bytes/frame", "LeRobot export mp4, bytes/frame",
           export_bytes, frame_codec=codec, frames=n, goal=BYTES_GOALS.get(name, ""),
           label=f"`{codec}` store size per frame against LeRobot's, over {n:,} frames")


def main() -> None:
    """Run the comparison (or, with a `peer-*` command, one LeRobot side in the peer venv)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="bench", choices=["bench", "peer-rate", "peer-dump"])
    parser.add_argument("--frame-codec", default="jpeg,video", help="comma-separated `ingest --frame-codec`s")
    parser.add_argument("--samples", type=int, default=1000, help="Shuffled sample indices timed per trial.")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--smoke", action="store_true", help="160x120 frames, 160 samples, one trial.")
    parser.add_argument("--work", type=Path, default=None, help="Keep the store and export here (reused).")
    parser.add_argument("--root", type=Path, help="peer-*: the LeRobot dataset folder.")
    parser.add_argument("--indices", type=Path, help="peer-rate: JSON list of sample indices.")
    parser.add_argument("--out", type=Path, help="peer-dump: the .npz to write.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "peer-rate":
        return peer_rate(args.root, args.indices, args.workers, args.batch, args.chunk)
    if args.command == "peer-dump":
        return peer_dump(args.root, args.out, args.chunk)

    peer_python()  # fail before the ingest when the peer is missing
    tmp = tempfile.TemporaryDirectory()
    work = args.work or Path(tmp.name)
    samples, trials = (160, 1) if args.smoke else (args.samples, args.trials)
    codecs = args.frame_codec.split(",")
    for codec in codecs[:1] if args.smoke else codecs:  # a smoke checks the plumbing: one codec is enough
        compare(work, codec, args, samples, trials)
    tmp.cleanup()


if __name__ == "__main__":
    main()
