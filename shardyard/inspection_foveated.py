"""Attention overlays of a foveated-caption run (seed 002's hand-made pictures, drawn from `RUN/latest.pth`).

`draw_run(RUN, OUT)` rebuilds the captioner from the checkpoint's config, streams the first clip(s) of the
run's shard store from their start, runs both passes and writes, per clip, `attention_<key>.png` (rows:
frames; fine and coarse attention of the last block over the patch grid, upsampled onto the frame, with the
greedy captions in the title) and `attention_<key>.gif` (one frame per clip frame: frame | fine | coarse).
`is_foveated_run(path)` tells `shardyard inspect` that a folder is such a run. The checkpoint is read with
`torch.load(weights_only=True)` (`train.checkpoint.read_checkpoint`): nothing in a run folder is executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.train.checkpoint import read_checkpoint
from shardyard.train.loop import CHECKPOINT

__all__ = ["TRAINER_KEY", "draw_clip", "draw_run", "is_foveated_run", "overlay"]

TRAINER_KEY = "mode_weights"   # a field only the foveated trainer's config has


def is_foveated_run(path: str | Path) -> bool:
    """True when `path` is a local run folder whose `latest.pth` was written by `train foveated-caption`.
    Raises ConfigError naming the file when `latest.pth` is not a checkpoint readable without unpickling
    objects (a crafted file is refused, never run)."""
    ckpt = Path(path) / CHECKPOINT
    if not ckpt.is_file():
        return False
    config = read_checkpoint(ckpt)["config"]
    return isinstance(config, dict) and TRAINER_KEY in config and "model_config" in config and "shards" in config


def overlay(frame: np.ndarray, attn: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Frame `(H, W, 3)` uint8, attn `(h, w)` weights -> `(H, W, 3)` uint8 with a jet heat map blended in
    (the map stretched from its min to its max, so near-uniform attention still shows its shape; the
    titles give the max weight; upsampled bilinearly to the frame)."""
    from matplotlib import colormaps

    a = torch.from_numpy(np.asarray(attn, np.float32))[None, None]
    a = torch.nn.functional.interpolate(a, size=frame.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    a = ((a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)).numpy()
    heat = colormaps["jet"](a)[..., :3] * 255.0
    return (frame * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)


def draw_clip(out: Path, name: str, frames: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
              captions: dict[str, str]) -> list[Path]:
    """Write `<name>.png` and `<name>.gif`. frames `(T, H, W, 3)` uint8; fine, coarse `(T, h, w)` weights;
    captions: "truth", "fine", "coarse" strings (shown in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    t = frames.shape[0]
    fig, axes = plt.subplots(t, 3, figsize=(6, 2 * t), squeeze=False)
    rows = []
    for i in range(t):
        f, c = overlay(frames[i], fine[i]), overlay(frames[i], coarse[i])
        rows.append(np.concatenate([frames[i], f, c], axis=1))
        labels = (f"frame t={i}", f"fine, max {fine[i].max():.3f}", f"coarse, max {coarse[i].max():.3f}")
        for ax, img, label in zip(axes[i], (frames[i], f, c), labels):
            ax.imshow(img)
            ax.set_axis_off()
            ax.set_title(label, fontsize=6)
    fig.suptitle("\n".join(f"{k}: {v[:60]}" for k, v in captions.items()), fontsize=6)
    png, gif = out / f"{name}.png", out / f"{name}.gif"
    fig.savefig(png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    Image.fromarray(rows[0]).save(gif, save_all=True, append_images=[Image.fromarray(r) for r in rows[1:]],
                                  duration=250, loop=0)
    return [png, gif]


def draw_run(run: str | Path, out: str | Path, model: Any = None, clips: int = 1) -> list[Path]:
    """Attention overlays of the first `clips` clips of a run's shard store (see the module docstring).

    model: the trained `FoveatedCaptioner` (else rebuilt from `RUN/latest.pth`). Raises ConfigError when RUN
    is not a foveated-caption run or its `latest.pth` holds anything but tensors and plain values.
    """
    from shardyard.loaders.streaming import ClipStream, StreamConfig
    from shardyard.train.foveated_caption import FoveatedTrainConfig, build_model
    from shardyard.train.loop import load_checkpoint

    run, out = Path(run), Path(out)
    if not is_foveated_run(run):
        raise ConfigError(f"{run} is not a `train foveated-caption` run (no latest.pth of that trainer)")
    state = read_checkpoint(run / CHECKPOINT)
    fields = {k: v for k, v in state["config"].items() if k != "model_config"}
    cfg = FoveatedTrainConfig(**fields)
    if model is None:
        model = build_model(cfg, torch.device("cpu"))
        load_checkpoint(run / CHECKPOINT, model=model, restore_rng=False)
    stream = ClipStream(cfg.shards, config=StreamConfig(num_frames=cfg.frames, size=cfg.size, fps=cfg.fps,
                                                        shuffle_buffer=0, shuffle_shards=False,
                                                        clip_start="start", seed=cfg.seed))
    paths: list[Path] = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for n, item in enumerate(stream):
            if n >= clips:
                break
            frames = item["frames"][None]                                   # (1, T, 3, H, W)
            vid = model.encode_video(frames)
            caps = model.generate(frames, max_new_tokens=cfg.sample_tokens)
            h, w = model.backbone.grid
            fine = vid["attn_fine"][0].float().view(-1, h, w).cpu().numpy()
            coarse = vid["attn_coarse"][0].float().view(-1, h, w).cpu().numpy()
            paths += draw_clip(out, f"attention_{item['key']}", item["frames"].permute(0, 2, 3, 1).numpy(),
                               fine, coarse, {"truth": item["caption"], "fine": caps["fine"][0],
                                              "coarse": caps["coarse"][0]})
    model.train(was)
    (out / "attention.json").write_text(json.dumps({"run": str(run), "step": state["step"],
                                                    "files": [str(p) for p in paths]}, indent=1))
    return paths
