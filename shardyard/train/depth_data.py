"""Rows, tokens and depth targets of `train depth`: an episodic NYU store (`ingest nyu`) and its feature store
(`ingest dino --field obs.rgb --layers ...`, aligned index for index), or a live backbone.

Shapes: tokens `(B, h*w, L*C)` float32 (L kept ViT layers of C channels); depth `(B, 1, H, W)` metres, 0 =
invalid, at the stored frame size; images `(B, 3, H, W)` float in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError

__all__ = ["DepthData", "open_depth_data"]

log = logging.getLogger(__name__)


def _rows_of(store, episodes: list[int]) -> np.ndarray:
    return np.concatenate([np.arange(store.episode_starts[e], store.episode_ends[e]) for e in episodes]) \
        if episodes else np.zeros(0, dtype=np.int64)


@dataclass
class DepthData:
    """What the trainer reads. `backbone` is a `shardyard.models.backbones.Backbone` made trainable in live
    mode, else None; `features` the `FeatureStore` in cached mode."""

    store: Any
    features: Any
    backbone: Any
    rgb_field: str
    depth_field: str
    train_rows: np.ndarray
    val_rows: np.ndarray
    val_name: str
    eval_crop: list[int] | None
    hidden: int
    num_layers: int
    patch_size: int
    grid: tuple[int, int]

    # -- reads ----------------------------------------------------------------------------------------
    def _each(self, field: str, idx: np.ndarray) -> np.ndarray:
        return np.concatenate([self.store.read_rows(field, int(i), int(i) + 1) for i in idx])

    def depth(self, idx: np.ndarray) -> np.ndarray:
        """`(B, H, W) float32` metres."""
        return self._each(self.depth_field, idx)

    def rgb(self, idx: np.ndarray) -> np.ndarray:
        """`(B, H, W, 3) uint8`."""
        return self._each(self.rgb_field, idx)

    def images_tensor(self, idx: np.ndarray) -> torch.Tensor:
        """`(B, 3, H, W)` float32 in [0, 1], on the CPU (where the BTS augmentation runs)."""
        return torch.from_numpy(self.rgb(idx)).permute(0, 3, 1, 2).float().div_(255.0)

    def tokens(self, idx: np.ndarray) -> np.ndarray:
        """Cached tokens `(B, h*w, L*C)` float32 (numpy: `Runtime.to_device` moves them)."""
        x = np.concatenate([self.features.patch_tokens(int(i), int(i) + 1) for i in idx])
        return x.astype(np.float32)

    def cached_batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """`tokens (B, h*w, L*C)` float32 and `depth (B, 1, H, W)` metres of rows `idx` (cached mode)."""
        return {"tokens": self.tokens(idx), "depth": self.depth(idx)[:, None]}

    def live_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens of the live backbone with gradients, as `Backbone.__call__` computes them (the same layers,
        each after the final norm): images `(B, 3, H, W)` [0, 1] -> `(B, h*w, L*C)`."""
        bb = self.backbone
        x = bb.preprocess(images)                                                     # (B, 3, H', W')
        n = self.grid[0] * self.grid[1]
        if bb.kind == "transformers":
            out = bb.model(pixel_values=x, output_hidden_states=True)
            norm = getattr(bb.model, "layernorm", None) or getattr(bb.model, "norm")
            seqs = [norm(out.hidden_states[i + 1]) for i in bb.block_indices]         # each (B, 1+R+h*w, C)
            return torch.cat([s[:, -n:, :] for s in seqs], dim=-1)
        outs = bb.model.get_intermediate_layers(x, n=list(bb.block_indices), reshape=False,
                                                return_class_token=True, norm=True)
        return torch.cat([p for p, _ in outs], dim=-1)

    @torch.no_grad()
    def predict(self, model, idx: np.ndarray, rt: Any) -> np.ndarray:
        """Depth `(B, H, W)` metres of rows `idx` at the stored frame size (no augmentation), on the
        `train.runtime.Runtime` `rt` (its device and autocast)."""
        h, w = self.store.schema[self.depth_field].shape
        with rt.autocast():
            if self.backbone is None:
                tok = rt.to_device({"tokens": self.tokens(idx)})["tokens"]
            else:
                tok = self.live_tokens(rt.to_device({"image": self.images_tensor(idx)})["image"])
            return model(tok, self.grid, out_hw=(h, w))[:, 0].float().cpu().numpy()


def _eval_crop(store, h: int, w: int) -> list[int] | None:
    crop = ((store.manifest.get("source") or {}).get("eval") or {}).get("eigen_crop")
    if crop is not None:
        return [int(c) for c in crop]
    from shardyard.ingest.nyu_depth_v2 import eigen_crop

    return eigen_crop(h, w)


def open_depth_data(cfg, device: torch.device) -> DepthData:
    """Open the store (and feature store or backbone) of a `DepthTrainConfig`; checks that they align."""
    from shardyard import open_store

    store = open_store(cfg.store, verify_reads=cfg.verify_reads)
    for f, kind in ((cfg.rgb_field, "image"), (cfg.depth_field, "depth")):
        if f not in store.schema or store.schema[f].kind != kind:
            raise ConfigError(f"store has no {kind} field {f!r} (fields: {store.schema.keys()})", path=cfg.store)
    split = store.split or {}
    train_eps, val_eps = list(split.get("train", [])), list(split.get("val", []))
    if not train_eps:
        train_eps = list(range(store.num_episodes))
    val_name = "val"
    if not val_eps:
        log.warning("store %s has no val episodes: evaluating on the train split", cfg.store)
        val_eps, val_name = train_eps, "train"
    train_rows, val_rows = _rows_of(store, train_eps), _rows_of(store, val_eps)
    features, backbone = None, None
    model_key: dict[str, Any] | None = None
    if cfg.features is not None:
        from shardyard.stores.features import open_features

        features = open_features(cfg.features, verify_reads=cfg.verify_reads)
        if features.num_samples != store.num_steps:
            raise ConfigError(f"feature store has {features.num_samples} samples, the store {store.num_steps} "
                              "steps: not computed from this store", path=str(cfg.features))
        if features.key.get("field") not in (None, cfg.rgb_field):
            log.warning("features were computed from %s, training reads %s", features.key.get("field"),
                        cfg.rgb_field)
        missing = features.missing
        train_rows, val_rows = train_rows[~missing[train_rows]], val_rows[~missing[val_rows]]
        model_key = features.key["model"]
    if cfg.live_backbone:
        from shardyard.models.backbones import BackboneConfig, load_backbone

        if model_key is not None:
            hw = model_key["image_hw"]
            bcfg = BackboneConfig(spec=model_key["spec"], layers=tuple(model_key["layers"]), image_size=(hw[1], hw[0]),
                                  hub_repo=model_key.get("hub_repo"), device=str(device))
        else:
            bcfg = BackboneConfig(spec=cfg.model, layers=tuple(cfg.layers), image_size=tuple(cfg.image_size),
                                  device=str(device))
        backbone = load_backbone(bcfg)
        if cfg.freeze_backbone:  # forward only: no parameter needs a gradient, so autograd stops at the tokens
            backbone.model.requires_grad_(False).eval()
        else:
            backbone.model.requires_grad_(True).train()
        model_key = backbone.describe()
    if len(train_rows) == 0:
        raise ConfigError("no training rows (empty train split or every frame missing)", path=cfg.store)
    h, w = store.schema[cfg.depth_field].shape
    return DepthData(store=store, features=features, backbone=backbone, rgb_field=cfg.rgb_field,
                     depth_field=cfg.depth_field, train_rows=train_rows, val_rows=val_rows, val_name=val_name,
                     eval_crop=_eval_crop(store, h, w), hidden=int(model_key["hidden"]),
                     num_layers=len(model_key["layers"]), patch_size=int(model_key["patch_size"]),
                     grid=tuple(int(g) for g in model_key["grid"]))
