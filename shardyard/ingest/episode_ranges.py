"""Episode selections written as ranges: `--episodes 0-9,42` on the command line, and the compact form of a
list of episode ids in one summary line (`0, 3-9, 42`) instead of one line per episode."""

from __future__ import annotations

from typing import Iterable

from shardyard.errors import ConfigError

__all__ = ["format_ranges", "parse_episodes", "select_episodes"]


def parse_episodes(text: str | None) -> tuple[int, ...] | None:
    """`"0-9,42"` -> `(0, 1, ..., 9, 42)` (sorted, unique); None for None or "". Raises `ConfigError` (field
    `episodes`) for anything but comma-separated ids and inclusive `a-b` ranges of ids >= 0."""
    if not text or not text.strip():
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()):
            raise ConfigError(f"--episodes takes ids and ranges like 0-9,42; got {part!r}", field="episodes")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a:
            raise ConfigError(f"--episodes range {part!r} ends before it starts", field="episodes")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def format_ranges(ids: Iterable[int], limit: int = 12) -> str:
    """`[0, 3, 4, 5, 42]` -> `"0, 3-5, 42"`; past `limit` runs, `", ... (N more)"`."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    more = sum(b - a + 1 for a, b in runs[limit:])
    return ", ".join(text) + (f", ... ({more} more)" if more else "")


def select_episodes(wanted: tuple[int, ...] | None, listed: list[int], where: str) -> list[int]:
    """The ids of `wanted` (all of `listed` when None), sorted. Raises `ConfigError` (path `where`, field
    `episodes`) naming the wanted ids that `listed` lacks."""
    if wanted is None:
        return list(listed)
    unknown = sorted(set(wanted) - set(listed))
    if unknown:
        raise ConfigError(f"episodes {format_ranges(unknown)} are not listed in meta (it lists "
                          f"{format_ranges(listed)})", path=where, field="episodes")
    return sorted(set(wanted))
