"""`shardyard verify STORE` (issue 16, item 1, in part): check a store after a copy, for every store kind.

Episodic stores: `meta/episode_ends` against `meta/episodes.json` and every array's length; each shard
file's index against its crc32c, its chunks' byte ranges against the file, and every frame chunk decoded
(a chunk that no longer decodes, or decodes to the wrong size, is reported with its episode, field and
file); every low-dim array read whole; and stats.json recomputed (from the stored per-episode parts and the
contents) and compared, value for value, with the stored one. Feature stores: shard indexes and chunks as
above, and the provenance key's source fingerprint against the source store named in the manifest (when
it is present). Shard stores: each tar's size and sha256 against the manifest.

Not yet checked: a checksum of each chunk recorded at ingest. A flipped byte inside a compressed chunk is
found only when the codec notices (zstd and lz4 streams usually do; raw chunks never do); recording a
crc32c per chunk in the writer's commit log is what is left of item 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from shardyard.stores import store_format
from shardyard.stores.edit_copy import frame_parts_of, stats_config_of
from shardyard.stores.edit_features import manifest_fingerprint
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.features import FeatureStore
from shardyard.stores.frame_encoding import ChunkCodec
from shardyard.stores.manifest import read_json
from shardyard.stores.stats import compute_stats
from shardyard.stores.wds import ShardStore
from shardyard.stores.zarr_shard import EMPTY, index_nbytes, load_array_meta, shard_file

__all__ = ["Damage", "VerifyReport", "verify_store"]


@dataclass
class Damage:
    """One problem: what is damaged (`file`, and the `episode` key and `field` where known) and why."""

    reason: str
    file: str | None = None
    episode: str | None = None
    field: str | None = None


@dataclass
class VerifyReport:
    """Result of `verify_store`: `ok` when `damages` is empty."""

    store: str
    format: str | None
    checked: list[str] = field(default_factory=list)
    damages: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damages

    def summary(self) -> str:
        """One line per damage, after a status line."""
        head = f"{self.store} ({self.format}): " + ("intact" if self.ok else f"{len(self.damages)} problem(s)")
        lines = [head] + [f"  checked: {c}" for c in self.checked]
        for d in self.damages:
            where = ", ".join(f"{k}={v}" for k, v in (("episode", d.episode), ("field", d.field), ("file", d.file))
                              if v is not None)
            lines.append(f"  DAMAGED: {d.reason}" + (f" [{where}]" if where else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"store": self.store, "format": self.format, "ok": self.ok, "checked": self.checked,
                "damages": [asdict(d) for d in self.damages]}


def _decoder(codec: ChunkCodec | None):
    if codec is None or codec.name == "none":
        return lambda b: b
    c = dict(codec.config)
    if codec.name == "zstd":
        return numcodecs.Zstd(level=c.get("level", 0)).decode
    return numcodecs.blosc.decompress


def _check_sharded(array_dir: str, n_rows: int, owner, name: str) -> list[Damage]:
    """Index crc32c, chunk ranges and decoding of every shard of a one-row-per-chunk array; `owner(row)`
    names the episode of a row."""
    import google_crc32c

    meta = load_array_meta(array_dir)
    codec = ChunkCodec.for_array(meta)
    rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    row_nbytes = int(np.prod(meta["shape"][1:], dtype=np.int64)) * np.dtype(meta["data_type"]).itemsize
    decode = _decoder(codec)
    out = []
    for s in range(-(-n_rows // rows)):
        path = shard_file(array_dir, s, len(meta["shape"]))
        want = min(rows, n_rows - s * rows)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            out.append(Damage(f"shard file missing (rows {s * rows}..{s * rows + want - 1})", path,
                              owner(s * rows), name))
            continue
        raw = data[-index_nbytes(rows):]
        if len(raw) < index_nbytes(rows) or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            out.append(Damage("shard index fails its crc32c", path, owner(s * rows), name))
            continue
        index = np.frombuffer(raw[:-4], dtype="<u8").reshape(rows, 2)
        for k in range(want):
            off, n = index[k]
            row = s * rows + k
            if off == EMPTY or int(off) + int(n) > len(data) - index_nbytes(rows):
                out.append(Damage(f"row {row}: chunk missing or out of the file", path, owner(row), name))
                continue
            try:
                ok = len(decode(data[int(off):int(off) + int(n)])) == row_nbytes
            except Exception:  # noqa: BLE001 - any codec error means a damaged chunk
                ok = False
            if not ok:
                out.append(Damage(f"row {row}: chunk does not decode", path, owner(row), name))
    return out


def _verify_episodic(path: str, report: VerifyReport, check_stats: bool) -> None:
    store = EpisodicStore(path)
    ends_path = os.path.join(store.root, "meta", "episode_ends")
    stored_ends = np.asarray(zarr.open_array(ends_path, mode="r")[:])
    if not np.array_equal(stored_ends, store.episode_ends):
        report.damages.append(Damage("meta/episode_ends does not match meta/episodes.json lengths", ends_path))
    keys = store.episode_keys

    def owner(row: int) -> str | None:
        e = int(np.searchsorted(store.episode_ends, row, side="right"))
        return keys[e] if e < len(keys) else None

    for name in store.schema.keys():
        array_dir = os.path.join(store.root, "data", name)
        meta = load_array_meta(array_dir)
        if meta["shape"][0] != store.num_steps:
            report.damages.append(Damage(f"array has {meta['shape'][0]} rows, episode_ends say {store.num_steps}",
                                         array_dir, None, name))
            continue
        if ChunkCodec.for_array(meta) is not None:
            report.damages += _check_sharded(array_dir, store.num_steps, owner, name)
            continue
        try:
            zarr.open_array(array_dir, mode="r")[:]
        except Exception as e:  # noqa: BLE001 - a damaged chunk can raise anything from a codec
            report.damages.append(Damage(f"array does not read: {e}", array_dir, None, name))
    report.checked.append(f"episode_ends, {len(store.schema.keys())} arrays, shard indexes and chunks")
    if check_stats and store.stats and not report.damages:
        fresh = json.loads(json.dumps(compute_stats(store, stats_config_of(store), frame_parts=frame_parts_of(store))))
        bad = sorted(f for f in set(fresh["fields"]) | set(store.stats.get("fields", {}))
                     if fresh["fields"].get(f) != store.stats.get("fields", {}).get(f))
        if bad or fresh.get("split") != store.stats.get("split"):
            report.damages.append(Damage("stats.json was not computed on the current contents",
                                         os.path.join(store.root, "stats.json"), None, ",".join(bad) or None))
        report.checked.append("stats.json recomputed and compared")


def _verify_features(path: str, report: VerifyReport) -> None:
    fs = FeatureStore(path)
    ends = fs.episode_ends
    for name in ("patch_tokens", "cls_token"):
        report.damages += _check_sharded(str(fs.path / name), fs.num_samples,
                                         lambda r: f"sample {r} (episode {int(np.searchsorted(ends, r, 'right'))})",
                                         name)
    src = (fs.manifest.get("source") or {}).get("path")
    if src and Path(src, "manifest.json").exists():
        if manifest_fingerprint(read_json(str(Path(src, "manifest.json")))) != fs.key.get("source_fingerprint"):
            report.damages.append(Damage(f"provenance: source store {src} has changed since the tokens were "
                                         "computed (fingerprint differs)", str(fs.path / "key.json")))
        report.checked.append(f"provenance against {src}")
    else:
        report.checked.append("provenance not checked: the manifest names no source store present here")
    report.checked.append("shard indexes and chunks of patch_tokens, cls_token")


def verify_store(path: str | os.PathLike, *, check_stats: bool = True) -> VerifyReport:
    """Check the store at `path` (module docstring); never raises for damage, only reports it."""
    fmt = store_format(path)
    report = VerifyReport(str(path), fmt)
    try:
        if fmt == "episodic-zarr3":
            _verify_episodic(str(path), report, check_stats)
        elif fmt == "features-zarr3":
            _verify_features(str(path), report)
        elif fmt == "shards-webdataset":
            store = ShardStore(str(path))
            report.damages += [Damage("size or sha256 differs from the manifest", f"{store.root}/{n}")
                               for n in store.verify()]
            report.checked.append(f"sha256 of {len(store.manifest.files)} tar shard(s)")
        else:
            report.damages.append(Damage("no readable manifest.json (not a store, or unfinished)", str(path)))
    except Exception as e:  # noqa: BLE001 - whatever a damaged store raises becomes a finding
        report.damages.append(Damage(f"cannot be read: {type(e).__name__}: {e}", str(path)))
    return report
