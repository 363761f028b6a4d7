"""Error types. Each names the path, episode key and field it concerns, so a report row can say exactly
what was wrong and where."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "SchemaError", "ShardyardError", "SourceError", "StoreError"]


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


class ConfigError(ShardyardError):
    """Options that contradict each other or name things that do not exist."""
