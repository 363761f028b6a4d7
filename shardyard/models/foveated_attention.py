"""Foveated query attention over a ViT's patch tokens: one query in, one visual token out (seed 002).

Deep mode (the default, the seed's BUG-004 fix): the query token runs through *every* encoder block. At
block `l` it attends to that block's keys and values of the frame's patches (plus its own key and value) and
then goes through the block's MLP, with the block's own weights, norms and layer scales; the final norm gives
the visual token. The per-layer, per-frame keys and values are the seed's `kv_cache`, held here as one
`FrameCache` whose tensors keep the frame axis, so the caption forward and `encode_video` index frames the same
way (BUG-005/006: both used to rebuild the cache per frame by hand and one of them forgot the deep layout).

Shallow mode: one learned cross-attention on the last block's normalised patch tokens. The seed keeps it to
compare (output correlation 0.98 between two queries in shallow mode, 0.43 in deep mode).

Options the seed ablates: `temperature` (logits divided by it; 0.1 is "10x sharper"), `top_k` (only the k
largest logits per head are kept before the softmax; 0 keeps all).

K/V from cached hidden states: `kv_from_hidden` applies block `l`'s `norm1` and key / value projections to
the input hidden states of block `l`, which is what `ingest dino --layers all` stores (see
`models.backbones`), so a frozen encoder need not run again.

Sources: seed 002 (`src/model/encoder.py`, `deep_query`); transformers `modeling_dinov2.py` (`Dinov2Layer`:
norm1 -> attention -> layer_scale1 -> residual, norm2 -> mlp -> layer_scale2 -> residual); facebookresearch
dinov2 `layers/block.py` (`attn.qkv`, `ls1`, `ls2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from shardyard.errors import ConfigError
from shardyard.models.backbones import Backbone

__all__ = ["FrameCache", "ShallowQueryAttention", "block_inputs", "cache_from_hidden", "deep_query", "encode_frames",
           "encoder_blocks", "final_norm", "kv_from_hidden"]


@dataclass
class FrameCache:
    """What one clip's frames leave for the query passes. Shape notation: F frames (B*T), N patches, D width.

    keys, values: per encoder block, `(F, N, D)` (deep mode; empty in shallow mode). patches: `(F, N, D)`
    last block's normalised patch tokens (shallow mode; also kept in deep mode for diagnostics). grid:
    `(h, w)` patches.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    patches: torch.Tensor
    grid: tuple[int, int]

    def frames(self, index: torch.Tensor | slice) -> "FrameCache":
        """The cache of a subset of frames (rows of F), in both modes."""
        return FrameCache([k[index] for k in self.keys], [v[index] for v in self.values], self.patches[index],
                          self.grid)


class _Parts:
    """Uniform view of one ViT block of transformers' Dinov2 or a torch.hub DINOv2 (fused qkv)."""

    def __init__(self, block: nn.Module, kind: str) -> None:
        self.block, self.kind = block, kind
        if kind == "transformers":
            att = block.attention
            self.heads = att.num_attention_heads
            self.ls1, self.ls2 = block.layer_scale1, block.layer_scale2
        else:
            if getattr(block.attn, "rope", None) is not None or not hasattr(block.attn, "qkv"):
                raise ConfigError("foveated deep mode supports DINOv2-style hub blocks (attn.qkv, no RoPE)")
            self.heads = block.attn.num_heads
            self.ls1, self.ls2 = block.ls1, block.ls2
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(..., D)` normed hidden states -> query, key, value, each `(..., D)`."""
        if self.kind == "transformers":
            att = self.block.attention
            return att.q_proj(h), att.k_proj(h), att.v_proj(h)
        return self.block.attn.qkv(h).chunk(3, dim=-1)

    def out(self, a: torch.Tensor) -> torch.Tensor:
        """Attention output projection `(..., D) -> (..., D)`."""
        if self.kind == "transformers":
            return self.block.attention.o_proj(a)
        return self.block.attn.proj(a)


def encoder_blocks(backbone: Backbone) -> list[nn.Module]:
    """The ViT blocks of a backbone, in order."""
    m = backbone.model
    return list(m.encoder.layer) if backbone.kind == "transformers" else list(m.blocks)


def final_norm(backbone: Backbone) -> nn.Module:
    """The ViT's last LayerNorm (applied to the last block's output)."""
    m = backbone.model
    return m.layernorm if backbone.kind == "transformers" else m.norm


def block_inputs(backbone: Backbone, x: torch.Tensor, checkpointing: bool = False) -> list[torch.Tensor]:
    """Hidden states entering every block, plus the last block's output.

    x `(F, 3, H, W)` preprocessed pixels -> L + 1 tensors `(F, S, D)` (S = 1 + registers + N tokens); entry
    `l < L` is block `l`'s input, entry `L` the last block's output (not normalised).
    """
    m = backbone.model
    h = m.embeddings(x) if backbone.kind == "transformers" else m.prepare_tokens_with_masks(x)
    out = [h]
    for blk in encoder_blocks(backbone):
        h = checkpoint(blk, h, use_reentrant=False) if checkpointing and h.requires_grad else blk(h)
        out.append(h)
    return out


def kv_from_hidden(backbone: Backbone, hidden: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-block patch keys and values from the blocks' input hidden states.

    hidden: L (or L + 1) tensors `(F, N, D)`, entry `l` block `l`'s input (patch rows only). Returns keys and
    values, L tensors `(F, N, D)` each: block `l`'s `norm1`, then its key / value projections.
    """
    keys, values = [], []
    for blk, h in zip(encoder_blocks(backbone), hidden):
        parts = _Parts(blk, backbone.kind)
        _, k, v = parts.qkv(parts.norm1(h))
        keys.append(k)
        values.append(v)
    return keys, values


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, temperature: float,
            top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per frame against its keys. Shape notation: F frames, S keys, D width, H heads, d = D/H.

    q `(F, D)`, k `(F, S, D)`, v `(F, S, D)` -> out `(F, D)`, weights `(F, S)` averaged over heads.
    """
    f, s, d_model = k.shape
    d = d_model // heads
    qh = q.view(f, heads, 1, d)                                          # (F, H, 1, d)
    kh = k.view(f, s, heads, d).transpose(1, 2)                          # (F, H, S, d)
    vh = v.view(f, s, heads, d).transpose(1, 2)                          # (F, H, S, d)
    logits = (qh @ kh.transpose(-1, -2)) / (math.sqrt(d) * temperature)  # (F, H, 1, S)
    if 0 < top_k < s:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    w = logits.softmax(dim=-1)
    out = (w @ vh).reshape(f, d_model)                                   # (F, D)
    return out, w.mean(dim=1).squeeze(1)                                 # (F, S)


def deep_query(backbone: Backbone, cache: FrameCache, query: torch.Tensor, temperature: float = 1.0,
               top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one query token per frame through every block (deep mode).

    Shape notation: F frames, N patches, D encoder width.
    query `(F, D)` (already projected to the encoder width) -> token `(F, D)` after the final norm, and the
    last block's attention over the patches `(F, N)` (renormalised without the query's own key).
    """
    x = query
    attn = None
    for blk, k_p, v_p in zip(encoder_blocks(backbone), cache.keys, cache.values):
        p = _Parts(blk, backbone.kind)
        h = p.norm1(x)
        q, k_self, v_self = p.qkv(h)
        k = torch.cat([k_p.to(q.dtype), k_self[:, None]], dim=1)          # (F, N + 1, D)
        v = torch.cat([v_p.to(q.dtype), v_self[:, None]], dim=1)          # (F, N + 1, D)
        a, w = _attend(q, k, v, p.heads, temperature, top_k)
        x = x + p.ls1(p.out(a))
        x = x + p.ls2(p.mlp(p.norm2(x)))
        attn = w
    patch_w = attn[:, :-1]
    patch_w = patch_w / patch_w.sum(-1, keepdim=True).clamp_min(1e-12)
    return final_norm(backbone)(x), patch_w


class ShallowQueryAttention(nn.Module):
    """One learned cross-attention of the query on the last block's normalised patches (shallow mode).

    Shape notation: F frames, N patches, D width. forward: query `(F, D)`, patches `(F, N, D)` -> token
    `(F, D)`, attention `(F, N)` averaged over heads.
    """

    def __init__(self, dim: int, heads: int, temperature: float = 1.0, top_k: int = 0) -> None:
        super().__init__()
        self.heads, self.temperature, self.top_k = heads, temperature, top_k
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend; see the class docstring for shapes."""
        a, w = _attend(self.q(query), self.k(patches), self.v(patches), self.heads, self.temperature, self.top_k)
        return self.norm(self.o(a)), w  # no residual: the seed's shallow token is the attended features


def encode_frames(backbone: Backbone, pixels: torch.Tensor, deep: bool, checkpointing: bool = False) -> FrameCache:
    """Frames -> `FrameCache`. pixels `(F, 3, H, W)` float in [0, 1] (resized and normalised here, once)."""
    x = backbone.preprocess(pixels)
    hidden = block_inputs(backbone, x, checkpointing)
    n = backbone.grid[0] * backbone.grid[1]
    patches = final_norm(backbone)(hidden[-1][:, -n:])                  # (F, N, D)
    keys, values = kv_from_hidden(backbone, [h[:, -n:] for h in hidden[:-1]]) if deep else ([], [])
    return FrameCache(keys, values, patches, backbone.grid)


def cache_from_hidden(backbone: Backbone, hidden: torch.Tensor, deep: bool) -> FrameCache:
    """`FrameCache` from stored hidden states (`ingest dino --layers all`).

    hidden `(F, N, (L + 1) * D)`: per-layer block inputs and the last block's output, concatenated on the
    channel axis (as `Backbone` with `all_layers` writes them). Raises ConfigError for another width.
    """
    d, blocks = backbone.hidden, len(encoder_blocks(backbone))
    if hidden.shape[-1] != (blocks + 1) * d:
        raise ConfigError(f"cached hidden states have width {hidden.shape[-1]}, expected (L + 1) * D = "
                          f"{(blocks + 1) * d}: ingest them with `ingest dino --layers all` and the same model")
    per_layer = list(hidden.float().split(d, dim=-1))                   # L + 1 x (F, N, D)
    patches = final_norm(backbone)(per_layer[-1])
    keys, values = kv_from_hidden(backbone, per_layer[:-1]) if deep else ([], [])
    return FrameCache(keys, values, patches, backbone.grid)
