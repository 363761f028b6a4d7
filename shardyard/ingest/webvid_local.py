"""`ingest webvid FOLDER` on a folder of local video clips: the same checksummed webdataset shards as a
download, with the captions from files beside the clips.

A folder is read as clips when it holds video files (any extension of `shardyard.video.VIDEO_EXTS`: mp4, mov,
mkv, webm, avi, ...; subfolders included) and no `.tar` shards (a video2dataset output, which `ingest_webvid`
verifies instead). Each clip's caption comes from, in this order:

1. `<clip stem>.txt` beside it (its text, stripped);
2. a captions CSV: `captions` (`--captions`), else the folder's only `*.csv`, with a caption column (`caption`,
   `name` as WebVid's, or `text`) and a column naming the clip (`file`, `filename`, `path`, `video`, `videoid`
   or `video_id`), matched against the clip's path relative to the folder, its file name or its stem.

Clips are taken in sorted path order; clip `i` gets the key `row_key(i)` (`000000042`) and lands in shard
`i // samples_per_shard`, as download row `i` would. A sample is `<key>.<container>` (the file's bytes,
unchanged), `<key>.txt` (caption), `<key>.json` (`file`, `caption`, `caption_source` and `probe_video`'s
fields). A clip that does not decode, has no caption, or resolves outside the folder (a symlink; unless
`follow_links`) is a report row (`status` undecodable / no_caption / outside_folder, naming the file) and the
job goes on (exit 2). A rerun keeps finished shards whose clips are unchanged (same files, sizes and mtimes).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from shardyard.errors import ConfigError
from shardyard.ingest.inside import outside_problem
from shardyard.ingest.webvid import WebvidConfig, WebvidResult, probe_video, row_key
from shardyard.stores.atomic import to_jsonable
from shardyard.stores.wds import Sample, ShardWriter, ShardWriterConfig, shard_name
from shardyard.video import VIDEO_EXTS

__all__ = ["CAPTION_TABLE_COLUMNS", "FILE_COLUMNS", "clip_files", "folder_kind", "ingest_local_clips", "read_captions"]

log = logging.getLogger(__name__)

CAPTION_TABLE_COLUMNS = ("caption", "name", "text")
FILE_COLUMNS = ("file", "filename", "path", "video", "videoid", "video_id")


def clip_files(folder: Path) -> list[Path]:
    """Video files under `folder` (by extension, `VIDEO_EXTS`), sorted by relative path."""
    exts = {f".{e}" for e in VIDEO_EXTS}
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def folder_kind(folder: Path) -> str | None:
    """What `ingest webvid` makes of a folder: "video2dataset" (`.tar` shards), "dataset" (a saved Hugging Face
    dataset, or parquet/CSV files), "clips" (video files) or None (none of these)."""
    if any(folder.glob("*.tar")):
        return "video2dataset"
    if (folder / "state.json").exists() or (folder / "dataset_info.json").exists():
        return "dataset"
    if clip_files(folder):
        return "clips"
    if any(folder.glob("*.parquet")) or any(folder.glob("*.csv")):
        return "dataset"
    return None


def read_captions(path: Path) -> dict[str, str]:
    """A captions CSV as {clip name: caption} (see the module docstring); undecodable bytes are replaced, any
    field size is read. Raises ConfigError naming the file when it lacks a clip or a caption column."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the captions CSV: {e}", path=str(path)) from e
    cols = {c.strip().lower(): c for c in df.columns}
    file_col = next((cols[c] for c in FILE_COLUMNS if c in cols), None)
    cap_col = next((cols[c] for c in CAPTION_TABLE_COLUMNS if c in cols), None)
    if file_col is None or cap_col is None:
        raise ConfigError(f"captions CSV needs a clip column (one of {FILE_COLUMNS}) and a caption column (one of "
                          f"{CAPTION_TABLE_COLUMNS}); it has {list(df.columns)}", path=str(path), field="columns")
    return {str(f).strip(): str(c) for f, c in zip(df[file_col], df[cap_col]) if str(f).strip()}


def _captions_csv(folder: Path, captions: Path | None) -> dict[str, str]:
    if captions is not None:
        return read_captions(Path(captions))
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) > 1:
        log.warning("%d CSV files in %s: none is read as captions (name one with --captions)", len(csvs), folder)
    return read_captions(csvs[0]) if len(csvs) == 1 else {}


def _clip_row(folder: Path, clip: Path, key: str, table: dict[str, str],
              follow_links: bool) -> tuple[dict[str, Any], bytes | None]:
    """The status row of one clip (as `fetch_row` gives for a URL) and its bytes when it is stored."""
    rel = clip.relative_to(folder).as_posix()
    row: dict[str, Any] = {"key": key, "file": rel, "url": None, "caption": None, "caption_source": None}
    why = None if follow_links else outside_problem(folder, clip)
    if why:
        return row | {"status": "outside_folder", "error_message": why}, None
    txt = clip.with_suffix(".txt")
    if txt.is_file():
        row |= {"caption": txt.read_text(encoding="utf-8", errors="replace").strip(), "caption_source": txt.name}
    else:
        for name in (rel, clip.name, clip.stem):
            if name in table:
                row |= {"caption": table[name], "caption_source": "csv"}
                break
    data = clip.read_bytes()
    row |= probe_video(data)
    if row["status"] == "success" and row["caption"] is None:
        row |= {"status": "no_caption", "error_message": f"{rel}: no {txt.name} beside it and no row in the "
                "captions CSV"}
    return row, (data if row["status"] == "success" else None)


def _stamp(folder: Path, clips: list[Path]) -> list[list[Any]]:
    """Per clip `[relative path, bytes, mtime s]`: a finished shard with the same stamps is kept on a rerun."""
    return [[p.relative_to(folder).as_posix(), p.stat().st_size, int(p.stat().st_mtime)] for p in clips]


def ingest_local_clips(folder: str | Path, cfg: WebvidConfig, *, captions: str | Path | None = None,
                       follow_links: bool = False,
                       on_sample: Callable[[str, str], None] | None = None) -> WebvidResult:
    """Write the clips of `folder` (module docstring) into a shard store at `cfg.out`. `on_sample(key, status)`
    is called per clip. Raises ConfigError when the folder holds no clip or the captions CSV is unusable;
    per-clip failures are rows of report.json."""
    t0 = time.perf_counter()
    folder = Path(folder)
    clips = clip_files(folder)
    if not clips:
        raise ConfigError(f"no video clips ({', '.join(VIDEO_EXTS[:6])}, ...) under the folder", path=str(folder))
    table = _captions_csv(folder, None if captions is None else Path(captions))
    n = cfg.samples_per_shard
    wcfg = ShardWriterConfig(split=cfg.split, overwrite=cfg.overwrite, source={"name": "local_clips",
                             "path": str(folder)}, config=to_jsonable({"samples_per_shard": n, "captions": captions}))
    rows_all: list[dict[str, Any]] = []
    with ShardWriter(cfg.out, config=wcfg) as writer:
        finished = writer.finished()
        for si in range(0, (len(clips) + n - 1) // n):
            part = clips[si * n:(si + 1) * n]
            name, stamp = shard_name(cfg.split, si), _stamp(folder, part)
            old = finished.get(name) or []
            if [r.get("stamp") for r in old] == stamp:  # same clips as the finished shard: kept
                rows_all += old
                continue
            samples, rows = [], []
            for i, clip in enumerate(part):
                key = row_key(si * n + i)
                row, data = _clip_row(folder, clip, key, table, follow_links)
                if data is not None:
                    samples.append(Sample(key, {row["container"]: data, "txt": str(row["caption"]).encode(),
                                                "json": json.dumps(to_jsonable(row)).encode()}))
                rows.append(to_jsonable(row | {"shard": name, "stamp": stamp[i]}))
                if on_sample:
                    on_sample(key, row["status"])
            writer.write_shard(si, samples, rows)
            rows_all += rows
        ok = sum(r["status"] == "success" for r in rows_all)
        by: dict[str, int] = {}
        for r in rows_all:
            by[r["status"]] = by.get(r["status"], 0) + 1
        report = {"source": "local_clips", "mode": "local", "meta": str(folder), "num_samples": len(rows_all),
                  "num_success": ok, "num_failed": len(rows_all) - ok,
                  "success_rate": round(ok / len(rows_all), 4) if rows_all else 1.0, "by_status": by,
                  "num_shards": (len(clips) + n - 1) // n, "seconds": round(time.perf_counter() - t0, 3),
                  "samples": [{k: r.get(k) for k in ("key", "shard", "file", "status", "error_message")}
                              for r in rows_all]}
        writer.report = report
    return WebvidResult(out=Path(cfg.out), report=report)
