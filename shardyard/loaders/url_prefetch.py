"""Downloads and decodes ahead of an in-order consumer, for `UrlClipStream` (one `Prefetcher` per DataLoader
worker).

Rows are handed out in a fixed order (that is what makes the stream resumable), so a slow row holds back
the ones after it. `in_flight` threads download, and one thread decodes each row as soon as its bytes are
there, in whatever order they arrive: while the consumer waits on a stalled download, the rows behind it keep
downloading and decoding, up to `ahead` rows (decoded clips held in memory). One decode thread per worker
keeps the stream's decode work where the shard path's is: one thread per DataLoader worker.
"""

from __future__ import annotations

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


class Prefetcher:
    """`submit(work)`: run `work()` (a download returning a `RowOutcome`) in one of `in_flight` threads, then
    `decode(outcome)` in the one decode thread; a `RowOutcome` given as `work` is only decoded. Returns a
    future of the outcome. `close()` drops what has not started (a consumer that stops early)."""

    def __init__(self, in_flight: int, decode: Callable[[RowOutcome], None], name: str = "urls") -> None:
        self._fetch = ThreadPoolExecutor(in_flight, thread_name_prefix=f"{name}-get")
        self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-decode")
        self._decode = decode

    def _decoded(self, out: RowOutcome, done: Future) -> None:
        try:
            self._decode(out)
            done.set_result(out)
        except BaseException as e:  # surfaces in the consumer, at this row
            done.set_exception(e)

    def _then_decode(self, got: Future, done: Future) -> None:
        try:
            self._decode_pool.submit(self._decoded, got.result(), done)
        except BaseException as e:  # the download raised, or the pools are closed
            if not done.done():
                done.set_exception(e)

    def submit(self, work: Callable[[], RowOutcome] | RowOutcome) -> Future:
        """A future of the row's decoded outcome (see the class docstring)."""
        done: Future = Future()
        if isinstance(work, RowOutcome):
            self._decode_pool.submit(self._decoded, work, done)
        else:
            self._fetch.submit(work).add_done_callback(lambda got: self._then_decode(got, done))
        return done

    def close(self) -> None:
        """Stop: queued downloads and decodes are dropped, running ones end on their own."""
        self._fetch.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)


def in_order(tasks: Iterator[Task], ahead: int,
             outcome: Callable[[Task], Future | RowOutcome]) -> Iterator[tuple[Task, RowOutcome]]:
    """`(task, its outcome)` in the order of `tasks`, with up to `ahead` tasks generated (their downloads
    started) beyond the one yielded. Raises what a row's download or decode raised."""
    window: deque[Task] = deque()

    def head() -> tuple[Task, RowOutcome]:
        t = window.popleft()
        out = outcome(t)
        return t, out.result() if isinstance(out, Future) else out

    for t in tasks:
        window.append(t)
        if len(window) > ahead:
            yield head()
    while window:
        yield head()


def url_ext(url: str) -> str:
    """The container extension of a URL's path when it names one of `VIDEO_EXTS`, else "mp4" (PyAV probes
    the bytes anyway; the extension only names the temp file)."""
    ext = PurePosixPath(urlparse(url).path).suffix.lstrip(".").lower()
    return ext if ext in VIDEO_EXTS else "mp4"
