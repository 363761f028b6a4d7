#!/usr/bin/env bash
# GPU check (issue 12, item 5), one prepared script, under 8 minutes on one GPU:
#   1. each trainer (volume-query, depth, patch-predict) for 50 steps in bf16 autocast on cuda;
#   2. `torchrun --nproc_per_node 1` of the volume-query trainer with nccl (set_device, all-reduce on the GPU);
#   3. `ingest dino` with dinov2-small-sized random weights (ViT-S/14: 384 wide, 12 blocks, 6 heads).
# Each prints one JSON line: steps/s (trainers), images/s (ingest dino), peak GPU memory (GiB).
#
#   benchmarks/gpu_check.sh [--smoke] [WORKDIR]
#
# --smoke: the same stages on the CPU with tiny sizes and 3 steps (bf16 autocast on CPU, gloo instead of
# nccl, a tiny random ViT): what a machine without a GPU can check. WORKDIR (default: a temp folder) keeps
# the stores and runs. PYTHON (default python) is the interpreter with shardyard installed.
set -euo pipefail

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
WORK="${1:-$(mktemp -d -t gpu_check.XXXXXX)}"
PY="${PYTHON:-python}"
export SMOKE WORK HF_HUB_OFFLINE=1 MPLBACKEND=Agg
mkdir -p "$WORK"
echo "gpu_check: smoke=$SMOKE workdir=$WORK" >&2

exec "$PY" - <<'PYEOF'
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

SMOKE = os.environ["SMOKE"] == "1"
WORK = Path(os.environ["WORK"])
DEVICE = "cpu" if SMOKE else "cuda"
STEPS = 3 if SMOKE else 50
if not SMOKE and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device (use --smoke on a CPU machine)")


def report(check, amp="bf16", **figures):
    row = {"check": check, "device": DEVICE, **({"amp": amp} if amp else {}), **figures}
    print(json.dumps(row), flush=True)


def peak_gib():
    if DEVICE != "cuda":
        return None
    gib = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(gib, 3)


def yam_store():
    """Synthetic YAM demos -> episodic store -> tiny-random tokens (the volume-query and patch data)."""
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource
    from shardyard.models.backbones import BackboneConfig
    from shardyard.testing import SyntheticConfig, write_synthetic_yam

    store, feats = WORK / "yam_store", WORK / "yam_tokens"
    if not (store / "manifest.json").exists():
        write_synthetic_yam(WORK / "yam_raw", SyntheticConfig(num_episodes=4 if SMOKE else 12, steps=24 if SMOKE else 60,
                                                              width=64 if SMOKE else 224, height=48 if SMOKE else 224,
                                                              video=False))
        run_ingest(YamSource(YamConfig(root=WORK / "yam_raw")), IngestConfig(out=store, val_fraction=0.25))
    if not (feats / "manifest.json").exists():
        ingest_dino(DinoConfig(store=str(store), out=feats, field="obs.rgb.front", batch_size=32,
                               backbone=BackboneConfig(image_size=(56, 56) if SMOKE else (224, 224), device=DEVICE)))
    return str(store), str(feats)


def vit_folder():
    """A Hugging Face folder of a randomly initialised DINOv2 (ViT-S/14 sized; tiny with --smoke)."""
    from transformers import Dinov2Config, Dinov2Model

    folder = WORK / ("vit_tiny" if SMOKE else "vits14_random")
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2) if SMOKE else \
            dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
        Dinov2Model(Dinov2Config(patch_size=14, image_size=518, mlp_ratio=4, **size)).save_pretrained(folder)
    return str(folder)


def check_volume_query(store, feats):
    from shardyard.train.volume_query import TrainConfig, train

    res = train(TrainConfig(store=store, features=feats, out=str(WORK / "run_vq"), steps=STEPS, amp="bf16",
                            device=DEVICE, log_every=max(STEPS // 2, 1), eval_every=STEPS, plot_every=0,
                            resume=False, num_workers=2))
    last = res.records[-1]
    report("train.volume_query", steps=STEPS, steps_per_s=round(last["steps_per_s"], 2),
           loss=round(last["loss"], 4), val_pix_argmax=round(last["val_pix_argmax"], 2), peak_mem_gib=peak_gib())


def nyu_store():
    """A small NYU-layout (h5) store and its tokens at two layers of the tiny random backbone."""
    import h5py

    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, ingest_nyu
    from shardyard.ingest.runner import IngestConfig
    from shardyard.models.backbones import BackboneConfig

    d = WORK / "nyu"
    h, w = (42, 56) if SMOKE else (240, 320)
    if not (d / "store" / "manifest.json").exists():
        rng = np.random.default_rng(0)
        for i in range(12):
            split, scene = ("val", "official") if i >= 8 else ("train", f"scene_{i // 4:04d}")
            (d / "raw" / split / scene).mkdir(parents=True, exist_ok=True)
            with h5py.File(d / "raw" / split / scene / f"{i:05d}.h5", "w") as f:
                f["rgb"] = rng.integers(0, 255, (3, h, w), dtype=np.uint8)
                f["depth"] = rng.uniform(0.5, 9.5, (h, w)).astype(np.float32)
        ingest_nyu(NyuSource(NyuConfig(root=d / "raw")), IngestConfig(out=d / "store"))
    if not (d / "tokens" / "manifest.json").exists():
        ingest_dino(DinoConfig(store=str(d / "store"), out=d / "tokens", field="obs.rgb", batch_size=8,
                               backbone=BackboneConfig(layers=(0, 1), image_size=(w, h), device=DEVICE)))
    return d


def check_depth():
    from shardyard.train.depth import DepthTrainConfig, train_depth

    d = nyu_store()
    run = WORK / "run_depth"
    t0 = time.perf_counter()
    res = train_depth(DepthTrainConfig(store=str(d / "store"), features=str(d / "tokens"), out=run, steps=STEPS,
                                       batch_size=4, amp="bf16", device=DEVICE, log_every=1, eval_every=STEPS,
                                       ckpt_every=STEPS, features_dim=16 if SMOKE else 64,
                                       reassemble_channels=(8, 8, 16, 16) if SMOKE else (48, 96, 192, 384)))
    rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    a, b = rows[min(4, len(rows) - 2)], rows[-1]
    rate = (b["step"] - a["step"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
    report("train.depth", steps=res.step, steps_per_s=round(rate, 2), wall_s=round(time.perf_counter() - t0, 1),
           abs_rel=round(res.final["abs_rel"], 4), peak_mem_gib=peak_gib())


def check_patch_predict(feats):
    from shardyard.train.patch_predict import PatchPredictConfig, run

    t0 = time.perf_counter()
    res = run(PatchPredictConfig(out=str(WORK / "run_pp"), features=feats, gap=1, model="mlp", steps=STEPS,
                                 amp="bf16", device=DEVICE, eval_every=STEPS, ckpt_every=STEPS, resume=False))
    wall = time.perf_counter() - t0
    report("train.patch_predict", steps=STEPS, steps_per_s=round(STEPS / wall, 2), cos=round(res.final["cos"], 4),
           copy_cos=round(res.final["copy_cos"], 4), peak_mem_gib=peak_gib())


def check_torchrun(store, feats):
    """torchrun with one process: the process group (nccl on CUDA), DDP, all-reduce of the metric sums."""
    out = WORK / "run_torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "shardyard.cli", "train", "volume-query", "--store", store, "--features", feats, "--out", str(out),
           "--steps", str(STEPS), "--log-every", str(max(STEPS // 2, 1)), "--eval-every", str(STEPS),
           "--plot-every", "0", "--no-resume", "--device", DEVICE, "--amp", "bf16"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    report("torchrun.volume_query", backend="gloo" if SMOKE else "nccl", nproc=1, steps=last["step"],
           steps_per_s=round(last["steps_per_s"], 2), wall_s=round(time.perf_counter() - t0, 1),
           peak_mem_gib=last.get("peak_mem_gib"))


def check_ingest_dino(store):
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.models.backbones import BackboneConfig

    model = vit_folder()
    out = WORK / "tokens_vits"
    t0 = time.perf_counter()
    res = ingest_dino(DinoConfig(store=store, out=out, field="obs.rgb.front", batch_size=64, overwrite=True,
                                 backbone=BackboneConfig(spec=model, image_size=(224, 224), device=DEVICE)))
    wall = time.perf_counter() - t0
    from shardyard.stores.features import open_features

    n = open_features(str(out)).num_samples
    report("ingest_dino.vits14_random", amp=None, images=n, images_per_s=round(n / wall, 1), exit_code=res.exit_code,
           peak_mem_gib=peak_gib())


t_start = time.perf_counter()
store, feats = yam_store()
peak_gib()
check_volume_query(store, feats)
check_depth()
check_patch_predict(feats)
check_torchrun(store, feats)
check_ingest_dino(store)
print(json.dumps({"check": "total", "wall_s": round(time.perf_counter() - t_start, 1)}), flush=True)
PYEOF
