"""Error types. Each names the path, episode key and field it concerns, so a report row can say exactly
what was wrong and where."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "SchemaError", "ShardyardError", "SourceError", "StoreChangedError", "StoreDamagedError",
           "StoreError", "UnsafePathError"]


class ShardyardError(Exception):
    """Base error. Carries `path`, `key` (episode), `field` and `reason`; `str()` joins the ones that are set."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        key: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.key = key
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        where = [f"{name}={value}" for name, value in
                 (("episode", self.key), ("field", self.field), ("file", self.path)) if value is not None]
        return f"{self.reason}" + (f" [{', '.join(where)}]" if where else "")

    def to_dict(self) -> dict[str, Any]:
        """Row for `report.json`: `{"error", "key", "path", "field", "reason"}`."""
        return {"error": type(self).__name__, "key": self.key, "path": self.path,
                "field": self.field, "reason": self.reason}


class SourceError(ShardyardError):
    """Raw input is unreadable or inconsistent (bad video, short array, NaN, missing file)."""


class SchemaError(ShardyardError):
    """An episode does not match the store's schema (dtype, shape, missing or extra field)."""


class StoreError(ShardyardError):
    """A store is missing, incomplete (no manifest) or inconsistent."""


class UnsafePathError(StoreError):
    """A name read from outside (a remote listing, `checksums.json`, a manifest, a tar member) would land
    outside its target folder once joined onto it: absolute, with `..`, a drive letter or a backslash, empty
    or with a NUL. `path` is where the name came from, `reason` quotes the name."""


class StoreDamagedError(StoreError):
    """A store's bytes differ from what was recorded when they were written, as found while reading them: a
    crc32c or sha256 mismatch, a chunk or file the store says exists but is missing, a truncated file, a
    damaged shard index, inconsistent `meta/episode_ends`. Names the `store`, `field`, episode (`key`, and
    `episode_index`), `step` (within the episode) and file (`path`) where they are known. Reads can skip the
    checks with `verify_reads=False`; `shardyard verify STORE` reports every damage at once."""

    def __init__(self, reason: str, *, store: str | None = None, path: str | None = None, key: str | None = None,
                 field: str | None = None, episode_index: int | None = None, step: int | None = None) -> None:
        self.store = None if store is None else str(store)
        self.episode_index = episode_index
        self.step = step
        super().__init__(reason, path=path, key=key, field=field)

    def _message(self) -> str:
        episode = self.key if self.episode_index is None else \
            f"{self.key} (index {self.episode_index})" if self.key is not None else str(self.episode_index)
        where = [f"{name}={value}" for name, value in
                 (("store", self.store), ("field", self.field), ("episode", episode), ("step", self.step),
                  ("file", self.path)) if value is not None]
        return f"{self.reason}" + (f" [{', '.join(where)}]" if where else "")

    def to_dict(self) -> dict[str, Any]:
        """The base row plus `store`, `episode_index` and `step`."""
        return super().to_dict() | {"store": self.store, "episode_index": self.episode_index, "step": self.step}


class StoreChangedError(StoreError):
    """A store was replaced or rewritten (`edit --in-place`, `recode`, `pull`, a resumed or overwriting
    writer) after a reader opened it: the reader's view is no longer the version it opened, and it refuses to
    serve data rather than mix two versions. `path` is the store; open it again to read the new version."""


class ConfigError(ShardyardError):
    """Options that contradict each other or name things that do not exist."""
