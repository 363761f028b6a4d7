"""Writer of episodic stores (layout in `stores.episodic`).

Commit protocol (why resume after SIGKILL is exact): validated episodes are committed in groups
(`commit_every` episodes, `commit_bytes` of encoded frames and low-dim arrays, or `commit_seconds` since the
group's first episode, whichever comes first: 32, 1 GiB, 30 s by default, so a kill costs at most about half
a minute of work). A frame field's rows are appended to its shard files as each episode arrives
(`ShardAppender`: bytes once written are never rewritten; the partial shard's index is written once per
group); at the commit the group's low-dim fields go through zarr and its workers' stats parts into one
Parquet file (`stats.part_table`); then one record of the group (keys, lengths, metadata), with the size of
each field's partial last shard, is added to the commit log (`stores.commit_log`: a file per group). A
rerun truncates every array and the parts back to the committed count (cutting the partial shard to its
recorded size, deleting shard files past it) and goes on from there: a half-written group is overwritten,
never kept. Per episode the writer keeps a key and a length in memory; all else is per group, so its cost
per episode is flat. At the end the columnar episode table (`stores.episode_table`) is streamed from the
records, the parts are compacted into one file, and the zarr.json shape of a sharded frame field is set.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from shardyard.errors import ConfigError, SchemaError, StoreError
from shardyard.schema import FRAME_KINDS, Episode, Schema
from shardyard.stores.atomic import SPILL, atomic_write_json, remove_stale_temps, to_jsonable
from shardyard.stores.checksums import CHUNK_CRC, VIDEO_CRC, append_crc32c, truncate_crc32c, write_ingest_checksums
from shardyard.stores.commit_log import PROGRESS, CommitLog
from shardyard.stores.episode_block import EpisodeBlock, PendingEpisodes, group_parts
from shardyard.stores.episode_table import EPISODES_JSON, write_episode_table, write_split
from shardyard.stores.episodic import (
    FORMAT,
    FORMAT_VERSION,
    STATS_PARTS,
    EpisodicStore,
    split_episodes,
)
from shardyard.stores.frames.codec import VIDEO, ChunkCodec
from shardyard.stores.frames.encoding import EncodedRows, EncodedVideo, FrameEncoding
from shardyard.stores.frames.registry import DEFAULT_FRAME_CODEC, codec_of, field_codec, parse_frame_codecs
from shardyard.stores.frames.shard_append import ShardAppender
from shardyard.stores.frames.video import INDEX, VIDEO_DIR, VideoCodec, VideoFieldFiles, create_video_field
from shardyard.stores.frames.zarr_shard import load_array_meta
from shardyard.stores.manifest import MANIFEST, Manifest, provenance
from shardyard.stores.stats import part_table

log = logging.getLogger(__name__)

_SHARD_TARGET_BYTES = 32 << 20   # ~32 MiB shards: few files, and a partial-shard rewrite stays cheap
_VECTOR_CHUNK_ROWS = 16384

__all__ = ["EpisodicWriter", "EpisodicWriterConfig"]


@dataclass
class EpisodicWriterConfig:
    """Options of `EpisodicWriter`.

    frame_codec: codec of the image fields (`stores.frames.registry.parse_frame_codecs`): "jpeg" (default,
        quality 85; "jpeg:Q"), "video", "lz4" (raw pixels, fastest to decode), "zstd", "none" or "png", with
        optional `FIELD=CODEC` overrides.
    commit_every, commit_bytes, commit_seconds: a group is committed when it holds this many episodes, this
        many bytes (encoded frames included) or has been open this long (s), whichever comes first, so a kill
        loses at most about that much work.
    val_fraction, split_seed: the by-episode train/val split recorded in the manifest and used by stats.
    split: a given split (episode indices) instead of the seeded one (`shardyard edit` keeps an official
    split by key); extra: more manifest `extra` entries (e.g. its `split_source`).
    """

    overwrite: bool = False
    frame_codec: str = DEFAULT_FRAME_CODEC
    commit_every: int = 32
    commit_bytes: int = 1 << 30
    commit_seconds: float = 30.0
    val_fraction: float = 0.1
    split_seed: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EpisodicWriter:
    """Context manager that appends episodes to an episodic store and, on a clean exit, writes metadata,
    stats (through `stats_fn`), the report and, last, `manifest.json`.

    Reopening a directory with a `progress.json` resumes it: `committed_keys` lists what is already stored.
    Raises `StoreError` when the directory holds a different schema or a complete store (without overwrite).
    """

    def __init__(self, path: str | os.PathLike, schema: Schema, *, config: EpisodicWriterConfig | None = None,
                 stats_fn: Callable[["EpisodicStore"], dict[str, Any]] | None = None,
                 on_commit: Callable[[], None] | None = None, report: dict[str, Any] | None = None,
                 split_fn: Callable[[list[str]], dict[str, list[int]]] | None = None) -> None:
        """stats_fn: stats.json of the finished store (None: none written). on_commit: called after each commit
        point (a staged upload). report: report.json, read when the store is finished (a caller may fill it
        while writing). split_fn: the split of the stored keys, instead of the config's given or seeded one."""
        self.path, self.schema, self.cfg = Path(path), schema, config or EpisodicWriterConfig()
        self.stats_fn, self.on_commit, self.split_fn = stats_fn, on_commit, split_fn
        self.report: dict[str, Any] = {} if report is None else report
        self._root: zarr.Group | None = None
        self._lowdim: dict[str, zarr.Array] = {}  # opened once: a group lookup reads zarr.json (~2 ms)
        self._appenders: dict[str, ShardAppender] = {}
        self._videos: dict[str, VideoFieldFiles] = {}
        self._pending: list[PendingEpisodes] = []
        self._pending_keys: set[str] = set()
        self._keys: set[str] = set()
        self._num_steps, self._pending_bytes = 0, 0
        self._log: CommitLog | None = None
        self.codecs: dict[str, ChunkCodec | VideoCodec] = {}
        self._frame_codecs = parse_frame_codecs(self.cfg.frame_codec)
        unknown = sorted(set(self._frame_codecs) - {""} - set(schema.keys()))
        if unknown:
            raise ConfigError(f"--frame-codec names fields the source does not have: {unknown}")
        self._group_opened = 0.0  # time.monotonic() of the current group's first episode

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> "EpisodicWriter":
        if self.path.exists() and self.cfg.overwrite:
            shutil.rmtree(self.path)
        progress_path = self.path / PROGRESS
        if (self.path / MANIFEST).exists() and not progress_path.exists():
            raise StoreError("directory holds a complete store without a commit log; use overwrite",
                             path=str(self.path))
        if self.path.exists() and any(self.path.iterdir()) and not progress_path.exists():
            raise StoreError("directory exists and is not a shardyard store; choose another --out or "
                             "--overwrite", path=str(self.path))
        log_ = CommitLog.read(self.path)
        if log_ is not None:
            if log_.header.get("schema") != to_jsonable(self.schema.to_dict()):
                raise StoreError("existing store was written with a different schema; use --overwrite",
                                 path=str(self.path))
            self._set_log(log_)
            self._load_stats_parts()
            remove_stale_temps(self.path)
            (self.path / MANIFEST).unlink(missing_ok=True)  # appending makes the store incomplete again
            self._root = zarr.open_group(str(self.path), mode="r+")
            n = self.num_steps
            for name in self._row_arrays():
                arr = self._root[f"data/{name}"]
                if arr.shape[0] != n:
                    log.info("truncating %s from %d to %d committed steps", name, arr.shape[0], n)
                    arr.resize((n,) + arr.shape[1:])
            truncate_crc32c(self._root, n, self.num_episodes)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._root = zarr.open_group(str(self.path), mode="w")
            data = self._root.create_group("data")
            for key, spec in self.schema.items():
                self._create_array(data, key, spec)
            self._set_log(CommitLog.create(self.path, FORMAT, self.schema.to_dict()))
        self._open_appenders()
        return self

    def _open_appenders(self) -> None:
        """Sharded one-row-per-chunk fields are appended by `ShardAppender` (see stores/frames/zarr_shard.py)."""
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.spill_dir.mkdir()
        for key in self.schema:
            path = self.path / "data" / key
            meta = load_array_meta(str(path))
            codec = codec_of(meta)
            if codec is not None and codec.layout == VIDEO:  # files past the commit are a killed group's: dropped
                self._videos[key] = VideoFieldFiles(path)
                self._videos[key].drop_after(self.num_episodes)
                self.codecs[key] = codec
                continue
            if codec is None:
                continue
            app = ShardAppender(path, shard_rows=meta["chunk_grid"]["configuration"]["chunk_shape"][0],
                                ndim=len(meta["shape"]), defer_index=True)
            app.drop_shards_after(self.num_steps)
            app.load(self.num_steps, self._log.shard_bytes.get(key) if self._log is not None else None)
            self._appenders[key] = app
            self.codecs[key] = codec

    def _row_arrays(self) -> list[str]:
        """Arrays under `data/` that grow by one row per step: each field's, or a video field's frame index."""
        out = []
        for key in self.schema:
            meta = load_array_meta(str(self.path / "data" / key))
            codec = codec_of(meta)
            out.append(f"{key}/{INDEX}" if codec is not None and codec.layout == VIDEO else key)
        return out

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
                self._finalize()
                return
            try:  # keep the episodes already validated, so a rerun resumes after them
                self.commit()
            except Exception:  # noqa: BLE001 - the original exception is the one to report
                log.exception("could not commit buffered episodes while handling %s", exc_type.__name__)
        finally:
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    # -- writing -----------------------------------------------------------------------------------------
    def _set_log(self, log_: CommitLog) -> None:
        self._log = log_
        self._keys = set(log_.keys)
        self._num_steps = int(sum(log_.lengths))

    @property
    def num_steps(self) -> int:
        """Committed steps."""
        return self._num_steps

    @property
    def num_episodes(self) -> int:
        """Committed episodes."""
        return len(self._log.keys) if self._log is not None else 0

    @property
    def committed_keys(self) -> list[str]:
        """Keys of the committed episodes, in store order."""
        assert self._log is not None
        return list(self._log.keys)

    @property
    def stats_parts(self) -> part_table.PartTable:
        """Stats parts that reader workers made while encoding frames (`EncodedRows.stats_part`), per
        committed episode and field, read from `meta/stats_parts` on demand (`stores.stats.part_table`);
        `stats_fn` may use them instead of reading those frames back."""
        return part_table.PartTable(self.path / STATS_PARTS)

    def _load_stats_parts(self) -> None:
        """On resume: parts of episodes past the committed ones (a group killed before its commit) are
        deleted; their episodes are read again. A format-1 store's JSON parts are converted first."""
        folder = self.path / STATS_PARTS
        part_table.convert_legacy_parts(folder, self.committed_keys)
        part_table.drop_parts_after(folder, self.num_episodes)

    def _create_array(self, group: zarr.Group, key: str, spec) -> None:
        shape = (0,) + spec.shape
        row_bytes = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        if spec.kind in FRAME_KINDS:
            shard_rows = int(max(1, min(1024, _SHARD_TARGET_BYTES // max(row_bytes, 1))))
            codec = field_codec(self._frame_codecs.get(key, self._frame_codecs[""]), key, spec)
            if codec.layout == VIDEO:
                create_video_field(group, key, spec.to_dict(), codec)
                return
            group.create_array(key, shape=shape, dtype=spec.dtype, chunks=(1,) + spec.shape,
                               shards=(shard_rows,) + spec.shape, attributes={"spec": spec.to_dict()},
                               **codec.zarr_args())
        else:
            rows = int(max(1, min(_VECTOR_CHUNK_ROWS, (4 << 20) // max(row_bytes, 1))))
            group.create_array(key, shape=shape, dtype=spec.dtype, chunks=(rows,) + spec.shape,
                               compressors=ZstdCodec(level=3), attributes={"spec": spec.to_dict()})

    def _append_frames(self, key: str, rows: EncodedRows) -> np.ndarray:
        """Append one episode's encoded rows of frame field `key` to its shard files (a reader's spill file
        is copied in the kernel, then deleted); returns their crc32c `(T,) uint32`."""
        if rows.spill is None:
            self._appenders[key].append(rows.pieces(None))
            return rows.checksums(None)
        fd = os.open(rows.spill, os.O_RDONLY)
        try:
            self._appenders[key].append(rows.pieces(fd))
            crc = rows.checksums(fd)
        finally:
            os.close(fd)
        os.unlink(rows.spill)
        return crc

    def write(self, episode: Episode) -> None:
        """Validate `episode` against the schema (every mismatch reported at once, as `SchemaError`) and
        add it to the current group, which is committed when full (see the module docstring), at the
        latest on exit. Its frame fields are appended to their shard files at once, so that the copy
        overlaps the readers' work; they count as stored only once the group's commit lists the episode."""
        self.schema.validate(episode, path=str(episode.meta.get("source_path", "")) or None)
        self._append(EpisodeBlock([episode.key], np.array([episode.num_steps]), [episode.meta], episode.steps))

    def write_block(self, block: EpisodeBlock) -> None:
        """Add the consecutive episodes of `block` (`stores.episode_block`) as `write` would add them one by
        one (the same store), in a call per field. Raises `SchemaError`, having written nothing, when the block
        does not validate or holds a key stored already; `ConfigError` when the store has a video field."""
        block.validate(self.schema)
        if self._videos:
            raise ConfigError(f"write_block takes no video field ({sorted(self._videos)}): write episodes")
        self._append(block)

    def _append(self, block: EpisodeBlock) -> None:
        """Append the block's frame fields to their shard files, hold the rest until the commit."""
        known = [k for k in block.keys if k in self._keys or k in self._pending_keys]
        if known:
            raise SchemaError("episode key already in store", key=known[0], path=str(self.path))
        if block.num_steps == 0:
            raise SchemaError("episode has no steps", key=block.keys[0])
        parts, crc = ([] if block.parts is None else block.parts), {}
        for key in self._appenders:
            value = block.steps[key]
            rows = value if isinstance(value, EncodedRows) else self.codecs[key].encode_rows(value)
            crc[key] = self._append_frames(key, rows)
            if rows.stats_part is not None:
                parts.append((0, key, rows.stats_part))
            self._pending_bytes += rows.nbytes
        videos = {}
        for key, files in self._videos.items():  # `write`'s one episode
            value = block.steps[key]
            if not isinstance(value, EncodedVideo):
                value = FrameEncoding(self.codecs[key]).encode_array(value)
            self._pending_bytes += value.nbytes
            crc[key] = np.array([files.place(self.num_episodes + len(self._pending_keys), value)], dtype=np.uint32)
            if value.stats_part is not None:
                parts.append((0, key, value.stats_part))
            videos[f"{key}/{INDEX}"] = value.index
        lowdim = {k: v for k, v in block.steps.items() if k not in self._appenders and k not in self._videos}
        lowdim.update(videos)
        if not self._pending:
            self._group_opened = time.monotonic()
        self._pending_keys.update(block.keys)
        records = [{"key": k, "length": n, "meta": m}
                   for k, n, m in zip(block.keys, block.lengths.tolist(), block.metas)]
        self._pending.append(PendingEpisodes(records, block.num_steps, lowdim, parts, crc))
        self._pending_bytes += sum(v.nbytes for v in lowdim.values())
        if len(self._pending_keys) >= self.cfg.commit_every or self._pending_bytes >= self.cfg.commit_bytes \
                or time.monotonic() - self._group_opened >= self.cfg.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Write the group's low-dim fields and record its episodes in `progress.json` (the commit point)."""
        if not self._pending:
            return
        assert self._root is not None and self._log is not None
        n0 = self.num_steps
        t = sum(ep.num_steps for ep in self._pending)
        for key in self._pending[0].lowdim:
            arr = self._lowdim[key] if key in self._lowdim else self._lowdim.setdefault(key, self._root[f"data/{key}"])
            arr.resize((n0 + t,) + arr.shape[1:])
            arr[n0:n0 + t] = np.concatenate([ep.lowdim[key] for ep in self._pending])
        for key in self._pending[0].crc:  # before the commit point, like the arrays they check
            video = key in self._videos
            append_crc32c(self._root, VIDEO_CRC if video else CHUNK_CRC, key,
                          np.concatenate([ep.crc[key] for ep in self._pending]), self.num_episodes if video else n0)
        parts = group_parts(self.num_episodes, self._pending)
        if len(parts):  # before the commit point, so that a committed episode always has its parts on disk
            part_table.write_parts(self.path / STATS_PARTS, self.num_episodes, parts)
        for app in self._appenders.values():  # each partial shard's index, once per group
            app.flush()
        self._log.append([r for ep in self._pending for r in ep.records],
                         {k: app.shard_bytes for k, app in self._appenders.items()})
        self._keys |= self._pending_keys
        self._num_steps += t
        self._pending, self._pending_bytes, self._pending_keys = [], 0, set()
        if self.on_commit is not None:
            self.on_commit()

    @property
    def spill_dir(self) -> Path:
        """Folder for reader workers' spill files (`FrameEncoding.spill_dir`), emptied on open and close."""
        return self.path / SPILL

    def _finalize(self) -> None:
        assert self._root is not None
        self._keys = set()  # no more writes: 10^6 keys' set (~60 MB) is not kept through the stats pass
        for key in self._appenders:
            arr = self._root[f"data/{key}"]
            if arr.shape[0] != self.num_steps:
                arr.resize((self.num_steps,) + arr.shape[1:])
        assert self._log is not None
        ends = np.cumsum(self._log.lengths, dtype=np.int64)
        meta = self._root.require_group("meta")
        if "episode_ends" in meta:
            del meta["episode_ends"]
        meta.create_array("episode_ends", data=ends, chunks=(max(len(ends), 1),))
        write_episode_table(self.path, ((e["key"], e["length"], e["meta"]) for e in self._log.episodes()),
                            self._log.roles)
        (self.path / EPISODES_JSON).unlink(missing_ok=True)  # a resumed format-1 store's
        part_table.compact_parts(self.path / STATS_PARTS)
        split = self.cfg.split or (self.split_fn(self.committed_keys) if self.split_fn is not None else
                                   split_episodes(self.committed_keys, self.cfg.val_fraction, self.cfg.split_seed))
        if write_split(self.path, split, self.num_episodes):
            split = {}  # in meta/split.parquet; a split that is not a partition stays in the manifest
        manifest = Manifest(
            format=FORMAT, format_version=FORMAT_VERSION, schema=self.schema.to_dict(),
            num_episodes=self.num_episodes, num_steps=self.num_steps, source=self.cfg.source,
            provenance=provenance(self.cfg.config), split=split,
            extra={"split_seed": self.cfg.split_seed, "val_fraction": self.cfg.val_fraction, **self.cfg.extra})
        atomic_write_json(self.path / "report.json", self.report)
        if self.stats_fn is not None:
            # Stats read the finished arrays through the public reader; it needs a manifest, so give it the
            # one about to be written, held in memory.
            view = EpisodicStore(str(self.path), manifest=manifest)
            atomic_write_json(self.path / "stats.json", self.stats_fn(view))
        write_ingest_checksums(self.path, [f"data/{k}/c/" for k in self._appenders]
                               + [f"data/{k}/{VIDEO_DIR}/" for k in self._videos])
        atomic_write_json(self.path / MANIFEST, manifest.to_dict())


