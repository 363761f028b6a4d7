"""Attention overlays of a foveated-caption run (seed 002's hand-made pictures, drawn from `RUN/latest.pth`).

`draw_run(RUN, OUT)` rebuilds the captioner from the checkpoint's config, streams the first clip(s) of the
run's shard store from their start, runs both passes and writes, per clip, `attention_<key>.png` (columns: at
most 8 frames, evenly spaced; rows: the frame, the fine and the coarse attention of the last block over the
patch grid, upsampled onto it; the greedy captions in the title; about 1.4k x 0.6k px, drawn in a second
whatever the clip's length) and `attention_<key>.gif` (every frame: frame | fine | coarse).
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
MAX_FRAMES = 8                  # frames of a clip in its PNG (all of them in the GIF)
TILE = 160                      # px, width of one tile of the PNG


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


def _mosaic(rows: list[np.ndarray], pick: np.ndarray) -> np.ndarray:
    """`(3 * th, len(pick) * TILE, 3)` uint8 of `rows` (per frame `(H, 3 * W, 3)`: frame | fine | coarse):
    rows frame / fine / coarse, one column per picked frame, each tile `TILE` px wide (aspect kept)."""
    from PIL import Image

    h, w = rows[0].shape[0], rows[0].shape[1] // 3
    th = max(1, round(TILE * h / w))
    size = lambda img: np.asarray(Image.fromarray(img).resize((TILE, th), Image.Resampling.BILINEAR))  # noqa: E731
    return np.concatenate([np.concatenate([size(rows[i][:, k * w:(k + 1) * w]) for i in pick], axis=1)
                           for k in range(3)], axis=0)


def draw_clip(out: Path, name: str, frames: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
              captions: dict[str, str]) -> list[Path]:
    """Write `<name>.png` and `<name>.gif`. frames `(T, H, W, 3)` uint8; fine, coarse `(T, h, w)` weights;
    captions: "truth", "fine", "coarse" strings (shown in the title).

    The PNG is bounded whatever T: at most `MAX_FRAMES` frames, evenly spaced, as columns of `TILE` px (rows:
    the frame, its fine and its coarse attention, each tile labelled with its max weight), one image drawn
    once (about 1.4k x 0.6k px); the GIF has every frame (frame | fine | coarse at the clip's size)."""
    from PIL import Image

    from shardyard.tools.inspect.plotting import figure

    out.mkdir(parents=True, exist_ok=True)
    t = frames.shape[0]
    pick = np.unique(np.linspace(0, t - 1, min(t, MAX_FRAMES)).round().astype(int))
    rows = [np.concatenate([frames[i], overlay(frames[i], fine[i]), overlay(frames[i], coarse[i])], axis=1)
            for i in range(t)]
    mosaic = _mosaic(rows, pick)
    th = mosaic.shape[0] // 3
    head = 0.14 * max(len(captions), 1) + 0.3  # inches above the tiles: the caption lines, then t=
    w_in, h_in = mosaic.shape[1] / 100, mosaic.shape[0] / 100
    fw, fh = w_in + 0.6, h_in + head + 0.05
    fig = figure(figsize=(fw, fh), dpi=100)
    ax = fig.add_axes((0.5 / fw, 0.05 / fh, w_in / fw, h_in / fh))
    ax.imshow(mosaic)
    ax.set_axis_off()
    for c, i in enumerate(pick):
        ax.text(c * TILE + TILE / 2, -3, f"t={i}", ha="center", va="bottom", fontsize=7)
        for r, attn in ((1, fine[i]), (2, coarse[i])):
            ax.text(c * TILE + 3, r * th + 3, f"max {float(attn.max()):.3f}", ha="left", va="top", fontsize=6,
                    color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    for r, label in enumerate(("frame", "fine", "coarse")):
        ax.text(-4, r * th + th / 2, label, ha="right", va="center", rotation=90, fontsize=7)
    shown = "" if len(pick) == t else f" ({len(pick)} of {t} frames)"
    fig.suptitle("\n".join(f"{k}: {v[:90]}" for k, v in captions.items()) + shown, fontsize=7,
                 y=1 - 0.05 / fig.get_figheight(), va="top")
    png, gif = out / f"{name}.png", out / f"{name}.gif"
    fig.savefig(png, dpi=100)
    # fast octree palettes: PIL's default (median cut) spends seconds per frame on a noisy overlay
    pal = [Image.fromarray(r).quantize(256, method=Image.Quantize.FASTOCTREE) for r in rows]
    pal[0].save(gif, save_all=True, append_images=pal[1:], duration=250, loop=0)
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
    if cfg.urls is not None:  # a run of `--urls`: the first clips of the URL list, downloaded again
        from shardyard.train.foveated_caption import open_stream

        stream = open_stream(cfg, ordered=True)
    else:
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
