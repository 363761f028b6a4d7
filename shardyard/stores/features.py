"""Feature store: cached DINO tokens in zarr v3, aligned index for index with a source store (DESIGN.md).

Layout of a feature store directory:

    patch_tokens/             (N, h*w, D) float16 (default), one sample per chunk, `shard_rows` per shard
    cls_token/                (N, D), same sharding along axis 0
    missing/                  (N,) bool: True where the source frame failed to decode (from the records)
    key.json                  provenance key + layout, written before any token; another key is refused
    progress/<start>.json     completion record of the batch [start, stop) (missing rows, error rows, crc32c
                              of each stored chunk: `stores.feature_rows`, which writes the rows)
    meta/episode_ends/        (E,) int64, copied from the source store
    meta/chunk_crc32c/<a>/    (N,) uint32 crc32c of each stored chunk of patch_tokens / cls_token, from the records
    stats.json                per-channel mean/std of patch and CLS tokens, 3-component PCA basis
    report.json               frames that failed to decode (index, episode, field, reason)
    manifest.json             written last: no manifest, no store

Concurrency and resume: each shard (`shard_rows` samples) is written by one worker only (zarr rewrites a whole
shard file on a partial write, by temp + rename), batch by batch, each batch followed by its atomic completion
record: a kill loses only batches in flight; a rerun skips recorded batches and recomputes the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from shardyard.errors import ConfigError, StoreError
from shardyard.schema import FieldSpec, Schema
from shardyard.stores.atomic import atomic_write_json, remove_stale_temps, to_jsonable
from shardyard.stores.feature_rows import CLS, MISSING, PATCH, PROGRESS_DIR, write_batch, write_chunk_crc32c
from shardyard.stores.frames.zarr_shard import ShardReader, load_array_meta
from shardyard.stores.manifest import MANIFEST, Manifest, provenance, read_json
from shardyard.stores.read_checks import ReadChecks
from shardyard.stores.remote_fs import ProcessLocalFS, is_remote
from shardyard.stores.snapshot import open_snapshot, reads_snapshot
from shardyard.stores.stats.tokens import token_stats

__all__ = ["CLS", "FIELD_NAMES", "FORMAT", "FORMAT_VERSION", "FeatureLayout", "FeatureStore", "FeatureWriter",
           "FeatureWriterConfig", "KEY_FILE", "MISSING", "PATCH", "PROGRESS_DIR", "bf16_bits_to_float32", "key_diff",
           "open_features", "storage_dtype", "write_batch"]

log = logging.getLogger(__name__)

FORMAT = "features-zarr3"
FORMAT_VERSION = 1
KEY_FILE = "key.json"
FIELD_NAMES = {PATCH: "dino.patch_tokens", CLS: "dino.cls_token", MISSING: "dino.missing"}
_SHARD_TARGET_BYTES = 16 << 20


@dataclass
class FeatureLayout:
    """Shapes and chunking of a feature store.

    num_samples N, grid `(h, w)` in patches, embed_dim D, dtype of the stored tokens, batch_size: samples per
    forward and per completion record; shard_rows: samples per shard file (a multiple of batch_size).
    """

    num_samples: int
    grid: tuple[int, int]
    embed_dim: int
    patch_size: int
    dtype: str = "float16"
    batch_size: int = 32
    shard_rows: int = 0

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"--dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.shard_rows <= 0:
            row = self.num_patches * self.embed_dim * 4
            # <= 8 batches a shard: a shard file is rewritten whole per batch, so this bounds the write cost
            per = max(1, min(8, min(1024, _SHARD_TARGET_BYTES // max(row, 1)) // self.batch_size))
            self.shard_rows = per * self.batch_size

    @property
    def num_patches(self) -> int:
        """Patches per sample, h * w."""
        return self.grid[0] * self.grid[1]

    def batches(self) -> list[tuple[int, int]]:
        """Batch ranges `[start, stop)`: fixed boundaries, never across a shard boundary."""
        out = []
        for s0 in range(0, self.num_samples, self.shard_rows):
            s1 = min(s0 + self.shard_rows, self.num_samples)
            out += [(a, min(a + self.batch_size, s1)) for a in range(s0, s1, self.batch_size)]
        return out

    def shard_units(self, done: set[tuple[int, int]] = frozenset()) -> list[list[tuple[int, int]]]:
        """Pending batches grouped by shard: each group must be written by a single worker."""
        units: dict[int, list[tuple[int, int]]] = {}
        for b in self.batches():
            if b not in done:
                units.setdefault(b[0] // self.shard_rows, []).append(b)
        return [units[k] for k in sorted(units)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the grid as a list), the inverse of `FeatureLayout(**d)`."""
        return asdict(self) | {"grid": list(self.grid)}


def storage_dtype(name: str) -> np.dtype:
    """Numpy dtype of the stored tokens; bfloat16 is stored as its uint16 bit pattern (numpy has no bf16)."""
    return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def bf16_bits_to_float32(x: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (x.astype(np.uint32) << 16).view(np.float32)


def key_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two provenance keys: `"model.spec: 'a' -> 'b'"`."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += key_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


@dataclass
class FeatureWriterConfig:
    """overwrite: delete an existing store first. compressor: "none" (default; float tokens barely
    compress and raw chunks read at memmap speed) or "zstd". source, split, episode_ends: copied into the
    manifest so the feature store can be read without its source."""

    overwrite: bool = False
    compressor: str = "none"
    source: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[int]] = field(default_factory=dict)
    episode_ends: list[int] = field(default_factory=list)


class FeatureWriter:
    """Context manager that creates or resumes a feature store and, on a clean exit with every batch
    recorded, writes stats, report and, last, `manifest.json`.

    Raises `ConfigError` when the directory holds a store with a different provenance key (the message lists
    what differs), `StoreError` when it holds something that is not a feature store.
    """

    def __init__(self, path: str | os.PathLike, *, key: dict[str, Any], layout: FeatureLayout,
                 config: FeatureWriterConfig | None = None) -> None:
        self.path = Path(path)
        self.key = to_jsonable(key)
        self.layout = layout
        self.cfg = config or FeatureWriterConfig()
        self.resumed = False
        self.run_info: dict[str, Any] = {}  # merged into report.json (e.g. `ray_nodes` of a Ray run)

    def __enter__(self) -> "FeatureWriter":
        if self.path.exists() and self.cfg.overwrite:
            shutil.rmtree(self.path)
        key_path = self.path / KEY_FILE
        if key_path.exists():
            stored = read_json(str(key_path))
            diff = key_diff(stored["key"], self.key)
            if diff:
                raise ConfigError("feature store was computed with a different provenance key; refusing to "
                                  "write into it (choose another --out, or --overwrite): " + "; ".join(diff),
                                  path=str(self.path))
            layout = FeatureLayout(**stored["layout"])
            if layout != self.layout:
                log.info("resuming with the stored layout %s (asked %s)", layout, self.layout)
            self.layout = layout
            remove_stale_temps(self.path)
            (self.path / MANIFEST).unlink(missing_ok=True)
            self.resumed = True
        elif self.path.exists() and any(self.path.iterdir()):
            raise StoreError("directory exists and is not a feature store; choose another --out or --overwrite",
                             path=str(self.path))
        else:
            self._create()
        return self

    def _create(self) -> None:
        lay = self.layout
        self.path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(self.path), mode="w")
        comp = {"none": None, "zstd": ZstdCodec(level=1)}.get(self.cfg.compressor, "bad")
        if comp == "bad":
            raise ConfigError(f"compressor must be none or zstd, got {self.cfg.compressor!r}")
        dt = storage_dtype(lay.dtype)
        n, s, p, d = lay.num_samples, lay.shard_rows, lay.num_patches, lay.embed_dim
        root.create_array(PATCH, shape=(n, p, d), dtype=dt, chunks=(1, p, d), shards=(s, p, d),
                          compressors=comp, fill_value=0, attributes={"grid": list(lay.grid)})
        root.create_array(CLS, shape=(n, d), dtype=dt, chunks=(1, d), shards=(s, d), compressors=comp,
                          fill_value=0)
        root.create_array(MISSING, shape=(n,), dtype=bool, chunks=(s,), compressors=None, fill_value=False)
        ends = np.asarray(self.cfg.episode_ends, dtype=np.int64)
        root.require_group("meta").create_array("episode_ends", data=ends, chunks=(max(len(ends), 1),))
        (self.path / PROGRESS_DIR).mkdir(exist_ok=True)
        # the key is written last: a directory with a key.json has every array
        atomic_write_json(self.path / KEY_FILE, {"key": self.key, "layout": lay.to_dict()})

    def done_batches(self) -> set[tuple[int, int]]:
        """Batches whose completion record exists."""
        return {(r["start"], r["stop"]) for r in self._records()}

    def _records(self) -> list[dict[str, Any]]:
        d = self.path / PROGRESS_DIR
        return [read_json(str(p)) for p in sorted(d.glob("*.json"))] if d.is_dir() else []

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()

    def finalize(self) -> None:
        """Write report, stats and manifest when every batch is recorded; else leave the store resumable."""
        records = self._records()
        todo = set(self.layout.batches()) - {(r["start"], r["stop"]) for r in records}
        if todo:
            log.warning("%d batch(es) not done; store left resumable at %s", len(todo), self.path)
            return
        errors = [e for r in records for e in r.get("errors", [])]
        missing = sorted(i for r in records for i in r.get("missing", []))
        mask = np.zeros(self.layout.num_samples, dtype=bool)
        mask[missing] = True
        zarr.open_array(str(self.path / MISSING), mode="r+")[:] = mask
        write_chunk_crc32c(self.path, self.layout.num_samples, records)
        atomic_write_json(self.path / "report.json", {"num_samples": self.layout.num_samples,
                                                      "num_missing": len(missing), "missing": missing,
                                                      "errors": errors, **self.run_info})
        store = FeatureStore(self.path, manifest=self._manifest())
        atomic_write_json(self.path / "stats.json", token_stats(store))
        atomic_write_json(self.path / MANIFEST, self._manifest().to_dict())

    def _manifest(self) -> Manifest:
        lay = self.layout
        stored = "float32" if lay.dtype == "bfloat16" else lay.dtype  # bfloat16 bits are read as float32
        schema = Schema({FIELD_NAMES[PATCH]: FieldSpec(stored, (lay.num_patches, lay.embed_dim), kind="tokens",
                                                       description=f"{lay.dtype} tokens, grid {lay.grid}"),
                         FIELD_NAMES[CLS]: FieldSpec(stored, (lay.embed_dim,), kind="tokens"),
                         FIELD_NAMES[MISSING]: FieldSpec("bool", (), kind="scalar")})
        return Manifest(format=FORMAT, format_version=FORMAT_VERSION, schema=schema.to_dict(),
                        num_episodes=len(self.cfg.episode_ends), num_steps=lay.num_samples,
                        source=self.cfg.source, provenance=provenance({"key": self.key}), split=self.cfg.split,
                        extra={"layout": lay.to_dict(), "key": self.key})


class FeatureStore:
    """Read-only view of a complete feature store at a local path or an fsspec URL (`s3://bucket/features`;
    shard byte ranges are read, never whole shards). Fork-safe: file handles, and a remote store's filesystem,
    open lazily in each process.

    Attributes: `path` (local `Path`, or the URL string of a remote store), `manifest`, `layout`
    (`FeatureLayout`), `key`, `stats`, `report`, `num_samples`, `grid`, `embed_dim`, `episode_ends`.
    Raises `StoreError` when there is no manifest or it is another format. With `verify_reads` (default)
    each token chunk is checked against its crc32c recorded when it was written (`stores.read_checks`): a
    mismatch, a written chunk that is missing or a damaged shard raises `StoreDamagedError` naming the sample's
    source episode and step, the field and the file.
    """

    def __init__(self, path: str | os.PathLike, *, manifest: Manifest | None = None,
                 verify_reads: bool = True) -> None:
        self._fs: ProcessLocalFS | None = None
        if is_remote(path):
            self.path: Path | str = str(path).rstrip("/")
            self._fs, self._root = ProcessLocalFS.for_url(self.path)
        else:
            self.path = Path(str(path).removeprefix("file://"))
            self._root = str(self.path)
        try:  # the version opened: every read checks it is still the store's (`stores.snapshot`)
            self.snapshot, m = open_snapshot(str(self.path), self._join(MANIFEST), self._fs, manifest)
        except FileNotFoundError:
            raise StoreError("no manifest.json: not a feature store, or its `ingest dino` never finished "
                             "(rerun the same command to resume)", path=str(self.path)) from None
        if m.get("format") != FORMAT:
            raise StoreError(f"not a feature store (format {m.get('format')!r})", path=str(self.path))
        self.manifest = m
        self.layout = FeatureLayout(**m["extra"]["layout"])
        self.key = m["extra"]["key"]
        with self.snapshot.reading():
            self.stats = self._optional("stats.json")
            self.report = self._optional("report.json")
        self._pid = -1
        self._readers: dict[str, Any] = {}
        self._missing: np.ndarray | None = None
        self.verify_reads = verify_reads
        self._checks = ReadChecks(str(self.path), self._root, self._fs, verify=verify_reads,
                                  manifest_in_memory=manifest is not None,
                                  keys=(m.get("source") or {}).get("episode_keys") or [])

    def _join(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _optional(self, name: str) -> dict[str, Any]:
        try:
            return read_json(self._join(name), self._fs)
        except FileNotFoundError:
            return {}

    def _zarr(self, name: str) -> zarr.Array:
        if self._fs is None:
            return zarr.open_array(self._join(name), mode="r")
        return zarr.open_array(self._fs.url(self._join(name)), mode="r", storage_options=self._fs.storage_options)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"_pid": -1, "_readers": {}, "_missing": None}

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, N={self.num_samples}, grid={self.grid}, D={self.embed_dim})"

    @property
    def is_remote(self) -> bool:
        """True for a store at an fsspec URL (each read is a network round trip)."""
        return self._fs is not None

    num_samples = property(lambda self: self.layout.num_samples)
    grid = property(lambda self: self.layout.grid)            # (h, w) patches
    embed_dim = property(lambda self: self.layout.embed_dim)  # D

    @property
    @reads_snapshot()
    def episode_ends(self) -> np.ndarray:
        """`(E,) int64` cumulative step counts of the source store's episodes."""
        return np.asarray(self._zarr("meta/episode_ends")[:])

    def source_position(self, row: int) -> tuple[int | None, str | None, int | None]:
        """Where sample `row` comes from in the source store: (episode index, episode key, step), the key None
        when the manifest does not list the source's keys; all None past the end."""
        ends = self.episode_ends
        e = int(np.searchsorted(ends, row, side="right"))
        if e >= len(ends):
            return None, None, None
        keys = (self.manifest.get("source") or {}).get("episode_keys") or []
        return e, keys[e] if len(keys) == len(ends) else None, row - (int(ends[e - 1]) if e else 0)

    def array_reader(self, name: str):
        """Per-process reader of one stored array (`patch_tokens`, `cls_token`, `missing`): a `ShardReader`
        on the fast path, else the zarr array. Rebuilt after a fork."""
        if self._pid != os.getpid():
            self._readers, self._missing, self._pid = {}, None, os.getpid()
        if name not in self._readers:
            path = self._join(name)
            fast = self._checks.attach(name, ShardReader.maybe_for(path, load_array_meta(path, self._fs), fs=self._fs),
                                       path, fill_ok=True, name=FIELD_NAMES.get(name))
            self._readers[name] = fast if fast is not None else self._zarr(name)
        return self._readers[name]

    @reads_snapshot()
    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        r = self.array_reader(name)
        return self.decode(r.read(start, stop) if isinstance(r, ShardReader) else r[start:stop])

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored rows -> tokens: float16/float32 as stored; bfloat16 bit patterns -> float32."""
        return bf16_bits_to_float32(raw) if self.layout.dtype == "bfloat16" else raw

    def patch_tokens(self, start: int, stop: int) -> np.ndarray:
        """Samples `[start, stop)`: `(stop - start, h*w, D)` in the stored dtype (float32 for bfloat16
        stores), zeros where missing."""
        return self._rows(PATCH, start, stop)

    def cls_token(self, start: int, stop: int) -> np.ndarray:
        """Samples `[start, stop)`: `(stop - start, D)` in the stored dtype (float32 for bfloat16)."""
        return self._rows(CLS, start, stop)

    @property
    @reads_snapshot()
    def missing(self) -> np.ndarray:
        """`(N,) bool`: True where the source frame failed to decode (its tokens are not valid)."""
        self.array_reader(MISSING)
        if self._missing is None:
            self._missing = np.asarray(self._zarr(MISSING)[:], dtype=bool)
        return self._missing


def open_features(path: str | os.PathLike, verify_reads: bool = True) -> FeatureStore:
    """Open a complete feature store (local path or fsspec URL); see `FeatureStore` (raises `StoreError`
    when incomplete; `verify_reads` checks token chunks against their recorded crc32c)."""
    return FeatureStore(path, verify_reads=verify_reads)
