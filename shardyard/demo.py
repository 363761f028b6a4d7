"""`make demo`: the main job end to end on an embedded default.

Writes a small **synthetic** YAM dataset (per-demo layout, `shardyard.testing`), ingests it with the real
CLI (`ingest yam`), and inspects the store (summary and plots). Later stages (DINO feature caching,
training) join here as they land. The last step (seed 002) packs the synthetic episodes' videos with their
task text as captions into a webdataset shard store and runs a few steps of `train foveated-caption` on
it, with attention overlays.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from shardyard.procs import die_with_parent
from shardyard.stores.wds import Sample, ShardWriter
from shardyard.testing import SyntheticConfig, write_synthetic_yam

__all__ = ["main", "write_clip_shards"]


def _cli(*args: str) -> int:
    cmd = [sys.executable, "-m", "shardyard.cli", *args]
    print("$ shardyard " + " ".join(args), flush=True)
    # The step dies with the demo (a killed `make demo` leaves no ingest or training running).
    return subprocess.run(cmd, check=False, preexec_fn=functools.partial(die_with_parent, os.getpid())).returncode


def write_clip_shards(raw: Path, out: Path) -> Path:
    """A shard store of the synthetic episodes' `rgb.mp4` with their task as the caption (`<key>.txt`)."""
    import json

    samples = [Sample(f"{i:09d}", {"mp4": (d / "rgb.mp4").read_bytes(),
                                   "txt": json.loads((d / "meta.json").read_text())["task"].encode()})
               for i, d in enumerate(sorted(p.parent for p in raw.rglob("rgb.mp4")))]
    with ShardWriter(out) as w:
        w.write_shard(0, samples, [])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end (`python -m shardyard.demo --out DIR`); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=600, help="volume-query training steps (issue 4)")
    parser.add_argument("--foveated-steps", type=int, default=30, help="foveated-caption steps (issue 13)")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    raw, store, plots = args.out / "raw", args.out / "store", args.out / "inspect"
    folders = write_synthetic_yam(raw, SyntheticConfig(num_episodes=args.episodes, steps=60))
    print(f"wrote {len(folders)} synthetic episodes (per-demo layout) under {raw}", flush=True)
    rc = _cli("ingest", "yam", str(raw), "--out", str(store), "--workers", str(args.workers))
    if rc != 0:
        print(f"ingest exited with status {rc}", file=sys.stderr)
        return rc
    rc = _cli("inspect", str(store), "--out", str(plots))
    if rc == 0:
        # issue 3: cache DINO tokens (tiny random weights unless DINO_MODEL names local weights), inspect them
        features = args.out / "features"
        model = os.environ.get("DINO_MODEL", "tiny-random-dinov2")
        rc = _cli("ingest", "dino", str(store), "--model", model, "--out", str(features),
                  "--field", "obs.rgb.front", "--batch-size", "32")
        if rc == 0:
            rc = _cli("inspect", str(features), "--out", str(plots / "features"))
    if rc == 0:
        # issue 4: train seed 001's volume-query model on the cached tokens (CPU, a few hundred steps, lr
        # 1e-3 instead of the seed's 5e-5 to learn within the demo's budget); the trainer prints the metric
        # table (train_pix_argmax, in source-frame pixels, falling well below pix_start_baseline; val_pix_argmax
        # on the held-out episodes) and the paths of its plots
        rc = _cli("train", "volume-query", "--store", str(store), "--features", str(args.out / "features"),
                  "--out", str(args.out / "run"), "--steps", str(args.train_steps), "--lr", "1e-3",
                  "--log-every", "50", "--plot-every", "200", "--ckpt-every", "200")
    if rc == 0:
        # issue 13: seed 002's foveated captioner streaming the demo's clips (tiny random encoder and LM,
        # 4 frames at 64 px: the whole pipeline in a few steps, not a trained captioner)
        shards = write_clip_shards(raw, args.out / "clips")
        rc = _cli("train", "foveated-caption", "--shards", str(shards), "--out", str(args.out / "run_foveated"),
                  "--steps", str(args.foveated_steps), "--frames", "4", "--size", "64", "--image-size", "56",
                  "--lr", "1e-3", "--warmup-steps", "5", "--log-every", "10", "--sample-every", "10",
                  "--attention-out", str(plots / "foveated"))
    if rc == 0:
        print(f"\ndemo finished: store {store}, plots {plots}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
