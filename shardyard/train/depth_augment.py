"""BTS augmentation for NYU (Lee et al., "From Big to Small", `bts_dataloader.py`; seed 003 Exp 9):

- random rotation in +-2.5 degrees (image bilinear, depth nearest, outside = 0 / invalid);
- random crop 416x544 of 480x640 (scaled by the same fractions for other frame sizes);
- horizontal flip with p = 0.5;
- with p = 0.5, colour: gamma in [0.9, 1.1], brightness in [0.75, 1.25] (NYU), per-channel colour in [0.9, 1.1],
  clipped to [0, 1].

Every random draw comes from a `torch.Generator` the caller seeds (the trainer seeds it from (seed, step)),
so a resumed run draws exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shardyard.train.configs import BTSAugmentConfig

__all__ = ["bts_augment", "crop_size"]


def crop_size(h: int, w: int, cfg: BTSAugmentConfig) -> tuple[int, int]:
    """Crop `(h_c, w_c)` for an `h x w` frame: `crop_hw` scaled by `(h / 480, w / 640)`."""
    return max(1, round(cfg.crop_hw[0] * h / 480)), max(1, round(cfg.crop_hw[1] * w / 640))


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def bts_augment(images: torch.Tensor, depth: torch.Tensor, g: torch.Generator,
                cfg: BTSAugmentConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `(B, 3, H, W)` float [0, 1], depth `(B, 1, H, W)` metres (0 invalid) ->
    `(B, 3, h_c, w_c)`, `(B, 1, h_c, w_c)` with `crop_size(H, W)`."""
    cfg = cfg or BTSAugmentConfig()
    B, _, H, W = images.shape
    # rotation about the centre: one affine grid per sample
    ang = _uniform(g, B, -cfg.max_rotation_deg, cfg.max_rotation_deg) * math.pi / 180
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * H / W, sin * W / H, cos
    grid = F.affine_grid(theta.to(images), (B, 1, H, W), align_corners=False)       # (B, H, W, 2)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    depth = F.grid_sample(depth, grid.to(depth), mode="nearest", padding_mode="zeros", align_corners=False)
    # random crop (one offset per sample)
    hc, wc = crop_size(H, W, cfg)
    tops = torch.randint(0, H - hc + 1, (B,), generator=g)
    lefts = torch.randint(0, W - wc + 1, (B,), generator=g)
    images = torch.stack([images[i, :, t:t + hc, x:x + wc] for i, (t, x) in enumerate(zip(tops, lefts))])
    depth = torch.stack([depth[i, :, t:t + hc, x:x + wc] for i, (t, x) in enumerate(zip(tops, lefts))])
    # flip
    flip = torch.rand(B, generator=g) < cfg.flip_p
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    depth = torch.where(flip[:, None, None, None], depth.flip(-1), depth)
    # colour (BTS augment_image, applied with p = colour_p)
    do = (torch.rand(B, generator=g) < cfg.colour_p)[:, None, None, None].to(images)
    gamma = _uniform(g, B, *cfg.gamma)[:, None, None, None].to(images)
    bright = _uniform(g, B, *cfg.brightness)[:, None, None, None].to(images)
    colour = _uniform(g, B * 3, *cfg.colour).view(B, 3, 1, 1).to(images)
    aug = (images.clamp_min(0) ** gamma * bright * colour).clamp(0, 1)
    return do * aug + (1 - do) * images, depth
