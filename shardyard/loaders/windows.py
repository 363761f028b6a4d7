"""`EpisodeWindows`: one training sample per valid (episode, step) of an episodic store, for seed 001.

Sample `(episode e, step t)` holds the frame at `t` (or its cached DINO tokens, read from a feature store
aligned index for index with the store) and the targets of the future EEF poses at steps `t + k * s` for
`k = 1..T` (`T = window`, `s = frame_stride`); a future step past the episode's end repeats the last step
and is marked invalid. Targets come from `loaders.targets` with the store's stats (height, gripper and
rotation bins) and the episode's camera (`K`, `T_world_cam`, or the per-step `obs.T_world_cam.<role>` field
of a moving camera, taken at the frame's step `t`).

A step is valid when its frame exists (not marked missing in the feature store). The windows are read by
`loaders.episodes.EpisodeDataset` (one batched read per `__getitems__`; low-dim fields from the store's
in-memory copy), tokens per batch, in the calling process, so the dataset can be given to DataLoader workers
(fork or spawn).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.loaders.episodes import EpisodeDataset, EpisodeDatasetConfig
from shardyard.loaders.targets import TargetSpec, compute_targets, grid_intrinsics

__all__ = ["EpisodeWindows", "WindowConfig", "collate_numpy", "resolve_camera"]

log = logging.getLogger(__name__)


@dataclass
class WindowConfig:
    """pred_size: side of the prediction grid (seed 001's `PRED_SIZE`, 56). robot: robot prefix of the stats
    (default the first). rotation_mode: "1d_pca" or "kmeans" (default the stats' recommendation).
    verify_reads: stores given by path check their reads against the recorded checksums."""

    pred_size: int = 56
    robot: str | None = None
    rotation_mode: str | None = None
    verify_reads: bool = True


def _open(store: Any, features: Any, verify_reads: bool) -> tuple[Any, Any]:
    if isinstance(store, (str, os.PathLike)):
        from shardyard import open_store

        store = open_store(str(store), verify_reads=verify_reads)
    if isinstance(features, (str, os.PathLike)):
        from shardyard.stores.features import open_features

        features = open_features(features, verify_reads=verify_reads)
    return store, features


def resolve_camera(schema: Any, camera: str | None) -> tuple[str, str]:
    """`(field, role)` of the image field: `camera` is a role (`top`) or a field (`obs.rgb.top`); None picks
    the first `obs.rgb.*` field in schema order (a warning names it and the others when there are several).
    Raises ConfigError when the store has no such field, or `camera` names none of them."""
    images = [k for k in schema.keys() if k.startswith("obs.rgb.")]
    if camera is None:
        if not images:
            raise ConfigError("store has no camera field (obs.rgb.<role>)")
        field = images[0]
        if len(images) > 1:
            log.warning("no --camera given: using %s, the first of the store's cameras %s (--camera ROLE picks "
                        "another)", field, [k[len("obs.rgb."):] for k in images])
    else:
        field = camera if camera in schema else f"obs.rgb.{camera}"
        if field not in schema:
            raise ConfigError(f"no camera {camera!r}; store has {images}")
    return field, field[len("obs.rgb."):] if field.startswith("obs.rgb.") else field


class EpisodeWindows(torch.utils.data.Dataset):
    """Map-style dataset of seed 001's training windows (see the module docstring).

    store: episodic store or its path. features: feature store (or path) from `ingest dino` on the same
    store, or None to return frames. window: T future steps. frame_stride: s steps between them. camera:
    role or field. split: "train", "val" or None (all episodes).

    Item `i` -> dict of tensors: `image (3, H, W) float32 [0, 1]` or `patch_tokens (h*w, D)` and
    `cls_token (D,)` float32; `start_pix (2,) int64 (x, y)`; per future step `pix (T, 2) int64 (x, y)` on the
    `pred_size` grid, `height_bin`, `gripper_bin`, `rot_bin (T,) int64`, `valid (T,) bool` (before the
    episode's end), `in_frame (T,) bool`, `mask = valid & in_frame`, `future_pos (T, 3)` metres; `K_grid
    (3, 3)` and `T_world_cam (4, 4)` float64 for decoding; `index`, `row` (global step).

    A thin layer over `loaders.episodes.EpisodeDataset` (`data`): the EEF pose, gripper and moving-camera
    fields are its deltas `k * s` for `k = 0..T` (edge-padded, `valid = not is_pad`), and its anchors are
    the steps whose frame exists.

    Raises ConfigError for a missing camera, robot stats or split; ValueError when the feature store does
    not align with the store.
    """

    def __init__(self, store: Any, features: Any = None, window: int = 8, frame_stride: int = 3,
                 camera: str | None = None, split: str | None = "train", config: WindowConfig | None = None):
        self.cfg = config or WindowConfig()
        self.store, self.features = _open(store, features, self.cfg.verify_reads)
        if window < 1 or frame_stride < 1:
            raise ConfigError(f"window and frame_stride must be >= 1, got {window}, {frame_stride}")
        self.window, self.frame_stride = int(window), int(frame_stride)
        self.field, self.role = resolve_camera(self.store.schema, camera)
        self.spec = s = TargetSpec.from_stats(self.store.stats, self.cfg.robot, self.cfg.rotation_mode)
        n = self.store.num_steps
        if self.features is not None and self.features.num_samples != n:
            raise ValueError(f"feature store has {self.features.num_samples} samples, store {n} steps: "
                             "not computed from this store")
        offsets = [k * self.frame_stride for k in range(self.window + 1)]   # k = 0 is the start step
        deltas = {s.pos_field: offsets, s.quat_field: offsets}
        self.gripper_field = s.gripper_field if s.gripper_field in self.store.schema else None
        if self.gripper_field is not None:
            deltas[self.gripper_field] = offsets
        moving = f"obs.T_world_cam.{self.role}"
        self.moving_field = moving if moving in self.store.schema else None
        if self.moving_field is not None:
            deltas[moving] = [0]
        if self.features is None:
            deltas[self.field] = [0]
        missing = self.features.missing if self.features is not None else np.zeros(n, bool)
        self.data = EpisodeDataset(self.store, deltas, anchor_mask=~np.asarray(missing, bool),
                                   config=EpisodeDatasetConfig(split=split, float32=False))
        h, w = self.store.schema[self.field].shape[:2]
        self.cams: dict[int, dict[str, Any]] = {}
        for e in self.data.episodes:
            cam = self.store.episode_meta(e)["cameras"].get(self.role)
            if cam is None or cam.get("K") is None:
                raise ConfigError(f"episode {e} has no intrinsics for camera {self.role!r}")
            if cam.get("T_world_cam") is None and self.moving_field is None:
                raise ConfigError(f"episode {e}: camera {self.role!r} has neither a fixed T_world_cam nor "
                                  f"a {moving} field")
            wh = (int(cam.get("width") or w), int(cam.get("height") or h))
            self.cams[e] = {"K": cam["K"], "T": cam.get("T_world_cam"), "wh": wh,
                            "K_grid": grid_intrinsics(cam["K"], wh, self.cfg.pred_size)}
        self._tokens = None
        log.info("EpisodeWindows: %d samples from %d episodes, T=%d, stride=%d, camera %s, %s", len(self),
                 len(self.data.episodes), self.window, self.frame_stride, self.field,
                 "tokens" if self.features is not None else "frames")

    @property
    def rows(self) -> np.ndarray:
        """Global step `(len,) int64` of each sample."""
        return self.data.rows

    @property
    def episode_of(self) -> np.ndarray:
        """Episode index `(len,) int64` of each sample."""
        return self.data.episode_of

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range [0, {len(self)})")
        return self.__getitems__([int(i) % len(self)])[0]

    def _targets(self, batch: dict[str, np.ndarray], j: int, i: int) -> dict[str, np.ndarray]:
        """Targets of row `j` of an `EpisodeDataset.fetch` batch, which is sample `i`."""
        s = self.spec
        e = int(batch["episode_index"][j])
        pos = batch[s.pos_field][j].astype(np.float64)                       # (T + 1, 3)
        quat = batch[s.quat_field][j].astype(np.float64)
        grip = None if self.gripper_field is None else batch[self.gripper_field][j].astype(np.float64).reshape(-1)
        cam = self.cams[e]
        T = cam["T"] if self.moving_field is None else batch[self.moving_field][j][0].astype(np.float64)
        t = compute_targets(s, pos, quat, grip, cam["K"], T, cam["wh"], self.cfg.pred_size)
        valid = ~batch[f"{s.pos_field}_is_pad"][j][1:]
        out = {key: v[1:] for key, v in t.items()}
        out.update(start_pix=t["pix"][0], valid=valid, mask=valid & out["in_frame"], future_pos=pos[1:],
                   K_grid=cam["K_grid"], T_world_cam=np.asarray(T, np.float64), index=np.int64(i),
                   row=np.int64(batch["index"][j]))
        return out

    def targets(self, i: int) -> dict[str, np.ndarray]:
        """Targets of sample `i` as numpy arrays (see the class docstring)."""
        return self._targets(self.data.fetch([i]), 0, int(i))

    def frame(self, i: int) -> np.ndarray:
        """The frame `(H, W, 3) uint8` of sample `i`."""
        row = int(self.rows[i])
        return self.store.read_rows(self.field, row, row + 1)[0]

    def _token_reader(self):
        if self._tokens is None:
            from shardyard.loaders.tokens import TokenDataset, TokenDatasetConfig

            self._tokens = TokenDataset(self.features, config=TokenDatasetConfig(as_float32=True))
        return self._tokens

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items, read as one `EpisodeDataset.fetch` (and one grouped token read)."""
        idx = [int(i) for i in indices]
        batch = self.data.fetch(idx)
        items = [{k: torch.as_tensor(v) for k, v in self._targets(batch, j, i).items()} for j, i in enumerate(idx)]
        if self.features is not None:
            toks = self._token_reader().__getitems__([int(self.rows[i]) for i in idx])
            for it, tk in zip(items, toks):
                it["patch_tokens"] = tk["dino.patch_tokens"]
                it["cls_token"] = tk["dino.cls_token"]
        else:
            frames = torch.from_numpy(batch[self.field][:, 0])                    # (B, H, W, 3) uint8
            for j, it in enumerate(items):
                it["image"] = frames[j].permute(2, 0, 1).float().div_(255.0)     # (3, H, W) in [0, 1]
        return items

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"_tokens": None}


def collate_numpy(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stack a list of items into one numpy array per key (`(B, ...)`).

    Numpy batches cross the DataLoader's worker queue pickled inline; tensors would go through one
    shared-memory segment each (a file descriptor sent and mapped per key and batch), which costs more than
    the read itself for batches this small. Convert in the training process with `torch.from_numpy`.
    """
    return {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}

