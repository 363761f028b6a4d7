"""The rows of WebVid-style metadata (CSV, parquet, Hugging Face dataset), each checked, so that one bad row is
a named report row and never the end of the job (`ingest webvid`).

`iter_meta_records(path)` yields one `MetaRecord` per record, in file order: record `i` (0-based, as the csv
module and `loaders.url_meta` count them: blank lines skipped, a quoted field may span lines) has the key
`row_key(i)`. A record is refused (`status` "bad_row", with the CSV `line`, the `field` and the reason) when:

- it holds bytes that are not UTF-8 (the row is not fetched; `raw` has them replaced by U+FFFD);
- its number of fields differs from the header's, or its URL is empty;
- a quote opened in one of its fields is never closed where the field ends, so the record swallows the
  lines after it: detected when a following line parses on its own as a complete row with a URL, in which
  case the record is refused and those lines are read again as rows of their own, keyed
  `<row_key(i)>_<j>` (the record numbering of the rest of the file is unchanged);

and a row equal, column for column, to an earlier one is stored once: the later copies have `status`
"duplicate", naming the first's line. Fields of any size are read (the csv module's 128 KiB default limit is
raised, process-wide, once). Duplicates are found in bounded memory (`SeenRows`: 24 bytes per row).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.stores.atomic import to_jsonable

__all__ = ["BAD_ROW", "CAPTION_COLUMNS", "DUPLICATE", "MetaRecord", "SeenRows", "URL_COLUMNS", "iter_meta_records",
           "row_key"]

URL_COLUMNS, CAPTION_COLUMNS = ("contentUrl", "url"), ("name", "caption")
BAD_ROW, DUPLICATE = "bad_row", "duplicate"
_FIELD_LIMIT = 2**31 - 1  # the largest the csv module accepts on every platform (a C long)
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8


def row_key(index: int) -> str:
    """The sample key of metadata row `index` (0-based): `"000000042"`; its shard is `index // samples_per_shard`."""
    return f"{index:09d}"


@dataclass
class MetaRecord:
    """One record of the metadata: `index` (record number), `key`, `line` (first line in a CSV, 1-based; None
    for other formats), `row` (the columns to fetch, None when refused), `raw` (the columns as parsed, bad
    bytes replaced; None for a row recovered from a damaged record), `status` ("ok", `BAD_ROW`, `DUPLICATE`),
    `field` and `problem` (why it is refused)."""

    index: int
    key: str
    line: int | None
    row: dict[str, Any] | None
    raw: dict[str, Any] | None
    status: str = "ok"
    field: str | None = None
    problem: str | None = None


class SeenRows:
    """Exact duplicate rows among millions: a 64-bit digest of each row in an open-addressing table (at most
    half full; 12 bytes a slot) with the line of its first occurrence."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.keys = np.zeros(capacity, np.uint64)  # 0 = empty slot
        self.lines = np.zeros(capacity, np.uint32)
        self.size = 0

    def first(self, values: Any, line: int) -> int | None:
        """The line of an earlier row with the same `values` (a JSON-able value), else None (recorded)."""
        digest = int.from_bytes(hashlib.blake2b(json.dumps(values).encode(), digest_size=8).digest(), "little") or 1
        if 2 * (self.size + 1) > len(self.keys):
            self._grow()
        mask = len(self.keys) - 1
        i = digest & mask
        while self.keys[i]:
            if int(self.keys[i]) == digest:
                return int(self.lines[i])
            i = (i + 1) & mask
        self.keys[i], self.lines[i] = digest, min(line, 2**32 - 1)
        self.size += 1
        return None

    def _grow(self) -> None:
        keys, lines = self.keys[self.keys != 0], self.lines[self.keys != 0]
        self.keys = np.zeros(2 * len(self.keys), np.uint64)
        self.lines = np.zeros(len(self.keys), np.uint32)
        mask = len(self.keys) - 1
        for k, v in zip(keys.tolist(), lines.tolist()):
            i = k & mask
            while self.keys[i]:
                i = (i + 1) & mask
            self.keys[i], self.lines[i] = k, v


class _Lines:
    """Physical lines of a text stream, numbered, with lines to read again first; remembers those taken since
    `take()` (what the csv reader consumed for one record)."""

    def __init__(self, f) -> None:
        self.f, self.again, self.taken, self.count = f, deque(), [], 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.again:
            item = self.again.popleft()
        else:
            self.count += 1
            item = (self.count, next(self.f))
        self.taken.append(item)
        return item[1]

    def take(self) -> list[tuple[int, str]]:
        out, self.taken = self.taken, []
        return out


def _clean(text: str) -> str:
    """`text` with undecodable bytes (surrogate escapes) replaced by U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _looks_like_row(line: str, header: list[str], url_col: int | None) -> bool:
    fields = next(csv.reader([line]), [])
    return len(fields) == len(header) and (url_col is None or fields[url_col].strip().lower().startswith(
        ("http://", "https://")))


def _check(fields: list[str], header: list[str], url_col: int | None) -> tuple[str | None, str | None]:
    """(field, problem) of one parsed record, or (None, None)."""
    bad = next((i for i, v in enumerate(fields) if _UNDECODABLE.search(v)), None)
    if bad is not None:
        name = header[bad] if bad < len(header) else f"column {bad + 1}"
        return name, f"bytes that are not UTF-8 in column {name!r} (row not fetched)"
    if len(fields) != len(header):
        name = header[len(fields)] if len(fields) < len(header) else header[-1]
        return name, f"{len(fields)} field(s), the header has {len(header)}"
    if url_col is not None and not fields[url_col].strip():
        return header[url_col], "empty URL"
    return None, None


def _csv_records(path: Path) -> Iterator[MetaRecord]:
    """Records of a CSV (see the module docstring); raises `SourceError` for a file without a header."""
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)  # captions of any size (the default stops at 128 KiB)
    # bytes that are not UTF-8 become surrogate escapes, found per row by `_check` (never a decode error)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        reader = csv.reader(lines)
        header = [_clean(h) for h in next(reader, [])]
        if not header:
            raise SourceError("empty CSV (no header)", path=str(path))
        header[0] = header[0].lstrip("\ufeff")
        url_col = next((header.index(c) for c in URL_COLUMNS if c in header), None)
        lines.take()
        index = 0
        while True:
            fields = next(reader, None)
            taken = lines.take()
            if fields is None:
                return
            if not fields:
                continue
            line = taken[0][0]
            if len(taken) > 1 and any(_looks_like_row(t, header, url_col) for _, t in taken[1:]):
                first = next(csv.reader([taken[0][1]]), [])
                name = header[min(len(first), len(header)) - 1]
                yield MetaRecord(index, row_key(index), line, None, _raw(header, fields), BAD_ROW, name,
                                 f"unclosed quote in column {name!r} swallows the next line(s); they are read as "
                                 f"rows of their own (keys {row_key(index)}_1, ...)")
                yield from _recovered(taken[1:], header, url_col, index, path)
                index += 1
                continue
            name, problem = _check(fields, header, url_col)
            row = None if problem else dict(zip(header, fields))
            yield MetaRecord(index, row_key(index), line, row, _raw(header, fields), BAD_ROW if problem else "ok",
                             name, problem)
            index += 1


def _raw(header: list[str], fields: list[str]) -> dict[str, Any]:
    """The record as `csv.DictReader` gives it (extra fields under None, missing ones None), bytes replaced."""
    row: dict[Any, Any] = {h: (_clean(v) if v is not None else None) for h, v in zip(header, fields)}
    for h in header[len(fields):]:
        row[h] = None
    if len(fields) > len(header):
        row[None] = [_clean(v) for v in fields[len(header):]]
    return row


def _recovered(taken: list[tuple[int, str]], header: list[str], url_col: int | None, index: int,
               path: Path) -> Iterator[MetaRecord]:
    """The lines a damaged record swallowed, read again as records keyed `<row_key(index)>_<j>`."""
    inner = _Lines(iter(()))
    inner.again.extend(taken)
    reader = csv.reader(inner)
    for j, fields in enumerate(reader, start=1):
        line = inner.take()[0][0]
        name, problem = _check(fields, header, url_col)
        row = None if problem else dict(zip(header, fields))
        yield MetaRecord(index, f"{row_key(index)}_{j}", line, row, None, BAD_ROW if problem else "ok", name, problem)


def _table_records(path: Path) -> Iterator[MetaRecord]:
    """Records of a parquet file or a Hugging Face dataset (columns typed: only an empty URL is refused)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: Iterator[dict[str, Any]] = (r for b in pq.ParquetFile(p).iter_batches(batch_size=4096)
                                          for r in b.to_pylist())
    else:
        try:
            import datasets
        except ImportError as e:
            raise (ConfigError("reading a Hugging Face dataset needs `pip install datasets`", path=str(p))
                   if p.exists() else SourceError("metadata not found", path=str(p))) from e
        if (p / "state.json").exists() or (p / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(p))  # a `save_to_disk` folder
        else:
            # a folder of parquet/CSV files, or a dataset id in the local cache (HF_HUB_OFFLINE is honoured)
            try:
                ds = datasets.load_dataset(str(path), split="train", streaming=True)
            except Exception as e:  # datasets raises several types for "no such dataset"
                raise SourceError(f"not a CSV, parquet file or loadable HF dataset: {e}", path=str(p)) from e
        rows = (dict(r) for r in ds)
    for i, row in enumerate(rows):
        row = to_jsonable(row)
        url = next((c for c in URL_COLUMNS if c in row), None)
        bad = url is not None and not str(row[url] or "").strip()
        yield MetaRecord(i, row_key(i), None, None if bad else row, row, BAD_ROW if bad else "ok",
                         url if bad else None, "empty URL" if bad else None)


def iter_meta_records(path: str | Path) -> Iterator[MetaRecord]:
    """Every record of a WebVid CSV, parquet file or Hugging Face dataset (see the module docstring), checked,
    duplicates marked. Raises `SourceError` when the input is missing or has no URL column, `ConfigError`
    when a HF dataset is given and `datasets` is not installed."""
    p = Path(path)
    if p.is_file() and p.suffix != ".parquet":
        records = _csv_records(p)
    elif p.is_file() or p.is_dir() or not p.exists():
        records = _table_records(p)
    else:
        raise SourceError("expected a CSV, a parquet file or a saved HF dataset", path=str(p))
    seen = SeenRows()
    for n, rec in enumerate(records):
        columns = rec.raw if rec.raw is not None else rec.row
        if n == 0 and columns is not None and not any(c in columns for c in URL_COLUMNS):
            raise SourceError(f"no URL column (one of {URL_COLUMNS}) in columns {list(columns)}", path=str(p))
        if rec.row is not None:
            first = seen.first(sorted(rec.row.items()), rec.line if rec.line is not None else rec.index + 1)
            if first is not None:
                where = f"line {first}" if rec.line is not None else f"row {first - 1}"
                rec.row, rec.status, rec.problem = None, DUPLICATE, f"duplicate of {where} (every column equal): " \
                    "stored once"
                rec.field = next((c for c in URL_COLUMNS if c in (rec.raw or {})), None)
        yield rec
