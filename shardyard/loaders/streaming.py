"""`ClipStream`: an `IterableDataset` of video clips streamed from webdataset tar shards.

Order. Shards are permuted by `(seed, epoch)`, split by rank (`shards[rank::world_size]`), then by
DataLoader worker (`[worker::num_workers]`); each worker reads its shards front to back into a shuffle
buffer seeded by `(seed, epoch, rank, worker)`; a clip's start frame is drawn from `(seed, epoch, key)`.
So the sequence of every worker is a pure function of (seed, epoch) and the shard contents.

Resume. Every item carries `worker` and `position` (its index in that worker's shuffled sequence, skipped
samples included). `state_dict()` holds, per worker, how many positions the consumer has taken; a stream
given that state replays the sequence without decoding and continues at the next position: nothing is
repeated or skipped. Iterated directly, the stream tracks this itself; through a DataLoader, pass each
batch to `stream.record(batch)` (prefetched batches the loop never saw are not counted as consumed).

Frames. A sample's video is the member whose extension names a container (`shardyard.video.VIDEO_EXTS`:
mp4, mov, mkv, webm, avi, ...); frame `i` is the i-th frame a front-to-back decode outputs, in every
container (AVI's packet numbers, missing or repeated pts included), as `ingest webvid`'s check decodes it.

Faults. A sample that does not decode, is an image, or is shorter than the clip is skipped and counted
(`stream.counters`, shared with the workers through shared memory); it is never raised into the training
loop. A network fault while reading a shard (timeout, 5xx, dropped connection, truncated body) reopens
the shard after a backoff and continues after the last sample read; after `retries` failures the rest of
the shard is skipped and counted in `shards_skipped`. Damage is not a fault: a shard store's tar whose size
or sha256 differs from its manifest, or that is missing locally, raises `StoreDamagedError` before any of its
samples is served (`StreamConfig.verify_reads`, default on; over HTTP a 404 is still a skipped shard).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shardyard.errors import ConfigError, StoreDamagedError
from shardyard.loaders.clip_decode import IMAGE_MAGIC, checked_clip_options, decode_clip
from shardyard.loaders.sampler import MAX_WORKERS, record_consumed
from shardyard.stores.read_checks import checked_shard, recorded_shards
from shardyard.stores.snapshot import source_snapshot
from shardyard.stores.wds import Sample, iter_tar_samples, list_shards
from shardyard.video import VIDEO_EXTS
from shardyard.video_memory import load_decoder

__all__ = ["COUNTERS", "ClipStream", "IMAGE_MAGIC", "MAX_WORKERS", "REASONS", "StreamConfig"]

log = logging.getLogger(__name__)

REASONS = ("undecodable", "not_video", "too_short", "no_video")
COUNTERS = ("seen", "yielded", *(f"skipped_{r}" for r in REASONS), "retries", "shards_done", "shards_skipped")


@dataclass
class StreamConfig:
    """num_frames: clip length T. fps: sample the clip at this rate in Hz by timestamp (None: consecutive
    frames). size: output `(W, H)` in px (an int S means (S, S)); None keeps the video's size. resize: how a
    frame of another aspect ratio reaches `size`: "stretch" (the default: scaled to `size`, so 16:9 is squashed
    into a square), "crop" (aspect kept, the centre cut) or "pad" (aspect kept, centred on black).
    shuffle_buffer: samples held for shuffling (0 or 1: shard order only). seed: order seed.
    clip_start: "random" (drawn from (seed, epoch, key)) or "start". retries / backoff_s / backoff_max_s /
    timeout_s: network faults per shard (s). rank / world_size: default from torch.distributed.
    backend: video backend of `shardyard.video` ("pyav"; "decord" only at native size). verify_reads: check
    each tar of a shard store against the size and sha256 in its manifest before serving its samples
    (`stores.read_checks.checked_shard`; damage raises `StoreDamagedError`, never a skip)."""

    num_frames: int = 16
    fps: float | None = None
    size: tuple[int, int] | int | None = None
    resize: str = "stretch"
    shuffle_buffer: int = 64
    seed: int = 0
    shuffle_shards: bool = True
    clip_start: str = "random"
    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    timeout_s: float = 30.0
    rank: int | None = None
    world_size: int | None = None
    backend: str = "pyav"
    verify_reads: bool = True

    def __post_init__(self) -> None:
        self.size = checked_clip_options(self)


class ClipStream(IterableDataset):
    """Yields `{"frames": (T, 3, H, W) uint8 tensor, "caption": str, "key": str, "worker": int,
    "position": int, "num_workers": int}` from `source`: a shard store (path or http(s) URL with
    `manifest.json`), a local folder of `.tar` files, a `.tar` path/URL, or a list of them.
    Raises `StoreError` when no shard is found and `ConfigError` for unusable options or a state taken
    with another worker count."""

    def __init__(self, source: Any, num_frames: int = 16, fps: float | None = None,
                 size: tuple[int, int] | int | None = None, shuffle_buffer: int = 64, seed: int = 0,
                 config: StreamConfig | None = None) -> None:
        super().__init__()
        self.config = config or StreamConfig(num_frames=num_frames, fps=fps, size=size,
                                             shuffle_buffer=shuffle_buffer, seed=seed)
        self.snapshot = source_snapshot(source)  # a shard store's version: checked as samples are read
        with self.snapshot.reading():
            self.shards = list_shards(source)
            self._store, self._recorded = recorded_shards(source) if self.config.verify_reads else (None, {})
        self.epoch = 0
        self._consumed: dict[int, int] = {}
        self._start: dict[int, int] = {}
        self._num_workers: int | None = None
        self._shared = torch.zeros(MAX_WORKERS, len(COUNTERS), dtype=torch.int64).share_memory_()
        load_decoder()  # PyAV imported here, once, not in every forked worker of every epoch

    @classmethod
    def from_urls(cls, meta: Any, config: Any = None, **options: Any) -> Any:
        """A stream straight from a WebVid-style URL list (CSV, parquet or `save_to_disk` folder), nothing
        stored unless `cache` is given: a `loaders.url_stream.UrlClipStream` (same items, plus `failed`)
        with `config` (a `UrlStreamConfig`) or `options` (its fields, e.g. `num_frames=16, in_flight=8`)."""
        from shardyard.loaders.url_stream import UrlClipStream, UrlStreamConfig

        return UrlClipStream(meta, config=config or UrlStreamConfig(**options))

    # ---- order ------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        c = self.config
        if c.rank is not None:
            return c.rank, c.world_size or 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def shards_for(self, epoch: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
        """The shards one worker reads in `epoch`, in order (pure function of seed and epoch)."""
        order = list(self.shards)
        if self.config.shuffle_shards:
            perm = np.random.default_rng([self.config.seed, epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        return order[rank::world_size][worker::num_workers]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (forgets the positions consumed in the previous one)."""
        self.epoch, self._consumed, self._start = int(epoch), {}, {}

    # ---- resume -----------------------------------------------------------------------------------
    def record(self, batch: dict[str, Any]) -> None:
        """Mark the samples of `batch` (one item or a collated batch) as consumed by the training loop."""
        self._num_workers = record_consumed(self._consumed, batch)

    def state_dict(self) -> dict[str, Any]:
        """`{"seed", "epoch", "num_workers", "consumed": {worker: positions taken}}` (JSON-able)."""
        return {"version": 1, "seed": self.config.seed, "epoch": self.epoch, "num_workers": self._num_workers,
                "consumed": {str(w): n for w, n in sorted(self._consumed.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` on the next iteration (same shards, seed and worker count)."""
        self.config.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._num_workers = state.get("num_workers")
        self._consumed = {int(w): int(n) for w, n in state["consumed"].items()}
        self._start = dict(self._consumed)

    # ---- counters ---------------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, Any]:
        """`{"seen", "yielded", "skipped": {reason: n}, "retries", "shards_done", "shards_skipped"}` summed
        over workers (workers may run ahead of the loop by their prefetch)."""
        tot = dict(zip(COUNTERS, self._shared.sum(0).tolist()))
        return {"seen": tot["seen"], "yielded": tot["yielded"],
                "skipped": {r: tot[f"skipped_{r}"] for r in REASONS},
                "retries": tot["retries"], "shards_done": tot["shards_done"],
                "shards_skipped": tot["shards_skipped"]}

    def reset_counters(self) -> None:
        """Zero the counters of every worker."""
        self._shared.zero_()

    def _count(self, worker: int, name: str, n: int = 1) -> None:
        self._shared[worker, COUNTERS.index(name)] += n

    # ---- reading ----------------------------------------------------------------------------------
    def _open(self, url: str, fs: Any):
        if url.startswith(("http://", "https://")):  # one streaming GET; a size skips fsspec's HEAD probe,
            return fs.open(url, "rb", block_size=0, size=-1)  # which hides 5xx as 404
        if "://" in url:  # s3://, gs://, ...: sequential ranged reads through this worker's own filesystem
            return fsspec.core.url_to_fs(url)[0].open(url, "rb", block_size=8 << 20)
        return open(url, "rb")

    def _http_fs(self) -> Any:
        import aiohttp
        import fsspec

        t = self.config.timeout_s
        return fsspec.filesystem("http", skip_instance_cache=True, client_kwargs={
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)})

    def _read_shard(self, url: str, worker: int, fs: Any) -> Iterator[Sample]:
        c, done, failures = self.config, 0, 0
        entry = self._recorded.get(url)  # its manifest entry: checked before any sample is served
        while True:
            self.snapshot.check_remote()  # a remote store: checked per shard opened, not per sample
            try:
                with self._open(url, fs) as f, checked_shard(f, url, entry, self._store) as g:
                    for i, s in enumerate(iter_tar_samples(g)):
                        if i >= done:
                            done += 1
                            yield s
                self._count(worker, "shards_done")
                return
            except StoreDamagedError:
                raise
            except FileNotFoundError as e:  # local file missing or HTTP 404: not a transient fault
                if entry is not None and "://" not in url:  # the store's own manifest lists it
                    raise StoreDamagedError("tar shard listed in the manifest is missing", store=self._store,
                                            path=url) from e
                log.warning("shard %s skipped: %s", url, e)
                break
            except Exception as e:  # aiohttp/asyncio/tarfile/OS errors: a dropped or truncated read
                if "://" not in url:
                    log.warning("shard %s is corrupt or truncated after %d samples: %s", url, done, e)
                    break
                failures += 1
                if failures > c.retries:
                    log.warning("shard %s skipped after %d failed attempts: %s", url, failures, e)
                    break
                self._count(worker, "retries")
                delay = min(c.backoff_s * 2 ** (failures - 1), c.backoff_max_s)
                log.info("shard %s: %s: %s; retry %d in %.2f s", url, type(e).__name__, e, failures, delay)
                time.sleep(delay)
        self._count(worker, "shards_skipped")

    def _shuffled(self, samples: Iterator[Sample], rng: np.random.Generator) -> Iterator[Sample]:
        n = self.config.shuffle_buffer
        if n <= 1:
            yield from samples
            return
        buf: list[Sample] = []
        for s in samples:
            if len(buf) < n:
                buf.append(s)
                continue
            i = int(rng.integers(len(buf)))
            out, buf[i] = buf[i], s
            yield out
        while buf:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()

    def _clip(self, s: Sample) -> tuple[torch.Tensor | None, str | None]:
        """Frames `(T, 3, H, W) uint8` of sample `s`, or `(None, reason)` (`loaders.clip_decode`)."""
        ext = next((e for e in VIDEO_EXTS if e in s.members), None)
        if ext is None:
            return None, "no_video"
        return decode_clip(s.members[ext], s.key, self.config, self.epoch, ext)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self._start and self._num_workers not in (None, num_workers):
            raise ConfigError(f"state was taken with {self._num_workers} workers, stream runs {num_workers}")
        if worker >= MAX_WORKERS:
            raise ConfigError(f"at most {MAX_WORKERS} workers")
        self._num_workers = num_workers
        rank, world = self._rank()
        epoch, skip = self.epoch, self._start.get(worker, 0)
        if info is None:
            self._start = {}
        shards = self.shards_for(epoch, rank, world, worker, num_workers)
        fs = self._http_fs() if any(u.startswith(("http://", "https://")) for u in shards) else None
        raw = (s for url in shards for s in self._read_shard(url, worker, fs))
        rng = np.random.default_rng([self.config.seed, epoch, rank, worker])
        for pos, s in enumerate(self._shuffled(raw, rng)):
            if pos < skip:
                continue
            self.snapshot.check_local()  # after the sample's bytes were read: the version opened, or raise
            self._count(worker, "seen")
            frames, reason = self._clip(s)
            if frames is None:
                self._count(worker, f"skipped_{reason}")
                continue
            self._count(worker, "yielded")
            caption = s.members.get("txt", b"").decode("utf-8", "replace")
            item = {"frames": frames, "caption": caption, "key": s.key, "worker": worker, "position": pos,
                    "num_workers": num_workers}
            if info is None:
                self._consumed[worker] = pos + 1
            yield item
