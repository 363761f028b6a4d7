"""Random access to the rows of WebVid-style metadata (a URL list) without loading it: what lets
`UrlClipStream` start on a 10M-row file as fast as on a 1000-row one, in every DataLoader worker.

- parquet: the footer gives the rows of each row group; a block of rows reads only the row groups it
  overlaps, only the columns asked for (the last row groups read are kept for the next block).
- a Hugging Face dataset saved with `save_to_disk`: its Arrow files are memory-mapped (`datasets`), so a
  slice reads only its pages.
- CSV: one pass over the bytes (vectorised, ~1 s per GB, in the process that opens the stream) finds where
  every `block_rows`-th row starts, a newline outside quotes ending a record (RFC 4180 quoting, as WebVid's
  CSVs are written); a block is then parsed from its own byte range by `csv.DictReader`, so its values are
  exactly those `ingest webvid` reads, and a block whose row count disagrees with the scan raises.

Row `i` is the i-th row of `shardyard.ingest.webvid.iter_meta` (same columns, same values, same order).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.errors import SourceError
from shardyard.ingest.webvid import URL_COLUMNS
from shardyard.stores.atomic import to_jsonable

__all__ = ["CHUNK", "MetaRows", "csv_block_offsets"]

CHUNK = 16 << 20  # bytes per read of the CSV scan


def _scan_chunk(a: np.ndarray, base: int, parity: int, last: int, before: int) -> tuple[np.ndarray, int, int]:
    """Record-ending newlines of one chunk (`a`, uint8, at file offset `base`), given the quote parity and
    the end of the previous record (`last`) and the byte before the chunk: returns (absolute starts of the
    non-empty records that end in this chunk, new parity, new last end)."""
    quotes = np.flatnonzero(a == 34)
    nl = np.flatnonzero(a == 10)
    ends = nl[(parity + np.searchsorted(quotes, nl)) % 2 == 0]
    if len(ends) == 0:
        return np.empty(0, np.int64), (parity + len(quotes)) % 2, last
    starts = np.concatenate([[last + 1 - base], ends[:-1] + 1])
    prev = np.where(ends > 0, a[np.maximum(ends - 1, 0)], before)
    empty = (ends - starts == 0) | ((ends - starts == 1) & (prev == 13))  # "" or "\r": csv skips blank lines
    return (starts[~empty] + base).astype(np.int64), (parity + len(quotes)) % 2, int(ends[-1] + base)


def csv_block_offsets(path: str | Path, block_rows: int) -> tuple[list[str], np.ndarray, int]:
    """Scan a CSV once: (header fields, byte offset where each block of `block_rows` data rows starts, as
    int64 `(num_blocks + 1,)` with the file size last, number of data rows). Raises `SourceError` for an
    empty file."""
    path = Path(path)
    size = path.stat().st_size
    parity, last, before, seen = 0, -1, 10, 0
    picked: list[np.ndarray] = []
    with open(path, "rb") as f:
        base = 0
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            a = np.frombuffer(chunk, np.uint8)
            starts, parity, last = _scan_chunk(a, base, parity, last, before)
            idx = np.arange(seen, seen + len(starts)) - 1  # record 0 is the header: data row -1
            picked.append(starts[(idx >= 0) & (idx % block_rows == 0)])
            seen += len(starts)
            before, base = int(a[-1]), base + len(chunk)
        tail_start = last + 1
        f.seek(tail_start)
        if f.read(size - tail_start).strip(b"\r"):  # a last record without a newline
            idx = seen - 1
            if idx >= 0 and idx % block_rows == 0:
                picked.append(np.array([tail_start], np.int64))
            seen += 1
        if seen == 0:
            raise SourceError("empty CSV: no header row", path=str(path))
        offsets = np.concatenate([*picked, np.array([size], np.int64)])
        f.seek(0)
        header_text = f.read(int(offsets[0])).decode("utf-8")
    header = next(csv.reader(io.StringIO(header_text, newline="")), [])
    return header, offsets, seen - 1


class MetaRows:
    """Rows of a CSV, a parquet file or a `save_to_disk` folder by index, read on demand. `num_rows`,
    `columns` (all input columns, in file order), `block(b, columns)`: rows `[b * block_rows, (b + 1) *
    block_rows)` as dicts (`columns` None: all). Pickles without open handles (each DataLoader worker opens
    its own). Raises `SourceError` naming the file when it is missing, of another kind or has no URL column
    (`URL_COLUMNS`), and when a CSV block does not parse into the rows the scan found."""

    def __init__(self, path: str | Path, block_rows: int = 1000) -> None:
        self.path, self.block_rows = Path(path), int(block_rows)
        p = self.path
        self._handle: Any = None
        self._last: tuple[Any, Any] = (None, None)
        if p.is_file() and p.suffix == ".parquet":
            import pyarrow.parquet as pq

            md = pq.ParquetFile(p).metadata
            self.kind, self.num_rows = "parquet", md.num_rows
            self.columns = list(md.schema.to_arrow_schema().names)
            self._groups = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
        elif p.is_file():
            self.kind = "csv"
            self.columns, self._offsets, self.num_rows = csv_block_offsets(p, self.block_rows)
        elif (p / "state.json").exists() or (p / "dataset_info.json").exists():
            self.kind = "arrow"
            ds = self._open()
            self.num_rows, self.columns = len(ds), list(ds.column_names)
        else:
            raise SourceError("expected a CSV, a parquet file or a folder of `datasets` save_to_disk "
                              "(a folder of parquet files or a hub id: `ingest webvid` reads those)", path=str(p))
        if not any(c in self.columns for c in URL_COLUMNS):
            raise SourceError(f"no URL column (one of {URL_COLUMNS}) in columns {self.columns}", path=str(p))

    @property
    def num_blocks(self) -> int:
        """Blocks of `block_rows` rows (the last one may be shorter)."""
        return -(-self.num_rows // self.block_rows)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_handle": None, "_last": (None, None)}

    def _open(self) -> Any:
        if self._handle is None:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                self._handle = pq.ParquetFile(self.path)
            elif self.kind == "arrow":
                try:
                    import datasets
                except ImportError as e:
                    raise SourceError("reading a `save_to_disk` folder needs `pip install datasets`",
                                      path=str(self.path)) from e
                self._handle = datasets.load_from_disk(str(self.path))
            else:
                self._handle = open(self.path, "rb")
        return self._handle

    def block(self, b: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows of block `b` (see the class docstring), each `to_jsonable` as `iter_meta` yields it."""
        start, stop = b * self.block_rows, min((b + 1) * self.block_rows, self.num_rows)
        if not 0 <= start < stop:
            raise IndexError(f"block {b} of {self.num_blocks}")
        cols = [c for c in self.columns if columns is None or c in columns]
        if self.kind == "parquet":
            rows = self._parquet_rows(start, stop, cols)
        elif self.kind == "arrow":
            part = self._open().select_columns(cols)[start:stop]
            rows = [dict(zip(cols, vals)) for vals in zip(*(part[c] for c in cols))]
        else:
            rows = self._csv_block(b, stop - start, cols)
        return [to_jsonable(r) for r in rows]

    def _parquet_rows(self, start: int, stop: int, cols: list[str]) -> list[dict[str, Any]]:
        g0 = int(np.searchsorted(self._groups, start, side="right")) - 1
        g1 = int(np.searchsorted(self._groups, stop, side="left"))
        key = (g0, g1, tuple(cols))
        if self._last[0] != key:  # neighbouring blocks of one row group read it once
            self._last = (key, self._open().read_row_groups(list(range(g0, g1)), columns=cols))
        off = start - int(self._groups[g0])
        return self._last[1].slice(off, stop - start).to_pylist()

    def _csv_block(self, b: int, n: int, cols: list[str]) -> list[dict[str, Any]]:
        f = self._open()
        f.seek(int(self._offsets[b]))
        text = f.read(int(self._offsets[b + 1] - self._offsets[b])).decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline=""), fieldnames=self.columns))
        if len(rows) != n:
            raise SourceError(f"CSV rows {b * self.block_rows}..{b * self.block_rows + n - 1} parse into {len(rows)} "
                              "rows, not the scan's count: a quote inside an unquoted field? (convert the file "
                              "to parquet)", path=str(self.path))
        return [{c: r.get(c) for c in cols} for r in rows] if len(cols) < len(self.columns) else rows
