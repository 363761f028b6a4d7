"""Feature stores follow edits (issue 16, item 2): the `ingest dino` tokens of the edited episodes are
copied, row for row, into a feature store aligned with the edited store, without recomputing tokens.

A feature store belongs to a source store by provenance: its key's `source_fingerprint` is the sha256 of
the source's manifest (`stores.manifest.manifest_fingerprint`, which `ingest dino` uses too). Each input
feature store must match its source store, and the inputs of a merge must share the rest of the key (model, weights,
preprocessing, field, dtype) and the layout (grid, embed dim, patch size); every mismatch is listed at
once. The result's key is the inputs' with the new store's fingerprint and step count, so `ingest dino` on
the edited store resumes it as complete; its token stats are recomputed from the copied tokens.

Checksums: the copied tokens are written by `write_batch`, which records the crc32c of each stored chunk
like `ingest dino` does. Where an input's chunk codec is the output's (the same bytes, then), each new
crc32c must equal the one the input recorded for that sample: a token damaged in the input since it was
written is refused (StoreError naming the sample, its episode and the input) rather than copied into a
store whose new checksums would vouch for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from shardyard.errors import ConfigError, StoreError
from shardyard.stores.checksums import CHUNK_CRC, read_crc32c
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.feature_rows import TOKEN_ARRAYS
from shardyard.stores.features import (
    FeatureLayout,
    FeatureStore,
    FeatureWriter,
    FeatureWriterConfig,
    key_diff,
    write_batch,
)
from shardyard.stores.frames.codec import ChunkCodec
from shardyard.stores.frames.registry import chunk_codec_of
from shardyard.stores.frames.zarr_shard import load_array_meta
from shardyard.stores.manifest import manifest_fingerprint
from shardyard.tools.edit_copy import CopyPlan

__all__ = ["check_features", "edit_features"]

_SOURCE_KEYS = ("source_fingerprint", "source_num_steps")


def check_features(plan: CopyPlan, features: Sequence[str]) -> list[FeatureStore]:
    """Open one feature store per source of `plan` and check provenance and layout (module docstring).
    Raises ConfigError listing every mismatch."""
    if len(features) != len(plan.sources):
        raise ConfigError(f"give one feature store per input store ({len(plan.sources)}), got {len(features)}")
    stores = [FeatureStore(p) for p in features]
    problems = []
    for src, fs in zip(plan.sources, stores):
        if fs.key.get("source_fingerprint") != manifest_fingerprint(src.manifest):
            problems.append(f"{fs.path} was not computed from {src.url} (source fingerprint differs)")
        if fs.num_samples != src.num_steps:
            problems.append(f"{fs.path} has {fs.num_samples} samples, {src.url} {src.num_steps} steps")
    ref = {k: v for k, v in stores[0].key.items() if k not in _SOURCE_KEYS}
    for fs in stores[1:]:
        other = {k: v for k, v in fs.key.items() if k not in _SOURCE_KEYS}
        problems += [f"{fs.path} vs {stores[0].path}: {d}" for d in key_diff(ref, other)]
        for attr in ("grid", "embed_dim", "patch_size", "dtype"):
            if getattr(fs.layout, attr) != getattr(stores[0].layout, attr):
                problems.append(f"{fs.path}: {attr} {getattr(fs.layout, attr)} vs {getattr(stores[0].layout, attr)}")
    field = stores[0].key.get("field")
    if field is not None and field not in plan.fields.values():
        problems.append(f"the features were computed from field {field!r}, which the edit drops")
    if problems:
        raise ConfigError("feature stores do not follow this edit: " + "; ".join(problems))
    return stores


def _compressor(fs: FeatureStore) -> str:
    codec = chunk_codec_of(load_array_meta(str(fs.path / "patch_tokens")))
    return "none" if codec is None or codec.name == "none" else "zstd"


def _rows(plan: CopyPlan) -> tuple[np.ndarray, np.ndarray]:
    """Source index and source row `(N,)` of every output row, in output order."""
    src, rows = [], []
    for s, e in plan.episodes:
        st = plan.sources[s]
        r = np.arange(int(st.episode_starts[e]), int(st.episode_ends[e]))
        src.append(np.full(len(r), s))
        rows.append(r)
    return np.concatenate(src), np.concatenate(rows)


def _runs(src: np.ndarray, rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(source, first row, stop row) of each run of consecutive rows of one source, in order."""
    cut = np.flatnonzero((np.diff(src) != 0) | (np.diff(rows) != 1)) + 1
    return [(int(src[a]), int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(np.r_[0, cut], np.r_[cut, len(rows)])]


def _gather(stores: list[FeatureStore], src: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Patch tokens, CLS tokens and missing flags of the given (source, row) pairs, one read per run."""
    patch, cls, missing = [], [], []
    for s, r0, r1 in _runs(src, rows):
        fs = stores[s]
        patch.append(fs.patch_tokens(r0, r1))
        cls.append(fs.cls_token(r0, r1))
        missing.append(fs.missing[r0:r1])
    return np.concatenate(patch), np.concatenate(cls), np.concatenate(missing)


def _recorded(stores: list[FeatureStore], out_codec: ChunkCodec | None) -> list[dict[str, np.ndarray]]:
    """Per input: array -> its recorded crc32c `(N,) uint32`, for the inputs whose chunks the output encodes
    to the same bytes (same chunk codec); arrays without recorded checksums are left out."""
    out = []
    for fs in stores:
        same = chunk_codec_of(load_array_meta(str(fs.path / "patch_tokens"))) == out_codec
        crcs = {name: read_crc32c(fs.path, CHUNK_CRC, name) for name in TOKEN_ARRAYS} if same else {}
        out.append({k: v for k, v in crcs.items() if v is not None and len(v) == fs.num_samples})
    return out


def _check_carried(crc: dict[str, list[int]], recorded: list[dict[str, np.ndarray]], stores: list[FeatureStore],
                   src: np.ndarray, rows: np.ndarray) -> None:
    """Raise StoreError when a copied chunk's new crc32c differs from the one its input recorded (0: the
    input stored no bytes for that sample, zarr's fill value; nothing to compare)."""
    i = 0
    for s, r0, r1 in _runs(src, rows):
        for name, want in recorded[s].items():
            got = np.asarray(crc[name][i:i + r1 - r0], dtype=np.uint32)
            bad = np.flatnonzero((got != want[r0:r1]) & (want[r0:r1] != 0))
            if len(bad):
                row = r0 + int(bad[0])
                e, key, step = stores[s].source_position(row)
                raise StoreError(f"{name}: sample {row} (episode {e if key is None else key}, step {step}) "
                                 "differs from the crc32c recorded when it was written (damaged input; "
                                 "`shardyard verify` it)", path=str(stores[s].path), field=name)
        i += r1 - r0


def edit_features(plan: CopyPlan, features: Sequence[str], new_store: EpisodicStore, out: str | os.PathLike,
                  *, overwrite: bool = False) -> FeatureStore:
    """Write the feature store of `new_store` (the result of `plan`) at `out` from the sources' feature
    stores `features` (one per source, in order). Raises ConfigError (see `check_features`)."""
    stores = check_features(plan, features)
    first = stores[0]
    renamed = {old: new for new, old in plan.fields.items()}
    fingerprint = manifest_fingerprint(new_store.manifest)
    key = {**first.key, "source_fingerprint": fingerprint, "source_num_steps": new_store.num_steps}
    if "field" in key:
        key["field"] = renamed.get(key["field"], key["field"])
    layout = FeatureLayout(num_samples=new_store.num_steps, grid=first.layout.grid, embed_dim=first.layout.embed_dim,
                           patch_size=first.layout.patch_size, dtype=first.layout.dtype,
                           batch_size=first.layout.batch_size)
    source = {"path": str(Path(new_store.root).resolve()), "field": key.get("field"), "fingerprint": fingerprint,
              "format": new_store.manifest.get("format"), "episode_keys": list(new_store.episode_keys)}
    cfg = FeatureWriterConfig(overwrite=overwrite, compressor=_compressor(first), split=new_store.split,
                              episode_ends=new_store.episode_ends.tolist(), source=source)
    src, rows = _rows(plan)
    with FeatureWriter(out, key=key, layout=layout, config=cfg) as writer:
        recorded = _recorded(stores, chunk_codec_of(load_array_meta(str(writer.path / "patch_tokens"))))
        for a, b in writer.layout.batches():
            patch, cls, missing = _gather(stores, src[a:b], rows[a:b])
            crc = write_batch(writer.path, a, patch, cls, missing)
            _check_carried(crc, recorded, stores, src[a:b], rows[a:b])
    return FeatureStore(out)
