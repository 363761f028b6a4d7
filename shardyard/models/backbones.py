"""Frozen vision backbones that turn frames into DINO patch tokens (issue 3).

`load_backbone(config)` returns a `Backbone`: images `(B, 3, H, W)` float in [0, 1] in, `BackboneOutput`
out with `patch_tokens (B, h*w, D)`, `cls_token (B, D)` and the grid `(h, w)`. The backbone owns its
preprocessing, applied exactly once: bilinear (antialiased) resize to `image_size` rounded down to a multiple
of the patch size, then ImageNet normalisation. With several `layers`, the per-layer tokens are concatenated
along the channel axis (`D = len(layers) * hidden`), each layer passed through the model's final norm (as
DINOv2's `get_intermediate_layers(norm=True)`).

`all_layers=True` (`ingest dino --layers all`) keeps instead the raw hidden states (no final norm) entering
every block plus the last block's output, L + 1 sequences, concatenated on the channel axis
(`D = (L + 1) * hidden`): entry `l < L` is block `l`'s input, so that block's keys and values are its
`norm1` then its key / value projections applied to it (`models.foveated_attention.kv_from_hidden`),
recomputed from the frozen encoder's weights without running the ViT again; entry `L` gives the usual last
tokens after the final norm. Only patch tokens and the CLS token are stored (registers are dropped).

Specs (`BackboneConfig.spec`):
- a Hugging Face model id (`facebook/dinov2-small`, `facebook/dinov3-vits16plus-pretrain-lvd1689m`) or a local
  folder, loaded by transformers' `AutoModel` from the local cache or folder only (no network);
- `hub_repo` + `weights`: a local torch.hub repository (a folder with `hubconf.py`) and a state-dict file, as
  seed 001 loads DINOv3; `spec` names the hub entry (or "hub" to infer it from the weights file name);
- `tiny-random-dinov2`: transformers' real `Dinov2Model` with a tiny config (hidden 32, 2 layers, patch 14)
  and weights drawn from a seeded generator, for tests and the demo on machines without weights.

Sources: transformers `models/dinov2/modeling_dinov2.py`; facebookresearch/dinov2 and dinov3 `hubconf.py`
(`forward_features` -> `x_norm_patchtokens`, `x_norm_clstoken`; `get_intermediate_layers`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shardyard.errors import ConfigError
from shardyard.models.backbone_config import TINY_RANDOM, BackboneConfig

__all__ = ["Backbone", "BackboneConfig", "BackboneOutput", "IMAGENET_MEAN", "IMAGENET_STD", "TINY_CONFIG",
           "TINY_RANDOM", "best_device", "load_backbone"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   patch_size=14, image_size=224, mlp_ratio=2)

_HOW_TO_GET = (
    "no local weights for {spec!r} ({why}). shardyard never downloads; get them once on a machine with "
    "network, e.g. `HF_HUB_OFFLINE=0 python -c \"from transformers import AutoModel; "
    "AutoModel.from_pretrained('{spec}')\"` (fills ~/.cache/huggingface; gated models such as DINOv3 need "
    "`huggingface-cli login` first), or `huggingface-cli download {spec} --local-dir DIR` and pass "
    "--model DIR; for a torch.hub checkout pass --hub-repo DIR --weights FILE; for tests use "
    "--model tiny-random-dinov2")


@dataclass
class BackboneOutput:
    """patch_tokens `(B, h*w, D)` float32, cls_token `(B, D)` float32, grid `(h, w)` in patches."""

    patch_tokens: torch.Tensor
    cls_token: torch.Tensor
    grid: tuple[int, int]


def best_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if present, then mps, else cpu; anything else is passed to `torch.device`."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _sha256_state(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Backbone:
    """A frozen ViT with its preprocessing. Call it on `(B, 3, H, W)` float images in [0, 1].

    kind: "transformers" or "hub". patch_size: pixels per patch side. hidden: channels of one layer.
    weights_sha256: hash of the weights (files, or the state dict for tiny random).
    """

    model: torch.nn.Module
    kind: str
    config: BackboneConfig
    patch_size: int
    hidden: int
    num_layers: int
    weights_sha256: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False).to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.block_indices = tuple(sorted({i % self.num_layers for i in self.config.layers}))
        if len(self.block_indices) != len(self.config.layers):
            raise ConfigError(f"layers {self.config.layers} name the same block twice")
        bad = [i for i in self.config.layers if not -self.num_layers <= i < self.num_layers]
        if bad:
            raise ConfigError(f"layers {bad} out of range for a {self.num_layers}-block model")

    @property
    def input_hw(self) -> tuple[int, int]:
        """`(H, W)` fed to the ViT: `image_size` rounded down to multiples of the patch size (min one patch)."""
        w, h = self.config.image_size
        p = self.patch_size
        return max(p, h // p * p), max(p, w // p * p)

    @property
    def grid(self) -> tuple[int, int]:
        """`(h, w)`: patches per column and per row."""
        h, w = self.input_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def embed_dim(self) -> int:
        """D of the stored tokens: hidden size times the number of kept layers (L + 1 with all_layers)."""
        if self.config.all_layers:
            return self.hidden * (self.num_layers + 1)
        return self.hidden * len(self.block_indices)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` float [0, 1] -> `(B, 3, H', W')` resized and ImageNet-normalised (the only place)."""
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> BackboneOutput:
        """Tokens of a batch. Shape notation: B batch, h*w patches, D channels.

        images `(B, 3, H, W)` float in [0, 1] -> patch_tokens `(B, h*w, D)`, cls_token `(B, D)` (float32).
        Raises ValueError for a tensor that is not `(B, 3, H, W)`.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = self.preprocess(images)                      # (B, 3, H', W')
        n = self.grid[0] * self.grid[1]
        if self.kind == "transformers":
            patches, cls = self._forward_hf(x, n)
        else:
            patches, cls = self._forward_hub(x)
        return BackboneOutput(patch_tokens=patches.float(), cls_token=cls.float(), grid=self.grid)

    def _forward_hf(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        last_only = self.block_indices == (self.num_layers - 1,) and not self.config.all_layers
        out = self.model(pixel_values=x, output_hidden_states=not last_only)
        if self.config.all_layers:
            seqs = list(out.hidden_states)                                  # L + 1 x (B, S, C), raw
        elif last_only:
            seqs = [out.last_hidden_state]                                  # (B, 1 + R + h*w, C), normed
        else:
            norm = getattr(self.model, "layernorm", None) or getattr(self.model, "norm")
            seqs = [norm(out.hidden_states[i + 1]) for i in self.block_indices]
        # tokens are [CLS, registers..., patches]: patches are the last h*w
        patches = torch.cat([s[:, -n:, :] for s in seqs], dim=-1)          # (B, h*w, D)
        cls = torch.cat([s[:, 0, :] for s in seqs], dim=-1)                # (B, D)
        return patches, cls

    def _forward_hub(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.all_layers:
            h = self.model.prepare_tokens_with_masks(x)
            seqs = [h]
            for blk in self.model.blocks:
                h = blk(h)
                seqs.append(h)
            n = self.grid[0] * self.grid[1]
            return torch.cat([s[:, -n:] for s in seqs], dim=-1), torch.cat([s[:, 0] for s in seqs], dim=-1)
        if self.block_indices == (self.num_layers - 1,):
            feats = self.model.forward_features(x)
            return feats["x_norm_patchtokens"], feats["x_norm_clstoken"]
        outs = self.model.get_intermediate_layers(x, n=list(self.block_indices), reshape=False,
                                                  return_class_token=True, norm=True)
        return torch.cat([p for p, _ in outs], dim=-1), torch.cat([c for _, c in outs], dim=-1)

    def describe(self) -> dict[str, Any]:
        """Provenance of the model and its preprocessing (goes into the feature store's key)."""
        return {
            "spec": self.config.spec, "kind": self.kind, "weights_sha256": self.weights_sha256,
            "hub_repo": self.config.hub_repo, "patch_size": self.patch_size, "hidden": self.hidden,
            "layers": "all" if self.config.all_layers else list(self.block_indices), "num_layers": self.num_layers,
            "image_hw": list(self.input_hw), "grid": list(self.grid),
            "preprocessing": {"resize": "bilinear-antialias", "input": "float [0,1]",
                              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }


def _tiny_random(cfg: BackboneConfig) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Dinov2Model(Dinov2Config(**TINY_CONFIG))
        # re-draw every parameter from one seeded generator, so weights do not depend on init details
        gen = torch.Generator().manual_seed(cfg.seed)
        for name, p in sorted(model.named_parameters()):
            with torch.no_grad():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if "lambda" in name else 0.0))
    return model


def _hf_model(cfg: BackboneConfig) -> tuple[torch.nn.Module, str]:
    from transformers import AutoModel

    local = Path(cfg.spec).expanduser()
    try:
        model = AutoModel.from_pretrained(str(local) if local.is_dir() else cfg.spec, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(_HOW_TO_GET.format(spec=cfg.spec, why=str(e).splitlines()[0][:200])) from None
    folder = local if local.is_dir() else None
    if folder is None:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(cfg.spec, local_files_only=True))
    files = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
    return model, _sha256_files(files) if files else _sha256_state(model)


def _hub_entries(repo: Path) -> list[str]:
    """Callable entry points of a local hubconf.py (torch.hub.list has no local source)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("_shardyard_hubconf", repo / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(repo))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(repo))
    return sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                  and getattr(v, "__module__", None) == module.__name__ and not isinstance(v, type))


def _hub_entry(repo: Path, spec: str, weights: Path) -> str:
    entries = _hub_entries(repo)
    if spec in entries:
        return spec
    if spec not in ("hub", "", None):
        raise ConfigError(f"hub repo {repo} has no entry {spec!r}; it has {entries}")
    # infer from the weights file name, e.g. dinov3_vits16plus_pretrain_lvd1689m-....pth -> dinov3_vits16plus
    fitting = sorted((e for e in entries if weights.name.startswith(e)), key=len, reverse=True)
    if fitting:
        return fitting[0]
    if len(entries) == 1:
        return entries[0]
    raise ConfigError(f"cannot tell which hub entry of {repo} fits {weights.name}; pass it as --model "
                      f"ENTRY (one of {entries})")


def _hub_model(cfg: BackboneConfig) -> tuple[torch.nn.Module, str]:
    repo, weights = Path(cfg.hub_repo or ""), Path(cfg.weights or "")
    if not (repo / "hubconf.py").is_file():
        raise ConfigError(f"--hub-repo {repo} is not a torch.hub repository (no hubconf.py)")
    if not weights.is_file():
        raise ConfigError(f"--weights {weights} not found; the hub path needs a local state-dict file")
    entry = _hub_entry(repo, cfg.spec, weights)
    model = torch.hub.load(str(repo), entry, source="local", trust_repo=True, pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"--weights {weights} do not fit hub entry {entry!r}: {str(e)[:300]}") from None
    cfg.spec = entry
    return model, _sha256_files([weights])


def _hf_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    c = model.config
    p = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
    return int(p), int(c.hidden_size), int(c.num_hidden_layers)


def load_backbone(config: BackboneConfig | str) -> Backbone:
    """Load a frozen backbone on `config.device` (see the module docstring for specs).

    Raises `ConfigError` when the weights are not available locally (the message says how to get them),
    when the hub repo or weights file is missing, or when `layers` do not fit the model.
    """
    cfg = BackboneConfig(spec=config) if isinstance(config, str) else config
    if cfg.hub_repo or cfg.weights:
        model, sha = _hub_model(cfg)
        p = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[0]
        blocks = getattr(model, "n_blocks", None) or len(model.blocks)
        bb = Backbone(model=model, kind="hub", config=cfg, patch_size=int(p), hidden=int(model.embed_dim),
                      num_layers=int(blocks), weights_sha256=sha, device=best_device(cfg.device))
    else:
        if cfg.spec == TINY_RANDOM:
            model = _tiny_random(cfg)
            sha = _sha256_state(model)
        else:
            model, sha = _hf_model(cfg)
        p, hidden, blocks = _hf_dims(model)
        bb = Backbone(model=model, kind="transformers", config=cfg, patch_size=p, hidden=hidden,
                      num_layers=blocks, weights_sha256=sha, device=best_device(cfg.device))
    log.info("backbone %s (%s): patch %d, D %d, grid %s, device %s", cfg.spec, bb.kind, bb.patch_size,
             bb.embed_dim, bb.grid, bb.device)
    return bb
