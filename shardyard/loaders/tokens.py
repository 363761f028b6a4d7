"""`TokenDataset`: cached DINO tokens (and, with a store, the aligned step fields) as a map-style dataset.

Sample `i` is step `i` of the source store. Reads go through `ShardReader` (one `pread` per run of adjacent
chunks, no zarr-python per item), and `__getitems__` serves a whole DataLoader batch with one read per run of
consecutive indices. Handles open lazily in each process, so the dataset can be given to many workers
(fork or spawn); a feature store at an fsspec URL is read the same way, by byte ranges of its shards.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from shardyard.stores.features import CLS, FIELD_NAMES, PATCH, FeatureStore, open_features
from shardyard.stores.frames.zarr_shard import ShardReader
from shardyard.stores.snapshot import reads_snapshot

__all__ = ["CLS_KEY", "MISSING_KEY", "PATCH_KEY", "REMOTE_READS_IN_FLIGHT", "TokenDataset", "TokenDatasetConfig"]

log = logging.getLogger(__name__)

PATCH_KEY, CLS_KEY, MISSING_KEY = FIELD_NAMES["patch_tokens"], FIELD_NAMES["cls_token"], FIELD_NAMES["missing"]
_ARRAY = {PATCH_KEY: PATCH, CLS_KEY: CLS}
REMOTE_READS_IN_FLIGHT = 16  # ranged reads of a batch in flight at once from a store at a URL


@dataclass
class TokenDatasetConfig:
    """tokens: which token fields to return (`dino.patch_tokens`, `dino.cls_token`). as_float32: cast the
    stored float16/bfloat16 tokens to float32 (default keeps the stored dtype: half the bytes). verify_reads:
    stores given by path check each token chunk (and the source store's reads) against the checksums
    recorded at write time, raising `StoreDamagedError` (`stores.read_checks`); False skips the checks."""

    tokens: tuple[str, ...] = (PATCH_KEY, CLS_KEY)
    as_float32: bool = False
    verify_reads: bool = True


def _runs(idx: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Sorted unique indices -> runs `(start, stop, positions)` of consecutive values."""
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    bounds = np.concatenate([[0], breaks, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1, np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a feature store.

    Item `i` -> dict: `dino.patch_tokens (h*w, D)`, `dino.cls_token (D,)` (stored dtype, or float32),
    `dino.missing` (bool tensor; True = the frame failed to decode and the tokens are zeros), `index`, and,
    with `store`, each of `fields` at step `i` (`(*spec.shape)`). Default-collated batches are
    `(B, h*w, D)`, `(B, D)`, ...

    features: feature store path, fsspec URL (`s3://bucket/features`: ranged reads, each DataLoader worker
    with its own filesystem) or `FeatureStore`. store: the source store path, URL or object (must have as many
    steps). Raises `StoreError` for an incomplete store, `ValueError` when the store does not align or
    a field is unknown, `IndexError` out of range.
    """

    def __init__(self, features: str | os.PathLike | FeatureStore, store: Any = None,
                 fields: Sequence[str] | None = None, config: TokenDatasetConfig | None = None) -> None:
        self.cfg = config or TokenDatasetConfig()
        self.features = features if isinstance(features, FeatureStore) else \
            open_features(features, verify_reads=self.cfg.verify_reads)
        unknown = [t for t in self.cfg.tokens if t not in (PATCH_KEY, CLS_KEY)]
        if unknown:
            raise ValueError(f"unknown token field(s) {unknown}; expected {PATCH_KEY}, {CLS_KEY}")
        if isinstance(store, (str, os.PathLike)):
            from shardyard import open_store

            store = open_store(str(store), verify_reads=self.cfg.verify_reads)
        self.store = store
        if store is not None and store.num_steps != self.features.num_samples:
            raise ValueError(f"store has {store.num_steps} steps, feature store {self.features.num_samples}: "
                             "they are not aligned")
        if fields is None:
            fields = [] if store is None else [k for k in store.schema.keys()
                                               if store.schema[k].kind not in ("image", "depth", "video")]
        if fields and store is None:
            raise ValueError("fields need the source store: pass store=")
        missing_fields = [f for f in fields if f not in store.schema] if store is not None else []
        if missing_fields:
            raise ValueError(f"unknown field(s) {missing_fields}; store has {store.schema.keys()}")
        self.fields = list(fields)

    def __len__(self) -> int:
        return self.features.num_samples

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range [0, {len(self)})")
        return self.__getitems__([int(i) % len(self)])[0]

    def _read(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (any order, repeats allowed) of one token array: gathered chunk by chunk straight into
        the output when the store is raw, else one read per run of consecutive sorted indices."""
        fs = self.features
        reader = fs.array_reader(_ARRAY[name])
        x = reader.pread_rows(idx) if isinstance(reader, ShardReader) else None
        if x is not None:
            x = fs.decode(x)
        else:
            uniq, inverse = np.unique(idx, return_inverse=True)
            read = fs.patch_tokens if name == PATCH_KEY else fs.cls_token
            runs = _runs(uniq)
            if fs.is_remote and len(runs) > 1:  # one round trip per run: overlap them, not one after another
                with ThreadPoolExecutor(min(len(runs), REMOTE_READS_IN_FLIGHT)) as pool:
                    parts = list(pool.map(fs.snapshot.carried(lambda r: read(r[0], r[1])), runs))
            else:
                parts = [read(a, b) for a, b, _ in runs]
            x = (parts[0] if len(parts) == 1 else np.concatenate(parts))[inverse]
        return x.astype(np.float32) if self.cfg.as_float32 else x

    @reads_snapshot("features", "store")  # one read section a batch (`stores.snapshot`)
    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items (DataLoader calls this once per batch): reads grouped by runs of indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range [0, {len(self)})")
        cols: dict[str, np.ndarray] = {t: self._read(t, idx) for t in self.cfg.tokens}
        cols[MISSING_KEY] = self.features.missing[idx]
        for f in self.fields:
            cols[f] = np.stack([self.store.read_rows(f, int(i), int(i) + 1)[0] for i in idx]) if len(idx) else None
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cols.items()}
        return [{"index": int(i), **{k: t[j] for k, t in tensors.items()}} for j, i in enumerate(idx)]
