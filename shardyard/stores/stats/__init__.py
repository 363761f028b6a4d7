"""stats.json of an episodic store (DESIGN.md, "Stats"): per-field LeRobot stats from mergeable parts, plus
seed 001's robot extras, computed on the train split only.

`compute_stats(store, config)` is the `stats_fn` given to `EpisodicWriter`; it returns

    {"computed_on": "train" | "all (train split empty)",
     "split": {"train": [episode index], "val": [...]},   # as recorded in the manifest
     "num_episodes": E (episodes used), "num_steps": N (their steps),
     "config": StatsConfig as a dict,
     "fields": {field: {"count": [n], "mean", "std", "min", "max", "q01", "q99": per-feature lists}},
     "robot": {prefix: {"eef_pos_field", "eef_quat_field", "gripper_field",
                        "height_bins", "gripper_bins", "rotation"}},
     "depth": {field: {"valid_fraction", "min", "max", "median", "q01", "q99", ...}}}   # stats/depth.py

Features: a vector's components; a scalar is one feature; a pose `(4, 4)` is 16 (row-major); an image's
channels (uint8 values scaled to [0, 1] like LeRobot, on every `image_frame_stride`-th frame of each
episode and every `image_pixel_stride`-th pixel in x and y); a depth map is one feature over its valid
(> 0) pixels, sampled like images; tokens `(..., D)` have D features over every token of the sampled
frames. "text" and "video" fields are skipped.

Parts are made per episode and merged (`field_parts`), so stats from any episode sets merge exactly
(`merge_stats_parts`). uint8/int8/bool fields take fixed dense edges (`moments.fixed_edges`); every other
field takes `stats.parts.SparsePart`, whose buckets do not depend on the data (float quantiles within
2**-16 relative, integer quantiles exact), so parts of different stores or edits merge whatever their
ranges, and the stats of a merged or edited store equal those of ingesting its episodes from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Iterator, Sequence

import numpy as np

from shardyard.schema import FieldSpec, Schema
from shardyard.stores.stats import parts as sparts
from shardyard.stores.stats.config import StatsConfig
from shardyard.stores.stats.depth import depth_stats
from shardyard.stores.stats.moments import fixed_edges
from shardyard.stores.stats.robot import gripper_bins, height_bins, rotation_stats

log = logging.getLogger(__name__)

SKIP_KINDS = ("text", "video")
FRAME_KINDS = ("image", "depth", "tokens")  # read frame by frame with `image_frame_stride`
_BLOCK_ROWS = 64  # frames per read when walking an episode's frame field
_FOLD_EPISODES = 1024  # episode parts merged per step of the stats fold
_VECTOR_BLOCK_ROWS = 8192  # steps per read of a low-dim field (per-block overhead dominated at 64)

__all__ = ["StatsConfig", "compute_stats", "stats_episodes", "stats_fields", "field_rows", "field_edges",
           "field_parts", "frame_sampling", "sampled_frames_part", "merge_stats_parts", "finalize_stats_parts",
           "robot_fields", "robot_stats"]


def stats_episodes(store) -> tuple[list[int], str]:
    """Episodes the stats use and how they were chosen: the manifest's train split ("train"), or every
    episode when that split is empty or absent ("all (train split empty)")."""
    train = [int(i) for i in (store.split or {}).get("train", [])]
    if train:
        return train, "train"
    log.warning("train split of %s is empty: stats use all %d episodes", store, store.num_episodes)
    return list(range(store.num_episodes)), "all (train split empty)"


def stats_fields(schema: Schema) -> list[str]:
    """Fields that get stats: numeric (bool, int, uint, float) and not of kind text/video."""
    return [k for k, s in schema.items() if s.kind not in SKIP_KINDS and np.dtype(s.dtype).kind in "biuf"]


def _num_features(spec: FieldSpec) -> int:
    if spec.kind in ("image", "depth"):
        return int(spec.shape[2]) if len(spec.shape) >= 3 else 1
    if spec.kind == "tokens":
        return int(spec.shape[-1]) if spec.shape else 1
    return int(np.prod(spec.shape, dtype=np.int64))


def _to_rows(x: np.ndarray, spec: FieldSpec, cfg: StatsConfig, *, pixels_sampled: bool = False) -> np.ndarray:
    """`(T, *shape)` steps -> `(n, F)` rows of features (pixel subsampling unless `pixels_sampled`, invalid
    depth dropped)."""
    f = _num_features(spec)
    if spec.kind in ("image", "depth") and len(spec.shape) >= 2 and not pixels_sampled:
        x = x[:, :: cfg.image_pixel_stride, :: cfg.image_pixel_stride]
    rows = x.reshape(-1, f) if spec.kind in FRAME_KINDS else x.reshape(x.shape[0], f)
    if spec.kind == "depth":
        rows = rows[np.all(np.isfinite(rows) & (rows > 0), axis=1)]
    return rows


def _iter_blocks(store, episode: int, field: str, cfg: StatsConfig) -> Iterator[np.ndarray]:
    """`(n, F)` row blocks of one field of one episode (frame kinds: every `image_frame_stride`-th step,
    counted from the episode's first step)."""
    spec = store.schema[field]
    length = store.episode_length(episode)
    stride = cfg.image_frame_stride if spec.kind in FRAME_KINDS else 1
    if stride == 1:
        block = _BLOCK_ROWS if spec.kind in FRAME_KINDS else _VECTOR_BLOCK_ROWS
        for t in range(0, length, block):
            yield _to_rows(store.read(episode, [field], t, min(t + block, length))[field], spec, cfg)
        return
    frames = list(range(0, length, stride))
    for i in range(0, len(frames), _BLOCK_ROWS):
        x = np.concatenate([store.read(episode, [field], t, t + 1)[field] for t in frames[i:i + _BLOCK_ROWS]])
        yield _to_rows(x, spec, cfg)


def field_rows(store, episode: int, field: str, config: StatsConfig | None = None) -> np.ndarray:
    """Every row `(n, F)` that the stats of `field` see in `episode` (for checks and custom reductions)."""
    cfg = config or StatsConfig()
    f = _num_features(store.schema[field])
    blocks = list(_iter_blocks(store, episode, field, cfg))
    return np.concatenate(blocks) if blocks else np.zeros((0, f), dtype=store.schema[field].dtype)


def _blocks_part(blocks: Iterator[np.ndarray], num_features: int, edges: np.ndarray | None) -> sparts.AnyPart:
    return sparts.merge_many(sparts.empty(num_features, edges), [sparts.of_rows(rows, edges) for rows in blocks])


def _episode_part(store, episode: int, field: str, edges: np.ndarray | None, cfg: StatsConfig,
                  pre: dict[str, Any] | None = None) -> sparts.AnyPart:
    """The part of `field` in `episode`: `pre` (a worker's `sampled_frames_part`) when its sampling and
    edges match, else read from the store."""
    if pre is not None and pre.get("frame_stride") == cfg.image_frame_stride \
            and pre.get("pixel_stride") == cfg.image_pixel_stride:
        part = sparts.from_dict(pre["part"])
        if sparts.same_layout(part, edges):
            return part
    return _blocks_part(_iter_blocks(store, episode, field, cfg), _num_features(store.schema[field]), edges)


def frame_sampling(spec: FieldSpec, config: StatsConfig | None = None) -> tuple[int, int] | None:
    """`(frame_stride, pixel_stride)` with which a reader worker samples frames of `spec` for the stats
    while it encodes them (`stores.frame_encoding.FrameEncoding`), or None when the field's stats cannot be
    made per episode ahead of the stats pass (histogram edges that depend on the data: non-uint8)."""
    cfg = config or StatsConfig()
    if spec.kind != "image" or fixed_edges(spec.dtype, _num_features(spec)) is None:
        return None
    return cfg.image_frame_stride, cfg.image_pixel_stride


def sampled_frames_part(sample: np.ndarray, spec: FieldSpec, config: StatsConfig | None = None) -> dict[str, Any]:
    """The stats part of one episode's frame field from the frames a worker sampled while encoding
    (`(n, H / s, W / s, C)`: steps 0, k, 2k, ... at every s-th pixel, see `frame_sampling`), as the JSON-able
    dict the writer keeps per episode. Equal, bit for bit, to what the stats pass computes from the store
    (same rows, same blocks, same merge order), which then uses it instead of reading the frames back."""
    cfg = config or StatsConfig()
    f = _num_features(spec)
    edges = fixed_edges(spec.dtype, f)
    blocks = (_to_rows(sample[i:i + _BLOCK_ROWS], spec, cfg, pixels_sampled=True)
              for i in range(0, len(sample), _BLOCK_ROWS))
    return {"frame_stride": cfg.image_frame_stride, "pixel_stride": cfg.image_pixel_stride,
            "part": _blocks_part(blocks, f, edges).to_dict()}


def field_edges(store, episodes: Sequence[int], config: StatsConfig | None = None,
                fields: Sequence[str] | None = None) -> dict[str, np.ndarray | None]:
    """Histogram layout per field, data-independent (nothing is read; `store` gives the schema):
    `moments.fixed_edges` `(F, B + 1)` for uint8/int8/bool, None (sparse buckets, `stats.parts`) for every
    other dtype. `episodes` and `config` are kept for callers of the two-pass version."""
    out = {}
    for field in fields if fields is not None else stats_fields(store.schema):
        spec = store.schema[field]
        out[field] = fixed_edges(spec.dtype, _num_features(spec))
    return out


def field_parts(store, episodes: Sequence[int], edges: dict[str, np.ndarray | None],
                config: StatsConfig | None = None,
                frame_parts: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, sparts.AnyPart]:
    """Pass 2: one part per episode and field, merged over `episodes`, for every field in `edges`.
    `frame_parts` (episode key -> field -> `sampled_frames_part`) are used where their sampling matches
    `config`, instead of reading those frames back."""
    cfg = config or StatsConfig()
    keys = store.episode_keys
    frame_parts = frame_parts or {}
    out = {}
    for field, e in edges.items():
        # Folded a block of episodes at a time (the same left fold: moments in order, buckets added), so
        # that a store of 10^6 episodes never holds 10^6 parts at once.
        acc = sparts.empty(_num_features(store.schema[field]), e)
        for i in range(0, len(episodes), _FOLD_EPISODES):
            acc = sparts.merge_many(acc, [_episode_part(store, ep, field, e, cfg,
                                                        frame_parts.get(keys[ep], {}).get(field))
                                          for ep in episodes[i:i + _FOLD_EPISODES]])
        out[field] = acc
    return out


def merge_stats_parts(a: dict[str, sparts.AnyPart], b: dict[str, sparts.AnyPart]) -> dict[str, sparts.AnyPart]:
    """Field-wise `stats.parts.merge` of two `field_parts` results (a field missing on one side is taken as
    is). stats(A ∪ B) == merge(stats(A), stats(B)), whatever the ranges of A and B."""
    out = dict(a)
    for field, part in b.items():
        out[field] = sparts.merge(out[field], part) if field in out else part
    return out


def finalize_stats_parts(parts: dict[str, sparts.AnyPart], schema: Schema) -> dict[str, dict[str, list]]:
    """LeRobot stats per field (`moments.finalize`); uint8 images are scaled by 1/255 into [0, 1]."""
    out = {}
    for field, part in parts.items():
        spec = schema[field]
        scale = 1.0 / 255.0 if spec.kind == "image" and np.dtype(spec.dtype) == np.uint8 else 1.0
        out[field] = sparts.finalize_part(part, scale=scale)
    return out


def robot_fields(schema: Schema) -> dict[str, dict[str, str | None]]:
    """Robot prefixes: each field `<prefix>.eef_pos` (shape (>=3,)), with `<prefix>.eef_quat` (shape (4,))
    and `<prefix>.gripper` (shape () or (1,)) when present. `obs.left.eef_pos` -> prefix `obs.left`."""
    out = {}
    for key, spec in schema.items():
        if not (key == "eef_pos" or key.endswith(".eef_pos")):
            continue
        prefix = key[: -len("eef_pos")].rstrip(".")
        if len(spec.shape) != 1 or spec.shape[0] < 3:
            log.warning("%s has shape %s, not (>=3,): no robot stats for prefix %r", key, spec.shape, prefix)
            continue
        dot = f"{prefix}." if prefix else ""
        quat, grip = f"{dot}eef_quat", f"{dot}gripper"
        out[prefix] = {"eef_pos_field": key,
                       "eef_quat_field": quat if quat in schema and schema[quat].shape == (4,) else None,
                       "gripper_field": grip if grip in schema and schema[grip].shape in ((), (1,)) else None}
    return out


def robot_stats(store, episodes: Sequence[int], config: StatsConfig | None = None) -> dict[str, Any]:
    """Seed 001 extras per robot prefix: `height_bins` over world Z (eef_pos[:, 2], metres),
    `gripper_bins`, `rotation` (`robot.rotation_stats`; its `recommended_mode`); None where the field is
    absent. Low-dim fields of `episodes` are read whole (N x 8 floats per prefix)."""
    cfg = config or StatsConfig()
    out: dict[str, Any] = {}
    for prefix, names in robot_fields(store.schema).items():
        wanted = [f for f in names.values() if f is not None]
        arrays: dict[str, list[np.ndarray]] = {f: [] for f in wanted}
        for ep in episodes:
            for f, x in store.read(ep, wanted).items():
                arrays[f].append(np.asarray(x, dtype=np.float64))
        if not episodes or sum(len(a) for a in arrays[names["eef_pos_field"]]) == 0:
            log.warning("no steps for robot prefix %r: robot stats skipped", prefix)
            continue
        cat = {f: np.concatenate(v) for f, v in arrays.items()}
        entry: dict[str, Any] = dict(names)
        entry["height_bins"] = height_bins(cat[names["eef_pos_field"]][:, 2], cfg.height_bins,
                                           cfg.height_margin)
        grip = names["gripper_field"]
        entry["gripper_bins"] = gripper_bins(cat[grip].reshape(-1), cfg.gripper_bins) if grip else None
        quat = names["eef_quat_field"]
        entry["rotation"] = rotation_stats(cat[quat], cfg.rotation_bins, cfg.kmeans_clusters,
                                           cfg.pca_threshold, cfg.seed,
                                           separation_threshold=cfg.rotation_separation) if quat else None
        out[prefix] = entry
    return out


def compute_stats(store, config: StatsConfig | None = None, *,
                  frame_parts: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """stats.json of an `EpisodicStore` (structure in the module docstring), on the train split only.
    `frame_parts`: per-episode parts of frame fields made by the ingest workers (`sampled_frames_part`),
    which spare reading those frames back; the result is the same with or without them."""
    cfg = config or StatsConfig()
    episodes, computed_on = stats_episodes(store)
    split = store.split or {}
    edges = field_edges(store, episodes, cfg)
    parts = field_parts(store, episodes, edges, cfg, frame_parts)
    log.info("stats of %d fields over %d episodes (%s)", len(parts), len(episodes), computed_on)
    return {"computed_on": computed_on,
            "split": {"train": [int(i) for i in split.get("train", [])],
                      "val": [int(i) for i in split.get("val", [])]},
            "num_episodes": len(episodes),
            "num_steps": int(sum(store.episode_length(ep) for ep in episodes)),
            "config": asdict(cfg),
            "fields": finalize_stats_parts(parts, store.schema),
            "robot": robot_stats(store, episodes, cfg),
            "depth": depth_stats(store, episodes, cfg)}


def recompute_store_stats(path: str, config: StatsConfig | None = None, *, val_fraction: float | None = None,
                          split_seed: int | None = None) -> dict[str, Any]:
    """Recompute `stats.json` of a complete local store (`shardyard stats STORE`), optionally with a new
    by-episode split (`val_fraction`, `split_seed`), which is then also written to the manifest. Both files
    are replaced atomically. Returns the new stats dict. Raises `StoreError` if `path` is not a store."""
    from pathlib import Path

    from shardyard.stores.atomic import atomic_write_json
    from shardyard.stores.episodic import EpisodicStore, split_episodes
    from shardyard.stores.manifest import MANIFEST, Manifest

    store = EpisodicStore(path)
    manifest = Manifest.from_dict(store.manifest)
    if val_fraction is not None or split_seed is not None:
        vf = manifest.extra.get("val_fraction", 0.1) if val_fraction is None else val_fraction
        seed = manifest.extra.get("split_seed", 0) if split_seed is None else split_seed
        manifest.split = split_episodes(store.episode_keys, vf, seed)
        manifest.extra.update(val_fraction=vf, split_seed=seed)
        store = EpisodicStore(path, manifest=manifest)
    stats = compute_stats(store, config)
    atomic_write_json(Path(path) / "stats.json", stats)
    atomic_write_json(Path(path) / MANIFEST, manifest.to_dict())
    return stats
