"""`shardyard view STORE`: one episode of a store as a Rerun recording (`.rrd`), for Rerun's viewer.

Entities (timelines `step`, a sequence, and `time`, the episode's `timestamp` field in seconds when stored):

    world/cameras/<role>          Transform3D from `T_world_cam` (OpenCV camera-to-world, metres; per step for a
                                  moving camera) and Pinhole from `K` (pixels), so the viewer draws the frustum
    world/cameras/<role>/image    the camera's frames, `(H, W, 3) uint8`, each as a JPEG (`rr.EncodedImage`,
                                  quality `ViewConfig.jpeg_quality`): raw frames made a recording ~20x the
                                  store's bytes, JPEGs about as many as a `jpeg` store's frames
    world/cameras/<role>/depth    a depth field of the same camera (metres, 0 = invalid) as a DepthImage
    world/eef/<prefix>/path       the whole EEF path (metres, world frame), static
    world/eef/<prefix>/position   the EEF position at each step
    plots/<field>                 joint, gripper, action and other low-dim fields, one series per component
    tokens/<field>/pca            with `--features`: the patch tokens' 3-component PCA as RGB (stats.json basis)

Rerun's camera convention is declared as OpenCV (`RDF`: x right, y down, z forward), the store's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ViewConfig", "view_store"]

_LOWDIM_KINDS = ("vector", "scalar")


@dataclass
class ViewConfig:
    """Options of `view_store`.

    store: episodic store path or URL; out: the `.rrd` file to write; episode: episode index (negative counts
    from the end); features: a feature store of `ingest dino` on this store (token PCA images); max_steps:
    log only the first steps (None: all); jpeg_quality: of the camera frames in the recording (1-100; the
    `jpeg` frame codec's default, 85).
    """

    store: str
    out: Path
    episode: int = 0
    features: str | None = None
    max_steps: int | None = None
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        """Raise ConfigError for a JPEG quality outside 1..100."""
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}", field="jpeg_quality")


def _camera_role(field: str) -> str:
    """`obs.rgb.top` -> `top`; `obs.rgb` -> `main`."""
    parts = field.split(".")
    return parts[2] if len(parts) > 2 else "main"


def _log_cameras(rec, rr, store, meta: dict[str, Any], steps: dict[str, np.ndarray], t: int, quality: int) -> None:
    from shardyard.stores.frames.jpeg import encode_frame

    for field in store.schema.of_kind("image"):
        role = _camera_role(field)
        cam = meta["cameras"].get(role, {})
        path = f"world/cameras/{role}"
        moving = steps.get(f"obs.T_world_cam.{role}")
        pose = moving[t] if moving is not None else cam.get("T_world_cam")
        if pose is not None and (t == 0 or moving is not None):
            pose = np.asarray(pose, dtype=np.float64)
            rec.log(path, rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
        frame = steps[field][t]
        if t == 0 and cam.get("K") is not None:
            h, w = frame.shape[:2]
            rec.log(path, rr.Pinhole(image_from_camera=np.asarray(cam["K"]), resolution=[w, h],
                                     camera_xyz=rr.ViewCoordinates.RDF), static=True)
        rec.log(f"{path}/image", rr.EncodedImage(contents=encode_frame(frame, quality), media_type="image/jpeg"))
    for field in store.schema.of_kind("depth"):
        images = store.schema.of_kind("image")
        role = _camera_role(images[0]) if images else "main"
        rec.log(f"world/cameras/{role}/depth", rr.DepthImage(steps[field][t], meter=1.0))


def _eef_fields(store) -> dict[str, str]:
    """Robot prefix -> its `eef_pos` field (`obs.eef_pos`, `obs.left.eef_pos`, ...)."""
    return {k[: -len("eef_pos")].rstrip(".") or "eef": k for k, s in store.schema.items()
            if k.endswith("eef_pos") and len(s.shape) == 1 and s.shape[0] >= 3}


def _token_pca(cfg: ViewConfig, store, episode: int, n: int) -> np.ndarray | None:
    """`(n, h, w, 3)` float RGB of the episode's patch tokens through the feature store's PCA basis."""
    if cfg.features is None:
        return None
    from shardyard.stores import open_store
    from shardyard.tools.inspect.tokens import pca_rgb

    feats = open_store(cfg.features)
    if int(feats.num_samples) != int(store.num_steps):
        raise ConfigError(f"feature store has {feats.num_samples} samples, the store {store.num_steps} steps: "
                          "not computed from this store", path=cfg.features)
    pca = feats.stats.get("pca")
    if pca is None:
        raise ConfigError("feature store's stats.json has no patch-token PCA basis", path=cfg.features)
    start = int(store.episode_starts[episode])
    tokens = feats.patch_tokens(start, start + n)
    return np.stack([pca_rgb(tok, pca, tuple(feats.grid)) for tok in tokens])


def view_store(cfg: ViewConfig) -> Path:
    """Write episode `cfg.episode` of the store as a Rerun recording at `cfg.out`; returns the path.

    Raises `StoreError` when the store is incomplete, `IndexError` for an episode out of range and
    `ConfigError` when `--features` does not belong to the store or the store is not episodic."""
    import rerun as rr

    from shardyard.stores import open_store
    from shardyard.stores.episodic import EpisodicStore

    store = open_store(cfg.store)
    if not isinstance(store, EpisodicStore):
        raise ConfigError("view draws episodic stores (ingest yam, libero, lerobot, nyu)", path=cfg.store)
    if not -store.num_episodes <= cfg.episode < store.num_episodes:
        raise IndexError(f"episode {cfg.episode} out of range [0, {store.num_episodes})")
    episode = cfg.episode % store.num_episodes
    meta = store.episode_meta(episode)
    n = store.episode_length(episode) if cfg.max_steps is None else min(cfg.max_steps, store.episode_length(episode))
    fields = [k for k, s in store.schema.items() if s.kind in ("image", "depth", "pose") + _LOWDIM_KINDS]
    steps = store.read(episode, fields, 0, n)
    pca = _token_pca(cfg, store, episode, n)

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream("shardyard", recording_id=f"{Path(str(cfg.store)).name}/{meta['key']}")
    rec.save(str(out))
    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    eefs = _eef_fields(store)
    for prefix, field in eefs.items():
        rec.log(f"world/eef/{prefix}/path", rr.LineStrips3D([steps[field][:, :3]]), static=True)
    plots = [k for k, s in store.schema.items() if s.kind in _LOWDIM_KINDS and k != "timestamp"
             and k not in eefs.values()]
    times = steps.get("timestamp")
    for t in range(n):
        rec.set_time("step", sequence=t)
        if times is not None:
            rec.set_time("time", duration=float(times[t]))
        _log_cameras(rec, rr, store, meta, steps, t, cfg.jpeg_quality)
        for prefix, field in eefs.items():
            rec.log(f"world/eef/{prefix}/position", rr.Points3D([steps[field][t, :3]], radii=0.01))
        for field in plots:
            rec.log(f"plots/{field}", rr.Scalars(np.atleast_1d(steps[field][t]).astype(np.float64).ravel()))
        if pca is not None:
            rec.log("tokens/patch_tokens/pca", rr.Image((pca[t] * 255).astype(np.uint8)))
    rec.flush()
    log.info("wrote %s (%d steps of episode %s)", out, n, meta["key"])
    return out
