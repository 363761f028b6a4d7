"""Downloads and decodes ahead of an in-order consumer, for `UrlClipStream` (one `Prefetcher` per DataLoader
worker).

Rows are handed out in a fixed order (that is what makes the stream resumable), so a slow row holds back
the ones after it. Two windows hide that: downloads start up to `fetch_ahead` rows beyond the row being
yielded (bodies held in memory until they are decoded, as many as `room()` allows), and one thread
decodes, in whatever order their bytes arrive, the rows up to `ahead` beyond it (decoded clips held in
memory). A stalled download (a server that sends nothing until the client's timeout, then again on the
retry) thus starts long before the consumer reaches its row, without holding hundreds of decoded clips: at
~80 clips/s a worker, a 2-s stall needs ~160 rows of lead, 125 MB of decoded 16-frame 128-px clips against
a few MB of their MP4 bodies. One decode thread per worker keeps the stream's decode work where the shard
path's is: one thread per DataLoader worker.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlparse

from shardyard.video import VIDEO_EXTS

__all__ = ["Prefetcher", "RowOutcome", "in_order", "url_ext"]

Task = TypeVar("Task")


@dataclass
class RowOutcome:
    """What became of the row of `key`: `data` (the body; None once decoded without a cache, or on failure), `reason`
    (None: no failure), `info` (`ingest.webvid.fetch_row`'s, with a cache), `ext` (container), `nbytes`
    downloaded, `cached` (read from the cache), `known` (a failure recorded before: not tried), `frames`
    (`(T, 3, H, W) uint8`, once decoded)."""

    data: bytes | None = None
    reason: str | None = None
    info: dict[str, Any] | None = None
    ext: str = "mp4"
    nbytes: int = 0
    cached: bool = False
    known: bool = False
    frames: Any = None
    key: str = ""
    held: int = 0  # bytes of `data` a `Prefetcher` counts as held until the decode


class Prefetcher:
    """`fetch(work)` runs `work()` (a download returning a `RowOutcome`) in one of `in_flight` threads and
    returns its future (a `RowOutcome` given as `work`, read from a cache, is returned as it is);
    `decode(fetched)` returns a future of that outcome once `decode(outcome)` has run on it in the one decode
    thread. `held_bytes`: the bodies fetched and not yet decoded. `close()` drops what has not started (a
    consumer that stops early)."""

    def __init__(self, in_flight: int, decode: Callable[[RowOutcome], None], name: str = "urls") -> None:
        self._fetch = ThreadPoolExecutor(in_flight, thread_name_prefix=f"{name}-get")
        self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-decode")
        self._decode = decode
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of the bodies fetched (or read from a cache) whose decode has not finished."""
        return self._held

    def _hold(self, out: RowOutcome) -> RowOutcome:
        out.held = len(out.data) if out.data is not None else 0
        with self._lock:
            self._held += out.held
        return out

    def _decoded(self, out: RowOutcome, done: Future) -> None:
        try:
            self._decode(out)
            done.set_result(out)
        except BaseException as e:  # surfaces in the consumer, at this row
            done.set_exception(e)
        finally:
            with self._lock:
                self._held -= out.held
            out.held = 0

    def _then_decode(self, got: Future, done: Future) -> None:
        try:
            self._decode_pool.submit(self._decoded, got.result(), done)
        except BaseException as e:  # the download raised, or the pools are closed
            if not done.done():
                done.set_exception(e)

    def fetch(self, work: Callable[[], RowOutcome] | RowOutcome) -> Future | RowOutcome:
        """Start the row's download (see the class docstring)."""
        if isinstance(work, RowOutcome):
            return self._hold(work)
        return self._fetch.submit(lambda: self._hold(work()))

    def decode(self, fetched: Future | RowOutcome) -> Future:
        """A future of the fetched row's decoded outcome (see the class docstring)."""
        done: Future = Future()
        if isinstance(fetched, RowOutcome):
            self._decode_pool.submit(self._decoded, fetched, done)
        else:
            fetched.add_done_callback(lambda got: self._then_decode(got, done))
        return done

    def close(self) -> None:
        """Stop: queued downloads and decodes are dropped, running ones end on their own."""
        self._fetch.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)


def in_order(tasks: Iterator[Task], ahead: int, fetch_ahead: int, decoded: Callable[[Task], Future | RowOutcome],
             room: Callable[[], bool] = lambda: True) -> Iterator[tuple[Task, RowOutcome]]:
    """`(task, its outcome)` in the order of `tasks`. Generating a task starts its download; up to
    `fetch_ahead` tasks are generated beyond the one yielded while `room()` says their bodies fit (never fewer
    than `ahead`), and `decoded(task)` (its decode's future, or the outcome itself) is asked for the one to
    yield and the `ahead` after it. Raises what a row's download or decode raised."""
    fetched: deque[Task] = deque()  # generated, decode not asked for yet
    decoding: deque[tuple[Task, Future | RowOutcome]] = deque()

    def fill() -> None:
        while fetched and len(decoding) <= ahead:
            t = fetched.popleft()
            decoding.append((t, decoded(t)))

    def head() -> tuple[Task, RowOutcome]:
        fill()
        t, out = decoding.popleft()
        return t, out.result() if isinstance(out, Future) else out

    for t in tasks:
        fetched.append(t)
        fill()
        while len(fetched) + len(decoding) > fetch_ahead or (len(fetched) + len(decoding) > ahead and not room()):
            yield head()
    while fetched or decoding:
        yield head()


def url_ext(url: str) -> str:
    """The container extension of a URL's path when it names one of `VIDEO_EXTS`, else "mp4" (PyAV probes
    the bytes anyway; the extension only names the temp file)."""
    ext = PurePosixPath(urlparse(url).path).suffix.lstrip(".").lower()
    return ext if ext in VIDEO_EXTS else "mp4"
