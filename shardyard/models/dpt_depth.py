"""Seed 003's v15 depth decoder: DPT reassemble + fusion refinenets (D=64) on multi-layer DINO tokens.

Sources: Ranftl et al., "Vision Transformers for Dense Prediction" (DPT, ICCV 2021): reassemble (read out,
project, resample to strides 4/8/16/32) and RefineNet-style fusion blocks; Depth Anything V2's `DPTHead` for
ViT-S (features 64); seed 003 (`../shared/seeds/003_*.txt`, v15): "Conv1x1+LN per level -> D=64", refinenet4..1
and the head `output_conv1 (64 -> 32)`, upsample, `output_conv2 = Conv3x3(32 -> 32) + ReLU + Conv1x1(32 -> 1)`,
then **softplus** (the seed's Exp 12 found `relu(out) + 1e-6` dies with a randomly initialised decoder).
The last bias starts at `softplus^-1(init_depth_m)` so predictions start near the median NYU depth (the
seed's Issue 3: a head centred at 1 m makes far depths 6x harder to reach).

Input: patch tokens `(B, h*w, L*C)` as `ingest dino --layers a,b,c,d` stores them (the L kept block outputs
concatenated along channels, each after the final norm). DPT uses four levels; with fewer layers (the tiny
test ViT has 2 blocks) level i takes layer `round(i * (L - 1) / 3)`. The CLS token is not used (DAv2's default).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shardyard.errors import ConfigError

__all__ = ["DPTConfig", "DPTDepth", "FusionBlock", "ResidualConvUnit", "silog_loss"]

log = logging.getLogger(__name__)


@dataclass
class DPTConfig:
    """hidden C: channels of one ViT layer (384 for ViT-S). num_layers L: layers concatenated in the tokens.
    features D: fusion width (64, as DAv2-S and the seed). out_channels: reassemble widths per level
    (DAv2-S: 48, 96, 192, 384). patch_size: pixels per token (14 for DINOv2). init_depth_m: initial prediction."""

    hidden: int = 384
    num_layers: int = 4
    features: int = 64
    out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    patch_size: int = 14
    init_depth_m: float = 2.5

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden < 1:
            raise ConfigError(f"DPT needs hidden >= 1 and num_layers >= 1, got {self.hidden}, {self.num_layers}")


class ResidualConvUnit(nn.Module):
    """`x + conv(relu(conv(relu(x))))`, 3x3 convs at D channels (DPT)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(d, d, 3, padding=1)
        self.conv2 = nn.Conv2d(d, d, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, D, h, w)` -> `(B, D, h, w)`."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """refinenet: `out = conv1x1(up2(rcu2(x + rcu1(skip))))` (DPT's FeatureFusionBlock)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.rcu1, self.rcu2 = ResidualConvUnit(d), ResidualConvUnit(d)
        self.out_conv = nn.Conv2d(d, d, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        """`x (B, D, h, w)` (+ `skip` from the next-finer level) -> `(B, D, 2h, 2w)` or `size`."""
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True) if size is None else \
            F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTDepth(nn.Module):
    """DPT decoder: tokens `(B, h*w, L*C)` -> depth `(B, 1, H, W)` metres (> 0, softplus)."""

    def __init__(self, config: DPTConfig) -> None:
        super().__init__()
        self.cfg = c = config
        L = c.num_layers
        self.level_layer = [round(i * (L - 1) / 3) for i in range(4)]
        self.norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(4))
        self.projects = nn.ModuleList(nn.Conv2d(c.hidden, oc, 1) for oc in c.out_channels)
        oc = c.out_channels
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),     # stride 14 -> ~3.5 (x4)
            nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),     # x2
            nn.Identity(),                                     # x1
            nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),   # x0.5
        ])
        d = c.features
        self.layer_rn = nn.ModuleList(nn.Conv2d(o, d, 3, padding=1, bias=False) for o in oc)
        self.refine = nn.ModuleList(FusionBlock(d) for _ in range(4))  # refinenet1..4
        self.output_conv1 = nn.Conv2d(d, d // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(nn.Conv2d(d // 2, 32, 3, padding=1), nn.ReLU(True), nn.Conv2d(32, 1, 1))
        with torch.no_grad():
            self.output_conv2[-1].bias.fill_(math.log(math.expm1(c.init_depth_m)))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], out_hw: tuple[int, int] | None = None
                ) -> torch.Tensor:
        """Shape notation: B batch, h*w tokens on the `grid (h, w)`, L layers of C channels, D features.

        tokens `(B, h*w, L*C)` -> depth `(B, 1, H, W)` metres, `(H, W)` = `out_hw` (default the ViT input,
        `(h * patch, w * patch)`). Raises ValueError on a token shape that does not match the config.
        """
        c = self.cfg
        h, w = grid
        B, N, LC = tokens.shape
        if N != h * w or LC != c.num_layers * c.hidden:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match grid {grid} x {c.num_layers} layers of "
                             f"{c.hidden} channels")
        out_hw = out_hw or (h * c.patch_size, w * c.patch_size)
        layers = tokens.view(B, N, c.num_layers, c.hidden)                    # (B, h*w, L, C)
        feats = []
        for i in range(4):
            x = self.norms[i](layers[:, :, self.level_layer[i]])              # (B, h*w, C)
            x = x.transpose(1, 2).reshape(B, c.hidden, h, w)                 # (B, C, h, w)
            x = self.resize[i](self.projects[i](x))                          # (B, oc_i, h*s_i, w*s_i)
            feats.append(self.layer_rn[i](x))                                # (B, D, ., .)
        f1, f2, f3, f4 = feats
        p = self.refine[3](f4, size=f3.shape[-2:])                           # (B, D, h, w)  refinenet4
        p = self.refine[2](p, f3, size=f2.shape[-2:])                        # (B, D, 2h, 2w) refinenet3
        p = self.refine[1](p, f2, size=f1.shape[-2:])                        # (B, D, 4h, 4w) refinenet2
        p = self.refine[0](p, f1)                                            # (B, D, 8h, 8w) refinenet1
        p = self.output_conv1(p)                                             # (B, D/2, 8h, 8w)
        p = F.interpolate(p, size=out_hw, mode="bilinear", align_corners=True)  # (B, D/2, H, W)
        return F.softplus(self.output_conv2(p))                              # (B, 1, H, W) metres


def silog_loss(pred: torch.Tensor, target: torch.Tensor, *, lam: float = 0.85, per_image: bool = True,
               eps: float = 1e-6) -> torch.Tensor:
    """Dense scale-invariant log loss (Eigen et al. 2014; BTS's `silog_loss` without its x10 factor, as the
    seed): `sqrt(mean(g^2) - lam * mean(g)^2)`, `g = log(pred) - log(target)` over valid pixels (target > 0).

    pred, target `(B, 1, H, W)` or `(B, H, W)` metres. per_image: the loss of each image, averaged over the
    batch (seed 003 Exp 6+); else pooled over the batch's pixels. Images without valid pixels are ignored.
    """
    pred, target = pred.reshape(pred.shape[0], -1).float(), target.reshape(target.shape[0], -1).float()
    valid = target > 0
    g = torch.where(valid, torch.log(pred.clamp_min(eps)) - torch.log(target.clamp_min(eps)), 0.0)
    if per_image:
        n = valid.sum(1)
        keep = n > 0
        n = n.clamp_min(1)
        m1, m2 = g.sum(1) / n, (g * g).sum(1) / n
        loss = torch.sqrt((m2 - lam * m1 * m1).clamp_min(0) + eps)
        return loss[keep].mean() if keep.any() else pred.sum() * 0.0
    n = valid.sum().clamp_min(1)
    m1, m2 = g.sum() / n, (g * g).sum() / n
    return torch.sqrt((m2 - lam * m1 * m1).clamp_min(0) + eps)
