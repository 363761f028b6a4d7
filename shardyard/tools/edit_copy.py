"""Writing the result of a `shardyard edit` operation: a plan of source episodes copied into a new
episodic store (`tools.edit` builds the plans).

Frame fields are copied chunk for chunk: each frame's encoded inner chunk is read from the source's shard
file by its index entry (`stores.frames.zarr_shard.read_shard_index`) and handed to `EpisodicWriter` as
`EncodedRows`, which appends the bytes as they are (no decode, no re-encode), with the episode's stored stats
part (`meta/stats_parts`), so the stats pass does not read those frames back either. That holds whatever the
field's one-row-per-chunk codec is (lz4, zstd, raw, JPEG and PNG: `stores.frames.registry`). A field
stored with the `video` codec is copied episode for episode: the episode's MP4 file as it is (copied into the
writer's spill folder, which the writer renames into place), its `frame_index` rows (pts and keyframe step
are relative to the episode's own file) and its stats part, as an `EncodedVideo`. Both hand over the crc32c
recorded at the source's ingest (`meta/chunk_crc32c`, `meta/video_crc32c`) rather than one taken from the
bytes read now, so a source byte damaged since its ingest still fails `verify` on the result. All of this
holds when the output field gets the source's codec (`_frame_codec_name` reads each field's codec off the
first source's arrays); where it cannot (sources of a merge with different codecs, or a different video
GOP/CRF) the frames are decoded and re-encoded, with a warning. Low-dim fields are read and written through
zarr (they are small). Runs of consecutive episodes of a source without video go as blocks (`_read_block`,
`EpisodicWriter.write_block`): a read per field and shard, metadata rows and stats parts by range; a block
that does not read or validate goes episode by episode, so that an error names the same episode.

The stats of the result come from `stats.compute_stats` on it, with the copied per-episode frame parts:
every part is a function of its episode's data alone (`stats.parts`: data-independent buckets), so the
stats equal, value for value, those of ingesting the resulting episodes from scratch in the same order with
the same split. Every episode keeps its input's split, train or val (`_kept_split`), unless a merge is asked
to draw it anew (`--val-fraction`).

In place (`commit_in_place`): the result is written beside the store, then swapped in with two renames;
the old store is kept at `.<name>.edit-old` until the new one is in place, and a later edit puts it back
if a kill fell between the two renames.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from shardyard.errors import SchemaError, StoreError
from shardyard.schema import FRAME_KINDS, Episode, Schema
from shardyard.stores.checksums import CHUNK_CRC, VIDEO_CRC, read_crc32c
from shardyard.stores.episode_block import EpisodeBlock
from shardyard.stores.episodic import STATS_PARTS, EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.codec import VIDEO, ChunkCodec, FrameCodec
from shardyard.stores.frames.encoding import EncodedRows, EncodedVideo
from shardyard.stores.frames.registry import chunk_codec_of, codec_of
from shardyard.stores.frames.video import INDEX, video_name
from shardyard.stores.frames.zarr_shard import EMPTY, load_array_meta, read_shard_index, shard_file
from shardyard.stores.stats import StatsConfig, compute_stats
from shardyard.stores.stats.part_table import LegacyParts, PartTable

log = logging.getLogger(__name__)

__all__ = ["CopyPlan", "EpisodeRecords", "write_plan", "commit_in_place", "restore_interrupted", "stats_config_of",
           "episode_records", "frame_parts_of"]


@dataclass
class CopyPlan:
    """What one output store holds: `episodes[i] = (source index, episode index)` in output order, with
    output key `keys[i]`; `fields` maps each output field to its source field (renames, drops)."""

    sources: list[EpisodicStore]
    episodes: list[tuple[int, int]]
    keys: list[str]
    fields: dict[str, str]
    op: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> Schema:
        """Output schema: the first source's specs under the output names."""
        src = self.sources[0].schema
        return Schema({new: src[old] for new, old in self.fields.items()})


def stats_config_of(store: EpisodicStore) -> StatsConfig:
    """The `StatsConfig` the store's stats.json was computed with (defaults when it records none)."""
    recorded = (store.stats or {}).get("config") or {}
    known = set(StatsConfig.__dataclass_fields__)
    return StatsConfig(**{k: v for k, v in recorded.items() if k in known})


class EpisodeRecords(Sequence):
    """The episodes' metadata as stored (key, length, task, fps, cameras, ...; `EpisodicStore.episode_record`),
    one row read per item: a store of 10^6 episodes is not turned into 10^6 dicts."""

    def __init__(self, store: EpisodicStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.num_episodes

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.store.episode_record(j) for j in range(*i.indices(len(self)))]
        return self.store.episode_record(int(i))


def episode_records(store: EpisodicStore) -> EpisodeRecords:
    """The episodes' metadata as stored, without conversions (a sequence read row by row)."""
    return EpisodeRecords(store)


def frame_parts_of(store: EpisodicStore) -> PartTable | LegacyParts:
    """Per-episode stats parts that the ingest workers stored (`meta/stats_parts`, `stats.part_table`), by
    episode index and field; a format-1 store's JSON parts through `LegacyParts`."""
    folder = Path(store.root) / STATS_PARTS
    if store.format_version >= 2:
        return PartTable(folder)
    return LegacyParts(folder, store.episode_keys)


def _recorded_crc(store: EpisodicStore, kind: str, field_name: str, n: int) -> np.ndarray | None:
    """The crc32c array the source recorded at ingest, when it covers all `n` rows (else None: the writer
    takes them from the bytes)."""
    crc = read_crc32c(store.root, kind, field_name)
    return crc if crc is not None and len(crc) == n else None


class _FrameSource:
    """Encoded chunks of one frame field of a local source store, read by the shard index."""

    def __init__(self, store: EpisodicStore, field_name: str, meta: dict[str, Any]) -> None:
        self.dir = os.path.join(store.root, "data", field_name)
        self.meta = meta
        self.codec: ChunkCodec | None = chunk_codec_of(meta)
        self.shard_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.ndim = len(meta["shape"])
        self.field = field_name
        self.crc = _recorded_crc(store, CHUNK_CRC, field_name, store.num_steps)
        self._shard: tuple[int, np.ndarray, Any] | None = None  # (shard, its index, its open file)

    def rows(self, start: int, stop: int, key: str, spec: Any, stats_part: dict[str, Any] | None) -> EncodedRows:
        """Global rows `[start, stop)` (one episode, `spec` its `FieldSpec`) as `EncodedRows`."""
        return EncodedRows(chunks=self.chunks(start, stop, key), shape=(stop - start,) + tuple(spec.shape),
                           dtype=np.dtype(spec.dtype), stats_part=stats_part,
                           crc32c=None if self.crc is None else self.crc[start:stop].tolist())

    def close(self) -> None:
        """Close the shard file kept open."""
        if self._shard is not None:
            self._shard[2].close()
            self._shard = None

    def _open(self, s: int, key: str) -> tuple[np.ndarray, Any, str]:
        """Shard `s`'s index, open file and path, kept until another shard is needed (episodes come in order:
        one index read per shard). Raises StoreError naming `key` when the file is missing."""
        path = shard_file(self.dir, s, self.ndim)
        if self._shard is None or self._shard[0] != s:
            index = read_shard_index(path, self.shard_rows)
            if index is None:
                raise StoreError("shard file missing", path=path, key=key, field=self.field)
            if self._shard is not None:
                self._shard[2].close()
            self._shard = (s, index, open(path, "rb"))
        return self._shard[1], self._shard[2], path

    def block(self, start: int, stop: int, keys: Sequence[str], starts: np.ndarray, spec: Any) -> EncodedRows:
        """Global rows `[start, stop)` of consecutive episodes (source `keys`, first rows `starts`; `spec` the
        field's `FieldSpec`) as one `EncodedRows`: per shard one read of the span its rows' chunks lie in (a
        writer appended them one after another), the chunks views into it. Raises StoreError as `chunks`."""
        out: list[Any] = []
        for s in range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1):
            lo, base = max(start, s * self.shard_rows), s * self.shard_rows
            index, f, path = self._open(s, keys[int(np.searchsorted(starts, lo, "right")) - 1])
            rows = index[lo - base:min(stop, base + self.shard_rows) - base]
            empty = np.flatnonzero(rows[:, 0] == EMPTY)
            if len(empty):
                row = lo + int(empty[0])
                raise StoreError(f"row {row} was never written", path=path, field=self.field,
                                 key=keys[int(np.searchsorted(starts, row, "right")) - 1])
            first, ends = int(rows[:, 0].min()), rows[:, 0] + rows[:, 1]
            buf = memoryview(os.pread(f.fileno(), int(ends.max()) - first, first))
            out += map(buf.__getitem__, map(slice, (rows[:, 0] - first).tolist(), (ends - first).tolist()))
        return EncodedRows(chunks=out, shape=(stop - start,) + tuple(spec.shape), dtype=np.dtype(spec.dtype),
                           crc32c=None if self.crc is None else self.crc[start:stop].tolist())

    def chunks(self, start: int, stop: int, key: str) -> list[bytes]:
        """Encoded chunks of global rows `[start, stop)`. Raises StoreError for a missing chunk or index."""
        out: list[bytes] = []
        for s in range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1 if stop > start else 0):
            index, f, path = self._open(s, key)
            for row in range(max(start, s * self.shard_rows), min(stop, (s + 1) * self.shard_rows)):
                off, n = index[row - s * self.shard_rows]
                if off == EMPTY:
                    raise StoreError(f"row {row} was never written", path=path, key=key, field=self.field)
                out.append(os.pread(f.fileno(), int(n), int(off)))
        return out


class _VideoSource:
    """The per-episode MP4 files of one video field of a local source store, with its frame index and the
    files' recorded crc32c."""

    def __init__(self, store: EpisodicStore, field_name: str, meta: dict[str, Any]) -> None:
        self.dir = os.path.join(store.root, "data", field_name)
        self.codec: FrameCodec | None = codec_of(meta)
        self.index = np.asarray(zarr.open_array(os.path.join(self.dir, INDEX), mode="r")[:], dtype=np.int64)
        self.field = field_name
        self.crc = _recorded_crc(store, VIDEO_CRC, field_name, store.num_episodes)

    def episode(self, e: int, start: int, stop: int, key: str, spec: Any, stats_part: dict[str, Any] | None,
                spill_dir: str | os.PathLike) -> EncodedVideo:
        """Episode `e` (global rows `[start, stop)`) as an `EncodedVideo` whose `path` is a copy of its MP4 in
        `spill_dir` (the writer renames it into place). Raises StoreError when the file is missing."""
        src = os.path.join(self.dir, video_name(e))
        if not os.path.isfile(src):
            raise StoreError("video file missing", path=src, key=key, field=self.field)
        fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=spill_dir)
        os.close(fd)
        shutil.copyfile(src, tmp)  # sendfile: the bytes stay in the kernel
        return EncodedVideo(index=self.index[start:stop].copy(), shape=(stop - start,) + tuple(spec.shape),
                            dtype=np.dtype(spec.dtype), path=tmp, stats_part=stats_part,
                            crc32c=None if self.crc is None else int(self.crc[e]))


def _frame_codec_name(plan: CopyPlan) -> str:
    """The writer's `frame_codec` that reproduces the first source's image fields under their output names,
    read off each field's stored codec (its `FrameCodec.token()`: `video:CRF:GOP`, `jpeg:QUALITY`, ...), not
    off the recorded ingest option: an edited store records none, and a field JPEG or video could not hold
    was stored lz4."""
    first = plan.sources[0]
    tokens = ["lz4"]
    for new, old in plan.fields.items():
        if first.schema[old].kind != "image":
            continue
        meta = load_array_meta(os.path.join(first.root, "data", old))
        codec = codec_of(meta)
        if codec is not None:
            tokens.append(f"{new}={codec.token()}")
    return ",".join(tokens)


def _read_episode(plan: CopyPlan, i: int, frames: dict[tuple[int, str], _FrameSource | _VideoSource],
                  writer: EpisodicWriter, parts: dict[int, PartTable | LegacyParts]) -> Episode:
    s, e = plan.episodes[i]
    src = plan.sources[s]
    rec = src.episode_record(e)
    key = plan.keys[i]
    start, stop = int(src.episode_starts[e]), int(src.episode_ends[e])
    lowdim = {new: old for new, old in plan.fields.items() if new not in writer.codecs}
    read = src.read(e, list(lowdim.values())) if lowdim else {}
    steps: dict[str, Any] = {new: read[old] for new, old in lowdim.items()}
    for new, old in plan.fields.items():
        if new not in writer.codecs:
            continue
        fs = frames.get((s, old))
        if fs is None:
            steps[new] = src.read(e, [old])[old]  # decoded; the writer re-encodes
            continue
        stats_part = parts[s].get(e, old)
        if isinstance(fs, _VideoSource):
            steps[new] = fs.episode(e, start, stop, rec["key"], src.schema[old], stats_part, writer.spill_dir)
        else:
            steps[new] = fs.rows(start, stop, rec["key"], src.schema[old], stats_part)
    meta = {k: v for k, v in rec.items() if k not in ("key", "length")}
    return Episode(key=key, steps=steps, meta=meta)


def _read_block(plan: CopyPlan, i0: int, i1: int, frames: dict[tuple[int, str], _FrameSource | _VideoSource],
                writer: EpisodicWriter, parts: dict[int, PartTable | LegacyParts]) -> EpisodeBlock:
    """Output episodes `[i0, i1)`, consecutive episodes of one source (`_runs`), as what `_read_episode` gives
    for each, in one `EpisodeBlock`: a read per field, metadata rows and stats parts by range."""
    s, e0 = plan.episodes[i0]
    src, e0 = plan.sources[s], int(e0)
    e1 = e0 + i1 - i0
    starts, ends = src.episode_starts[e0:e1], src.episode_ends[e0:e1]
    start, stop = int(starts[0]), int(ends[-1])
    with src.snapshot.reading():
        recs = src.meta_table.records(e0, e1)
    keys = [r["key"] for r in recs]
    steps = {new: frames[(s, old)].block(start, stop, keys, starts, src.schema[old])  # type: ignore[union-attr]
             if new in writer.codecs else src.read_rows(old, start, stop) for new, old in plan.fields.items()}
    names = {old: new for new, old in plan.fields.items() if new in writer.codecs}
    table = parts[s].rows(e0, e1, names)  # type: ignore[union-attr]
    metas = [{k: v for k, v in r.items() if k not in ("key", "length")} for r in recs]
    return EpisodeBlock(plan.keys[i0:i1], ends - starts, metas, steps, table)  # type: ignore[arg-type]


def _runs(plan: CopyPlan, blocks: set[int], size: int) -> Iterator[tuple[int, int]]:
    """`[i0, i1)` ranges of output episodes copied at once: consecutive episodes of a source in `blocks`, never
    across a multiple of `size` (commit groups stay those of one-by-one writes); else an episode alone."""
    i0, n = 0, len(plan.episodes)
    while i0 < n:
        s, e = plan.episodes[i0]
        i1, end = i0 + 1, (min(n, (i0 // size + 1) * size) if s in blocks else i0 + 1)
        while i1 < end and plan.episodes[i1][0] == s and plan.episodes[i1][1] == e + i1 - i0:
            i1 += 1
        yield i0, i1
        i0 = i1


def _block_sources(plan: CopyPlan, frames: dict[tuple[int, str], _FrameSource | _VideoSource],
                   writer: EpisodicWriter, parts: dict[int, PartTable | LegacyParts]) -> set[int]:
    """Sources whose episodes are copied in blocks: every frame field as stored chunk by chunk (no video, no
    re-encoding), from distinct source fields, with the stats parts in columns (format version 2)."""
    olds = [old for new, old in plan.fields.items() if new in writer.codecs]
    return {s for s in range(len(plan.sources)) if isinstance(parts[s], PartTable) and len(set(olds)) == len(olds)
            and all(isinstance(frames.get((s, old)), _FrameSource) for old in olds)}


def _frame_sources(plan: CopyPlan, writer: EpisodicWriter) -> dict[tuple[int, str], _FrameSource | _VideoSource]:
    """The frame fields that can be copied as stored: those whose source codec equals the output's."""
    out: dict[tuple[int, str], _FrameSource | _VideoSource] = {}
    warned = set()
    for s, src in enumerate(plan.sources):
        for new, old in plan.fields.items():
            if new not in writer.codecs or src.schema[old].kind not in FRAME_KINDS:
                continue
            meta = load_array_meta(os.path.join(src.root, "data", old))
            codec = codec_of(meta)
            fs = _VideoSource(src, old, meta) if codec is not None and codec.layout == VIDEO \
                else _FrameSource(src, old, meta)
            if fs.codec is None or fs.codec != writer.codecs[new]:
                if new not in warned:
                    log.warning("%s: codec of %s (%s) differs from the output's %s: frames are re-encoded",
                                old, src.url, fs.codec, writer.codecs[new])
                    warned.add(new)
                continue
            out[(s, old)] = fs
    return out


def _kept_split(plan: CopyPlan) -> tuple[dict[str, list[int]] | None, dict[str, Any]]:
    """Each output episode keeps its input store's split, train or val, by episode: an edit never moves an
    episode between them, so a merge of all-train stores is all train (its stats the union's), and a split
    then merged back gives the store back. The manifest's `split_source` names where the split came from
    (an input's, e.g. NYU's official one, else "kept by edit OP"). With `plan.op["val_fraction"]` (`edit merge
    --val-fraction F`): None, the writer draws the seeded split over the result's keys, as an ingest would."""
    if plan.op.get("val_fraction") is not None:
        return None, {}
    sources = {str(x) for x in (s.manifest.get("extra", {}).get("split_source") for s in plan.sources) if x}
    val = [set(int(i) for i in (s.split or {}).get("val", [])) for s in plan.sources]
    split: dict[str, list[int]] = {"train": [], "val": []}
    for i, (s, e) in enumerate(plan.episodes):
        split["val" if e in val[s] else "train"].append(i)
    return split, {"split_source": "; ".join(sorted(sources)) or f"kept by edit {plan.op.get('op')}"}


def write_plan(plan: CopyPlan, out: str | os.PathLike, *, overwrite: bool = False,
               stats: StatsConfig | None = None) -> EpisodicStore:
    """Write `plan` as a new complete store at `out` (manifest last, as every writer) and return it.
    Each episode keeps its input's split (`_kept_split`), or with `plan.op["val_fraction"]` the split is drawn
    anew with that fraction and the first source's `split_seed` (a function of the keys, as on ingest).
    Raises StoreError when `out` exists (without `overwrite`) or a source chunk is missing."""
    first = plan.sources[0]
    extra = first.manifest.get("extra", {})
    split, split_extra = _kept_split(plan)
    cfg = EpisodicWriterConfig(
        overwrite=overwrite, frame_codec=_frame_codec_name(plan),
        commit_every=4096,  # an edit is rerun whole, never resumed: big groups, few zarr calls per episode
        val_fraction=plan.op["val_fraction"] if plan.op.get("val_fraction") is not None else
        extra.get("val_fraction", 0.1),
        split_seed=extra.get("split_seed", 0),
        source={"name": "edit", "op": plan.op.get("op"),
                "inputs": [{"url": s.url, "source": s.manifest.get("source", {})} for s in plan.sources]},
        config={"edit": plan.op}, split=split, extra=split_extra)
    if Path(out).exists() and not overwrite:
        raise StoreError("output exists; choose another --out or --overwrite", path=str(out))
    stats_cfg = stats or stats_config_of(first)
    writer = EpisodicWriter(out, plan.schema(), config=cfg, report={"edit": plan.op},  # stats_fn reads `writer` late
                            stats_fn=lambda store: compute_stats(store, stats_cfg, frame_parts=writer.stats_parts))
    parts = {s: frame_parts_of(src) for s, src in enumerate(plan.sources)}
    with writer:
        frames = _frame_sources(plan, writer)
        blocks = _block_sources(plan, frames, writer, parts)
        try:
            for i0, i1 in _runs(plan, blocks, cfg.commit_every):
                if plan.episodes[i0][0] in blocks:
                    try:
                        block = _read_block(plan, i0, i1, frames, writer, parts)
                        writer.write_block(block)  # a SchemaError comes before anything is written
                        continue
                    except (StoreError, SchemaError):  # one by one: the same error, at the same episode
                        pass
                for i in range(i0, i1):
                    writer.write(_read_episode(plan, i, frames, writer, parts))
        finally:
            for fs in frames.values():
                if isinstance(fs, _FrameSource):
                    fs.close()
        for src in plan.sources:  # their low-dim fields read whole: not kept through the output's stats pass
            src.close()
    return EpisodicStore(out)


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.edit-old")


def restore_interrupted(path: str | os.PathLike) -> bool:
    """Put back a store whose in-place edit was killed between its two renames; True if it did."""
    p, old = Path(path), _old_path(Path(path))
    if old.exists() and not p.exists():
        os.rename(old, p)
        return True
    if old.exists():
        shutil.rmtree(old)
    return False


def commit_in_place(plans: Sequence[CopyPlan], path: str | os.PathLike,
                    stats: StatsConfig | None = None) -> EpisodicStore:
    """Write the one plan beside `path`, then swap it in (module docstring) and return the new store."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.edit-new")
    shutil.rmtree(tmp, ignore_errors=True)
    write_plan(plans[0], tmp, stats=stats)
    os.rename(p, _old_path(p))
    os.rename(tmp, p)
    shutil.rmtree(_old_path(p))
    return EpisodicStore(p)
