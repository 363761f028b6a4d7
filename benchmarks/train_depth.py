"""`train depth` steps/s on cached DINO tokens against the live backbone, in the same run (issue 5).

A synthetic NYU store in the FastDepth h5 layout is ingested (`ingest nyu`), its tokens cached once
(`ingest dino --layers`), then the same trainer runs both ways with the same decoder and batch:
- cached: tokens read from the feature store, decoder trained (the backbone never runs);
- live: frames read at the stored size (no augmentation, the same input as the cache was made from) and
  encoded by the frozen backbone every step, forward only (`--live-backbone --freeze-backbone --no-augment`):
  exactly the work the cache saves, nothing more.
Steps/s come from the trainer's own `train.jsonl` timestamps after `warmup` steps; the two sides alternate
over `--trials` runs, medians (`benchmarks/harness.py`).

Configs: `tiny` (tiny-random-dinov2, 2 blocks of width 32, frames 120x160, ViT input 224x168, D 64): the ViT is
nearly free, so this shows the decoder-bound floor. `vits` (a randomly initialised ViT-S/14 with DINOv2-small's
exact architecture, saved as a local transformers folder: the same FLOPs as facebook/dinov2-small, no
download; layers 2,5,8,11): frames 240x320 with ViT input 224x168 on CPU, frames 480x640 with ViT input
644x476 on a GPU (`vits_gpu`, seed 003's setting). Default: tiny and vits on CPU, vits_gpu on a GPU.
Figures: `train_depth.steps_<config>` = cached steps/s, baseline `live_backbone` (steps/s);
`train_depth.data_wait_frac_<config>` = the share of the cached run's step time spent reading its batches
(the trainer reads in its own process; `data_wait_frac` of `train.jsonl`, steps after `warmup`), beside the
live run's (frames read instead of tokens). Goal (issue 26) < 5 % where the model is not tiny (`vits`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_common_args, alternate, data_wait_share, figure, median_ratio, random_vits  # noqa: E402

CONFIGS = {
    "tiny": dict(model="tiny-random-dinov2", layers=(0, 1), hw=(120, 160), image_size=(224, 168), batch=4,
                 frames=24, steps=12, warmup=2),
    "vits": dict(model="random-vits", layers=(2, 5, 8, 11), hw=(240, 320), image_size=(224, 168), batch=4,
                 frames=16, steps=6, warmup=2),
    "vits_gpu": dict(model="random-vits", layers=(2, 5, 8, 11), hw=(480, 640), image_size=(644, 476), batch=4,
                     frames=64, steps=40, warmup=5),
}


def write_h5(root: Path, n: int, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    h, w = hw
    for i in range(n):
        split, scene = ("val", "official") if i >= n - 4 else ("train", f"scene_{i // 8:04d}")
        (root / split / scene).mkdir(parents=True, exist_ok=True)
        with h5py.File(root / split / scene / f"{i:05d}.h5", "w") as f:
            f["rgb"] = rng.integers(0, 255, (3, h, w), dtype=np.uint8)
            f["depth"] = rng.uniform(0.5, 9.5, (h, w)).astype(np.float32)


def steps_per_s(run: Path, warmup: int) -> float:
    rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    a, b = rows[warmup - 1], rows[-1]
    return (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"])


def data_wait(run: Path, warmup: int) -> float:
    """The trainer's share of step time spent reading batches over the steps after `warmup` (one
    `train.jsonl` row per step)."""
    return data_wait_share([json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()][warmup:])


def run_config(name: str, device: str, tmp: Path, trials: int) -> dict:
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, ingest_nyu
    from shardyard.ingest.runner import IngestConfig
    from shardyard.models.backbones import BackboneConfig
    from shardyard.train.depth import DepthTrainConfig, train_depth

    c = CONFIGS[name]
    d = tmp / name
    write_h5(d / "raw", c["frames"], c["hw"])
    spec = random_vits(d / "vits") if c["model"] == "random-vits" else c["model"]
    ingest_nyu(NyuSource(NyuConfig(root=d / "raw")), IngestConfig(out=d / "store"))
    ingest_dino(DinoConfig(store=str(d / "store"), out=d / "tokens", field="obs.rgb", batch_size=8,
                           backbone=BackboneConfig(spec=spec, layers=c["layers"], image_size=c["image_size"],
                                                   device=device)))
    runs = {"cached": 0, "live": 0}
    waits: dict[str, list[float]] = {"cached": [], "live": []}

    def side(mode: str):
        def go() -> float:
            run = d / f"run_{mode}{runs[mode]}"
            runs[mode] += 1
            train_depth(DepthTrainConfig(store=str(d / "store"), features=str(d / "tokens"), out=run,
                                         steps=c["steps"], batch_size=c["batch"], live_backbone=mode == "live",
                                         freeze_backbone=True, augment=False, log_every=1, eval_every=10**9,
                                         ckpt_every=10**9, eval_max_images=1, png_samples=0, device=device))
            waits[mode].append(data_wait(run, c["warmup"]))
            return steps_per_s(run, c["warmup"])
        return go

    r = alternate({"cached": side("cached"), "live": side("live")}, trials)
    dev = "cuda" if torch.cuda.is_available() and device in ("auto", "cuda") else "cpu"
    figure(f"train_depth.data_wait_frac_{name}", statistics.median(waits["cached"]), "fraction",
           "the same trainer reading frames for the live backbone", statistics.median(waits["live"]),
           ratio=median_ratio(waits["cached"], [max(w, 1e-9) for w in waits["live"]]),
           goal="" if name == "tiny" else "value < 0.05", device=dev, batch=c["batch"], steps=c["steps"],
           label=f"data-wait share of the depth trainer's step time on cached tokens ({name}: {c['model']}, "
                 f"{dev}), {c['steps'] - c['warmup']} of {c['steps']} steps of batch {c['batch']}, "
                 "batches read in the training process")
    return figure(f"train_depth.steps_{name}", statistics.median(r["cached"]), "steps/s",
                  "frozen live backbone, forward only", statistics.median(r["live"]),
                  ratio=median_ratio(r["cached"], r["live"]), device=dev, batch=c["batch"],
                  frames_hw=list(c["hw"]), vit_input_wh=list(c["image_size"]), layers=list(c["layers"]),
                  threads=torch.get_num_threads(),
                  steps=c["steps"], label=f"seed 003 DPT decoder on cached tokens ({name}: {c['model']}, {dev}), "
                                          f"{c['steps']} steps of batch {c['batch']} from {c['frames']} images")


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--config", choices=sorted(CONFIGS), action="append",
                    help="repeatable (default: tiny and vits on CPU, vits_gpu on a GPU)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.smoke:
        names, trials = ["tiny"], 1
        CONFIGS["tiny"].update(frames=8, steps=4, warmup=1)
    else:
        names, trials = args.config or (["vits_gpu"] if torch.cuda.is_available() else ["tiny", "vits"]), args.trials
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            run_config(name, args.device, Path(tmp), trials)


if __name__ == "__main__":
    main()
