"""Factories of the volume-query tests: a small synthetic YAM store (real ingest) and its tiny-random token
store (real `ingest dino`), built once per test session and worker. Import the fixtures by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardyard.testing import SyntheticConfig, write_synthetic_yam

# Small model through the same code as the seed's defaults (tests must stay fast on 2 shared cores).
TINY_MODEL = {"d_feat": 8, "d_sin_z": 4, "d_sin_t": 4, "d_cond": 16, "n_blocks": 2, "mlp_ratio": 2}


def build_store(root: Path, episodes: int = 4, steps: int = 24) -> Path:
    """Synthetic per-demo episodes (64 x 48 frames) -> episodic store through the YAM source."""
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.yam import YamConfig, YamSource

    raw = root / "raw"
    write_synthetic_yam(raw, SyntheticConfig(num_episodes=episodes, steps=steps, width=64, height=48,
                                             video=False))
    store = root / "store"
    res = run_ingest(YamSource(YamConfig(root=raw)), IngestConfig(out=store, val_fraction=0.25))
    assert res.exit_code == 0
    return store


def build_features(store: Path, out: Path, image_size: tuple[int, int] = (56, 56)) -> Path:
    """Tiny-random DINOv2 tokens of the store's frames (grid 4 x 4 at 56 px, D 32)."""
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.models.backbones import BackboneConfig

    res = ingest_dino(DinoConfig(store=str(store), out=out, field="obs.rgb.front", batch_size=16,
                                 backbone=BackboneConfig(spec="tiny-random-dinov2", image_size=image_size)))
    assert res.exit_code == 0
    return out


@pytest.fixture(scope="session")
def vq_data(tmp_path_factory):
    """`(store, features)` paths: 4 synthetic episodes (3 train, 1 val) and their tokens."""
    root = tmp_path_factory.mktemp("vq")
    store = build_store(root)
    return store, build_features(store, root / "features")
