"""HTTP downloads for URL-list ingests (WebVid): bounded concurrency, timeouts, retries with exponential
backoff on timeouts, dropped/truncated bodies, 429 and 5xx; no retry on 403/404/410 (the link is dead).
URLs that lead to loopback, private, link-local or metadata-service addresses are refused (status
"refused"; checked after DNS, on every redirect and on every connection: `ingest/url_guard.py`) unless
`allow_private_urls` is set.

Built on `requests` (a pooled `Session`); each attempt has a connect/read timeout and an overall deadline
(`timeout_s` for the whole body), so a server that trickles or stalls cannot hold a worker forever.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter

from shardyard.ingest.configs import FetchConfig
from shardyard.ingest.url_guard import GuardedAdapter, RefusedURL, check_redirect, url_refusal

__all__ = ["ALLOW_HINT", "DEAD", "FetchConfig", "FetchResult", "Fetcher"]

log = logging.getLogger(__name__)

DEAD = {401, 403, 404, 410, 451}
ALLOW_HINT = " (allow_private_urls, or --allow-private-urls, fetches it anyway)"


@dataclass
class FetchResult:
    """Outcome of one URL. status: "success" | "dead_link" | "timeout" | "http_error" | "network_error" |
    "too_large" | "refused" (an address the SSRF guard refuses; error_message says which and why); data: the
    body (success only); attempts: requests made; http_status: last HTTP code."""

    url: str
    status: str
    data: bytes | None = None
    error_message: str | None = None
    attempts: int = 0
    http_status: int | None = None
    retries_429: int = 0


class _Retryable(Exception):
    def __init__(self, status: str, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.status, self.wait = status, wait


class Fetcher:
    """Thread-safe downloader with one pooled session. `fetch(url)` -> `FetchResult` (never raises for
    network or HTTP errors); `fetch_many(urls)` yields results in input order."""

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
        self._session = requests.Session()
        guarded = not self.config.allow_private_urls
        adapter = (GuardedAdapter if guarded else HTTPAdapter)(
            pool_connections=4, pool_maxsize=max(self.config.concurrency, 4), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if guarded:
            self._session.hooks["response"].append(check_redirect)
        self._session.headers["User-Agent"] = self.config.user_agent
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the pooled session."""
        self._session.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _backoff(self, attempt: int, wait: float | None) -> float:
        cfg = self.config
        base = min(cfg.backoff_s * (2 ** attempt), cfg.backoff_max_s)
        with self._lock:
            jitter = self._rng.uniform(0.75, 1.25)
        return min(max(base * jitter, wait or 0.0), cfg.backoff_max_s)

    def _attempt(self, url: str) -> tuple[bytes, int]:
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout_s
        try:
            with self._session.get(url, stream=True, timeout=(cfg.timeout_s, cfg.timeout_s)) as r:
                code = r.status_code
                if code in DEAD:
                    raise _Final("dead_link", f"HTTP {code}", code)
                if code == 429 or code >= 500:
                    ra = r.headers.get("Retry-After", "")
                    raise _Retryable("http_error", f"HTTP {code}", float(ra) if ra.isdigit() else None)
                if code >= 400:
                    raise _Final("http_error", f"HTTP {code}", code)
                expected = r.headers.get("Content-Length")
                buf = bytearray()
                for chunk in r.iter_content(chunk_size=1 << 16):
                    buf += chunk
                    if len(buf) > cfg.max_bytes:
                        raise _Final("too_large", f"body larger than {cfg.max_bytes} bytes", code)
                    if time.monotonic() > deadline:
                        raise _Retryable("timeout", f"body not complete after {cfg.timeout_s} s")
                if expected is not None and len(buf) != int(expected):
                    raise _Retryable("network_error", f"truncated body: {len(buf)} of {expected} bytes")
                return bytes(buf), code
        except RefusedURL as e:
            raise _Final("refused", f"{e}{ALLOW_HINT}", None) from e
        except (requests.Timeout, TimeoutError) as e:
            raise _Retryable("timeout", f"timeout after {cfg.timeout_s} s: {type(e).__name__}") from e
        except requests.ConnectionError as e:
            status = "timeout" if "timed out" in str(e).lower() else "network_error"
            raise _Retryable(status, f"{type(e).__name__}: {e}") from e
        except requests.RequestException as e:  # ChunkedEncodingError, ContentDecodingError: dropped body
            raise _Retryable("network_error", f"{type(e).__name__}: {e}") from e

    def fetch(self, url: str) -> FetchResult:
        """Download `url` with retries; see `FetchResult` for the statuses."""
        res = FetchResult(url=url, status="network_error")
        why = None if self.config.allow_private_urls else url_refusal(url)
        if why is not None:  # refused before any request is made
            res.status, res.error_message = "refused", f"{why}{ALLOW_HINT}"
            return res
        for attempt in range(self.config.retries + 1):
            res.attempts = attempt + 1
            try:
                res.data, res.http_status = self._attempt(url)
                res.status, res.error_message = "success", None
                return res
            except _Final as e:
                res.status, res.error_message, res.http_status = e.status, str(e), e.code
                return res
            except _Retryable as e:
                res.status, res.error_message = e.status, str(e)
                if "429" in str(e):
                    res.retries_429 += 1
                if attempt < self.config.retries:
                    delay = self._backoff(attempt, e.wait)
                    log.debug("retry %s in %.2f s (%s)", url, delay, e)
                    time.sleep(delay)
        log.info("giving up on %s after %d attempts: %s", url, res.attempts, res.error_message)
        return res

    def fetch_many(self, urls: Iterable[str]) -> Iterator[FetchResult]:
        """Fetch with `concurrency` threads; results come back in input order."""
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="fetch") as pool:
            yield from pool.map(self.fetch, urls)


class _Final(Exception):
    def __init__(self, status: str, message: str, code: int | None) -> None:
        super().__init__(message)
        self.status, self.code = status, code
