"""`--where` filters on episode metadata (`shardyard edit --where 'length < 20'`), evaluated on the metadata
columns of a store (`stores.episode_reader`) without a Python object per episode where the name is a column
(key, length, task, fps, source_path); any other name is an `extra` entry, read per episode.

Grammar: `NAME OP VALUE [and NAME OP VALUE ...]`, OP one of `< <= > >= == !=`, VALUE a number or a (quoted)
string; no eval. Clauses apply in order, as a per-episode `and` would: an episode that fails a clause is not
asked about the next; an episode still in play that lacks a named entry is an error naming it. A number
never equals a string (`==` False, `!=` True); ordering a number against a string is an error; a non-number
entry compared with a number fails the clause.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardyard.errors import ConfigError
from shardyard.stores.episode_reader import MetaTable

__all__ = ["Clause", "parse_clauses", "select_where"]

Clause = tuple[str, str, Any]
OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                              "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_PC = {"<=": pc.less_equal, ">=": pc.greater_equal, "==": pc.equal, "!=": pc.not_equal, "<": pc.less,
       ">": pc.greater}


def _split_and(text: str) -> list[str]:
    """`text` cut at each `and` between clauses, not at one inside a quoted value (`task == 'pick and place'`).
    Raises ConfigError for a quote left open."""
    parts, start, quote = [], 0, None
    for m in re.finditer(r"['\"]|\s+and\s+", text):
        token = m.group()
        if token in ("'", '"'):
            quote = token if quote is None else (None if token == quote else quote)
        elif quote is None:
            parts.append(text[start:m.start()])
            start = m.end()
    if quote is not None:
        raise ConfigError(f"--where {text!r}: a {quote} quote is not closed")
    return parts + [text[start:]]


def parse_clauses(text: str) -> list[Clause]:
    """`(name, op, value)` per clause of `text` (value a float, or a str when quoted or not a number; a
    quoted value is kept whole, `and` included). Raises ConfigError on bad syntax."""
    clauses = []
    for part in _split_and(text.strip()):
        m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*", part)
        if not m:
            raise ConfigError(f"bad --where clause {part!r}; expected NAME OP VALUE (e.g. 'length < 20')")
        name, op, raw = m.groups()
        quoted = len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0]
        value: Any = raw[1:-1] if quoted else raw
        if not quoted:
            try:
                value = float(raw)
            except ValueError:
                pass
        clauses.append((name, op, value))
    return clauses


def match_value(got: Any, op: str, value: Any) -> bool:
    """One clause on one Python value (not None)."""
    if isinstance(value, float) and not isinstance(got, (int, float)):
        return False
    if isinstance(value, str) and isinstance(got, (int, float)) and op not in ("==", "!="):
        raise ConfigError(f"--where compares a number with the string {value!r} by {op}")
    return bool(OPS[op](got, value))


def _column_clause(values: pa.Array, op: str, value: Any) -> np.ndarray:
    """`(E,) bool` of a clause over a pyarrow column (nulls give False; the caller checks presence)."""
    numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
    if isinstance(value, float) and not numeric:
        return np.zeros(len(values), dtype=bool)
    if isinstance(value, str) and numeric:
        if op not in ("==", "!="):
            raise ConfigError(f"--where compares a number with the string {value!r} by {op}")
        return np.full(len(values), op == "!=", dtype=bool)
    got = _PC[op](values, pa.scalar(value))
    return pc.fill_null(got, False).to_numpy(zero_copy_only=False).astype(bool)


def select_where(table: MetaTable, text: str, url: str = "") -> np.ndarray:
    """Indices `(M,) int64` of the episodes of `table` matching `text` (module docstring), in store order.
    Raises ConfigError on bad syntax, or naming the first episode still in play that lacks a named entry."""
    alive = np.ones(table.num_episodes, dtype=bool)
    for name, op, value in parse_clauses(text):
        col = table.column(name)
        ok = np.zeros(table.num_episodes, dtype=bool)
        if col is not None:
            values, present = col
            ok = _column_clause(values, op, value) & present
            slow = np.flatnonzero(alive & ~present)  # absent from the column: an `extra` entry, or none
        else:
            slow = np.flatnonzero(alive)
        if len(slow):
            got = table.entries(name) if col is None else None
            for i in slow:
                v = got[i] if got is not None else table.record(int(i)).get(name)
                if v is None:
                    raise ConfigError(f"--where names {name!r}, which episode {table.key(int(i))!r} lacks",
                                      path=url or None)
                ok[i] = match_value(v, op, value)
        alive &= ok
    return np.flatnonzero(alive).astype(np.int64)
