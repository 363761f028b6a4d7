"""`shardyard verify STORE` (issue 16, item 1): check a store after a copy, for every store kind.

Episodic stores: `meta/episode_ends` against the episode table's lengths and every array's length; each shard
file's index against its crc32c and its chunks' byte ranges against the file; each frame chunk's crc32c
against the one recorded at ingest (`meta/chunk_crc32c/<field>`, stores/checksums.py), and each video
field's MP4 against its recorded crc32c (`meta/video_crc32c/<field>`); every other file listed in
`checksums.json` against its size and sha256; every low-dim array read whole; and stats.json recomputed (from
the stored per-episode parts and the contents) and compared, value for value, with the stored one. Each
finding names the episode (key and index), field, step and file where they are known. A store written before
checksums were recorded gets a warning ("no checksums recorded"), its frame chunks decoded instead (a flipped
byte is then found only when the codec notices). Feature stores: shard indexes, and each token chunk against
the crc32c recorded when it was written (`meta/chunk_crc32c/<array>`, `stores.feature_rows`), each finding
naming the sample, its source episode and step; and the provenance key's source fingerprint against the
source store named in the manifest (when it is present).
Shard stores: each tar's size and sha256 against the manifest.

A store at an fsspec URL (`s3://bucket/store`, `gs://...`) is downloaded file by file, as the bucket holds it,
into a temporary folder (`tmp_dir`, deleted afterwards; it needs room for the whole store) and checked there,
every finding naming the file by its URL: verify reads every byte of a store anyway, and checking a local copy
keeps one set of checks for every place a store can be (a missing or truncated object is missing or truncated
in the copy).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from shardyard.errors import UnsafePathError
from shardyard.stores import FORMATS, store_format
from shardyard.stores.checksums import CHECKSUMS, CHUNK_CRC, VIDEO_CRC, read_crc32c
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.feature_rows import TOKEN_ARRAYS
from shardyard.stores.features import FeatureStore
from shardyard.stores.frames.codec import VIDEO, ChunkCodec
from shardyard.stores.frames.registry import chunk_codec_of, codec_of
from shardyard.stores.frames.video import INDEX, file_crc32c, video_name
from shardyard.stores.frames.zarr_shard import EMPTY, index_nbytes, load_array_meta, shard_file
from shardyard.stores.manifest import manifest_fingerprint, read_json, read_manifest_dict, sha256_file
from shardyard.stores.remote_fs import ProcessLocalFS, is_remote
from shardyard.stores.safe_paths import safe_join
from shardyard.stores.stats import compute_stats
from shardyard.stores.wds import ShardStore
from shardyard.tools.edit_copy import frame_parts_of, stats_config_of

__all__ = ["Damage", "VerifyReport", "verify_store"]


@dataclass
class Damage:
    """One problem: what is damaged (`file`, and the `episode` key, `episode_index` in the store, `field`
    and `step` within the episode where known) and why."""

    reason: str
    file: str | None = None
    episode: str | None = None
    field: str | None = None
    episode_index: int | None = None
    step: int | None = None


@dataclass
class VerifyReport:
    """Result of `verify_store`: `ok` when `damages` is empty; `warnings` (e.g. no checksums recorded)
    do not make it fail."""

    store: str
    format: str | None
    checked: list[str] = field(default_factory=list)
    damages: list[Damage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damages

    def summary(self) -> str:
        """One line per damage, after a status line."""
        head = f"{self.store} ({self.format}): " + ("intact" if self.ok else f"{len(self.damages)} problem(s)")
        lines = [head] + [f"  checked: {c}" for c in self.checked] + [f"  WARNING: {w}" for w in self.warnings]
        for d in self.damages:
            where = ", ".join(f"{k}={v}" for k, v in (("episode", d.episode), ("episode_index", d.episode_index),
                                                      ("field", d.field), ("step", d.step), ("file", d.file))
                              if v is not None)
            lines.append(f"  DAMAGED: {d.reason}" + (f" [{where}]" if where else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"store": self.store, "format": self.format, "ok": self.ok, "checked": self.checked,
                "warnings": self.warnings, "damages": [asdict(d) for d in self.damages]}


def _check_sharded(array_dir: str, n_rows: int, owner, name: str, crc: np.ndarray | None = None, *,
                   unit: str = "row", fill_ok: bool = False) -> list[Damage]:
    """Index crc32c and chunk ranges of every shard of a one-row-per-chunk array, then each chunk's crc32c
    against `crc (n_rows,) uint32` (recorded at ingest) or, without it, whether the chunk decodes;
    `owner(row)` gives the `Damage` keywords (episode, episode_index, step) of a row, `unit` names a row in
    the reasons ("sample" in a feature store). With `fill_ok`, a chunk the index marks as never written is
    the fill value (zarr leaves out chunks equal to it; a feature store's missing frames are zeros), unless
    its recorded crc32c says bytes were stored."""
    meta = load_array_meta(array_dir)
    codec: ChunkCodec | None = chunk_codec_of(meta)
    rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    decode = None if codec is None else codec.decoder(tuple(meta["shape"][1:]), np.dtype(meta["data_type"]))
    out = []
    for s in range(-(-n_rows // rows)):
        path = shard_file(array_dir, s, len(meta["shape"]))
        want = min(rows, n_rows - s * rows)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            out.append(Damage(f"shard file missing (rows {s * rows}..{s * rows + want - 1})", path,
                              field=name, **owner(s * rows)))
            continue
        raw = data[-index_nbytes(rows):]
        if len(raw) < index_nbytes(rows) or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            out.append(Damage("shard index fails its crc32c", path, field=name, **owner(s * rows)))
            continue
        index = np.frombuffer(raw[:-4], dtype="<u8").reshape(rows, 2)
        for k in range(want):
            off, n = index[k]
            row = s * rows + k
            if off == EMPTY and fill_ok and (crc is None or int(crc[row]) == 0):
                continue
            if off == EMPTY or int(off) + int(n) > len(data) - index_nbytes(rows):
                out.append(Damage(f"{unit} {row}: chunk missing or out of the file", path, field=name,
                                  **owner(row)))
                continue
            chunk = data[int(off):int(off) + int(n)]
            if crc is not None:
                got = google_crc32c.value(chunk)
                if got != int(crc[row]):
                    out.append(Damage(f"{unit} {row}: chunk crc32c {got:08x} differs from the one recorded at ingest "
                                      f"({int(crc[row]):08x})", path, field=name, **owner(row)))
                continue
            try:
                ok = decode is not None and decode(chunk) is not None  # a chunk of another size does not reshape
            except Exception:  # noqa: BLE001 - any codec error means a damaged chunk
                ok = False
            if not ok:
                out.append(Damage(f"{unit} {row}: chunk does not decode", path, field=name, **owner(row)))
    return out


def _check_videos(store: EpisodicStore, name: str, owner, report: VerifyReport) -> None:
    """A video field: its frame index's length, and each episode's MP4 against its recorded crc32c."""
    field_dir = os.path.join(store.root, "data", name)
    n = load_array_meta(os.path.join(field_dir, INDEX))["shape"][0]
    if n != store.num_steps:
        report.damages.append(Damage(f"frame index has {n} rows, episode_ends say {store.num_steps}",
                                     os.path.join(field_dir, INDEX), None, name))
    crc = read_crc32c(store.root, VIDEO_CRC, name)
    if crc is None or len(crc) != store.num_episodes:
        report.warnings.append(f"{name}: no checksums recorded for its MP4 files (only their presence checked)")
        crc = None
    for e in range(store.num_episodes):
        path = os.path.join(field_dir, video_name(e))
        where = owner(int(store.episode_starts[e]))
        where["step"] = None
        if not os.path.isfile(path):
            report.damages.append(Damage("video file missing", path, field=name, **where))
        elif crc is not None and file_crc32c(path) != int(crc[e]):
            report.damages.append(Damage("video file crc32c differs from the one recorded at ingest", path,
                                         field=name, **where))


def _check_files(store: EpisodicStore, owner, report: VerifyReport) -> None:
    """Every file `checksums.json` lists against its size and sha256; a damaged chunk file of an array under
    `data/` names its field and the episodes of its rows."""
    listed = os.path.join(store.root, CHECKSUMS)
    if not os.path.isfile(listed):
        report.warnings.append("no checksums recorded for the store's files (no checksums.json: written before "
                               "ingest recorded them); low-dim arrays only read back")
        return
    files = read_json(listed)["files"]
    for entry in files:
        try:  # a crafted name must not make verify read (or name) a file outside the store
            path = str(safe_join(store.root, entry["name"], source=listed))
        except UnsafePathError as e:
            report.damages.append(Damage(f"{type(e).__name__}: {e.reason} in checksums.json", listed))
            continue
        if not os.path.isfile(path):
            why = "file missing"
        elif os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            why = "file size or sha256 differs from checksums.json"
        else:
            continue
        report.damages.append(Damage(why, path, **_file_owner(store, entry["name"], owner)))
    report.checked.append(f"size and sha256 of {len(files)} file(s) in checksums.json")


def _file_owner(store: EpisodicStore, name: str, owner) -> dict[str, Any]:
    """`Damage` keywords of store file `name`: the field of `data/<field>/...`, and for a chunk file
    (`.../c/<i>/...`) the episodes its rows fall in (`first..last` key)."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "data":
        return {}
    out: dict[str, Any] = {"field": parts[1]}
    array, sep, coords = name.partition("/c/")
    if not sep or not coords.split("/")[0].isdigit():
        return out
    try:
        rows = int(load_array_meta(os.path.join(store.root, array))["chunk_grid"]["configuration"]["chunk_shape"][0])
    except Exception:  # noqa: BLE001 - a damaged zarr.json is reported on its own
        return out
    first = int(coords.split("/")[0]) * rows
    last = min(first + rows, store.num_steps) - 1
    a, b = owner(first), owner(max(first, last))
    out["episode"] = a["episode"] if a["episode"] == b["episode"] else f"{a['episode']}..{b['episode']}"
    out["episode_index"] = a["episode_index"]
    return out


def _verify_episodic(path: str, report: VerifyReport, check_stats: bool) -> None:
    store = EpisodicStore(path, verify_reads=False)  # damage is reported here, one finding each
    ends_path = os.path.join(store.root, "meta", "episode_ends")
    try:
        recorded = np.cumsum(store.meta_table.lengths(), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - a damaged table is a finding, whatever its reader raises
        report.damages.append(Damage(f"episode table does not read ({type(e).__name__}: {e})", ends_path))
        recorded = store.episode_ends
    if not np.array_equal(recorded, store.episode_ends):
        table = "meta/episodes.parquet" if store.format_version >= 2 else "meta/episodes.json"
        report.damages.append(Damage(f"meta/episode_ends does not match {table} lengths", ends_path))
    keys = store.episode_keys

    def owner(row: int) -> dict[str, Any]:
        e = int(np.searchsorted(store.episode_ends, row, side="right"))
        if e >= len(keys):
            return {"episode": None, "episode_index": None, "step": None}
        return {"episode": keys[e], "episode_index": e, "step": row - int(store.episode_starts[e])}

    unrecorded = []
    for name in store.schema.keys():
        array_dir = os.path.join(store.root, "data", name)
        meta = load_array_meta(array_dir)
        codec = codec_of(meta)
        if codec is not None and codec.layout == VIDEO:
            _check_videos(store, name, owner, report)
            continue
        if meta["shape"][0] != store.num_steps:
            report.damages.append(Damage(f"array has {meta['shape'][0]} rows, episode_ends say {store.num_steps}",
                                         array_dir, None, name))
            continue
        if isinstance(codec, ChunkCodec):
            crc = read_crc32c(store.root, CHUNK_CRC, name)
            if crc is None or len(crc) != store.num_steps:
                unrecorded.append(name)
                crc = None
            report.damages += _check_sharded(array_dir, store.num_steps, owner, name, crc)
            continue
        try:
            zarr.open_array(array_dir, mode="r")[:]
        except Exception as e:  # noqa: BLE001 - a damaged chunk can raise anything from a codec
            report.damages.append(Damage(f"array does not read: {e}", array_dir, None, name))
    if unrecorded:
        report.warnings.append(f"no checksums recorded for the frame chunks of {', '.join(unrecorded)} "
                               "(decoded instead: a flipped byte the codec does not notice goes unseen)")
    _check_files(store, owner, report)
    report.checked.append(f"episode_ends, {len(store.schema.keys())} arrays, shard indexes and chunks")
    if check_stats and store.stats and not report.damages:
        fresh = json.loads(json.dumps(compute_stats(store, stats_config_of(store), frame_parts=frame_parts_of(store))))
        bad = sorted(f for f in set(fresh["fields"]) | set(store.stats.get("fields", {}))
                     if fresh["fields"].get(f) != store.stats.get("fields", {}).get(f))
        if bad or fresh.get("split") != store.stats.get("split"):
            report.damages.append(Damage("stats.json was not computed on the current contents",
                                         os.path.join(store.root, "stats.json"), None, ",".join(bad) or None))
        report.checked.append("stats.json recomputed and compared")


def _sample_owner(fs: FeatureStore):
    """`owner(row)` of a feature store: the source episode (key, when the manifest lists them) and step."""
    def owner(row: int) -> dict[str, Any]:
        e, key, step = fs.source_position(row)
        return {"episode": key if key is not None or e is None else f"episode {e}", "episode_index": e, "step": step}

    return owner


def _source_manifest(src: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest of a feature store's source store (local path or URL), or None when it is not there."""
    options = (storage_options or {}) if is_remote(src) else {}
    try:
        return read_manifest_dict(src, options)
    except (OSError, ValueError):
        return None


def _verify_features(path: str, report: VerifyReport, storage_options: dict[str, Any] | None = None) -> None:
    fs = FeatureStore(path, verify_reads=False)
    owner = _sample_owner(fs)
    unrecorded = []
    for name in TOKEN_ARRAYS:
        crc = read_crc32c(fs.path, CHUNK_CRC, name)
        if crc is None or len(crc) != fs.num_samples:
            unrecorded.append(name)
            crc = None
        report.damages += _check_sharded(str(fs.path / name), fs.num_samples, owner, name, crc, unit="sample",
                                         fill_ok=True)
    if unrecorded:
        report.warnings.append(f"no checksums recorded for the token chunks of {', '.join(unrecorded)} "
                               "(decoded instead: a flipped byte in an uncompressed chunk goes unseen)")
    src = (fs.manifest.get("source") or {}).get("path")
    source_manifest = _source_manifest(src, storage_options) if src else None
    if source_manifest is not None:
        if manifest_fingerprint(source_manifest) != fs.key.get("source_fingerprint"):
            report.damages.append(Damage(f"provenance: source store {src} has changed since the tokens were "
                                         "computed (fingerprint differs)", str(fs.path / "key.json")))
        report.checked.append(f"provenance against {src}")
    else:
        report.checked.append("provenance not checked: the manifest names no source store present here")
    report.checked.append(f"shard indexes and chunk crc32c of {', '.join(TOKEN_ARRAYS)}")


def _download(url: str, local: Path, storage_options: dict[str, Any] | None) -> tuple[int, int]:
    """Copy every object under `url` into `local`, keeping relative names; returns (files, bytes). Raises
    `UnsafePathError`, before anything is written, when an object key would land outside `local`."""
    fs, root = ProcessLocalFS.for_url(url, storage_options)
    prefix = root.rstrip("/") + "/"
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    objects = {name: info for name, info in sorted(found.items())
               if name.startswith(prefix) and info.get("type", "file") != "directory"}
    # a key may hold `..` or `//` (S3 keeps both literally): every one checked before the first download
    dests = {name: safe_join(local, name[len(prefix):], source=fs.url(name)) for name in objects}
    files = total = 0
    for name, info in objects.items():
        dest = dests[name]
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(name, str(dest))
        files, total = files + 1, total + int(info.get("size") or 0)
    return files, total


def _verify_remote(url: str, check_stats: bool, storage_options: dict[str, Any] | None,
                   tmp_dir: str | os.PathLike | None) -> VerifyReport:
    """Download the store at `url` into a temporary folder, verify it there, and name files by their URL."""
    url = url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="shardyard-verify-", dir=tmp_dir) as tmp:
        local = Path(tmp) / "store"
        local.mkdir()
        try:
            files, nbytes = _download(url, local, storage_options)
        except Exception as e:  # noqa: BLE001 - an unreachable bucket is a finding, not a traceback
            report = VerifyReport(url, None)
            report.damages.append(Damage(f"cannot be downloaded: {type(e).__name__}: {e}", url))
            return report
        report = _verify_local(str(local), check_stats, storage_options)
        here = str(local)
        report.store = url
        for d in report.damages:
            d.reason = d.reason.replace(here, url)
            d.file = d.file.replace(here, url) if d.file else d.file
        report.checked = [f"downloaded {files} file(s), {nbytes:,} bytes, to a temporary folder"] + [
            c.replace(here, url) for c in report.checked]
    return report


def _verify_shards(path: str, report: VerifyReport) -> None:
    store = ShardStore(path)
    report.damages += [Damage("size or sha256 differs from the manifest", f"{store.root}/{n}")
                       for n in store.verify()]
    report.checked.append(f"sha256 of {len(store.manifest.files)} tar shard(s)")


def _verify_local(path: str, check_stats: bool, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    fmt = store_format(path)
    report = VerifyReport(str(path), fmt)
    if fmt not in FORMATS:
        report.damages.append(Damage("no readable manifest.json (not a store, or unfinished)", str(path)))
        return report
    # by the format's reader (`stores.FORMATS`), never by its name
    verifiers = {EpisodicStore: lambda: _verify_episodic(str(path), report, check_stats),
                 FeatureStore: lambda: _verify_features(str(path), report, storage_options),
                 ShardStore: lambda: _verify_shards(str(path), report)}
    try:
        verifiers[FORMATS[fmt].reader_class()]()
    except Exception as e:  # noqa: BLE001 - whatever a damaged store raises becomes a finding
        report.damages.append(Damage(f"cannot be read: {type(e).__name__}: {e}", str(path)))
    return report


def verify_store(path: str | os.PathLike, *, check_stats: bool = True, storage_options: dict[str, Any] | None = None,
                 tmp_dir: str | os.PathLike | None = None) -> VerifyReport:
    """Check the store at `path`, a local path or an fsspec URL (`storage_options` for its filesystem;
    `tmp_dir` where a remote store is downloaded to be checked; module docstring); never raises for damage,
    only reports it."""
    if is_remote(path):
        return _verify_remote(str(path), check_stats, storage_options, tmp_dir)
    return _verify_local(str(path), check_stats)
