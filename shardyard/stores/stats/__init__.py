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
from dataclasses import asdict, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from shardyard.schema import FRAME_KINDS, SKIP_KINDS, FieldSpec, Schema
from shardyard.stores.stats import fold
from shardyard.stores.stats import parts as sparts
from shardyard.stores.stats.config import StatsConfig
from shardyard.stores.stats.depth import depth_stats
from shardyard.stores.stats.moments import FieldStatsPart, fixed_edges
from shardyard.stores.stats.part_table import LegacyParts
from shardyard.stores.stats.robot import gripper_bins, height_bins, rotation_stats

log = logging.getLogger(__name__)

_BLOCK_ROWS = 64  # frames per read when walking an episode's frame field
_FOLD_EPISODES = 1024  # episode parts merged per step of the stats fold
_VECTOR_BLOCK_ROWS = 8192  # steps per read of a low-dim field (per-block overhead dominated at 64)
ROTATION_STEPS = 500_000  # most quaternions the rotation stats fit on (its temporaries: ~0.1 GB)

__all__ = ["StatsConfig", "compute_stats", "stats_episodes", "stats_fields", "field_rows", "field_edges",
           "field_parts", "frame_sampling", "sampled_frames_part", "merge_stats_parts", "finalize_stats_parts",
           "robot_fields", "robot_stats", "holding_field"]


def stats_episodes(store) -> tuple[list[int], str]:
    """Episodes the stats use and how they were chosen: the manifest's train split ("train"), or every
    episode when that split is empty or absent ("all (train split empty)")."""
    indices = getattr(store, "split_indices", None)
    got = indices("train") if indices is not None else (store.split or {}).get("train")
    train = [] if got is None else np.asarray(got, dtype=np.int64).tolist()
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
    while it encodes them (`stores.frames.encoding.FrameEncoding`), or None when the field's stats cannot be
    made per episode ahead of the stats pass (histogram edges that depend on the data: non-uint8)."""
    cfg = config or StatsConfig()
    if spec.kind != "image" or fixed_edges(spec.dtype, _num_features(spec)) is None:
        return None
    return cfg.image_frame_stride, cfg.image_pixel_stride


def sampled_frames_part(sample: np.ndarray, spec: FieldSpec, config: StatsConfig | None = None) -> dict[str, Any]:
    """The stats part of one episode's frame field from the frames a worker sampled while encoding
    (`(n, H / s, W / s, C)`: steps 0, k, 2k, ... at every s-th pixel, see `frame_sampling`), as the dict the
    writer keeps per episode (`FieldStatsPart.to_dict`'s keys, its arrays left as numpy arrays: they go to
    `meta/stats_parts` as columns, `stats.part_table`). Equal, bit for bit, to what the stats pass computes
    from the store (same rows, same blocks, same merge order), which then uses it instead of reading the
    frames back."""
    cfg = config or StatsConfig()
    f = _num_features(spec)
    edges = fixed_edges(spec.dtype, f)
    blocks = (_to_rows(sample[i:i + _BLOCK_ROWS], spec, cfg, pixels_sampled=True)
              for i in range(0, len(sample), _BLOCK_ROWS))
    part = _blocks_part(blocks, f, edges)
    d = replace(part, hist=None).to_dict() | {"sum": part.sum, "m2": part.m2, "min": part.min, "max": part.max,
                                              "hist": part.hist}
    return {"frame_stride": cfg.image_frame_stride, "pixel_stride": cfg.image_pixel_stride, "part": d}


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
                config: StatsConfig | None = None, frame_parts: Any = None) -> dict[str, sparts.AnyPart]:
    """Pass 2: one part per episode and field, merged over `episodes` in order, for every field in `edges`.
    `frame_parts` (the ingest workers' per-episode `sampled_frames_part`s: a `part_table.PartTable` or
    `LegacyParts`, or a mapping episode key -> field -> part) are used where their sampling matches `config`,
    instead of reading those frames back. Low-dim fields are read a block of episodes at a time and dense
    parts folded as arrays (`stats.fold`): the same result as merging one episode at a time, in bounded
    memory."""
    cfg = config or StatsConfig()
    source = part_source(store, frame_parts)
    out = {}
    for field, e in edges.items():
        spec = store.schema[field]
        holding = np.asarray(holding_field(store, episodes, field), dtype=np.int64)
        ordered = bool(np.all(np.diff(holding) > 0))
        f = _num_features(spec)
        if spec.kind not in FRAME_KINDS and e is None and ordered and hasattr(store, "read_block"):
            out[field] = fold.lowdim_part(store, field, holding, f)
        elif e is not None:
            out[field] = _dense_part(store, field, holding, e, cfg, source if ordered else None)
        else:  # sparse frame parts (float depth, tokens): one episode at a time, a block folded per step
            acc = sparts.empty(f, e)
            for i in range(0, len(holding), _FOLD_EPISODES):
                acc = sparts.merge_many(acc, [_episode_part(store, int(ep), field, e, cfg, _pre(source, ep, field))
                                              for ep in holding[i:i + _FOLD_EPISODES]])
            out[field] = acc
    return out


def part_source(store, frame_parts: Any) -> Any:
    """`frame_parts` as an object with `get(episode, field)` and `blocks(field)` (`part_table`), or None."""
    if frame_parts is None or hasattr(frame_parts, "blocks"):
        return frame_parts
    return LegacyParts.of_mapping(frame_parts, store.episode_keys)


def _pre(source: Any, episode: int, field: str) -> dict[str, Any] | None:
    return None if source is None else source.get(int(episode), field)


def _dense_part(store, field: str, episodes: np.ndarray, edges: np.ndarray, cfg: StatsConfig,
                source: Any) -> sparts.AnyPart:
    """The dense part of `field` (fixed edges) over `episodes` in order: stored parts of matching sampling
    taken from `source` a row group at a time, the other episodes' parts made from their frames; folded
    with `fold.fold_moments` (exactly the one-by-one merge)."""
    f = _num_features(store.schema[field])
    acc = sparts.empty(f, edges)
    strides = np.array([cfg.image_frame_stride, cfg.image_pixel_stride])
    lo, bins = int(edges[0, 0] + 0.5), edges.shape[1] - 1
    i = 0
    for block in source.blocks(field) if source is not None else ():
        j = int(np.searchsorted(episodes, block.episodes[-1], side="right"))
        pos = np.minimum(np.searchsorted(block.episodes, episodes[i:j]), len(block.episodes) - 1)
        ok = (block.episodes[pos] == episodes[i:j]) & np.all(block.strides[pos] == strides, axis=1) \
            & (block.unit_from == lo) & (block.hist.shape[2] == bins)
        if ok.all():
            p = pos
            acc = fold.fold_moments(acc, block.count[p], block.sum[p], block.m2[p], block.min[p], block.max[p])
            acc.hist = acc.hist + block.hist[p].sum(axis=0)
        else:
            acc = fold.fold_dense(acc, [_block_part(block, int(q), edges) if good
                                        else _episode_part(store, int(ep), field, edges, cfg)
                                        for ep, q, good in zip(episodes[i:j], pos, ok)])
        i = j
    for k in range(i, len(episodes), _FOLD_EPISODES):
        acc = fold.fold_dense(acc, [_episode_part(store, int(ep), field, edges, cfg, _pre(source, ep, field))
                                    for ep in episodes[k:k + _FOLD_EPISODES]])
    return acc


def _block_part(block: Any, q: int, edges: np.ndarray) -> FieldStatsPart:
    return FieldStatsPart(count=int(block.count[q]), sum=block.sum[q], m2=block.m2[q], min=block.min[q],
                          max=block.max[q], hist=block.hist[q], edges=edges)


def holding_field(store, episodes: Sequence[int], field: str) -> list[int]:
    """The episodes of `episodes` that hold `field`: an episode whose meta lists it in `absent_fields` (its
    source had no such data; the rows are placeholders) is left out of that field's stats."""
    entries = getattr(store, "episode_entries", None)
    if entries is not None:  # one column read, not a metadata row per episode
        absent = entries("absent_fields")
        lacking = {i for i, a in enumerate(absent) if a and field in a}
        return [ep for ep in episodes if ep not in lacking] if lacking else list(episodes)
    record = getattr(store, "episode_record", None)
    if record is None:
        return list(episodes)
    return [ep for ep in episodes if field not in (record(ep).get("absent_fields") or ())]


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


def robot_stats(store, episodes: Sequence[int], config: StatsConfig | None = None, *,
                map_fn: Callable[..., Iterable[Any]] = map) -> dict[str, Any]:
    """Seed 001 extras per robot prefix: `height_bins` over world Z (eef_pos[:, 2], metres),
    `gripper_bins`, `rotation` (`robot.rotation_stats`; its `recommended_mode`); None where the field is
    absent. Low-dim fields of `episodes` are read whole (N x 8 floats per prefix), a block at a time; the
    rotation statistics take at most `ROTATION_STEPS` steps (drawn with `config.seed`), so that their PCA,
    distinct count and k-means sample stay within bounded memory at 10^6 episodes (a 4-D distribution's
    principal axes and prototypes do not need more). `map_fn` runs the k-means runs (`robot.rotation_stats`)."""
    cfg = config or StatsConfig()
    out: dict[str, Any] = {}
    for prefix, names in robot_fields(store.schema).items():
        pos, grip, quat = names["eef_pos_field"], names["gripper_field"], names["eef_quat_field"]
        z = _robot_rows(store, episodes, pos, column=2)  # height: world Z only, one field in memory at a time
        if z is None or len(z) == 0:
            log.warning("no steps for robot prefix %r: robot stats skipped", prefix)
            continue
        entry: dict[str, Any] = dict(names)
        entry["height_bins"] = height_bins(z, cfg.height_bins, cfg.height_margin)
        del z
        g = _robot_rows(store, episodes, grip) if grip else None
        entry["gripper_bins"] = gripper_bins(g.reshape(-1), cfg.gripper_bins) if g is not None else None
        del g
        q = _robot_rows(store, episodes, quat, sample=ROTATION_STEPS, seed=cfg.seed) if quat else None
        entry["rotation"] = rotation_stats(q, cfg.rotation_bins, cfg.kmeans_clusters, cfg.pca_threshold, cfg.seed,
                                           separation_threshold=cfg.rotation_separation,
                                           map_fn=map_fn) if q is not None else None
        out[prefix] = entry
    return out


def _robot_rows(store, episodes: Sequence[int], field: str, column: int | None = None, sample: int | None = None,
                seed: int = 0) -> np.ndarray | None:
    """`field`'s rows over the episodes that hold it (float64; one `column` of them), or at most `sample` of
    them drawn with `seed` (read block by block, only those kept); None when no episode holds it."""
    held = holding_field(store, episodes, field)
    if not len(held):
        return None
    take = None
    if sample is not None:
        eps = np.asarray(held, dtype=np.int64)
        n = int(np.sum(np.asarray(store.episode_ends)[eps] - np.asarray(store.episode_starts)[eps]))
        if n > sample:  # bounded memory: a seeded sample of the steps
            take = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    return np.asarray(fold.gather_rows(store, field, held, take=take, column=column), dtype=np.float64)


def compute_stats(store, config: StatsConfig | None = None, *, frame_parts: Any = None,
                  map_fn: Callable[..., Iterable[Any]] = map) -> dict[str, Any]:
    """stats.json of an `EpisodicStore` (structure in the module docstring), on the train split only.
    `frame_parts`: per-episode parts of frame fields made by the ingest workers (`sampled_frames_part`; a
    `part_table.PartTable`, or a mapping key -> field -> part), which spare reading those frames back;
    `map_fn`: what runs the rotation k-means runs (an ingest passes its idle reader pool's `map`). The
    result is the same with or without either."""
    cfg = config or StatsConfig()
    episodes, computed_on = stats_episodes(store)
    split = store.split or {}
    edges = field_edges(store, episodes, cfg)
    fields = {}
    for field, e in edges.items():  # one field's buckets in memory at a time (~100 MB at 10^6 episodes)
        fields[field] = finalize_stats_parts(field_parts(store, episodes, {field: e}, cfg, frame_parts),
                                             store.schema)[field]
    log.info("stats of %d fields over %d episodes (%s)", len(fields), len(episodes), computed_on)
    return {"computed_on": computed_on,
            "split": {"train": [int(i) for i in split.get("train", [])],
                      "val": [int(i) for i in split.get("val", [])]},
            "num_episodes": len(episodes),
            "num_steps": int(np.sum(np.asarray(store.episode_ends)[episodes]
                                    - np.asarray(store.episode_starts)[episodes])) if episodes else 0,
            "config": asdict(cfg),
            "fields": fields,
            "robot": robot_stats(store, episodes, cfg, map_fn=map_fn),
            "depth": depth_stats(store, episodes, cfg)}


def recompute_store_stats(path: str, config: StatsConfig | None = None, *, val_fraction: float | None = None,
                          split_seed: int | None = None) -> dict[str, Any]:
    """Recompute `stats.json` of a complete local store (`shardyard stats STORE`), optionally with a new
    by-episode split (`val_fraction`, `split_seed`), which is then also written to the manifest. Both files
    are replaced atomically. Returns the new stats dict. Raises `StoreError` if `path` is not a store."""
    from pathlib import Path

    from shardyard.stores.atomic import atomic_write_json
    from shardyard.stores.episode_table import write_split
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
    if manifest.split and manifest.format_version >= 2 and write_split(path, manifest.split, store.num_episodes):
        manifest.split = {}  # format 2 keeps the split in meta/split.parquet
    atomic_write_json(Path(path) / MANIFEST, manifest.to_dict())
    return stats
