"""Training throughput of seed 001's volume-query model: cached DINO tokens against the live backbone.

Store: the shared YAM episodes ingested with the top camera at 224x224, and their tiny-random DINOv2 tokens
(`ingest dino`, grid 16x16, D 32), unless `--store/--features` name existing ones. The trainer runs with
the seed's model defaults (batch 8, T 8, P 56) on CPU or the GPU; each figure is the steady state (the
second half of the steps). Figures:
- `steps_per_s`: steps/s with cached tokens and 2 workers, against the live backbone (frames decoded and
  the backbone run every step) with 2 workers. With the tiny random backbone the ViT costs little; with a
  real one (`--backbone facebook/dinov2-small`, weights present locally) the gap is the point of caching.
- `data_wait_frac`: the fraction of step time spent waiting for batches with cached tokens and 2 workers
  (goal < 5 %), against the same without workers (reads in the training process).
The cached, live and 0-worker runs alternate `--trials` times; medians (`benchmarks/harness.py`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import YAM_MODEL, add_common_args, alternate, figure, median_ratio, yam_subset  # noqa: E402


def build(root: Path, size: int = 224, episodes: int | None = None) -> tuple[str, str]:
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource
    from shardyard.models.backbones import BackboneConfig

    store, feats = root / "store", root / "features"
    run_ingest(YamSource(YamConfig(root=yam_subset(root / "raw", episodes), robot_model=YAM_MODEL, cameras=("top",),
                                   image_size=(size, size))), IngestConfig(out=store, workers=2))
    ingest_dino(DinoConfig(store=str(store), out=feats, field="obs.rgb.top",
                           backbone=BackboneConfig(spec="tiny-random-dinov2")))
    return str(store), str(feats)


def steady(store: str, features: str | None, out: Path, steps: int, workers: int, backbone: str) -> dict:
    from shardyard.train.volume_query import TrainConfig, train

    res = train(TrainConfig(store=store, features=features, out=str(out), steps=steps, num_workers=workers,
                            log_every=steps // 2, ckpt_every=10 * steps, plot_every=0, eval_every=0, resume=False,
                            backbone=backbone))
    return res.records[-1]                       # steps steps//2 + 1 .. steps


def main(argv: list[str] | None = None) -> int:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--store")
    ap.add_argument("--features")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--backbone", default="tiny-random-dinov2")
    args = ap.parse_args(argv)
    steps, trials = (6, 1) if args.smoke else (args.steps, args.trials)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_vq_") as tmp:
        root = Path(tmp)
        if args.store:
            store, feats = args.store, args.features
        else:
            store, feats = build(root, 112 if args.smoke else 224, 2 if args.smoke else None)
        runs: dict[str, list[dict]] = {"cached": [], "live": [], "inproc": []}

        def side(name: str, features: str | None, workers: int = 2):
            def go() -> float:
                rec = steady(store, features, root / f"{name}{len(runs[name])}", steps, workers, args.backbone)
                runs[name].append(rec)
                return rec["steps_per_s"]
            return go

        r = alternate({"cached": side("cached", feats), "live": side("live", None),
                       "inproc": side("inproc", feats, 0)}, trials)
        from shardyard import open_store

        episodes = open_store(store).num_episodes
    what = f"{steps} steps of batch 8 from {episodes} episodes"
    figure("train_volume_query.steps_per_s", statistics.median(r["cached"]), "steps/s", f"live {args.backbone}",
           statistics.median(r["live"]), ratio=median_ratio(r["cached"], r["live"]), workers=2, batch=8,
           steps=steps, label=f"seed 001 trainer, {what} (second half timed), cached tokens vs the live backbone, "
                              "2 workers")
    wait = [rec["data_wait_frac"] for rec in runs["cached"]]
    base = [max(rec["data_wait_frac"], 1e-9) for rec in runs["inproc"]]
    figure("train_volume_query.data_wait_frac", statistics.median(wait), "fraction", "the same trainer, 0 workers",
           statistics.median(base), ratio=median_ratio(wait, base), workers=2, goal="value < 0.05", steps=steps,
           label=f"data-wait share of step time, {what}, cached tokens, 2 workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
