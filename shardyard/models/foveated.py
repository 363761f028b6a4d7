"""Seed 002's foveated one-token-per-frame video captioner (`FoveatedCaptioner`).

A DINO encoder turns each frame into per-layer patch keys and values (`models.foveated_attention`); one query
per frame is run through the encoder (deep mode) and gives **one visual token per frame**. Two passes per clip:

1. coarse: the learned `q_static` for every frame -> coarse tokens; a causal LM reads them and predicts one
   query per frame from its last hidden state (`query_head`);
2. fine: the shifted queries `[q_init, q_1, ..., q_{T-1}]`, so frame t's query comes only from frames < t.

Caption head: the visual tokens (projected to the LM width) prefix `[bos, caption..., eos]`; the loss is the
caption cross-entropy, for the fine and for the coarse sequence in the same step. `ratio = loss_coarse /
loss_fine` is the seed's success metric (> 1: foveation helps).

The seed's fixed bugs are the defaults: `q_static` and `q_init` drawn with std 1.0 (BUG-001; std 0.02 let the
projection's bias dominate), `query_input_proj` without bias (BUG-002), one `mode` per batch, never per sample
(BUG-003), deep mode (BUG-004), one `FrameCache` layout for the caption forward and `encode_video`
(BUG-005/006). Modes: "caption" (both passes, both losses) and "coarse" (the coarse pass only: a cheaper
warm-up of the static query path; `loss_fine` is then not computed).

Encoders: any `models.backbones` spec (`tiny-random-dinov2`, a local `facebook/dinov2-small` folder, a
torch.hub DINOv2 repo + weights) or `random-dinov2-small` (dinov2-small's shape, seeded random weights).
LMs: a local folder for `AutoModelForCausalLM` (SmolLM2-135M), `tiny-random-llama` (hidden 64, 2 layers: tests)
or `random-smollm-135m` (SmolLM-135M's shape, random weights: the GPU benchmark).

Source: seed 002 (`src/model/foveated_vlm.py`, `forward_captioning`, `encode_video`, knowledge base BUG-001..006).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shardyard.errors import ConfigError
from shardyard.models.backbones import Backbone, BackboneConfig, best_device, load_backbone
from shardyard.models.caption_tokenizer import BYTES, CaptionTokenizer, load_tokenizer
from shardyard.models.foveated_attention import (
    FrameCache,
    ShallowQueryAttention,
    cache_from_hidden,
    deep_query,
    encode_frames,
)

__all__ = ["DINOV2_SMALL_SIZED", "FoveatedCaptioner", "FoveatedConfig", "BATCH_MODES", "SMOLLM_SIZED", "TINY_LM",
           "attention_stats", "check_mode", "load_encoder", "load_lm"]

BATCH_MODES = ("caption", "coarse")
TINY_LM = "tiny-random-llama"
SMOLLM_SIZED = "random-smollm-135m"
DINOV2_SMALL_SIZED = "random-dinov2-small"
_LM_SHAPES = {
    TINY_LM: dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=512),
    SMOLLM_SIZED: dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, max_position_embeddings=2048, vocab_size=49152),
}


@dataclass
class FoveatedConfig:
    """Model options (defaults: seed 002's fixed configuration, tiny models).

    encoder / hub_repo / weights: the DINO encoder (see module docstring). image_size: encoder input side in
    pixels (rounded down to the patch size). lm: the causal LM. tokenizer: "bytes", a folder, or None (the LM's
    folder when `lm` is one, else bytes). query_dim: query width (seed: 128). deep: deep query mode (BUG-004).
    temperature: attention logit divisor. top_k: keep the k largest logits (0: all). freeze_dino: no encoder
    gradients (seed's ablation winner; needed for cached K/V). coarse_weight: weight of `loss_coarse` in the
    total. max_caption_tokens: caption tokens kept, bos/eos included. checkpointing: gradient checkpointing of
    the LM (and of a trained encoder). device: "auto", "cpu", "cuda"... seed: init seed of random weights.
    """

    encoder: str = "tiny-random-dinov2"
    hub_repo: str | None = None
    weights: str | None = None
    image_size: int = 224
    lm: str = TINY_LM
    tokenizer: str | None = None
    query_dim: int = 128
    deep: bool = True
    temperature: float = 1.0
    top_k: int = 0
    freeze_dino: bool = True
    coarse_weight: float = 1.0
    max_caption_tokens: int = 48
    checkpointing: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.top_k < 0 or self.query_dim < 1 or self.max_caption_tokens < 3:
            raise ConfigError("temperature > 0, top_k >= 0, query_dim >= 1 and max_caption_tokens >= 3 required")


def load_encoder(cfg: FoveatedConfig) -> Backbone:
    """The DINO encoder of `cfg` on `cfg.device` (frozen unless `freeze_dino` is False)."""
    size = (cfg.image_size, cfg.image_size)
    if cfg.encoder == DINOV2_SMALL_SIZED:
        from transformers import Dinov2Config, Dinov2Model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                             patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0))
        bb = Backbone(model=model, kind="transformers", config=BackboneConfig(spec=cfg.encoder, image_size=size),
                      patch_size=14, hidden=384, num_layers=12, weights_sha256=f"random-seed-{cfg.seed}",
                      device=best_device(cfg.device))
    else:
        bb = load_backbone(BackboneConfig(spec=cfg.encoder, image_size=size, hub_repo=cfg.hub_repo,
                                          weights=cfg.weights, device=cfg.device, seed=cfg.seed))
    if not cfg.freeze_dino:
        bb.model.requires_grad_(True)
    return bb


def load_lm(cfg: FoveatedConfig, vocab_size: int) -> nn.Module:
    """The causal LM of `cfg`: random Llama of a named shape (seeded) or a local `AutoModelForCausalLM` folder."""
    if cfg.lm in _LM_SHAPES:
        from transformers import LlamaConfig, LlamaForCausalLM

        shape = {"vocab_size": vocab_size, **_LM_SHAPES[cfg.lm]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            return LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    folder = Path(cfg.lm).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"LM {cfg.lm!r}: not {sorted(_LM_SHAPES)} and not a local folder (no downloads)")
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"no causal LM in {folder}: {str(e).splitlines()[0][:200]}") from None


def attention_stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy (nats) and mean max weight of attention maps `(..., N)` (the seed's diagnostics)."""
    w = w.float()
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1)
    return ent.mean(), w.amax(-1).mean()


class FoveatedCaptioner(nn.Module):
    """Seed 002's captioner; see the module docstring.

    backbone / lm / tokenizer: pass ready ones (tests, benchmarks) or leave None to build them from `config`.
    """

    def __init__(self, config: FoveatedConfig, backbone: Backbone | None = None, lm: nn.Module | None = None,
                 tokenizer: CaptionTokenizer | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.backbone = backbone or load_encoder(cfg)
        self.encoder = self.backbone.model                  # registered: its weights are in the state dict
        lm_folder = cfg.lm not in _LM_SHAPES
        self.tokenizer = tokenizer or load_tokenizer(cfg.tokenizer or (cfg.lm if lm_folder else BYTES))
        self.lm = lm or load_lm(cfg, self.tokenizer.vocab_size)
        d, e = self.backbone.hidden, self.lm.get_input_embeddings().embedding_dim
        heads = self.backbone.model.config.num_attention_heads if self.backbone.kind == "transformers" else 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 2)
            self.q_static = nn.Parameter(torch.randn(1, cfg.query_dim))      # BUG-001: std 1.0, not 0.02
            self.q_init = nn.Parameter(torch.randn(1, cfg.query_dim))
            self.query_input_proj = nn.Linear(cfg.query_dim, d, bias=False)  # BUG-002: no bias
            self.visual_proj = nn.Linear(d, e)
            self.query_head = nn.Linear(e, cfg.query_dim)
            self.shallow = None if cfg.deep else ShallowQueryAttention(d, heads, cfg.temperature, cfg.top_k)
        if cfg.checkpointing:
            self.lm.gradient_checkpointing_enable()
        self.to(self.backbone.device)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.q_static.device

    # ---- encoder side ---------------------------------------------------------------------------------
    def frame_cache(self, frames: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> FrameCache:
        """Per-frame encoder cache of a batch of clips, from pixels or from stored hidden states.

        frames `(B, T, 3, H, W)` uint8, or hidden `(B, T, N, (L + 1) * D)` (`ingest dino --layers all`).
        Rows of the cache are frames in `(B, T)` order (F = B * T).
        """
        if frames is not None:
            b, t = frames.shape[:2]
            pix = frames.to(self.device).flatten(0, 1).float() / 255.0            # (F, 3, H, W)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_dino):
                return encode_frames(self.backbone, pix, self.config.deep,
                                     self.config.checkpointing and not self.config.freeze_dino)
        if hidden is None:
            raise ConfigError("frame_cache needs frames or hidden states")
        if not self.config.freeze_dino:
            raise ConfigError("cached hidden states need freeze_dino=True (a trained encoder changes K/V)")
        return cache_from_hidden(self.backbone, hidden.to(self.device).flatten(0, 1), self.config.deep)

    def visual_tokens(self, cache: FrameCache, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per frame. Shape notation: B clips, T frames, Q query width, E LM width, N patches.

        queries `(B, T, Q)` -> tokens `(B, T, E)`, attention `(B, T, N)` (last block, mean over heads).
        """
        b, t, _ = queries.shape
        q = self.query_input_proj(queries.flatten(0, 1))                          # (F, D)
        if self.config.deep:
            z, w = deep_query(self.backbone, cache, q, self.config.temperature, self.config.top_k)
        else:
            z, w = self.shallow(q, cache.patches.to(q.dtype))
        return self.visual_proj(z).view(b, t, -1), w.view(b, t, -1)

    def predict_queries(self, coarse: torch.Tensor) -> torch.Tensor:
        """LM reads coarse tokens `(B, T, E)` -> shifted fine queries `(B, T, Q)`: `[q_init, q_1..q_{T-1}]`,
        where `q_t` comes from the LM's last hidden state at frame t-1 (causal, so only frames < t)."""
        out = self.lm(inputs_embeds=coarse, output_hidden_states=True, use_cache=False)
        q = self.query_head(out.hidden_states[-1])                                 # (B, T, Q)
        q_init = self.q_init.expand(q.shape[0], 1, -1).to(q.dtype)
        return torch.cat([q_init, q[:, :-1]], dim=1)

    def encode_video(self, frames: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                     mode: str = "caption") -> dict[str, torch.Tensor]:
        """Both passes. frames `(B, T, 3, H, W)` uint8 or hidden (see `frame_cache`) -> `coarse` `(B, T, E)`,
        `attn_coarse` `(B, T, N)`, and in "caption" mode `queries` `(B, T, Q)`, `fine`, `attn_fine`."""
        check_mode(mode)
        cache = self.frame_cache(frames, hidden)
        n = frames.shape[:2] if frames is not None else hidden.shape[:2]
        q_static = self.q_static.expand(n[0] * n[1], -1).reshape(n[0], n[1], -1)
        coarse, attn_c = self.visual_tokens(cache, q_static)
        out = {"coarse": coarse, "attn_coarse": attn_c}
        if mode == "caption":
            queries = self.predict_queries(coarse)
            fine, attn_f = self.visual_tokens(cache, queries)
            out.update(queries=queries, fine=fine, attn_fine=attn_f)
        return out

    # ---- caption side ---------------------------------------------------------------------------------
    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ids `(B, L)` `[bos, tokens..., eos, pad...]` and mask `(B, L)` (1 on real tokens)."""
        tok, m = self.tokenizer, self.config.max_caption_tokens
        rows = [[tok.bos_id, *tok.encode(c)[: m - 2], tok.eos_id] for c in captions]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return ids.to(self.device), mask.to(self.device)

    def caption_loss(self, visual: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the caption after the visual prefix. Shape notation: B, T frames, L caption.

        visual `(B, T, E)`, ids / mask `(B, L)` -> mean loss over the caption's real tokens after bos.
        """
        t = visual.shape[1]
        emb = self.lm.get_input_embeddings()(ids).to(visual.dtype)                # (B, L, E)
        attn = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, t), mask], dim=1)
        logits = self.lm(inputs_embeds=torch.cat([visual, emb], dim=1), attention_mask=attn, use_cache=False).logits
        pred = logits[:, t:-1].float()                                             # (B, L-1, V)
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)

    def forward(self, frames: torch.Tensor | None, captions: list[str], mode: str = "caption",
                hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training forward on a batch of clips; `mode` is one str for the whole batch (BUG-003).

        frames `(B, T, 3, H, W)` uint8 (or hidden, see `frame_cache`), captions: B strings. Returns `loss`
        (`loss_fine + coarse_weight * loss_coarse`; coarse mode: `loss_coarse`), `loss_coarse`, attention
        `entropy_coarse`, `max_attn_coarse` (and `loss_fine`, `ratio`, `entropy_fine`, `max_attn_fine` in
        caption mode), plus the tensors of `encode_video`. Raises ConfigError for a per-sample mode.
        """
        vid = self.encode_video(frames, hidden, mode)
        ids, mask = self.tokenize(captions)
        out: dict[str, Any] = dict(vid)
        out["loss_coarse"] = self.caption_loss(vid["coarse"], ids, mask)
        out["entropy_coarse"], out["max_attn_coarse"] = attention_stats(vid["attn_coarse"].detach())
        if mode == "coarse":
            out["loss"] = out["loss_coarse"]
            return out
        out["loss_fine"] = self.caption_loss(vid["fine"], ids, mask)
        out["loss"] = out["loss_fine"] + self.config.coarse_weight * out["loss_coarse"]
        out["ratio"] = out["loss_coarse"].detach() / out["loss_fine"].detach().clamp_min(1e-12)
        out["entropy_fine"], out["max_attn_fine"] = attention_stats(vid["attn_fine"].detach())
        return out

    @torch.no_grad()
    def generate(self, frames: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                 max_new_tokens: int = 32) -> dict[str, list[str]]:
        """Greedy captions of a batch: `{"fine": [B str], "coarse": [B str]}` (frames as in `encode_video`)."""
        vid = self.encode_video(frames, hidden, "caption")
        return {name: self._greedy(vid[name], max_new_tokens) for name in ("fine", "coarse")}

    def _greedy(self, visual: torch.Tensor, max_new_tokens: int) -> list[str]:
        tok, b = self.tokenizer, visual.shape[0]
        emb = self.lm.get_input_embeddings()
        ids = torch.full((b, 1), tok.bos_id, dtype=torch.long, device=visual.device)
        done = torch.zeros(b, dtype=torch.bool, device=visual.device)
        for _ in range(max_new_tokens):
            seq = torch.cat([visual, emb(ids).to(visual.dtype)], dim=1)
            logits = self.lm(inputs_embeds=seq, use_cache=False).logits
            nxt = logits[:, -1].argmax(-1).masked_fill(done, tok.pad_id)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == tok.eos_id
            if bool(done.all()):
                break
        out = []
        for row in ids[:, 1:].tolist():
            row = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
            out.append(tok.decode([i for i in row if i != tok.pad_id]))
        return out


def check_mode(mode: Any) -> str:
    """The batch's mode, validated: one of BATCH_MODES, and one str per batch (BUG-003: never a per-sample list)."""
    if not isinstance(mode, str):
        raise ConfigError(f"mode is chosen per batch, not per sample (seed 002 BUG-003): got {type(mode).__name__}")
    if mode not in BATCH_MODES:
        raise ConfigError(f"mode {mode!r} is not one of {BATCH_MODES}")
    return mode
