"""Data-wait share of seed 004's patch-prediction trainer (`train patch-predict --stream --live-backbone`).

Store: the shared WebVid sample clips (`../shared/data/webvid/clips`) copied `--copies` times into a shard store
(4 clips a shard, so that 2 workers both have shards to read: the stream splits by shard). The trainer runs
seed 004's live setting: clips of gap + 1 frames at `stream_fps` decoded at 128 px, every frame through the
frozen backbone at 224 px on every step, an MLP predicting frame t + gap's patch tokens from frame t's. Its
`metrics.jsonl` gives the share of step time spent waiting for the next batch of clips (`data_wait_frac`, per
logged step); a figure is that share over the steps after `warmup` (sum of waits over sum of step times).

Figures:
- `train_patch_predict.data_wait_frac_<config>`: with `--workers` (2) DataLoader workers decoding the clips,
  against the same trainer decoding them in the training process (0 workers), in the same run.
Configs: `tiny` (tiny-random-dinov2: the backbone nearly free, the decode-bound floor) and `vits` (a randomly
initialised ViT-S/14 with DINOv2-small's exact architecture, `harness.random_vits`: the seed's model size;
goal (issue 26) < 5 %). Sides alternate over `--trials` (`harness.alternate`), medians. `--smoke`: the tiny
config, a few steps, one trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    add_common_args,
    alternate,
    clip_shard_store,
    data_wait_share,
    figure,
    median_ratio,
    random_vits,
)

CONFIGS = {
    "tiny": dict(backbone="tiny-random-dinov2", steps=16, warmup=4, clips=2, gap=8, fps=8.0),
    "vits": dict(backbone="random-vits", steps=8, warmup=3, clips=2, gap=8, fps=8.0),
}


def data_wait(run: Path, warmup: int) -> float:
    """Sum of batch waits over sum of step times of the train rows after `warmup` (`log_every` 1)."""
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("split") == "train"][warmup:]
    return data_wait_share(rows)


def run_config(name: str, shards: Path, tmp: Path, workers: int, trials: int) -> None:
    from shardyard.train.configs import PatchPredictConfig
    from shardyard.train.patch_predict import run

    c = CONFIGS[name]
    backbone = random_vits(tmp / "vits") if c["backbone"] == "random-vits" else c["backbone"]
    runs = {"workers": 0, "inline": 0}

    def side(mode: str):
        def go() -> float:
            out = tmp / f"{name}_{mode}{runs[mode]}"
            runs[mode] += 1
            run(PatchPredictConfig(out=str(out), stream=str(shards), live_backbone=True, backbone=backbone,
                                   model="mlp", gap=c["gap"], stream_fps=c["fps"], stream_size=128, image_size=224,
                                   clips_per_step=c["clips"], steps=c["steps"], log_every=1,
                                   eval_every=10**9, ckpt_every=10**9, device="cpu",
                                   num_workers=workers if mode == "workers" else 0))
            return data_wait(out, c["warmup"])
        return go

    r = alternate({"workers": side("workers"), "inline": side("inline")}, trials)
    figure(f"train_patch_predict.data_wait_frac_{name}", statistics.median(r["workers"]), "fraction",
           "the same trainer decoding the clips in the training process (0 workers)", statistics.median(r["inline"]),
           ratio=median_ratio(r["workers"], [max(w, 1e-9) for w in r["inline"]]),
           goal="" if name == "tiny" else "value < 0.05", workers=workers, steps=c["steps"], device="cpu",
           threads=torch.get_num_threads(), trials_value=[round(v, 4) for v in r["workers"]],
           trials_baseline=[round(v, 4) for v in r["inline"]],
           label=f"data-wait share of seed 004's live-backbone trainer ({name}: {c['backbone']}, cpu), "
                 f"{c['steps'] - c['warmup']} of {c['steps']} steps of {c['clips']} clips x {c['gap'] + 1} frames, "
                 f"{workers} DataLoader workers")


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--config", choices=sorted(CONFIGS), action="append", help="repeatable (default: tiny, vits)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=4)
    args = ap.parse_args()
    names, trials = (["tiny"], 1) if args.smoke else (args.config or ["tiny", "vits"], args.trials)
    if args.smoke:
        CONFIGS["tiny"].update(steps=4, warmup=1, gap=2)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        clip_shard_store(shards, args.copies)
        for name in names:
            run_config(name, shards, Path(tmp), args.workers, trials)


if __name__ == "__main__":
    main()
