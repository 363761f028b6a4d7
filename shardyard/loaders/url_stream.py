"""`UrlClipStream`: an `IterableDataset` of video clips downloaded straight from a WebVid-style URL list
(CSV, parquet or `save_to_disk` folder, the columns `ingest webvid` reads), with nothing written to disk
unless `cache` is set. `ClipStream.from_urls(META, ...)` makes one.

Order. The rows are cut into blocks of `block_rows` consecutive rows (block `b` = shard `b` of an
`ingest webvid` of the same file). Blocks are permuted by `(seed, epoch)`, split by rank
(`[rank::world_size]`) then by DataLoader worker (`[worker::num_workers]`); each worker reads its blocks in
turn, the rows of each in an order drawn from `(seed, epoch, block)`. A worker's sequence is a pure function
of (seed, epoch, the number of rows); each worker reads only its own blocks of the metadata
(`loaders.url_meta`), so starting does not depend on the number of rows (CSV: one scan for row offsets).

Downloads. Each worker downloads with `in_flight` threads through an `ingest.fetch.Fetcher` (timeouts,
retries with backoff on 5xx / 429 / timeouts / truncated bodies, dead links never retried; loopback and
private addresses refused unless `fetch.allow_private_urls`), starting downloads up to `fetch_ahead` rows
beyond the one it yields (at most `fetch_ahead_mb` of bodies waiting), and decodes each body in one thread as
it arrives, up to `ahead` rows beyond it (`loaders.url_prefetch`): a stalled download holds back only its own
row's turn, and starts long before the consumer reaches it. At most `in_flight x workers x ranks` requests
are in flight. Clips decode through `loaders.clip_decode`, the reader of the shard path: the row of key `k`
gives the clip its `ingest webvid` sample `k` gives in `ClipStream`.

Failures. A row that yields no clip is counted by reason (`URL_REASONS`) in `counters` (shared with the
workers) and never yielded; each item's `failed` field (a JSON list of `[row, reason]`) carries the rows its
worker failed since its previous item, so that `record` can keep them. When fewer than `min_success` of a
worker's last `window` downloads give a clip, the worker raises `SourceError` naming the counts (a dead
network stops the run instead of spinning; through a DataLoader the error names the worker, and
`worker_error` turns it back into the stream's own message).

Resume. `state_dict()` holds per worker the positions consumed (as `ClipStream`) and every failed row
consumed with its reason; a stream given it continues at the next unconsumed position without downloading
the ones before, and skips the recorded failures in this and later epochs (`skipped_known`) unless
`retry_failed`. Rows a worker failed after its last consumed item are not recorded: they are tried again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shardyard.errors import ConfigError, SourceError
from shardyard.ingest.fetch import FetchConfig, Fetcher
from shardyard.ingest.webvid import CAPTION_COLUMNS, URL_COLUMNS, TranscodeConfig, fetch_row, row_key
from shardyard.loaders.clip_decode import checked_clip_options, decode_clip
from shardyard.loaders.sampler import MAX_WORKERS, record_consumed
from shardyard.loaders.url_cache import BlockCache, CachedBlock
from shardyard.loaders.url_meta import MetaRows
from shardyard.loaders.url_prefetch import Prefetcher, RowOutcome, in_order, url_ext

__all__ = ["MAX_WORKERS", "URL_COUNTERS", "URL_REASONS", "UrlClipStream", "UrlStreamConfig", "worker_error"]

log = logging.getLogger(__name__)

URL_REASONS = ("no_url", "refused", "dead_link", "http_error", "timeout", "network_error", "too_large",
               "not_video", "undecodable", "too_short")
URL_COUNTERS = ("rows", "ok", "skipped_known", "cached", "bytes", *(f"failed_{r}" for r in URL_REASONS))


@dataclass
class UrlStreamConfig:
    """Clip options as `StreamConfig`: num_frames T, fps (Hz, None: consecutive frames), size `(W, H)` px (int S:
    (S, S); None keeps the video's), resize ("stretch", "crop" or "pad": as `StreamConfig`), seed, shuffle (rows and
    blocks; off: file order), clip_start, rank / world_size (default from torch.distributed), backend. URL options:
    in_flight (downloads at once per worker), ahead (rows decoded ahead of the one yielded, per worker: decoded
    clips held in memory), fetch_ahead (rows whose download starts ahead of the one yielded, per worker: what
    hides a stalled download; at least `ahead`) and fetch_ahead_mb (MB of downloaded bodies not yet decoded a
    worker holds at most: past it, downloads wait, down to `ahead` rows), block_rows (rows per block: the cache's shard
    size, = `ingest webvid --samples-per-shard`), fetch (`FetchConfig`: timeout_s, retries, backoff,
    allow_private_urls; its concurrency is in_flight), cache (folder for the shards, None: nothing written),
    retry_failed (download rows recorded as failed again), min_success / window (fraction of a worker's last
    `window` downloads that must give a clip), split (cache shard prefix)."""

    num_frames: int = 16
    fps: float | None = None
    size: tuple[int, int] | int | None = None
    resize: str = "stretch"
    seed: int = 0
    shuffle: bool = True
    clip_start: str = "random"
    rank: int | None = None
    world_size: int | None = None
    backend: str = "pyav"
    in_flight: int = 8
    ahead: int = 64
    fetch_ahead: int = 512
    fetch_ahead_mb: float = 256.0
    block_rows: int = 1000
    fetch: FetchConfig = field(default_factory=FetchConfig)
    cache: str | None = None
    retry_failed: bool = False
    min_success: float = 0.5
    window: int = 50
    split: str = "train"

    def __post_init__(self) -> None:
        self.size = checked_clip_options(self)
        if min(self.in_flight, self.ahead, self.fetch_ahead, self.block_rows, self.window) < 1 or \
                not 0 <= self.min_success <= 1 or not self.fetch_ahead_mb > 0:
            raise ConfigError(f"need in_flight, ahead, fetch_ahead, block_rows, window >= 1, fetch_ahead_mb > 0 and "
                              f"0 <= min_success <= 1 (got {self.in_flight}, {self.ahead}, {self.fetch_ahead}, "
                              f"{self.block_rows}, {self.window}, {self.fetch_ahead_mb}, {self.min_success})")


@dataclass
class _Task:
    """One position of a worker's sequence: its row, key, caption, and its outcome (a future while the
    download runs; a failure recorded before, `known`, is never downloaded nor decoded). `block_end`: the last
    row of a block downloaded whole here (cache: write it)."""

    pos: int
    row: int
    key: str
    caption: str
    outcome: Future | RowOutcome
    block: int
    block_end: bool = False


def worker_error(e: BaseException) -> BaseException:
    """A `SourceError` re-raised by a DataLoader (message: the worker's traceback) as the stream's own
    message; any other exception unchanged."""
    text = str(e)
    if isinstance(e, SourceError) and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return SourceError(last.split("SourceError: ", 1)[-1])
    return e


class UrlClipStream(IterableDataset):
    """Yields `{"frames": (T, 3, H, W) uint8 tensor, "caption": str, "key": str (the row's `ingest webvid`
    key), "worker": int, "position": int, "num_workers": int, "failed": str}` from the URLs of `meta`
    (see the module docstring). Raises `SourceError` for unusable metadata, `ConfigError` for options or a
    state of another stream, `StoreError` for a cache folder holding another kind of store."""

    def __init__(self, meta: Any, config: UrlStreamConfig | None = None) -> None:
        super().__init__()
        self.config = config or UrlStreamConfig()
        self.meta = MetaRows(meta, self.config.block_rows)
        self.cache = BlockCache(self.config.cache, self.config.split) if self.config.cache else None
        self.epoch = 0
        self._consumed: dict[int, int] = {}
        self._start: dict[int, int] = {}
        self._failed: dict[int, str] = {}
        self._num_workers: int | None = None
        self._shared = torch.zeros(MAX_WORKERS, len(URL_COUNTERS), dtype=torch.int64).share_memory_()
        self._reported = torch.zeros(len(URL_COUNTERS), dtype=torch.int64)

    # ---- order ------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        c = self.config
        if c.rank is not None:
            return c.rank, c.world_size or 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def blocks_for(self, epoch: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[int]:
        """The blocks one worker reads in `epoch`, in order (pure function of seed and epoch)."""
        order = np.arange(self.meta.num_blocks)
        if self.config.shuffle:
            order = np.random.default_rng([self.config.seed, epoch]).permutation(order)
        return order[rank::world_size][worker::num_workers].tolist()

    def block_rows(self, block: int, epoch: int) -> np.ndarray:
        """Row indices of `block` in the order they are read in `epoch`."""
        br = self.config.block_rows
        rows = np.arange(block * br, min((block + 1) * br, self.meta.num_rows))
        if self.config.shuffle:
            rows = np.random.default_rng([self.config.seed, epoch, block]).permutation(rows)
        return rows

    def rows_for(self, epoch: int, rank: int, world_size: int, worker: int, num_workers: int) -> np.ndarray:
        """Every row one worker reads in `epoch`, in order: its position `p` is row `rows_for(...)[p]`."""
        blocks = self.blocks_for(epoch, rank, world_size, worker, num_workers)
        return np.concatenate([self.block_rows(b, epoch) for b in blocks] or [np.empty(0, np.int64)])

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (the recorded failures are kept)."""
        self.epoch, self._consumed, self._start = int(epoch), {}, {}

    # ---- resume -----------------------------------------------------------------------------------
    def record(self, batch: dict[str, Any]) -> None:
        """Mark the items of `batch` (one item or a collated batch) and the failures they carry as consumed."""
        self._num_workers = record_consumed(self._consumed, batch)
        failed = batch["failed"]
        for text in [failed] if isinstance(failed, str) else failed:
            self._failed.update((int(r), str(why)) for r, why in json.loads(text))

    def state_dict(self) -> dict[str, Any]:
        """`{"kind": "urls", "seed", "epoch", "num_workers", "num_rows", "block_rows", "consumed": {worker:
        positions taken}, "failed": {reason: [rows]}}` (JSON-able)."""
        failed: dict[str, list[int]] = {}
        for row, why in sorted(self._failed.items()):
            failed.setdefault(why, []).append(row)
        return {"version": 1, "kind": "urls", "seed": self.config.seed, "epoch": self.epoch,
                "num_workers": self._num_workers, "num_rows": self.meta.num_rows,
                "block_rows": self.config.block_rows,
                "consumed": {str(w): n for w, n in sorted(self._consumed.items())}, "failed": failed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` on the next iteration (same metadata, seed, block_rows and worker count).
        Raises `ConfigError` for the state of another kind of stream or of other metadata."""
        want = (self.meta.num_rows, self.config.block_rows)
        if state.get("kind") != "urls" or (state.get("num_rows"), state.get("block_rows")) != want:
            raise ConfigError(f"stream state is not of this URL list ({want[0]} rows in blocks of {want[1]}): "
                              f"kind {state.get('kind', 'shards')!r}, {state.get('num_rows')} rows, blocks of "
                              f"{state.get('block_rows')}", path=str(self.meta.path))
        self.config.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._num_workers = state.get("num_workers")
        self._consumed = {int(w): int(n) for w, n in state["consumed"].items()}
        self._start = dict(self._consumed)
        self._failed = {int(r): why for why, rows in state["failed"].items() for r in rows}

    # ---- counters ---------------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, Any]:
        """`{"rows", "ok", "failed": {reason: n}, "skipped_known", "cached", "bytes"}` summed over workers
        (workers run ahead of the consumer by their prefetch)."""
        tot = dict(zip(URL_COUNTERS, self._shared.sum(0).tolist()))
        return {k: tot[k] for k in ("rows", "ok", "skipped_known", "cached", "bytes")} | {
            "failed": {r: tot[f"failed_{r}"] for r in URL_REASONS}}

    def summary(self, worker: int | None = None) -> str:
        """The counters (of all workers, or one) in words: `"20 rows: 13 clips; failed: dead_link 2, timeout
        1; ..."`, with a hint when addresses were refused."""
        tot = dict(zip(URL_COUNTERS, (self._shared.sum(0) if worker is None else self._shared[worker]).tolist()))
        fails = ", ".join(f"{r} {tot[f'failed_{r}']}" for r in URL_REASONS if tot[f"failed_{r}"]) or "none"
        hint = " (loopback/private addresses are refused without allow_private_urls)" if tot["failed_refused"] else ""
        return (f"{tot['rows']} rows: {tot['ok']} clips; failed: {fails}; skipped as failed before: "
                f"{tot['skipped_known']}{hint}")

    def take_metrics(self) -> dict[str, float]:
        """Counts since the previous call, for a trainer's metrics record: `stream_ok`, `stream_failed`
        (all reasons), `stream_failed_<reason>` per reason, `stream_skipped_known`, `stream_cached`."""
        now = self._shared.sum(0)
        d = dict(zip(URL_COUNTERS, (now - self._reported).tolist()))
        self._reported = now.clone()
        out = {"stream_ok": d["ok"], "stream_failed": sum(d[f"failed_{r}"] for r in URL_REASONS)}
        out |= {f"stream_failed_{r}": d[f"failed_{r}"] for r in URL_REASONS}
        return out | {"stream_skipped_known": d["skipped_known"], "stream_cached": d["cached"]}

    def reset_counters(self) -> None:
        """Zero the counters of every worker."""
        self._shared.zero_()
        self._reported.zero_()

    def _count(self, worker: int, name: str, n: int = 1) -> None:
        self._shared[worker, URL_COUNTERS.index(name)] += n

    # ---- downloads --------------------------------------------------------------------------------
    def _fetch(self, fetcher: Fetcher, key: str, row: dict[str, Any]) -> RowOutcome:
        """Download one row (in a pool thread): with a cache through `fetch_row` (probed as the ingest does)."""
        url = next((row[c] for c in URL_COLUMNS if row.get(c)), None)
        if not url:
            return RowOutcome(key=key, reason="no_url")
        if self.cache is not None:
            info, data = fetch_row(fetcher, TranscodeConfig(), key, row)
            why = None if data is not None else (info["status"] if info["status"] in URL_REASONS else "undecodable")
            return RowOutcome(key=key, data=data, reason=why, info=info, ext=info.get("container") or "mp4",
                              nbytes=info.get("bytes") or 0)
        res = fetcher.fetch(str(url))
        if res.status != "success":
            return RowOutcome(key=key, reason=res.status if res.status in URL_REASONS else "network_error")
        return RowOutcome(key=key, data=res.data, ext=url_ext(str(url)), nbytes=len(res.data or b""))

    def _cached(self, block: CachedBlock, key: str) -> RowOutcome:
        st = block.status[key]
        if st.get("status") != "success":
            why = st.get("status")
            return RowOutcome(key=key, reason=why if why in URL_REASONS else "undecodable", cached=True)
        return RowOutcome(key=key, data=block.read(key), info=st, ext=st.get("container") or "mp4", cached=True)

    def _decode(self, out: RowOutcome) -> None:
        """Decode a downloaded row (in the worker's decode thread); without a cache the body is let go."""
        if out.data is not None and out.reason is None:
            out.frames, out.reason = decode_clip(out.data, out.key, self.config, self.epoch, out.ext)
        if self.cache is None:
            out.data = None

    def _tasks(self, blocks: list[int], skip: int, known: dict[int, str], fetcher: Fetcher,
               pre: Prefetcher) -> Iterator[_Task]:
        """The worker's positions from `skip` on, downloads submitted as they are generated."""
        pos, cols = 0, (None if self.cache is not None else [*URL_COLUMNS, *CAPTION_COLUMNS])
        for b in blocks:
            order = self.block_rows(b, self.epoch)
            if pos + len(order) <= skip:
                pos += len(order)
                continue
            start = b * self.config.block_rows
            keys = BlockCache.keys(start, start + len(order))
            cached = self.cache.open(b, keys) if self.cache is not None and self.cache.has(b) else None
            rows = self.meta.block(b, cols)
            whole = pos >= skip and cached is None and not any(int(r) in known for r in order)
            for i, r in enumerate(order.tolist()):
                if pos + i < skip:
                    continue
                key, row = row_key(r), rows[r - start]
                caption = str(next((row[c] for c in CAPTION_COLUMNS if c in row), "") or "")
                if r in known:
                    out: Future | RowOutcome = RowOutcome(reason=known[r], known=True)
                else:
                    out = pre.fetch(self._cached(cached, key) if cached is not None else
                                    (lambda k=key, x=row: self._fetch(fetcher, k, x)))
                yield _Task(pos + i, r, key, caption, out, b, whole and i == len(order) - 1)
            pos += len(order)
            if cached is not None:
                cached.close()

    # ---- iteration --------------------------------------------------------------------------------
    def _health(self, worker: int, recent: deque[bool]) -> None:
        c = self.config
        if len(recent) >= c.window and sum(recent) < c.min_success * len(recent):
            raise SourceError(f"URL stream: {sum(recent)} of the last {len(recent)} downloads of worker {worker} "
                              f"gave a clip, below min_success {c.min_success:g} (is the network or the server "
                              f"down?); worker {worker} so far: {self.summary(worker)}", path=str(self.meta.path))

    def _clip(self, out: RowOutcome, worker: int, recent: deque[bool]) -> tuple[torch.Tensor | None, str | None]:
        """Count one position's outcome: `(frames, None)`, or `(None, reason)` when it yields no clip."""
        self._count(worker, "rows")
        if out.known:
            self._count(worker, "skipped_known")
            return None, out.reason
        frames, why = out.frames, (None if out.frames is not None else out.reason or "undecodable")
        self._count(worker, "cached" if out.cached else "bytes", 1 if out.cached else out.nbytes)
        self._count(worker, "ok" if frames is not None else f"failed_{why}")
        if not out.cached:
            recent.append(frames is not None)
            self._health(worker, recent)
        return frames, why

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self._start and self._num_workers not in (None, num_workers):
            raise ConfigError(f"state was taken with {self._num_workers} workers, stream runs {num_workers}")
        if worker >= MAX_WORKERS:
            raise ConfigError(f"at most {MAX_WORKERS} workers")
        self._num_workers = num_workers
        skip = self._start.get(worker, 0)
        if info is None:
            self._start = {}
        c = self.config
        blocks = self.blocks_for(self.epoch, *self._rank(), worker, num_workers)
        known = {} if c.retry_failed else dict(self._failed)
        recent: deque[bool] = deque(maxlen=c.window)
        failed: list[list[Any]] = []
        results: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        pre = Prefetcher(c.in_flight, self._decode, name=f"urls{worker}")
        fetcher = Fetcher(dataclasses.replace(c.fetch, concurrency=c.in_flight))
        try:
            ahead, budget = max(c.ahead, c.in_flight), c.fetch_ahead_mb * 1e6

            def decoded(t: _Task) -> Future | RowOutcome:  # a failure recorded before is neither got nor decoded
                return t.outcome if isinstance(t.outcome, RowOutcome) and t.outcome.known else pre.decode(t.outcome)

            for task, out in in_order(self._tasks(blocks, skip, known, fetcher, pre), ahead, max(ahead, c.fetch_ahead),
                                      decoded, room=lambda: pre.held_bytes < budget):
                frames, why = self._clip(out, worker, recent)
                if self.cache is not None and out.info is not None and not out.cached:
                    results[task.key] = (out.info, out.data)
                if task.block_end:
                    self._write_block(task.block, results)
                if frames is None:
                    if not out.known:
                        failed.append([task.row, why])
                    continue
                item = {"frames": frames, "caption": task.caption, "key": task.key, "worker": worker,
                        "position": task.pos, "num_workers": num_workers, "failed": json.dumps(failed)}
                failed = []
                if info is None:
                    self.record(item)
                yield item
            if info is None:  # iterated here: the trailing failures are consumed too (no item carries them)
                self._failed.update((int(r), str(why)) for r, why in failed)
        finally:
            pre.close()
            fetcher.close()

    def _write_block(self, b: int, results: dict[str, tuple[dict[str, Any], bytes | None]]) -> None:
        """Cache block `b` when every one of its rows was downloaded here (else leave it to the ingest)."""
        start = b * self.config.block_rows
        keys = BlockCache.keys(start, min(start + self.config.block_rows, self.meta.num_rows))
        if self.cache is not None and all(k in results for k in keys):
            self.cache.write(b, keys, results)
        for k in keys:
            results.pop(k, None)
