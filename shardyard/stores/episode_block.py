"""A block of consecutive episodes handed to `EpisodicWriter.write_block` at once: one array (or one
`EncodedRows`) per field for all of them, their keys, lengths and metadata, and their frame fields' stats
parts as table rows. A copy of a store's episodes (`shardyard edit`) reads a run of consecutive source
episodes this way, a read per field rather than per episode and field, and the writer appends and commits
it at the cost of a few large calls instead of many small ones; the store it writes is the same as if the
episodes had come one by one through `EpisodicWriter.write`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardyard.errors import SchemaError
from shardyard.schema import Schema
from shardyard.stores.frames.encoding import EncodedRows
from shardyard.stores.stats.part_table import parts_table

__all__ = ["EpisodeBlock", "PendingEpisodes", "group_parts"]


@dataclass
class EpisodeBlock:
    """`n` consecutive episodes of one schema.

    keys: `n` episode keys. lengths: `(n,) int64` steps of each (all > 0). metas: `n` metadata dicts (as
    `Episode.meta`; episodes may share the dicts inside, which the writer only serialises). steps: field ->
    `(T, *spec.shape)` rows of all `n` episodes one after the other (`T = lengths.sum()`), an array, or for a
    sharded frame field `EncodedRows` (a video field is not taken in a block). parts: the frame fields'
    stats parts as rows of `stats.part_table.PART_SCHEMA`, the `episode` column numbered from 0 at the
    block's first episode (None: none)."""

    keys: list[str]
    lengths: np.ndarray
    metas: list[dict[str, Any]]
    steps: dict[str, np.ndarray | EncodedRows]
    parts: pa.Table | None = None

    @property
    def num_steps(self) -> int:
        """Steps of all the block's episodes."""
        return int(self.lengths.sum())

    def validate(self, schema: Schema) -> None:
        """Check the block against `schema` as `Schema.validate` checks an episode (fields, dtypes, per-step
        shapes, rows, finite floats), plus positive lengths and distinct keys; raises one `SchemaError`
        listing the mismatches, naming the block's first and last key (write its episodes one by one to learn
        which one it is)."""
        problems = [f"{k}: missing" for k in schema.fields if k not in self.steps]
        problems += [f"{k}: not in schema" for k in self.steps if k not in schema.fields]
        if len(self.keys) != len(self.lengths) or len(self.metas) != len(self.keys):
            problems.append(f"{len(self.keys)} keys, {len(self.lengths)} lengths, {len(self.metas)} metas")
        if len(set(self.keys)) != len(self.keys):
            problems.append("repeated keys")
        if len(self.lengths) and int(np.min(self.lengths)) <= 0:
            problems.append("an episode has no steps")
        total = self.num_steps
        for k, spec in schema.fields.items():
            arr = self.steps.get(k)
            if arr is None:
                continue
            if arr.dtype != np.dtype(spec.dtype) or tuple(arr.shape[1:]) != spec.shape:
                problems.append(f"{k}: dtype {arr.dtype}, rows {tuple(arr.shape[1:])}, expected {spec.dtype} "
                                f"{spec.shape}")
            if not arr.ndim or arr.shape[0] != total:
                problems.append(f"{k}: {arr.shape[0] if arr.ndim else 0} rows, expected {total}")
            if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                problems.append(f"{k}: contains NaN or inf")
            if isinstance(arr, EncodedRows) and arr.stats_part is not None:
                problems.append(f"{k}: a stats part on the rows (a block's go in its parts table)")
        if problems:
            where = f"{self.keys[0]} .. {self.keys[-1]}" if self.keys else None
            raise SchemaError("; ".join(problems), key=where)


@dataclass
class PendingEpisodes:
    """Episodes a writer holds until its next commit (one from `EpisodicWriter.write`, or a block); their frame
    fields are in the shard files already. records: `{key, length, meta}` of each (the commit log's). lowdim:
    field -> rows of all of them. parts: `(episode counted from the first of these, field, part dict)`
    tuples, or a block's table rows (`EpisodeBlock.parts`). crc: frame field -> `(T,)` crc32c of its chunks,
    or `(n,)` of its MP4 files."""

    records: list[dict[str, Any]]
    num_steps: int
    lowdim: dict[str, np.ndarray]
    parts: list[tuple[int, str, dict[str, Any]]] | pa.Table
    crc: dict[str, np.ndarray]


def group_parts(first: int, pending: Sequence[PendingEpisodes]) -> list[tuple[int, str, Any]] | pa.Table:
    """The stats parts of the consecutive `pending` entries, numbered in the store (its first episode is
    `first`): tuples when none came as a table, else one table (`PART_SCHEMA`) in episode order."""
    rows: list[tuple[int, str, Any]] = []
    tables = []
    for p in pending:
        if isinstance(p.parts, pa.Table):
            at = p.parts.schema.get_field_index("episode")
            tables.append(p.parts.set_column(at, "episode", pc.add(p.parts.column(at), first)))
        else:
            rows += [(first + e, name, part) for e, name, part in p.parts]
        first += len(p.records)
    if not tables:
        return rows
    if not rows:
        return pa.concat_tables(tables)
    return pa.concat_tables(tables + [parts_table(rows)]).sort_by("episode")  # a stable sort
