"""`EpisodeDataset`: a map-style dataset over any episodic store, for ACT, Diffusion Policy, pi0 and the like.

One sample per anchor `(episode e, step t)` of the selected episodes. For each requested field, `deltas` gives
the step offsets read around the anchor (`{"obs.rgb.top": [0], "action": range(16), "obs.state": [-1, 0]}`),
or `delta_timestamps` gives them in seconds (LeRobot's name; converted with the store's fps and checked to
fall on a frame within `tolerance_s`). As in LeRobot's `LeRobotDataset` (`delta_timestamps`, `*_is_pad`), an
offset that leaves the episode repeats the episode's edge step and is flagged in `<field>_is_pad`.

Fields are named as in the store (`obs.rgb.cam_high`, `obs.state`) or by their LeRobot feature names
(`observation.images.cam_high`, `observation.state`); a sample uses the name it was asked for. Images come
as `uint8 (K, C, H, W)`, so the worker-to-trainer transport carries a quarter of the float bytes;
`loaders.normalize.normalize_images` converts them once on the training device. Other fields come as
`(K, *shape)` (float fields as float32), optionally normalised from `stats.json` (`loaders.normalize`),
with `unnormalize` and `decode_action` as the inverse for predictions.

Relative actions (`relative_action=True`): the action field becomes `action[t + k] - state[t]` on
`relative_dims`, as UMI and pi0 use. Its stats are not in `stats.json`: they are computed on construction
(`loaders.normalize.relative_action_stats`, not cached in a file, so a read-only or remote store works)
from the store's train split, every anchor and served offset (padded ones left out), with the mergeable
stats parts of `stores.stats.moments`; `relative_stats` has them in `stats.json`'s per-field layout.

Reads are batched: `__getitems__` (used by `DataLoader` and `loaders.sampler.BatchStream`) gathers each
field's rows for the whole batch, then reads them with one `read_rows` call per run of consecutive frames
(low-dim fields: per span, from the store's in-memory copy). Handles open lazily in each worker, and the
dataset pickles without anything per episode or step: its selection travels as config and a worker rebuilds
the anchors from the store's columns (`loaders.selection`, checked against a digest), so a spawned worker
receives a few kB whatever the store's size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from shardyard.errors import ConfigError, StoreChangedError
from shardyard.lerobot_names import field_from_feature
from shardyard.loaders.normalize import FieldNorm, relative_action_stats
from shardyard.loaders.selection import Anchors, absent_episodes, select_episodes, shared_fps
from shardyard.schema import FRAME_KINDS, SKIP_KINDS
from shardyard.stores.snapshot import reads_snapshot

log = logging.getLogger(__name__)

SPAN_GAP_BYTES = 1 << 20  # low-dim rows closer than this are read as one span (and indexed in memory)

__all__ = ["EpisodeDataset", "EpisodeDatasetConfig", "resolve_field", "gather_rows"]


@dataclass
class EpisodeDatasetConfig:
    """Options of `EpisodeDataset`.

    split: "train", "val" (the store's by-episode split) or None (every episode). episodes: episode indices
    or keys to keep (intersected with the split; None keeps all). normalization: field (store or LeRobot
    name) -> mode (`loaders.normalize.MODES`: "mean_std", "min_max", "quantiles", "identity"); fields not
    named stay raw, images always stay uint8. relative_action: serve `action_field` minus `state_field` at
    the anchor step on `relative_dims` (default every dim; the two fields must then have the same shape).
    tolerance_s: how far (seconds) a `delta_timestamps` value may be from a whole step (LeRobot's 1e-4).
    include_task: add the episode's task text as `task` (a str). eps: smallest normalisation scale.
    float32: serve float fields as float32 (else in their stored dtype). verify_reads: a store given by path
    checks every read against the checksums recorded at write time (`stores.read_checks`: damage raises
    `StoreDamagedError`); False skips the checks (a store given as an object keeps its own setting).
    """

    split: str | None = None
    episodes: Sequence[int | str] | None = None
    normalization: Mapping[str, str] | None = None
    relative_action: bool = False
    action_field: str = "action"
    state_field: str = "obs.state"
    relative_dims: Sequence[int] | None = None
    tolerance_s: float = 1e-4
    include_task: bool = False
    eps: float = 1e-8
    float32: bool = True
    verify_reads: bool = True


def resolve_field(schema: Any, name: str) -> str:
    """The store field for `name`: a store field key, or a LeRobot feature name (`observation.images.<cam>`
    -> `obs.rgb.<cam>`, `observation.<x>` -> `obs.<x>`). Raises ConfigError listing the store's fields."""
    if name in schema:
        return name
    alt = field_from_feature(name)
    if alt in schema:
        return alt
    raise ConfigError(f"no field {name!r} in the store; it has {list(schema.keys())}")


def gather_rows(store: Any, field: str, rows: np.ndarray, max_gap: int = 1,
                channels_first: bool = False) -> np.ndarray:
    """Rows `rows (M,)` (global steps, any order, repeats allowed) of `field` as `(M, *shape)` (`(M, C, H, W)`
    frames with `channels_first`: `store.read_rows`' option). The sorted unique rows are cut where two
    neighbours are more than `max_gap` apart; each piece is one `store.read_rows` call in row order (a video
    store decodes each GOP once), copied once into the output, or, a frame piece of one row, read straight
    into its place there (no concatenation, no second gather)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    spec = store.schema[field]
    if len(rows) == 0:
        shape = (spec.shape[2], *spec.shape[:2]) if channels_first else spec.shape
        return np.zeros((0, *shape), dtype=spec.dtype)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    cuts = np.flatnonzero(np.diff(srt) > max_gap) + 1
    bounds = np.concatenate([[0], cuts, [len(srt)]])
    out = None
    layout = {"channels_first": True} if channels_first else {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = int(srt[a]), int(srt[b - 1]) + 1
        if out is not None and b - a == 1 and spec.kind in FRAME_KINDS:
            store.read_rows(field, lo, hi, out=out[order[a]:order[a] + 1], **layout)
            continue
        block = store.read_rows(field, lo, hi, **layout)
        if out is None:
            out = np.empty((len(rows),) + block.shape[1:], dtype=block.dtype)
        out[order[a:b]] = block if hi - lo == b - a else block[srt[a:b] - lo]
    return out


def _as_steps(name: str, values: Iterable[Any]) -> np.ndarray:
    steps = np.asarray(list(values))
    if steps.ndim != 1 or len(steps) == 0:
        raise ConfigError(f"deltas of {name!r} must be a non-empty list of step offsets, got {steps.tolist()}")
    if steps.dtype.kind not in "iu" and not np.all(steps == np.round(steps)):
        raise ConfigError(f"deltas of {name!r} are steps (whole numbers), got {steps.tolist()}: "
                          "use delta_timestamps for seconds")
    return steps.astype(np.int64)


def _steps_from_seconds(name: str, seconds: Iterable[float], fps: float, tol: float) -> np.ndarray:
    s = np.asarray(list(seconds), dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ConfigError(f"delta_timestamps of {name!r} must be a non-empty list of seconds")
    steps = np.round(s * fps)
    off = np.abs(s - steps / fps)
    if np.any(off > tol):
        bad = s[off > tol].tolist()
        raise ConfigError(f"delta_timestamps of {name!r}: {bad} s are not whole steps at {fps} Hz "
                          f"(tolerance {tol} s)")
    return steps.astype(np.int64)


class EpisodeDataset(torch.utils.data.Dataset):
    """Map-style dataset of windows around anchor steps of an episodic store (see the module docstring).

    store: `EpisodicStore` or its path/URL. deltas: field -> step offsets (ints, e.g. `range(16)`), or
    delta_timestamps: field -> offsets in seconds (exactly one of the two). config: `EpisodeDatasetConfig`.
    anchor_mask: optional `(num_steps,) bool` over the store's global steps; False drops that anchor.

    Item `i` -> dict: per requested field `name`, `name` -> `(K, *shape)` tensor (K = len(deltas[name]);
    images `uint8 (K, C, H, W)`, views of the batch's contiguous planes; float fields float32, normalised
    when configured) and `name_is_pad` -> `(K,) bool` (True where the offset left the episode and the edge
    step was repeated, and at every step of an episode whose meta lists the field in `absent_fields`:
    placeholders, not data); `episode_index` (store episode), `frame_index` (step within the episode), `index`
    (global step of the store, LeRobot's `index`) as ints; `task` (str) with `include_task`.

    Raises ConfigError for an unknown field, split or episode, a text/video field, a non-whole-step delta,
    episodes of different fps with `delta_timestamps`, missing stats for a normalised field, relative
    actions on mismatched shapes, or an empty selection; IndexError for an index out of range.
    """

    def __init__(self, store: Any, deltas: Mapping[str, Iterable[int]] | None = None, *,
                 delta_timestamps: Mapping[str, Iterable[float]] | None = None,
                 config: EpisodeDatasetConfig | None = None, anchor_mask: np.ndarray | None = None) -> None:
        if isinstance(store, (str, os.PathLike)):
            from shardyard import open_store

            store = open_store(str(store), verify_reads=(config or EpisodeDatasetConfig()).verify_reads)
        self.store = store
        self.cfg = cfg = config or EpisodeDatasetConfig()
        if (deltas is None) == (delta_timestamps is None):
            raise ConfigError("give exactly one of deltas (steps) and delta_timestamps (seconds)")
        self._episodes: np.ndarray | None = None
        self._anchors: Anchors | None = None
        self.fps = shared_fps(store, self.episodes) if delta_timestamps is not None else None
        self.fields: dict[str, str] = {}      # requested name -> store field
        self.deltas: dict[str, np.ndarray] = {}
        for name, vals in (deltas or delta_timestamps).items():
            field = resolve_field(store.schema, name)
            if store.schema[field].kind in SKIP_KINDS:
                raise ConfigError(f"field {name!r} is of kind {store.schema[field].kind!r}: not served")
            self.fields[name] = field
            self.deltas[name] = (_as_steps(name, vals) if deltas is not None
                                 else _steps_from_seconds(name, vals, self.fps, cfg.tolerance_s))
        self._absent_eps: dict[str, np.ndarray] | None = absent_episodes(store, self.fields)
        self._build_anchors(anchor_mask)
        self._setup_relative()
        self.norms: dict[str, FieldNorm] = self._norms()
        log.info("EpisodeDataset: %d anchors from %d episodes, fields %s", len(self), len(self.episodes),
                 {k: len(v) for k, v in self.deltas.items()})

    # -- construction ------------------------------------------------------------------------------------
    def _build_anchors(self, anchor_mask: np.ndarray | None) -> None:
        n = self.store.num_steps
        if anchor_mask is not None and np.asarray(anchor_mask).shape != (n,):
            raise ConfigError(f"anchor_mask must be ({n},) bool over the store's steps, "
                              f"got {np.asarray(anchor_mask).shape}")
        # kept packed (1 bit a step) for a worker to rebuild the anchors with; without a mask nothing per step
        self._anchor_bits = None if anchor_mask is None else np.packbits(np.asarray(anchor_mask, dtype=bool))
        self._anchors = Anchors(self.store, self.episodes, anchor_mask)
        if len(self._anchors) == 0:
            raise ConfigError(f"no valid anchor steps selected (split {self.cfg.split!r}, "
                              f"{len(self.episodes)} episodes)")
        self._digest = self._anchors.digest()

    def __getstate__(self) -> dict[str, Any]:
        # A worker gets the selection as config, not as arrays: it rebuilds them from the store's columns
        # (`loaders.selection`), so the pickled dataset does not grow with the store.
        return dict(self.__dict__) | {"_episodes": None, "_anchors": None, "_absent_eps": None}

    @property
    def anchors(self) -> Anchors:
        """Item -> (store row, episode) (`loaders.selection.Anchors`); a worker's copy rebuilds it from the
        store's columns and raises `StoreChangedError` when that is not what the dataset was made with."""
        if self._anchors is None:
            self._anchors = self._rebuild()
        return self._anchors

    def _rebuild(self) -> Anchors:
        mask = None
        if self._anchor_bits is not None:
            mask = np.unpackbits(self._anchor_bits, count=self.store.num_steps).astype(bool)
        anchors = Anchors(self.store, self.episodes, mask)
        if anchors.digest() != self._digest:
            raise StoreChangedError("the episodes this dataset serves changed since it was made (a new split?): "
                                    "make the dataset again", path=getattr(self.store, "url", None))
        return anchors

    @property
    def absent(self) -> dict[str, np.ndarray]:
        """Served name -> episodes without such data (`loaders.selection.absent_episodes`)."""
        if self._absent_eps is None:
            self._absent_eps = absent_episodes(self.store, self.fields)
        return self._absent_eps

    @property
    def episodes(self) -> np.ndarray:
        """`(M,) int64` the episodes served, increasing (`loaders.selection.select_episodes`)."""
        if self._episodes is None:
            self._episodes = select_episodes(self.store, self.cfg.split, self.cfg.episodes)
        return self._episodes

    @property
    def rows(self) -> np.ndarray:
        """`(A,)` the global store row of each anchor (item), listed on first use."""
        return self.anchors.rows

    @property
    def episode_of(self) -> np.ndarray:
        """`(A,)` the episode of each anchor, listed on first use."""
        return self.anchors.episode_of

    def _norms(self) -> dict[str, FieldNorm]:
        out = {}
        for name, mode in (self.cfg.normalization or {}).items():
            field = resolve_field(self.store.schema, name)
            key = next((k for k, f in self.fields.items() if f == field), None)
            if key is None:
                raise ConfigError(f"normalization names {name!r}, which is not among the served fields "
                                  f"{list(self.fields)}")
            field = self.fields[key]
            spec = self.store.schema[field]
            if spec.kind == "image":
                raise ConfigError(f"field {name!r} is an image: images stay uint8; normalise them on the device "
                                  "with loaders.normalize.normalize_images")
            stats = self.relative_stats if key == self._relative_key else \
                (self.store.stats.get("fields") or {}).get(field)
            if stats is None:
                raise ConfigError(f"no stats for field {field!r} in stats.json: cannot normalise it "
                                  "(run `shardyard stats STORE`)")
            out[key] = FieldNorm.from_stats(stats, mode, spec.shape, field=field, eps=self.cfg.eps)
        return out

    def _setup_relative(self) -> None:
        cfg = self.cfg
        self._relative_key: str | None = None
        self.relative_stats: dict[str, list] | None = None
        if not cfg.relative_action:
            return
        schema = self.store.schema
        act, state = resolve_field(schema, cfg.action_field), resolve_field(schema, cfg.state_field)
        key = next((k for k, f in self.fields.items() if f == act), None)
        if key is None:
            raise ConfigError(f"relative_action needs the action field {cfg.action_field!r} among the deltas")
        a_shape, s_shape = schema[act].shape, schema[state].shape
        if len(a_shape) != 1 or len(s_shape) != 1:
            raise ConfigError(f"relative_action needs vector fields; {act} is {a_shape}, {state} is {s_shape}")
        dims = np.arange(a_shape[0]) if cfg.relative_dims is None else np.asarray(cfg.relative_dims, np.int64)
        if cfg.relative_dims is None and a_shape != s_shape:
            raise ConfigError(f"relative_action: {act} {a_shape} and {state} {s_shape} differ: give relative_dims")
        if len(dims) == 0 or dims.min() < 0 or dims.max() >= min(a_shape[0], s_shape[0]):
            raise ConfigError(f"relative_dims {dims.tolist()} outside [0, {min(a_shape[0], s_shape[0])})")
        self._relative_key, self._state_field, self._dims = key, state, dims
        self.relative_stats = relative_action_stats(self.store, act, state, self.deltas[key], dims)

    # -- reading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.anchors)

    def _gather(self, field: str, rows: np.ndarray, channels_first: bool = False) -> np.ndarray:
        spec = self.store.schema[field]
        if spec.kind in FRAME_KINDS:
            gap = 1
        else:
            row_bytes = max(int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize, 1)
            gap = max(1, SPAN_GAP_BYTES // row_bytes)
        return gather_rows(self.store, field, rows, gap, channels_first)

    @reads_snapshot("store")  # one read section a batch: served whole from the version opened, or StoreChangedError
    def fetch(self, indices: Sequence[int], channels_first: bool = False) -> dict[str, np.ndarray]:
        """A batch as numpy arrays: per field `name` -> `(B, K, *shape)` (raw store layout: images
        `(B, K, H, W, C)` uint8, or `(B, K, C, H, W)` contiguous planes with `channels_first`; normalisation and
        relative actions applied), `name_is_pad (B, K) bool`, `episode_index`, `frame_index`, `index (B,)
        int64`. Raises IndexError for an index out of range."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range [0, {len(self)}): {idx.tolist()}")
        idx %= max(len(self), 1)
        rows, ep = self.anchors.lookup(idx)
        a = self.store.episode_starts[ep][:, None]
        b = self.store.episode_ends[ep][:, None]
        out: dict[str, np.ndarray] = {}
        for name, field in self.fields.items():
            want = rows[:, None] + self.deltas[name][None, :]                # (B, K)
            q = np.clip(want, a, b - 1)
            spec = self.store.schema[field]
            planar = channels_first and spec.kind == "image" and len(spec.shape) == 3
            x = self._gather(field, q.reshape(-1), planar)
            x = x.reshape(q.shape + x.shape[1:])
            if channels_first and spec.kind == "image" and not planar:  # (H, W) gray: one plane
                x = x[:, :, None]
            if x.dtype.kind == "f" and self.cfg.float32:
                x = x.astype(np.float32, copy=False)
            if name == self._relative_key:
                s = self._gather(self._state_field, rows).astype(np.float32)  # (B, S) at the anchor
                x = x.copy()
                x[..., self._dims] -= s[:, None, self._dims]
            if name in self.norms:
                x = self.norms[name].apply(x).astype(np.float32, copy=False)
            out[name] = x
            out[f"{name}_is_pad"] = (want < a) | (want >= b)
            if name in self.absent:  # the episode has no such data: every step of the window is padding
                out[f"{name}_is_pad"] |= np.isin(ep, self.absent[name])[:, None]
        out["episode_index"] = ep
        out["frame_index"] = rows - self.store.episode_starts[ep]
        out["index"] = rows
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items `indices` (see the class docstring), read as one batch (`fetch`)."""
        # Images come (B, K, C, H, W) as contiguous planes (`stores.frames.planes`), so collate's stack copies
        # them whole: its transposing copy of channels-last views cost as much as decoding a JPEG.
        batch = self.fetch(indices, channels_first=True)
        tensors = {}
        for name in self.fields:
            tensors[name] = torch.from_numpy(batch[name])
            tensors[f"{name}_is_pad"] = torch.from_numpy(batch[f"{name}_is_pad"])
        # unbind / tolist make all per-sample views and ints in one call each (indexing per item costs
        # more than the whole low-dim read of the batch)
        cols: dict[str, Sequence[Any]] = {k: t.unbind(0) for k, t in tensors.items()}
        for k in ("episode_index", "frame_index", "index"):
            cols[k] = batch[k].tolist()
        if self.cfg.include_task:
            tasks = getattr(self.store, "episode_tasks", None)
            cols["task"] = tasks(batch["episode_index"]) if tasks is not None else \
                [self.store.episode_meta(e).get("task") or "" for e in cols["episode_index"]]
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*cols.values())]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([int(i)])[0]

    # -- inverse for predictions ------------------------------------------------------------------------------
    def unnormalize(self, name: str, x: Any) -> Any:
        """Raw values of normalised `x (..., *shape)` of field `name` (numpy or tensor); `x` itself when the
        field is not normalised. `name` is the served name, the store field or its LeRobot name. For relative
        actions this gives the relative values (see `decode_action`). Raises ConfigError for a field not in
        the store."""
        norm = self.norms.get(name)
        if norm is None:
            field = resolve_field(self.store.schema, name)
            norm = next((self.norms[k] for k, f in self.fields.items() if f == field and k in self.norms), None)
        return x if norm is None else norm.invert(x)

    def decode_action(self, pred: Any, state: Any) -> Any:
        """Absolute actions `(B, K, A)` from predicted `pred (B, K, A)` in the served space (normalised and,
        with `relative_action`, relative), given the raw (not normalised) state at the anchor `state (B, S)`.
        Numpy arrays or tensors. Raises ConfigError without `relative_action`."""
        if self._relative_key is None:
            raise ConfigError("decode_action is for relative actions; use unnormalize(field, x)")
        raw = self.unnormalize(self._relative_key, pred)
        dims = self._dims
        if isinstance(raw, torch.Tensor):
            d = torch.as_tensor(dims, device=raw.device)
            s = torch.as_tensor(state, dtype=raw.dtype, device=raw.device)
            raw = raw.clone()
            raw[..., d] += s[..., None, :][..., d]
        else:
            raw = np.array(raw, dtype=np.float32)
            raw[..., dims] += np.asarray(state, dtype=np.float32)[..., None, dims]
        return raw
