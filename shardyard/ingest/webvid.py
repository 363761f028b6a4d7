"""WebVid ingest: metadata + URLs -> checksummed webdataset shards, or verify a video2dataset output folder.

META is a WebVid CSV (10M order `videoid,contentUrl,duration,page_dir,name` or 2.5M order
`videoid,name,page_idx,page_dir,duration,contentUrl`; columns are read by name; `duration` is ISO-8601
like `PT00H00M17S`), a parquet file, or a Hugging Face dataset saved with `save_to_disk` (needs `datasets`).
Row `i` gets the key `f"{i:09d}"` and lands in shard `i // samples_per_shard`, so a rerun rebuilds the same
shards: finished shards are skipped, and `retry_failed` refetches only the failed rows of finished shards.
Every row is checked first (`meta_rows`): a row with bytes that are not UTF-8, the wrong number of fields, no
URL or an unclosed quote, and the later copies of a duplicated row, are report rows naming the file, line and
field (status "bad_row" or "duplicate"), never fetched, and count as failed (exit status 2).

Each sample is `<key>.<container>` (the video bytes, under the extension of their real container: mp4,
mov, mkv, webm, avi, ...), `<key>.txt` (caption) and `<key>.json`: the input columns (unchanged, so
`duration` stays the ISO string) plus `key, url, caption, status, error_message, attempts, container,
duration_s, fps, num_frames, width, height, bytes`.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from shardyard.errors import SourceError, UnsafePathError
from shardyard.ingest.configs import TranscodeConfig, WebvidConfig
from shardyard.ingest.fetch import Fetcher
from shardyard.ingest.meta_rows import BAD_ROW, CAPTION_COLUMNS, DUPLICATE, URL_COLUMNS, iter_meta_records, row_key
from shardyard.ingest.runner import EXIT_FATAL, EXIT_OK, EXIT_SKIPPED
from shardyard.stores.atomic import to_jsonable
from shardyard.stores.manifest import MANIFEST
from shardyard.stores.safe_paths import safe_relative
from shardyard.stores.wds import Sample, ShardWriter, ShardWriterConfig, iter_tar_samples, shard_name, split_key_ext
from shardyard.video import VIDEO_EXTS, open_video_bytes

__all__ = ["CAPTION_COLUMNS", "EXIT_FATAL", "EXIT_OK", "EXIT_SKIPPED", "ISO_RE", "TranscodeConfig", "URL_COLUMNS",
           "WebvidConfig", "WebvidResult", "fetch_row", "ingest_webvid", "iter_meta", "parse_iso_duration",
           "probe_video", "read_meta", "row_key", "row_sample", "sniff", "transcode"]

log = logging.getLogger(__name__)

ISO_RE = re.compile(r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
                    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_iso_duration(text: str) -> float | None:
    """ISO-8601 duration to seconds: `"PT00H00M17S"` -> 17.0; None when it does not parse."""
    m = ISO_RE.match(str(text).strip())
    if not m or not any(m.groupdict().values()):
        return None
    d = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return d["d"] * 86400 + d["h"] * 3600 + d["m"] * 60 + d["s"]


def iter_meta(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the rows of a WebVid CSV, a parquet file or a Hugging Face dataset (a `save_to_disk` folder,
    or a dataset name in the local cache) as dicts of the input columns, without loading them all: one per
    record, as parsed (`meta_rows.MetaRecord.raw`: refused ones too, bytes that are not UTF-8 replaced; rows
    recovered from a record with an unclosed quote are not among them). `ingest webvid` reads the checked
    records (`meta_rows.iter_meta_records`). Raises `SourceError` when the input is missing or has no URL
    column, `ConfigError` when a HF dataset is given and `datasets` is not installed."""
    for rec in iter_meta_records(path):
        if rec.raw is not None:
            yield to_jsonable(rec.raw)


def read_meta(path: str | Path) -> list[dict[str, Any]]:
    """All rows of `iter_meta(path)` as a list."""
    return list(iter_meta(path))


def sniff(data: bytes) -> str | None:
    """Name of a still-image format when `data` is one (video2dataset stores some JPEGs as `.mp4`)."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def probe_video(data: bytes) -> dict[str, Any]:
    """Decode every frame of `data` the way `ClipStream` reads them (`shardyard.video`'s reader, frame `i`
    the i-th frame of a front-to-back decode) and describe it: `{"status": "success" | "not_video" |
    "undecodable", "error_message", "container", "duration_s", "fps", "num_frames", "width", "height",
    "bytes"}`. `container` is the extension naming the container ("mp4", "mov", "mkv", "webm", "avi", ...):
    the sample's video member is stored under it. Never raises for bad input."""
    out: dict[str, Any] = {"status": "success", "error_message": None, "container": None, "duration_s": None,
                           "fps": None, "num_frames": None, "width": None, "height": None, "bytes": len(data)}
    kind = sniff(data)
    if kind:
        return out | {"status": "not_video", "error_message": f"member is a {kind} image, not a video"}
    if not data:
        return out | {"status": "undecodable", "error_message": "empty body"}
    try:
        with open_video_bytes(data) as r:
            # every index, so a sample passes only if each frame the stream may ask for comes out
            r.decode_each(range(r.num_frames), lambda frame, positions: None, size=(32, 32))
            ts = r.timestamps()
            dur = float(ts[-1] + (1.0 / r.fps if r.fps else 0.0))
            out |= {"container": r.container, "duration_s": round(dur, 4), "fps": r.fps,
                    "num_frames": r.num_frames, "width": r.width, "height": r.height}
    except (SourceError, IndexError) as e:
        return out | {"status": "undecodable", "error_message": str(e)}
    if out["container"] not in VIDEO_EXTS:  # `ClipStream` would not find the member
        return out | {"status": "undecodable", "error_message": f"container {out['container']!r} has no "
                      f"extension the stream reads ({', '.join(VIDEO_EXTS)})"}
    return out


def transcode(data: bytes, cfg: TranscodeConfig, crf: int = 23) -> bytes:
    """Re-encode video bytes to H.264 mp4 per `cfg`; frames are read frame-exactly through
    `shardyard.video` in chunks (memory ~ 64 frames). Raises `SourceError` when the input does not decode."""
    import av

    with open_video_bytes(data) as r:
        ts = r.timestamps()
        end = ts[-1] + 1e-6 if cfg.max_seconds is None else min(cfg.max_seconds, ts[-1] + 1e-6)
        if cfg.fps:
            times = np.arange(0.0, end, 1.0 / cfg.fps)
            idx = np.clip(np.searchsorted(ts, times + 1e-6, side="right") - 1, 0, r.num_frames - 1)
        else:
            idx = np.nonzero(ts < end)[0] if cfg.max_seconds is not None else np.arange(r.num_frames)
        w, h = r.width, r.height
        if cfg.short_side:
            s = cfg.short_side / min(w, h)
            w, h = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(cfg.fps or r.fps or 30).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "fast"}
            for start in range(0, len(idx), 64):
                for img in r.read(idx[start:start + 64], size=(w, h) if cfg.short_side else None):
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return buf.getvalue()


@dataclass
class WebvidResult:
    """Outcome: report dict (also in report.json) and the exit status (0 all stored, 2 some failed)."""

    out: Path
    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 when every sample was stored, 2 when some failed."""
        return EXIT_OK if self.report["num_failed"] == 0 else EXIT_SKIPPED


def fetch_row(fetcher: Fetcher, tcfg: TranscodeConfig, key: str, row: dict[str, Any]) -> tuple[dict, bytes | None]:
    """Download, (re-encode per `tcfg`) and check one metadata row: `(info, video bytes or None)`, where info
    is the sample's `<key>.json` (the row's columns, `key, url, caption, attempts, http_status, status,
    error_message` and `probe_video`'s fields). `UrlClipStream`'s cache writes what this returns, so a cached
    shard equals the one an ingest of the same URLs writes. Never raises for network or video faults."""
    url = next((row[c] for c in URL_COLUMNS if c in row), None)
    caption = next((row[c] for c in CAPTION_COLUMNS if c in row), "") or ""
    info: dict[str, Any] = row | {"key": key, "url": url, "caption": caption}
    res = fetcher.fetch(url)
    info |= {"attempts": res.attempts, "http_status": res.http_status}
    if res.status != "success":
        return info | {"status": res.status, "error_message": res.error_message, "bytes": None}, None
    data = res.data
    if tcfg.active and sniff(data) is None:
        try:
            data = transcode(data, tcfg)
        except SourceError as e:
            return info | {"status": "undecodable", "error_message": str(e), "bytes": len(res.data)}, None
    probe = probe_video(data)
    info |= probe
    return info, (data if probe["status"] == "success" else None)


def row_sample(key: str, info: dict[str, Any], data: bytes) -> Sample:
    """The shard sample of a stored row: `<key>.<container>` (the video bytes), `<key>.txt` (caption) and
    `<key>.json` (`info`, as `fetch_row` returns it)."""
    return Sample(key, {info["container"]: data, "txt": str(info["caption"]).encode(),
                        "json": json.dumps(to_jsonable(info)).encode()})


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    """The report.json row of a sample (the shard's status sidecar keeps the full row); a refused metadata row
    also names the metadata file (`path`), its `line` and the `field`."""
    return {k: row.get(k) for k in ("key", "shard", "url", "status", "error_message", "attempts", "http_status")} \
        | {k: row[k] for k in ("path", "line", "field") if k in row}


def _refused(rec, meta: Path) -> dict[str, Any]:
    """The sample row of a metadata record that is not fetched (`meta_rows`: bad or duplicate)."""
    url = next((rec.raw.get(c) for c in URL_COLUMNS if rec.raw and c in rec.raw), None)
    return {"key": rec.key, "url": url, "status": rec.status, "path": str(meta), "line": rec.line,
            "field": rec.field, "error_message": f"{meta}" + (f":{rec.line}" if rec.line else "") + f": {rec.problem}"}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, int] = {}
    for r in rows:
        by[r["status"]] = by.get(r["status"], 0) + 1
    ok = by.get("success", 0)
    return {"num_samples": len(rows), "num_success": ok, "num_failed": len(rows) - ok,
            "success_rate": round(ok / len(rows), 4) if rows else 1.0, "by_status": by}


def ingest_webvid(meta: str | Path, cfg: WebvidConfig,
                  on_sample: Callable[[str, str], None] | None = None) -> WebvidResult:
    """Download the rows of `meta` into a shard store at `cfg.out`, or verify a video2dataset folder
    (a directory of `.tar` shards). `on_sample(key, status)` is called per sample (progress bars).
    Raises `SourceError`/`ConfigError` for unusable input; per-sample failures go to report.json."""
    t0 = time.perf_counter()
    meta = Path(meta)
    if meta.is_dir() and any(meta.glob("*.tar")) and not (meta / MANIFEST).exists():
        return _verify_video2dataset(meta, cfg, t0, on_sample)
    records = iter_meta_records(meta)
    n = cfg.samples_per_shard
    wcfg = ShardWriterConfig(split=cfg.split, overwrite=cfg.overwrite, source={"name": "webvid", "path": str(meta)},
                             config=to_jsonable(asdict(cfg)))
    status_rows: list[dict[str, Any]] = []
    reused = retried = 0
    with ShardWriter(cfg.out, config=wcfg) as writer, Fetcher(cfg.fetch) as fetcher:
        finished = writer.finished()
        num_shards = 0
        with ThreadPoolExecutor(cfg.fetch.concurrency, thread_name_prefix="webvid") as pool:
            for si, group in itertools.groupby(records, key=lambda r: r.index // n):
                recs = {r.key: r for r in group}
                keys, num_shards = list(recs), si + 1
                name = shard_name(cfg.split, si)
                old = {r["key"]: r for r in finished.get(name, [])}
                if set(old) - set(keys):
                    raise SourceError(f"shard {name} was written from other metadata (keys differ); "
                                      "use --overwrite or another --out", path=str(cfg.out))
                todo = [k for k in keys if k not in old or (cfg.retry_failed and old[k]["status"] not in
                                                             ("success", BAD_ROW, DUPLICATE))]
                if old and not todo:
                    reused += 1
                    status_rows += [_compact(old[k]) for k in keys]
                    continue
                kept = {s.key: s for s in writer.read_shard(name)} if old else {}
                fetch = [k for k in todo if recs[k].row is not None]
                results = dict(zip(fetch, pool.map(lambda k: fetch_row(fetcher, cfg.transcode, k, recs[k].row),
                                                   fetch)))
                results |= {k: (_refused(recs[k], meta), None) for k in todo if recs[k].row is None}
                retried += len(todo) if old else 0
                samples, shard_rows = [], []
                for k in keys:
                    if k in results:
                        info, data = results[k]
                        if data is not None:  # the video member is named by its container: <key>.avi, ...
                            samples.append(row_sample(k, info, data))
                    else:
                        info = old[k]
                        if k in kept:
                            samples.append(kept[k])
                    shard_rows.append(to_jsonable(info | {"shard": name}))
                    if on_sample:
                        on_sample(k, info["status"])
                writer.write_shard(si, samples, shard_rows)
                status_rows += [_compact(r) for r in shard_rows]
        report = {"source": "webvid", "mode": "download", "meta": str(meta), **_summary(status_rows),
                  "num_shards": num_shards, "num_shards_reused": reused, "num_retried": retried,
                  "seconds": round(time.perf_counter() - t0, 3),
                  "samples": status_rows}
        writer.report = report
    return WebvidResult(out=Path(cfg.out), report=report)


def _tar_refusals(tar: Path) -> dict[str, str]:
    """Members of `tar` that must not be taken in, each with the reason: a name that would land outside a
    folder it is extracted to (absolute, `..`, drive letter, backslash), a link (symbolic or hard), or any
    other member that is neither a file nor a folder. Reads the headers only."""
    out = {}
    with tarfile.open(tar, "r:") as t:
        for info in t:
            try:
                safe_relative(info.name, source=tar)
            except UnsafePathError as e:
                out[info.name] = e.reason
                continue
            if info.issym() or info.islnk():
                out[info.name] = f"{'symbolic' if info.issym() else 'hard'} link to {info.linkname!r}"
            elif not (info.isfile() or info.isdir()):
                out[info.name] = "neither a file nor a folder (device, FIFO or other special member)"
    return out


def _read_v2d_tar(tar: Path, name: str, rows: list[dict[str, Any]],
                  on_sample: Callable[[str, str], None] | None) -> list[Sample] | None:
    """Append to `rows` the report rows of one video2dataset tar: one per refused member (`_tar_refusals`,
    naming the tar, member and reason), one per other sample (decoded). Returns None when the tar can be
    copied in unchanged, else the samples to keep: those none of whose members was refused."""
    refused = _tar_refusals(tar)
    bad_keys = {split_key_ext(m)[0] for m in refused}
    for m, why in refused.items():
        rows.append({"key": split_key_ext(m)[0], "shard": name, "tar": str(tar), "member": m,
                     "status": "unsafe_member", "error_message": f"{tar}: member {m!r}: {why}"})
    kept: list[Sample] | None = [] if refused else None
    with open(tar, "rb") as f:
        for s in iter_tar_samples(f):
            if s.key in bad_keys or not s.key:
                continue
            src = json.loads(s.members["json"]) if "json" in s.members else {}
            vid_ext = next((e for e in VIDEO_EXTS if e in s.members), None)
            probe = (probe_video(s.members[vid_ext]) if vid_ext else
                     {"status": "undecodable", "error_message": "no video member"})
            rows.append(to_jsonable({"key": s.key, "shard": name, "url": src.get("url"),
                                     "source_status": src.get("status"), **probe}))
            if kept is not None:
                kept.append(s)
            if on_sample:
                on_sample(s.key, probe["status"])
    return kept


def _verify_video2dataset(folder: Path, cfg: WebvidConfig, t0: float,
                          on_sample: Callable[[str, str], None] | None) -> WebvidResult:
    """Copy each `.tar` of a video2dataset output in as one of our shards (bytes unchanged), decoding every
    `.mp4` member; samples the source recorded as failed (its per-shard parquet) are reported too. A tar
    with refused members (`_tar_refusals`) is rewritten without the samples they belong to."""
    tars = sorted(folder.glob("*.tar"))
    wcfg = ShardWriterConfig(split=cfg.split, overwrite=cfg.overwrite,
                             source={"name": "video2dataset", "path": str(folder)}, config={"verify": True})
    status_rows: list[dict[str, Any]] = []
    with ShardWriter(cfg.out, config=wcfg) as writer:
        for si, tar in enumerate(tars):
            name, rows, kept = shard_name(cfg.split, si), [], None
            try:
                kept = _read_v2d_tar(tar, name, rows, on_sample)
            except (OSError, EOFError, tarfile.TarError) as e:
                rows.append({"key": None, "shard": name, "status": "corrupt_shard", "error_message": str(e)})
            parquet = tar.with_suffix(".parquet")
            if parquet.exists():
                import pyarrow.parquet as pq

                in_tar = {r["key"] for r in rows}
                try:
                    listed = pq.read_table(parquet).to_pylist()
                except Exception as e:  # a damaged sidecar is a row, the shard itself is still verified
                    listed = []
                    rows.append({"key": None, "shard": name, "status": "corrupt_sidecar", "path": str(parquet),
                                 "field": "parquet", "error_message": f"{parquet}: {type(e).__name__}: {e}"})
                for r in listed:
                    if str(r.get("key")) not in in_tar and r.get("status") != "success":
                        rows.append(to_jsonable({"key": str(r.get("key")), "shard": None, "url": r.get("url"),
                                                 "status": "source_failed", "error_message": r.get("error_message")}))
            if kept is None:
                writer.add_foreign_shard(si, tar, rows)
            else:
                writer.write_shard(si, kept, rows)
            status_rows += rows
        report = {"source": "video2dataset", "mode": "verify", "meta": str(folder), **_summary(status_rows),
                  "num_shards": len(tars), "seconds": round(time.perf_counter() - t0, 3), "samples": status_rows}
        writer.report = report
    return WebvidResult(out=Path(cfg.out), report=report)
