"""One rule for every source: whatever goes wrong while reading one episode becomes a report row.

A reader, a decoder, h5py, pyarrow, csv or MuJoCo may raise any exception type on bad input. The ingest runner
turns each into a row of `report.json` (`failure_row`: episode, file, field, reason, and the exception's type,
so a real bug stays visible; its traceback is logged at debug level) and goes on with the next episode.
Sources that know which file and field they are reading wrap that work in `reading(...)`, which gives any
other exception the file and field as a `SourceError`. Only an unusable job is fatal: a `ConfigError` (bad
options, no input) is never turned into a row.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from shardyard.errors import ShardyardError, SourceError

__all__ = ["failure_row", "reading", "source_error"]

log = logging.getLogger(__name__)


def _describe(e: BaseException) -> str:
    """`"<Type>: <message>"`, the message cut to 2,000 characters (a row is for reading, not a dump)."""
    msg = str(e).strip() or repr(e)
    if len(msg) > 2000:
        msg = msg[:2000] + " ..."
    return f"{type(e).__name__}: {msg}"


def source_error(e: BaseException, *, path: str | None = None, key: str | None = None,
                 field: str | None = None) -> SourceError:
    """A `SourceError` for any exception `e` raised while reading `path` (episode `key`, `field`): the reason
    names `e`'s type and message. A `ShardyardError` keeps its own reason and fills in what it lacks."""
    if isinstance(e, ShardyardError):
        err = SourceError(e.reason, path=e.path or path, key=e.key or key, field=e.field or field)
    else:
        err = SourceError(_describe(e), path=path, key=key, field=field)
    err.__cause__ = e
    return err


@contextlib.contextmanager
def reading(path: Any = None, key: str | None = None, field: str | None = None) -> Iterator[None]:
    """Context manager: an exception raised inside that is not a `ShardyardError` (those already say where
    they come from) becomes a `SourceError` naming `path`, `key` and `field`, its reason the exception's type
    and message."""
    try:
        yield
    except ShardyardError:
        raise
    except Exception as e:
        log.debug("reading %s (episode %s, field %s) failed", path, key, field, exc_info=True)
        raise source_error(e, path=None if path is None else str(path), key=key, field=field) from e


def failure_row(e: BaseException, key: str, path: str | None = None) -> dict[str, Any]:
    """The report row of episode `key`, whose read raised `e`: `{"error", "key", "path", "field", "reason"}`.
    For an exception that is not a `ShardyardError` (a reader's own, or a bug), `error` is its type, `reason`
    its type and message, `path` the given one (the episode's source file, when the source can say) or the
    exception's `filename`, and the traceback is logged at debug level."""
    if isinstance(e, ShardyardError):
        return e.to_dict() | {"key": key, "path": e.path or path}
    log.debug("episode %s: %s", key, _describe(e), exc_info=e)
    return {"error": type(e).__name__, "key": key, "path": getattr(e, "filename", None) or path,
            "field": None, "reason": _describe(e)}
