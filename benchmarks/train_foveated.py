"""Training throughput of seed 002's foveated captioner: per-layer K/V from a feature store against the live
encoder, the data-wait share of streaming, and (with `--gpu`) the seed's model sizes in bf16.

Store: the shared video2dataset WebVid shard through `ingest webvid` (3 videos with captions) copied into 4
shards, and its per-layer hidden states `ingest dino --layers all --fps F` on the frozen tiny encoder. Figures (steady
state: the second half of the steps):
- `steps_per_s`: optimiser steps/s of one plain training loop (`loop_steps_per_s`: the same model built from
  the same seed, AdamW, caption mode, one fixed caption of WebVid length, batch 2 from a DataLoader with 2
  workers, the same T and image size, tiny LM) run twice; the two runs differ only in where the encoder's
  per-layer K/V come from: recomputed from the cached hidden states of clips of T consecutive rows (F Hz) of
  the feature store (`encode_video(hidden=...)`: norm1 + projections only), against `ClipStream` clips of the
  same shards (T frames at F Hz) through the live frozen encoder (the trainer's own stream and loader,
  `clip_batches`).
- `data_wait_frac`: the trainer's (`train_foveated.train`) share of step time spent waiting for clips with 2
  workers (goal < 5 %), against the same trainer with the reads in the training process (0 workers).
- `data_wait_frac_vits`: the same with models that are not tiny (issue 26: dinov2-small- and SmolLM-135M-sized
  random weights, on the CPU), `--vits-steps` steps, 2 workers against 0.
- `--gpu`: 200 steps (`--gpu-steps`) of the trainer with dinov2-small- and SmolLM-135M-sized random models,
  bf16 autocast, gradient checkpointing, batch 3 x 16 frames at 256 px (encoder input 224): s/step and peak
  CUDA memory beside the seed's RTX 4090 (about 1.1 s/step, 9 GB).

Sides alternate over `--trials` (`harness.alternate`; medians, ratios of the same trial).
`--smoke`: tiny inputs (T 2, 32 px clips, 28 px encoder input, a few steps, one trial, the tiny models on the
`*_vits` sides too) to check the script runs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, add_common_args, alternate, figure, median_ratio  # noqa: E402

CAPTION = "Aerial view of a small boat sailing along the rocky coast at sunset, slow motion"
SEED_S_PER_STEP, SEED_PEAK_GB = 1.1, 9.0


def build(root: Path, fps: float, image_size: int, copies: int = 4) -> tuple[Path, Path]:
    """Shard store of the shared WebVid sample, its samples copied into `copies` shards (so that 2 workers
    both have shards to read: the stream splits by shard), and its `--layers all` feature store."""
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.ingest.webvid import WebvidConfig, ingest_webvid
    from shardyard.models.backbones import BackboneConfig
    from shardyard.stores.wds import Sample, ShardWriter, iter_tar_samples, list_shards

    ingested, shards, feats = root / "ingested", root / "shards", root / "features"
    ingest_webvid(SHARED / "webvid" / "video2dataset_shard", WebvidConfig(out=ingested))
    samples = []
    for url in list_shards(ingested):
        with open(url, "rb") as f:
            samples += list(iter_tar_samples(f))
    with ShardWriter(shards) as w:
        for c in range(copies):
            w.write_shard(c, [Sample(f"{c}{s.key}", s.members) for s in samples], [])
    ingest_dino(DinoConfig(store=str(shards), out=feats, fps=fps, field="mp4", backbone=BackboneConfig(
        spec="tiny-random-dinov2", image_size=(image_size, image_size), all_layers=True)))
    return shards, feats


class CachedClips:
    """Map-style dataset of clips of `t` consecutive rows of one video (none missing, so the JPEG members
    of the sample shard are left out): hidden `(T, N, (L + 1) * D)` float32."""

    def __init__(self, features: Path, t: int) -> None:
        from shardyard.stores.features import open_features

        self.store, self.t = open_features(features), t
        ends, bad = [0, *map(int, self.store.episode_ends)], self.store.missing
        self.starts = [s for a, b in zip(ends, ends[1:]) for s in range(a, b - t + 1) if not bad[s:s + t].any()]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        import torch

        s = self.starts[i]
        return {"hidden": torch.from_numpy(self.store.patch_tokens(s, s + self.t)).float(), "caption": CAPTION}


def loop_steps_per_s(shards: Path, features: Path | None, args) -> float:
    """Steps/s (second half of `args.steps`) of one plain loop: the captioner of seed 0, AdamW, caption mode,
    the fixed `CAPTION` for every clip, batches of 2 from a DataLoader with 2 workers: cached hidden states
    of `features` when given, else `ClipStream` clips of `shards` through the live frozen encoder."""
    import itertools

    import torch

    from shardyard.train.foveated_caption import FoveatedTrainConfig, build_model, clip_batches, open_stream

    cfg = FoveatedTrainConfig(shards=str(shards), out="-", frames=args.frames, size=args.size, fps=args.fps,
                              image_size=args.image_size, batch_size=2, num_workers=2)
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    if features is None:
        batches = clip_batches(open_stream(cfg), cfg, pin=False)
    else:
        loader = torch.utils.data.DataLoader(CachedClips(features, args.frames), batch_size=2, shuffle=True,
                                             num_workers=2, drop_last=True, persistent_workers=True)
        batches = itertools.chain.from_iterable(itertools.repeat(loader))
    t0 = 0.0
    for done in range(1, args.steps + 1):
        batch = next(batches)
        frames = batch.get("frames")
        out = model(frames, [CAPTION] * len(frames if frames is not None else batch["hidden"]),
                    hidden=batch.get("hidden"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if done == args.steps // 2:
            t0 = time.perf_counter()
    return (args.steps - args.steps // 2) / (time.perf_counter() - t0)


def live(shards: Path, root: Path, args, image_size: int, workers: int, steps: int, **kw) -> dict:
    """The trainer's record over its second half of `steps` (streamed clips, live encoder)."""
    from shardyard.train.foveated_caption import FoveatedTrainConfig, train

    run = f"live{workers}_{kw.get('device', 'cpu')}_{kw.get('encoder', 'tiny')}"
    cfg = FoveatedTrainConfig(shards=str(shards), out=str(root / run),
                              frames=args.frames, size=args.size, image_size=image_size, steps=steps,
                              num_workers=workers, lr=1e-3, log_every=steps // 2, ckpt_every=10 * steps,
                              sample_every=0, resume=False, **{"batch_size": 2, "device": "cpu", **kw})
    return train(cfg).records[-1]


def gpu(shards: Path, root: Path, args) -> None:
    """The seed's sizes on CUDA: s/step and peak memory against the seed's RTX 4090 figures."""
    import torch

    if not torch.cuda.is_available():
        print("--gpu: no CUDA device here; nothing measured", file=sys.stderr)
        return
    torch.cuda.reset_peak_memory_stats()
    rec = live(shards, root, argparse.Namespace(frames=16, size=256), 224, 2, args.gpu_steps, batch_size=3,
               device="cuda", amp="bf16", checkpointing="on", encoder="random-dinov2-small", lm="random-smollm-135m")
    peak = torch.cuda.max_memory_allocated() / 2**30
    s_per_step = 1.0 / rec["steps_per_s"]
    figure("train_foveated.gpu_s_per_step", s_per_step, "s/step", "seed 002 RTX 4090", SEED_S_PER_STEP,
           goal="<= 1", label=f"dinov2-small + SmolLM-135M sized, bf16, {args.gpu_steps} steps of 3 clips x 16 "
                               "frames, streamed (second half timed), single run",
           batch="3x16 frames", device=torch.cuda.get_device_name(), data_wait_frac=rec["data_wait_frac"],
           trials=1)
    figure("train_foveated.gpu_peak_memory", peak, "GiB", "seed 002 RTX 4090", SEED_PEAK_GB, goal="<= 1",
           label=f"peak CUDA memory of the same {args.gpu_steps} steps, single run", trials=1)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints JSON figure lines."""
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--gpu", action="store_true", help="Also run the seed-sized models on CUDA.")
    ap.add_argument("--gpu-steps", type=int, default=200)
    ap.add_argument("--vits-steps", type=int, default=8, help="steps of the CPU data-wait run with sized models")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.frames, args.size, args.image_size, args.gpu_steps, args.trials = 6, 2, 32, 28, 4, 1
        args.vits_steps = 2
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_fov_") as tmp:
        root = Path(tmp)
        shards, feats = build(root, args.fps, args.image_size)
        recs: dict[str, list[dict]] = {"streamed": [], "inproc": [], "streamed_vits": [], "inproc_vits": []}

        def side(name: str, workers: int) -> float:
            recs[name].append(live(shards, root, args, args.image_size, workers, args.steps))
            return recs[name][-1]["steps_per_s"]

        def side_vits(name: str, workers: int) -> float:
            from shardyard.models.foveated import DINOV2_SMALL_SIZED, SMOLLM_SIZED

            # a smoke run checks the plumbing: building the seed-sized models twice was 100 of its 130 s
            sized = {} if args.smoke else {"encoder": DINOV2_SMALL_SIZED, "lm": SMOLLM_SIZED}
            recs[name].append(live(shards, root, args, args.image_size, workers, args.vits_steps, **sized))
            return recs[name][-1]["steps_per_s"]

        r = alternate({"cached": lambda: loop_steps_per_s(shards, feats, args),
                       "live": lambda: loop_steps_per_s(shards, None, args),
                       "streamed": lambda: side("streamed", 2), "inproc": lambda: side("inproc", 0),
                       "streamed_vits": lambda: side_vits("streamed_vits", 2),
                       "inproc_vits": lambda: side_vits("inproc_vits", 0)}, args.trials)
        clips = f"{args.steps} steps of 2 clips x {args.frames} frames"
        figure("train_foveated.steps_per_s", statistics.median(r["cached"]), "steps/s",
               "the same loop on `ClipStream` clips through the live tiny encoder", statistics.median(r["live"]),
               ratio=median_ratio(r["cached"], r["live"]), goal=">= 1",
               label=f"training loop, {clips} (second half timed), per-layer K/V from a `--layers all` feature "
                     "store; only the encoder input differs from the baseline", workers=2, batch=2,
               frames=args.frames, steps=args.steps)
        wait = [x["data_wait_frac"] for x in recs["streamed"]]
        base = [max(x["data_wait_frac"], 1e-9) for x in recs["inproc"]]
        figure("train_foveated.data_wait_frac", statistics.median(wait), "fraction", "the same trainer, 0 workers",
               statistics.median(base), ratio=median_ratio(wait, base), goal="value < 0.05",
               label=f"data-wait share of the trainer's step time, {clips}, `ClipStream` with 2 workers",
               workers=2, steps=args.steps)
        wait = [x["data_wait_frac"] for x in recs["streamed_vits"]]
        base = [max(x["data_wait_frac"], 1e-9) for x in recs["inproc_vits"]]
        figure("train_foveated.data_wait_frac_vits", statistics.median(wait), "fraction",
               "the same trainer, 0 workers", statistics.median(base), ratio=median_ratio(wait, base),
               goal="value < 0.05", workers=2, steps=args.vits_steps,
               steps_per_s=statistics.median(r["streamed_vits"]),
               label=f"data-wait share of the trainer's step time with dinov2-small- and SmolLM-135M-sized random "
                     f"models on the CPU, {args.vits_steps} steps of 2 clips x {args.frames} frames (second half "
                     "timed), `ClipStream` with 2 workers")
        if args.gpu:
            gpu(shards, root, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
