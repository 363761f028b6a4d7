"""Filesystem handles for stores at fsspec URLs (`s3://`, `gs://`, `http(s)://`, `hf://`, ...), safe across forks.

An fsspec async filesystem (s3fs, gcsfs, HTTP) is bound to the event loop of the process that made it and
refuses to run in a forked child ("This class is not fork-safe"; LeRobot issue 4526 is the same trap with
HfFileSystem). `ProcessLocalFS` therefore carries only the protocol and the storage options, and each process
builds its own filesystem on first use (`skip_instance_cache`, so a handle cached before a fork is never
reused). Endpoints and credentials come from the storage options given here or from fsspec's own
configuration (`fsspec.config.conf`, or `FSSPEC_S3_ENDPOINT_URL=...` style environment variables, read by
fsspec at import), which every process of a job inherits.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec

__all__ = ["ProcessLocalFS", "is_remote", "parse_storage_options", "split_url"]


def is_remote(path_or_url: str | os.PathLike) -> bool:
    """True for a URL with a protocol other than `file://` (`s3://b/x`, `http://h/x`); False for local paths."""
    text = str(path_or_url)
    return "://" in text and not text.startswith("file://")


def split_url(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, str]:
    """`"s3://bucket/store"` -> `("s3", "bucket/store")`: the protocol and the path inside its filesystem
    (for HTTP the path is the whole URL, as fsspec's HTTP filesystem wants it)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, path.rstrip("/")


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """`["endpoint_url=http://127.0.0.1:9000", "anon=true"]` -> fsspec storage options (`true`/`false`
    become bools, integers become ints; a dotted key nests: `client_kwargs.region_name=x`). Raises
    `ValueError` for an item without `=`."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"--storage-option takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed: Any = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(parsed, str) and parsed.lstrip("-").isdigit():
            parsed = int(parsed)
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out


class ProcessLocalFS:
    """An fsspec filesystem rebuilt in each process: pickles as `(protocol, storage_options)` and forwards
    every attribute (`cat_file`, `open`, `put_file`, `ls`, ...) to this process's own instance.

    protocol: an fsspec protocol ("s3", "gs", "http", "hf", "memory", ...). storage_options: keyword arguments
    of that filesystem (merged by fsspec with its configuration for the protocol).
    """

    def __init__(self, protocol: str, storage_options: dict[str, Any] | None = None) -> None:
        self.protocol = protocol
        self.storage_options = dict(storage_options or {})
        self._pid = -1
        self._fs: Any = None

    @classmethod
    def for_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> tuple["ProcessLocalFS", str]:
        """The handle for `url`'s protocol and the path of `url` inside it."""
        protocol, path = split_url(url, storage_options)
        return cls(protocol, storage_options), path

    @property
    def fs(self) -> Any:
        """This process's filesystem instance (made on first use after start or fork)."""
        if self._pid != os.getpid() or self._fs is None:
            # The memory filesystem is a per-process dict by nature: sharing its instance is what it is for.
            skip = self.protocol != "memory"
            self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=skip, **self.storage_options)
            self._pid = os.getpid()
        return self._fs

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.fs, name)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """Bytes `start:end` of the file at `path` (None: from the start / to the end; negative: from the end).
        `HfFileSystem` inherits fsspec's generic `cat_file`, which opens a read-ahead buffered file: each range
        would fetch a whole 5 MB block (to the end of a shard, for a frame of a few KB); it gets
        `cache_type="none"`, so one range is one exact ranged GET."""
        if self.protocol == "hf":
            kwargs.setdefault("cache_type", "none")
        return self.fs.cat_file(path, start=start, end=end, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "storage_options": self.storage_options, "_pid": -1, "_fs": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"ProcessLocalFS({self.protocol!r})"

    def url(self, path: str) -> str:
        """The full URL of `path` inside this filesystem (`"bucket/x"` -> `"s3://bucket/x"`)."""
        return path if "://" in path else f"{self.protocol}://{path}"
