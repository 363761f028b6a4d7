"""Future DINO patch prediction (issue 6; seed 004, "DINO Patch Prediction Research").

Given the patch tokens of frame `t`, predict those of frame `t + gap`. Seed 004 measured, on DINOv2-small
tokens of 100 WebVid videos, the cosine similarity and MSE between frame t and frame t+gap (the *copy
baseline*: 0.933 / 0.81 at 1 frame, 0.804 / 2.38 at 12 frames), found that a linear map or an MLP trained to
output the future tokens directly did *worse* than copying (-64 % and -86 % at gap 8), and that predicting
the change did better as the gap grew (+5.9 % at 0.5 s, +11.8 % at 1.5 s).

So the learnt predictors here are residual: `pred = x + f(x)`, with the last layer of `f` zero-initialised,
so that at step 0 each model *is* the copy baseline and training can only move it away where that lowers
the loss. All predictors act on each patch token independently (shared weights across the `h*w` grid).

Shape notation: B batch, P = h*w patches, D channels.
    x      (B, P, D)  patch tokens of frame t (float32)
    pred   (B, P, D)  predicted patch tokens of frame t + gap
    target (B, P, D)  patch tokens of frame t + gap
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shardyard.errors import ConfigError

__all__ = ["CopyPredictor", "LinearPredictor", "MLPPredictor", "PREDICTORS", "PatchPredictorConfig",
           "build_predictor", "improvement", "patch_cosine", "patch_mse"]

log = logging.getLogger(__name__)


@dataclass
class PatchPredictorConfig:
    """kind: "copy", "linear" or "mlp". embed_dim: D of the tokens. hidden: MLP width (default 4 D)."""

    kind: str = "mlp"
    embed_dim: int = 384
    hidden: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PREDICTORS:
            raise ConfigError(f"--model must be one of {sorted(PREDICTORS)}, got {self.kind!r}")
        if self.embed_dim < 1:
            raise ConfigError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.hidden <= 0:
            self.hidden = 4 * self.embed_dim


def _check(x: torch.Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected patch tokens (B, P, D), got {tuple(x.shape)}")


class CopyPredictor(nn.Module):
    """The copy baseline: the future patches are the present ones. `(B, P, D) -> (B, P, D)`; no parameters."""

    def __init__(self, cfg: PatchPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, N, D)` -> the same tokens (the copy baseline)."""
        _check(x)
        return x


class LinearPredictor(nn.Module):
    """`pred = x + W x + b` per patch token (W `(D, D)`, b `(D,)`, both zero at init: the copy baseline)."""

    def __init__(self, cfg: PatchPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, N, D)` tokens at t -> `(B, N, D)` predicted tokens at t + gap."""
        _check(x)
        return x + self.proj(x)                                      # (B, P, D)


class MLPPredictor(nn.Module):
    """`pred = x + W2 gelu(W1 LN(x))` per patch token (hidden H; W2 zero at init: the copy baseline)."""

    def __init__(self, cfg: PatchPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.embed_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, N, D)` tokens at t -> `(B, N, D)` predicted tokens at t + gap."""
        _check(x)
        h = F.gelu(self.fc1(self.norm(x)))                           # (B, P, H)
        return x + self.fc2(h)                                       # (B, P, D)


PREDICTORS = {"copy": CopyPredictor, "linear": LinearPredictor, "mlp": MLPPredictor}


def build_predictor(cfg: PatchPredictorConfig) -> nn.Module:
    """The predictor named by `cfg.kind`. Raises `ConfigError` for an unknown kind (in the config)."""
    return PREDICTORS[cfg.kind](cfg)


def patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of `(B, P, D)` (seed 004's "MSE"); a scalar tensor."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.mse_loss(pred.float(), target.float())


def patch_cosine(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of each predicted patch token to its target along D, averaged over B and P
    (seed 004's "Cosine Similarity"); a scalar tensor."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=eps).mean()


def improvement(copy_mse: float, model_mse: float) -> float:
    """Seed 004's "Improvement": relative MSE reduction over the copy baseline, in percent
    (`100 * (copy - model) / copy`; positive = the model beats copying)."""
    return 100.0 * (copy_mse - model_mse) / copy_mse if copy_mse > 0 else 0.0
