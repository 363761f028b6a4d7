"""Episodic store: zarr v3, all steps of all episodes concatenated along axis 0 (DESIGN.md, "Store formats").

Layout of a store directory:

    zarr.json                 root group
    data/<field>/             (N, *shape) per field; images one frame per chunk inside shards, each chunk
                              of its frame codec (`stores.frames.registry`); or, for the video codec, a
                              group of one MP4 per episode plus `frame_index` (`stores.frames.video`)
    meta/episode_ends/        (E,) int64, cumulative step counts (diffusion_policy's replay buffer)
    meta/episodes.parquet     per-episode metadata by column: key, length, task, fps, source path, cameras
                              {K, T_world_cam} (with `episode_tasks.parquet`, `episode_cameras.parquet`:
                              `stores.episode_table`); format version 1 had `meta/episodes.json` instead
    meta/split.parquet        the by-episode split (train/val) of each episode
    meta/stats_parts/         per-episode stats parts of the frame fields (`stores.stats.part_table`)
    progress.json             the writer's commit log header; progress/<first>.json one record per
                              committed group (`stores.commit_log`); resume reads them
    stats.json, report.json
    manifest.json             written last: no manifest, no store

The writer and its commit protocol are in `stores.episodic_writer`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from shardyard.errors import StoreError
from shardyard.schema import FRAME_KINDS, Schema
from shardyard.stores.episode_reader import EpisodeKeys, EpisodeTable, LegacyTable, MetaTable
from shardyard.stores.episode_table import EPISODES_JSON
from shardyard.stores.episode_where import select_where
from shardyard.stores.frames.codec import VIDEO
from shardyard.stores.frames.planes import to_planes
from shardyard.stores.frames.registry import codec_of
from shardyard.stores.frames.video import INDEX
from shardyard.stores.frames.video_reader import VideoFrameReader
from shardyard.stores.frames.zarr_shard import ShardReader, load_array_meta
from shardyard.stores.lowdim_chunks import ChunkRows
from shardyard.stores.manifest import MANIFEST, Manifest, read_json
from shardyard.stores.read_checks import ReadChecks
from shardyard.stores.remote_fs import ProcessLocalFS, is_remote
from shardyard.stores.snapshot import open_snapshot, reads_snapshot

log = logging.getLogger(__name__)

FORMAT = "episodic-zarr3"
FORMAT_VERSION = 2  # 2: columnar episode metadata (`stores.episode_table`); 1: `meta/episodes.json`
STATS_PARTS = "meta/stats_parts"  # per-episode stats parts (`stores.stats.part_table`)
LOWDIM_CACHE_BYTES = 32 << 20  # low-dim fields below this are read whole once per process; larger by chunk

__all__ = ["FORMAT", "FORMAT_VERSION", "EpisodicStore", "split_episodes"]


def split_episodes(keys: Sequence[str], val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Split episode indices into train/val by a seeded hash of each key: the same key set gives the same
    split whatever the order of ingest; `round(E * val_fraction)` episodes go to val (at least one train)."""
    n_val = min(int(round(len(keys) * val_fraction)), max(len(keys) - 1, 0))
    ranked = sorted(range(len(keys)),
                    key=lambda i: hashlib.sha256(f"{seed}:{keys[i]}".encode()).hexdigest())
    val = sorted(ranked[:n_val])
    train = sorted(ranked[n_val:])
    return {"train": train, "val": val}


class EpisodicStore:
    """Read-only view of a complete episodic store at a local path or fsspec URL.

    Attributes: `num_episodes`, `num_steps`, `episode_keys`, `schema`, `stats` (parsed stats.json, {} if
    absent), `manifest` (dict), `report`. Handles open lazily in each process, so the object can be passed
    to DataLoader workers (fork or spawn); it pickles without anything per episode (a worker reads the
    episode ends and tables again, from the version opened). Episode metadata is read by column and row
    (`stores.episode_reader`); a format-1 store's `meta/episodes.json` is parsed whole on first use.

    Raises `StoreError` if there is no `manifest.json` (absent, or a job that never finished).

    `verify_reads` (default True): every frame chunk, MP4 and low-dim array is checked against the checksums
    recorded when it was written, and `meta/episode_ends` at open (`stores.read_checks`); damage raises
    `StoreDamagedError` naming the store, field, episode, step and file. False skips those checks.
    """

    def __init__(self, path_or_url: str | os.PathLike, *, manifest: Manifest | None = None,
                 verify_reads: bool = True) -> None:
        import fsspec

        self.url = str(path_or_url)
        # A remote store's handle is rebuilt in each process (fsspec's async filesystems are not fork-safe)
        self._fs: ProcessLocalFS | None = None
        if is_remote(self.url):
            self._fs, self.root = ProcessLocalFS.for_url(self.url)
        else:
            self.root = str(Path(fsspec.core.url_to_fs(self.url)[1]))
        try:  # the version opened: every read checks it is still the store's (`stores.snapshot`)
            self.snapshot, mdict = open_snapshot(self.url, self._join(MANIFEST), self._fs, manifest)
        except FileNotFoundError:
            raise StoreError("no manifest.json: not a store, or its ingest never finished "
                             "(rerun the same command to resume)", path=self.url) from None
        if mdict.get("format") != FORMAT:
            raise StoreError(f"not an episodic store (format {mdict.get('format')!r})", path=self.url)
        self.manifest: dict[str, Any] = mdict
        self.schema = Schema.from_dict(mdict["schema"])
        self._pid = -1
        self._arrays: dict[str, Any] = {}
        # Opening reads the manifest and the (E,) int64 episode ends, nothing per episode in JSON:
        # `meta/episodes.json` (~1 kB per episode), stats.json and report.json are read on first use.
        self._lazy: dict[str, Any] = {}
        # Integrity on read (`stores.read_checks`): recorded checksums checked as bytes are read
        self.verify_reads = verify_reads
        self._checks = ReadChecks(self.url, self.root, self._fs, verify=verify_reads,
                                  manifest_in_memory=manifest is not None)
        self._ends: np.ndarray | None = None
        self._starts: np.ndarray | None = None
        self._table: MetaTable | None = None
        self._load_ends()
        self._fast: dict[str, ShardReader | None] = {}
        self._video: dict[str, VideoFrameReader] = {}
        self._cache: dict[str, np.ndarray] = {}

    def _json(self, rel: str, optional: bool) -> Any:
        if rel not in self._lazy:
            with self.snapshot.reading():
                got = self._optional_json(rel) if optional else read_json(self._join(rel), self._fs)
            self._lazy[rel] = got
        return self._lazy[rel]

    def _load_ends(self) -> None:
        with self.snapshot.reading():
            self._ends = self._checks.load_episode_ends(self._group(), self.manifest)
        self._starts = self._ends - np.diff(self._ends, prepend=0)

    @property
    def episode_ends(self) -> np.ndarray:
        """`(E,) int64` cumulative step counts: episode e's steps are rows `[ends[e-1], ends[e])`."""
        if self._ends is None:  # a worker's copy: read again, checked as at open
            self._load_ends()
        return self._ends  # type: ignore[return-value]

    @property
    def episode_starts(self) -> np.ndarray:
        """`(E,) int64` first row of each episode."""
        if self._starts is None:
            self._load_ends()
        return self._starts  # type: ignore[return-value]

    @property
    def format_version(self) -> int:
        """The store's format version (1: `meta/episodes.json`; 2: columnar metadata)."""
        return int(self.manifest.get("format_version", 1))

    @property
    def meta_table(self) -> MetaTable:
        """The episode metadata (`stores.episode_reader`): Parquet tables, or a version-1 `episodes.json`."""
        if self._table is None:
            if self.format_version >= 2:
                self._table = EpisodeTable(self.root, self._fs, self.num_episodes)
            else:
                self._table = LegacyTable(self._json(EPISODES_JSON, optional=False))
        return self._table

    @property
    def stats(self) -> dict[str, Any]:
        """Parsed stats.json ({} if absent), read on first use."""
        return self._json("stats.json", optional=True)

    @property
    def report(self) -> dict[str, Any]:
        """Parsed report.json ({} if absent), read on first use."""
        return self._json("report.json", optional=True)

    def _join(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self._fs is not None else os.path.join(self.root, rel)

    def _optional_json(self, rel: str) -> dict[str, Any]:
        try:
            return read_json(self._join(rel), self._fs)
        except FileNotFoundError:
            return {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # Nothing per episode: a worker reads the ends, tables and JSON files again (in read sections, so
        # from the version opened or not at all).
        checks = copy.copy(self._checks)
        checks.ends = None
        state.update(_pid=-1, _arrays={}, _fast={}, _video={}, _cache={}, _lazy={}, _ends=None, _starts=None,
                     _checks=checks, _table=self._table if isinstance(self._table, EpisodeTable) else None)
        return state

    def __repr__(self) -> str:
        return f"EpisodicStore({self.url!r}, episodes={self.num_episodes}, steps={self.num_steps})"

    # -- public API --------------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        """Episodes in the store."""
        return len(self.episode_ends)

    @property
    def num_steps(self) -> int:
        """Steps of all episodes together (rows of each field)."""
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_keys(self) -> EpisodeKeys:
        """Source keys of the episodes, in store order: a sequence read from the key column on demand
        (`keys[i]` reads one row; iterating reads the column), equal to the list of keys."""
        with self.snapshot.reading():  # the table opened now: the keys are this version's, read when asked
            table = self.meta_table
            if isinstance(table, EpisodeTable):
                table.open()
        return EpisodeKeys(table)

    def episode_indices(self, keys: Sequence[str]) -> np.ndarray:
        """`(len(keys),) int64` index of each episode key, -1 for a key the store does not have (vectorised
        over the key column)."""
        with self.snapshot.reading():
            return self.meta_table.indices_of(list(keys))

    def select_where(self, text: str) -> np.ndarray:
        """Indices `(M,) int64` of the episodes whose metadata match a `--where` filter such as
        `"length < 20 and task == pick"` (`stores.episode_where`). Raises ConfigError."""
        with self.snapshot.reading():
            return select_where(self.meta_table, text, self.url)

    def episode_tasks(self, episodes: Sequence[int] | np.ndarray) -> list[str]:
        """The task text of each of `episodes` ("" where none), read from the task column."""
        with self.snapshot.reading():
            return self.meta_table.tasks_of(np.asarray(episodes, dtype=np.int64))

    def episode_entries(self, name: str) -> list[Any]:
        """Metadata entry `name` of every episode (None where absent), in store order."""
        with self.snapshot.reading():
            return self.meta_table.entries(name)

    @property
    def split(self) -> dict[str, list[int]]:
        """The by-episode split: {"train": [...], "val": [...]} episode indices: the manifest's when it names
        one (format version 1, or a manifest given in memory), else `meta/split.parquet`'s."""
        if self.manifest.get("split"):
            return self.manifest["split"]
        if "split" not in self._lazy:
            names, codes = self._split_codes()
            self._lazy["split"] = {n: np.flatnonzero(codes == c).tolist() for c, n in enumerate(names)}
        return self._lazy["split"]

    def split_indices(self, name: str) -> np.ndarray | None:
        """`(M,) int64` episode indices of split `name`, or None when the store has no such split."""
        if self.manifest.get("split"):
            got = self.manifest["split"].get(name)
            return None if got is None else np.asarray(got, dtype=np.int64)
        names, codes = self._split_codes()
        return np.flatnonzero(codes == names.index(name)).astype(np.int64) if name in names else None

    def _split_codes(self) -> tuple[list[str], np.ndarray]:
        if "split_codes" not in self._lazy:
            with self.snapshot.reading():
                self._lazy["split_codes"] = self.meta_table.split_codes()
        return self._lazy["split_codes"]

    def episode_length(self, episode: int) -> int:
        """Steps of one episode."""
        return int(self.episode_ends[episode] - self.episode_starts[episode])

    def episode_record(self, episode: int) -> dict[str, Any]:
        """The episode's metadata as stored (JSON values: key, length, task, fps, cameras, ...), one row read."""
        if not -self.num_episodes <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range [0, {self.num_episodes})")
        with self.snapshot.reading():
            return self.meta_table.record(int(episode) % self.num_episodes)

    def episode_meta(self, episode: int) -> dict[str, Any]:
        """Metadata of one episode: key, length, task, fps (Hz), source path, and `cameras[role]` with `K
        (3, 3)` and `T_world_cam (4, 4)` as float64 arrays (T_world_cam is None for a camera that moves;
        its per-step extrinsics are the field `obs.T_world_cam.<role>`)."""
        meta = self.episode_record(episode)
        cams = {}
        for role, cam in (meta.get("cameras") or {}).items():
            cam = dict(cam)
            for k in ("K", "T_world_cam", "T_link_cam"):
                if cam.get(k) is not None:
                    cam[k] = np.asarray(cam[k], dtype=np.float64)
            cams[role] = cam
        meta["cameras"] = cams
        return meta

    @reads_snapshot()
    def read(self, episode: int, fields: Sequence[str] | None = None, start: int = 0,
             stop: int | None = None) -> dict[str, np.ndarray]:
        """Steps `[start, stop)` of `episode` (negative indices count from the episode's end): field ->
        `(stop - start, *spec.shape)` array. Raises `IndexError` for an episode out of range and
        `KeyError` for an unknown field."""
        if not -self.num_episodes <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range [0, {self.num_episodes})")
        episode %= self.num_episodes
        length = self.episode_length(episode)
        start, stop, _ = slice(start, stop).indices(length)
        stop = max(stop, start)
        base = int(self.episode_starts[episode])
        return {f: self.read_rows(f, base + start, base + stop) for f in (fields or self.schema.keys())}

    @reads_snapshot()
    def read_rows(self, field: str, start: int, stop: int, *, out: np.ndarray | None = None,
                  channels_first: bool = False) -> np.ndarray:
        """Global rows `[start, stop)` of one field, across episode boundaries: `(stop - start, *shape)`.
        `out`: an array of that shape and the field's dtype to read into (returned; a frame decodes straight
        into it). `channels_first`: `(H, W, C)` frames as `(C, H, W)` planes (`stores.frames.planes.to_planes`)."""
        if field not in self.schema:
            raise KeyError(f"unknown field {field!r}; store has {self.schema.keys()}")
        self._check_pid()
        if out is not None or channels_first:
            return self._read_into(field, start, stop, out, channels_first)
        cached = self._cache.get(field)
        if cached is not None:
            return cached[start:stop]
        fast = self._fast_reader(field)
        if fast is not None:
            return fast.read(start, stop)
        video = self._video.get(field)
        if video is not None:
            return video.read(start, stop)
        spec = self.schema[field]
        nbytes = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize * self.num_steps
        if nbytes > LOWDIM_CACHE_BYTES and spec.kind not in FRAME_KINDS:
            return self._chunk_rows(field).read(start, stop)  # a large field: by chunk, bounded memory
        arr = self._array(field)
        if spec.kind not in FRAME_KINDS:
            self._cache[field] = arr[:]
            return self._cache[field][start:stop]
        return arr[start:stop]

    def _read_into(self, field: str, start: int, stop: int, out: np.ndarray | None,
                   channels_first: bool) -> np.ndarray:
        """`read_rows` into `out` and/or as `(C, H, W)`: a video field and the shard reader decode straight into
        `out`; otherwise the plain read is copied; `(C, H, W)` planes are split from the decoded frames."""
        if channels_first:  # decoded interleaved, then split into planes (`stores.frames.planes`)
            if len(self.schema[field].shape) != 3:
                raise ValueError(f"channels_first reads (H, W, C) frames; {field!r} has rows "
                                 f"{self.schema[field].shape}")
            return to_planes(self.read_rows(field, start, stop), out)
        fast = None if field in self._cache else self._fast_reader(field)
        if field in self._video:
            return self._video[field].read(start, stop, out=out)
        if fast is not None:
            return fast.read(start, stop, out=out)
        return np.copyto(out, self.read_rows(field, start, stop)) or out

    @reads_snapshot()
    def read_block(self, field: str, start: int, stop: int) -> np.ndarray:
        """Global rows `[start, stop)` of one field, like `read_rows`, but a low-dim field is not kept in memory
        whole on the way (a stats pass walks every field once, in blocks)."""
        if field not in self.schema:
            raise KeyError(f"unknown field {field!r}; store has {self.schema.keys()}")
        self._check_pid()
        if field in self._cache or self.schema[field].kind in FRAME_KINDS or self._fast_reader(field) is not None \
                or field in self._video:
            return self.read_rows(field, start, stop)
        return self._array(field)[start:stop]

    def close(self) -> None:
        """Drop what this process holds open or cached (low-dim fields read whole, shard indexes, metadata
        rows); the store stays usable and reopens them on the next read."""
        self._arrays, self._fast, self._video, self._cache = {}, {}, {}, {}
        self._table = None

    # -- internals ---------------------------------------------------------------------------------------
    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._arrays, self._fast, self._video, self._cache, self._pid = {}, {}, {}, {}, os.getpid()

    def _group(self) -> zarr.Group:
        if "__root__" not in self._arrays:
            self._arrays["__root__"] = zarr.open_group(self.url, mode="r")
        return self._arrays["__root__"]

    def _chunk_rows(self, field: str) -> ChunkRows:
        """The chunk reader of a low-dim field too large to keep whole (`stores.lowdim_chunks`): each chunk file
        checked against `checksums.json` at its first read in this process."""
        ident = f"{field}\0chunks"
        if ident not in self._arrays:
            arr = self._group()[f"data/{field}"]
            self._checks.check_rows(field, arr.shape[0], self._join(f"data/{field}"))
            rows = int(arr.chunks[0])
            tail = "/0" * (len(arr.shape) - 1)
            self._arrays[ident] = ChunkRows(arr, rows, lambda c: self._checks.check_files(
                f"data/{field}/c/{c}{tail}", field, exact=True))
        return self._arrays[ident]

    def _array(self, field: str):
        if field not in self._arrays:
            self._checks.check_files(f"data/{field}/", field)  # a low-dim field's chunk files, once per process
            self._arrays[field] = self._group()[f"data/{field}"]
            self._checks.check_rows(field, self._arrays[field].shape[0], self._join(f"data/{field}"))
        return self._arrays[field]

    def _fast_reader(self, field: str) -> ShardReader | None:
        """The shard fast path of `field`, or None; a video field's reader goes to `_video` on the way."""
        if field not in self._fast:
            path = self._join(f"data/{field}")
            meta = load_array_meta(path, self._fs)
            self._fast[field] = self._checks.attach(field, ShardReader.maybe_for(path, meta, fs=self._fs), path)
            codec = codec_of(meta)
            if codec is not None and codec.layout == VIDEO:
                index = np.asarray(self._group()[f"data/{field}/{INDEX}"][:])
                self._video[field] = VideoFrameReader(path, index, self.episode_starts,
                                                      tuple(self.schema[field].shape), fs=self._fs,
                                                      **self._checks.video_options(field, len(index), path))
        return self._fast[field]

