"""`recode_store`: rewrite the frame fields of a finished episodic store with another frame codec.

Every episode is read back through `EpisodicStore` (frames decoded, low-dim arrays as stored) and written
again by `EpisodicWriter` with the new `frame_codec`, with the same keys, per-episode metadata, schema,
split, source description and report. Low-dim arrays are copied value for value; stats are recomputed with the
store's own stats options, so they describe the frames as now stored (equal to the old ones for lossless
codecs; image moments move slightly for a lossy one). The new store is complete (manifest last) before it
replaces anything: in place, the old directory is renamed aside, the new one renamed into its place, then the
old one deleted. The new manifest has a new `generation`: a reader of the old store raises `StoreChangedError`
at its next read (`stores.snapshot`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardyard.errors import StoreError
from shardyard.schema import Episode
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.registry import parse_frame_codecs

log = logging.getLogger(__name__)

__all__ = ["RecodeResult", "recode_store"]


@dataclass
class RecodeResult:
    """What `recode_store` did: the store written, episodes and steps, bytes of `data/` before and after."""

    out: Path
    num_episodes: int
    num_steps: int
    bytes_before: int
    bytes_after: int


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write_copy(store: EpisodicStore, dest: Path, frame_codec: str) -> None:
    """Write every episode of `store` to a new store at `dest` with `frame_codec`."""
    from shardyard.stores.stats import StatsConfig, compute_stats

    manifest = store.manifest
    extra = manifest.get("extra", {})
    config = dict(manifest.get("provenance", {}).get("config", {}))
    config.update(frame_codec=frame_codec, recoded_from=store.url)
    cfg = EpisodicWriterConfig(frame_codec=frame_codec, val_fraction=float(extra.get("val_fraction", 0.1)),
                               split_seed=int(extra.get("split_seed", 0)), source=manifest.get("source", {}),
                               config=config)
    stats_cfg = StatsConfig(**store.stats["config"]) if store.stats.get("config") else StatsConfig()
    writer = EpisodicWriter(dest, store.schema, config=cfg, report=dict(store.report),
                            stats_fn=lambda s: compute_stats(s, stats_cfg))
    with writer:
        for e in range(store.num_episodes):
            meta: dict[str, Any] = {k: v for k, v in store.episode_record(e).items() if k not in ("key", "length")}
            writer.write(Episode(key=store.episode_keys[e], steps=store.read(e), meta=meta))


def recode_store(path: str | os.PathLike, frame_codec: str, out: str | os.PathLike | None = None) -> RecodeResult:
    """Rewrite the local episodic store at `path` with `frame_codec` (`parse_frame_codecs` syntax: "jpeg",
    "jpeg:90", "video", "lz4", "none", "png", `FIELD=CODEC` overrides), into `out` (a new directory) or, when
    `out` is None, in place (atomically: the old store stays whole until the new one is complete).

    Raises `StoreError` if `path` is not a complete local episodic store or `out` exists, `ConfigError` for
    a bad codec."""
    parse_frame_codecs(frame_codec)
    src = Path(path)
    store = EpisodicStore(str(src))
    if "://" in str(path):
        raise StoreError("recode works on local stores", path=str(path))
    dest = Path(out) if out is not None else src.with_name(f".{src.name}.recode-{os.getpid()}")
    if dest.exists():
        if out is not None:
            raise StoreError("output directory exists; choose another --out", path=str(dest))
        shutil.rmtree(dest)  # a killed recode's leftover
    before = _tree_bytes(src / "data")
    _write_copy(store, dest, frame_codec)
    if out is None:
        old = src.with_name(f".{src.name}.old-{os.getpid()}")
        os.replace(src, old)
        os.replace(dest, src)
        shutil.rmtree(old)
        dest = src
    return RecodeResult(out=dest, num_episodes=store.num_episodes, num_steps=store.num_steps,
                        bytes_before=before, bytes_after=_tree_bytes(dest / "data"))
