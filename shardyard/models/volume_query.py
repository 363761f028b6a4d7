"""`DinoVolumeQuery`: seed 001's production single-view trajectory model (`model_dino_volume_query.py`).

DINO patch tokens `(B, h*w, D)` are refined to a feature map `F (B, d_feat, P, P)` (1x1 conv to `d_feat`,
bilinear upsampling to `P = pred_size`, three 3x3 convs). A query `concat(F[start_pix], CLS)` is projected to
`d_model = d_feat + d_sin_z + d_sin_t`, replicated over the `T` future steps and refined by `n_blocks`
AdaLN-Zero residual MLP blocks conditioned on `sin(t)`. Three heads read the per-step representation: the
spatial query `q = (q_F, q_z, q_t)` of dims `(d_feat, d_sin_z, d_sin_t)`, gripper bins and rotation bins.

The volume logits factor as `logit(b, t, z, y, x) = q_F . F[y, x] + q_z . sin(z) + q_t . sin(t)`; the model
returns the two factors (pixel logits `(B, T, P*P)`, height logits `(B, T, Z)`) and the constant, and the
joint cross-entropy over the flattened `(Z, H, W)` volume is computed as
`CE = logsumexp(pix) + logsumexp(z) - pix[gt] - z[gt]` (the constant cancels), never materialising
`(B, T, Z, P, P)`. Loss (seed 001): `volume + 0.5 * gripper + 0.5 * rotation`, per-step CEs averaged over the
valid steps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["AdaLNZeroBlock", "DinoVolumeQuery", "VolumeQueryConfig", "decode", "sinusoidal_features", "volume_ce",
           "volume_query_loss"]

log = logging.getLogger(__name__)


@dataclass
class VolumeQueryConfig:
    """Seed 001's defaults. embed_dim: D of the DINO tokens (384 for ViT-S). grid: `(h, w)` token grid.
    window: T future steps. pred_size: P. mlp_ratio: hidden width of the block MLPs over d_model.
    grip_weight, rot_weight: loss weights (0.5 each)."""

    embed_dim: int = 384
    grid: tuple[int, int] = (28, 28)
    d_feat: int = 48
    d_sin_z: int = 24
    d_sin_t: int = 24
    d_cond: int = 96
    n_blocks: int = 5
    pred_size: int = 56
    window: int = 8
    n_height_bins: int = 32
    n_gripper_bins: int = 32
    n_rot_bins: int = 32
    mlp_ratio: int = 4
    grip_weight: float = 0.5
    rot_weight: float = 0.5

    @property
    def d_model(self) -> int:
        """Width of the query MLP: `d_feat + d_sin_z + d_sin_t`."""
        return self.d_feat + self.d_sin_z + self.d_sin_t


def sinusoidal_features(n: int, d: int) -> torch.Tensor:
    """Transformer positional features `(n, d)` of positions 0..n-1 (sin on even, cos on odd channels)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / max(d, 1)))
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out


class AdaLNZeroBlock(nn.Module):
    """Residual MLP block with adaptive LayerNorm (shift, scale) and a gate, all regressed from the
    conditioning and zero-initialised, so each block starts as the identity (DiT's AdaLN-Zero)."""

    def __init__(self, d_model: int, d_cond: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d_cond, 3 * d_model))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """X `(B, T, d_model)`, cond `(T, d_cond)` or `(B, T, d_cond)` -> `(B, T, d_model)`."""
        shift, scale, gate = self.ada(cond).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DinoVolumeQuery(nn.Module):
    """Seed 001's model (see the module docstring). `backbone`: optional frozen `models.backbones.Backbone`
    used when `forward` is given images instead of cached tokens."""

    def __init__(self, config: VolumeQueryConfig | None = None, backbone: Any = None) -> None:
        super().__init__()
        c = self.cfg = config or VolumeQueryConfig()
        self.backbone = backbone     # not an nn.Module attribute: frozen, never saved with the model
        self.proj = nn.Conv2d(c.embed_dim, c.d_feat, 1)
        self.refine = nn.Sequential(nn.Conv2d(c.d_feat, c.d_feat, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(c.d_feat, c.d_feat, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(c.d_feat, c.d_feat, 3, padding=1))
        self.query_in = nn.Linear(c.d_feat + c.embed_dim, c.d_model)
        self.cond = nn.Sequential(nn.Linear(c.d_sin_t, c.d_cond), nn.SiLU(), nn.Linear(c.d_cond, c.d_cond))
        self.blocks = nn.ModuleList(AdaLNZeroBlock(c.d_model, c.d_cond, c.mlp_ratio) for _ in range(c.n_blocks))
        self.norm_out = nn.LayerNorm(c.d_model)
        self.spatial_head = nn.Linear(c.d_model, c.d_model)
        self.grip_head = nn.Linear(c.d_model, c.n_gripper_bins)
        self.rot_head = nn.Linear(c.d_model, c.n_rot_bins)
        self.register_buffer("sin_t", sinusoidal_features(c.window, c.d_sin_t), persistent=False)
        self.register_buffer("sin_z", sinusoidal_features(c.n_height_bins, c.d_sin_z), persistent=False)

    def tokens_from_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen backbone: images `(B, 3, H, W)` float [0, 1] -> `(patch (B, h*w, D), cls (B, D))`.
        Raises ValueError without a backbone."""
        if self.backbone is None:
            raise ValueError("DinoVolumeQuery got images but has no backbone; pass backbone= or tokens")
        out = self.backbone(images)
        if tuple(out.grid) != tuple(self.cfg.grid):
            raise ValueError(f"backbone grid {out.grid} != model grid {self.cfg.grid}")
        return out.patch_tokens.to(images.device), out.cls_token.to(images.device)

    def feature_map(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """patch_tokens `(B, h*w, D)` -> F `(B, d_feat, P, P)`."""
        b, n, d = patch_tokens.shape
        h, w = self.cfg.grid
        if n != h * w or d != self.cfg.embed_dim:
            raise ValueError(f"expected patch tokens (B, {h * w}, {self.cfg.embed_dim}), "
                             f"got {tuple(patch_tokens.shape)}")
        x = patch_tokens.transpose(1, 2).reshape(b, d, h, w)                      # (B, D, h, w)
        x = self.proj(x)                                                           # (B, d_feat, h, w)
        x = F.interpolate(x, size=(self.cfg.pred_size,) * 2, mode="bilinear", align_corners=False)
        return self.refine(x)                                                      # (B, d_feat, P, P)

    def forward(self, start_pix: torch.Tensor, patch_tokens: torch.Tensor | None = None,
                cls_token: torch.Tensor | None = None, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Predict the volume factors and the gripper/rotation logits of T future steps.

        Shape notation:
            B: batch, T: window (future steps), D: token channels, h*w: token grid,
            P: pred_size, C = d_feat, Z: height bins, G: gripper bins, R: rotation bins.

        Args:
            start_pix: `(B, 2) int64 (x, y)` cell of the current EEF on the P x P grid.
            patch_tokens `(B, h*w, D)` and cls_token `(B, D)`, or images `(B, 3, H, W)` float [0, 1].

        Returns: `pix_logits (B, T, P*P)` (index `y * P + x`), `z_logits (B, T, Z)`, `t_logit (B, T)` (the
        constant q_t . sin(t)), `grip_logits (B, T, G)`, `rot_logits (B, T, R)`, `feat (B, C, P, P)`.
        """
        if patch_tokens is None:
            if images is None:
                raise ValueError("forward needs patch_tokens and cls_token, or images")
            patch_tokens, cls_token = self.tokens_from_images(images)
        if patch_tokens.is_inference():      # e.g. straight from a Backbone: autograd cannot save those
            patch_tokens, cls_token = patch_tokens.clone(), cls_token.clone()
        c = self.cfg
        feat = self.feature_map(patch_tokens)                                      # (B, C, P, P)
        b = feat.shape[0]
        x, y = start_pix[:, 0].long(), start_pix[:, 1].long()
        f_start = feat[torch.arange(b, device=feat.device), :, y, x]               # (B, C)
        q = self.query_in(torch.cat([f_start, cls_token.to(feat.dtype)], dim=-1))  # (B, d_model)
        h = q[:, None, :].expand(b, c.window, c.d_model)                           # (B, T, d_model)
        cond = self.cond(self.sin_t.to(h.dtype))                                   # (T, d_cond)
        for blk in self.blocks:
            h = blk(h, cond)                                                       # (B, T, d_model)
        h = self.norm_out(h)
        qs = self.spatial_head(h)                                                  # (B, T, d_model)
        q_f, q_z, q_t = qs.split([c.d_feat, c.d_sin_z, c.d_sin_t], dim=-1)        # (B, T, C|dz|dt)
        pix_logits = torch.einsum("btc,bcn->btn", q_f, feat.flatten(2))           # (B, T, P*P)
        z_logits = q_z @ self.sin_z.to(q_z.dtype).T                                # (B, T, Z)
        t_logit = (q_t * self.sin_t.to(q_t.dtype)).sum(-1)                         # (B, T)
        return {"pix_logits": pix_logits, "z_logits": z_logits, "t_logit": t_logit,
                "grip_logits": self.grip_head(h), "rot_logits": self.rot_head(h), "feat": feat}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def volume_ce(pix_logits: torch.Tensor, z_logits: torch.Tensor, pix_index: torch.Tensor,
              z_index: torch.Tensor) -> torch.Tensor:
    """Per-step joint CE over the flattened `(Z, P, P)` volume in factorised form.

    pix_logits `(..., P*P)`, z_logits `(..., Z)`, pix_index, z_index `(...)` int64 -> `(...)` float32:
    `logsumexp(pix) + logsumexp(z) - pix[gt] - z[gt]`.
    """
    pl, zl = pix_logits.float(), z_logits.float()
    gt = pl.gather(-1, pix_index[..., None]).squeeze(-1) + zl.gather(-1, z_index[..., None]).squeeze(-1)
    return torch.logsumexp(pl, -1) + torch.logsumexp(zl, -1) - gt


def volume_query_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                      config: VolumeQueryConfig) -> dict[str, torch.Tensor]:
    """Seed 001's loss. batch: `pix (B, T, 2) (x, y)`, `height_bin`, `gripper_bin`, `rot_bin (B, T)`,
    `mask (B, T) bool`. Returns scalars `loss`, `volume`, `gripper`, `rotation` (means over masked steps)."""
    p = config.pred_size
    pix_index = batch["pix"][..., 1] * p + batch["pix"][..., 0]                   # (B, T)
    mask = batch["mask"]
    vol = _masked_mean(volume_ce(out["pix_logits"], out["z_logits"], pix_index, batch["height_bin"]), mask)
    grip = _masked_mean(F.cross_entropy(out["grip_logits"].float().flatten(0, 1), batch["gripper_bin"].flatten(),
                                        reduction="none").view_as(mask.float()), mask)
    rot = _masked_mean(F.cross_entropy(out["rot_logits"].float().flatten(0, 1), batch["rot_bin"].flatten(),
                                       reduction="none").view_as(mask.float()), mask)
    total = vol + config.grip_weight * grip + config.rot_weight * rot
    return {"loss": total, "volume": vol, "gripper": grip, "rotation": rot}


@torch.no_grad()
def decode(out: dict[str, torch.Tensor], config: VolumeQueryConfig) -> dict[str, torch.Tensor]:
    """Argmax decoding (the joint argmax of the factorised volume is the pair of argmaxes):
    `pix (B, T, 2) int64 (x, y)`, `height_bin`, `gripper_bin`, `rot_bin (B, T) int64`."""
    flat = out["pix_logits"].argmax(-1)                                            # (B, T)
    pix = torch.stack([flat % config.pred_size, flat // config.pred_size], dim=-1)
    return {"pix": pix, "height_bin": out["z_logits"].argmax(-1), "gripper_bin": out["grip_logits"].argmax(-1),
            "rot_bin": out["rot_logits"].argmax(-1)}
