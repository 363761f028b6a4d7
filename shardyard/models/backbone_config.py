"""`BackboneConfig`: what DINO backbone to load and how to feed it, apart from `models/backbones.py` (torch)
so that the command line reads its options and defaults at start (`ingest dino`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TINY_RANDOM", "BackboneConfig"]

TINY_RANDOM = "tiny-random-dinov2"


@dataclass
class BackboneConfig:
    """What to load and how to feed it.

    spec: HF id, local folder, hub entry name (with `hub_repo`) or "tiny-random-dinov2".
    layers: block indices whose outputs are kept (negative from the end); default the last.
    image_size: `(W, H)` in pixels fed to the model, each rounded down to a multiple of the patch size.
    hub_repo, weights: local torch.hub repository and its state-dict file. device: "auto" picks cuda, then
    mps, then cpu. seed: generator seed of the tiny random weights. all_layers: keep every block's input
    hidden states and the last output, un-normalised (see the module docstring; `layers` is then ignored).
    """

    spec: str = TINY_RANDOM
    layers: tuple[int, ...] = (-1,)
    image_size: tuple[int, int] = (224, 224)
    hub_repo: str | None = None
    weights: str | None = None
    device: str = "auto"
    seed: int = 0
    all_layers: bool = False
