"""The report's skipped episodes as summary lines (`summarize`, so `inspect` and every ingest's summary):
grouped by reason, so a dataset with thousands of episodes skipped for one reason prints one line."""

from __future__ import annotations

from typing import Any

__all__ = ["skipped_lines"]


def skipped_lines(skipped: list[dict[str, Any]], max_lines: int = 20, keys_shown: int = 4) -> list[str]:
    """The report's skipped rows as summary lines: a row per episode (key, field, reason, error, path) while
    a reason is shared by at most 3 episodes; rows with the same field, reason and error beyond that are one
    line with their count and the first and last keys (a dataset whose meta lists 98 absent episodes gets
    one line, not 98). At most `max_lines` lines, then one saying how many more are in report.json."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in skipped:
        s = s or {}
        groups.setdefault((str(s.get("field") or ""), str(s.get("reason", "?")), str(s.get("error") or "")),
                          []).append(s)
    lines: list[str] = []
    for (field, reason, error), rows in groups.items():
        where = f" [{field}]" if field else ""
        why = reason + (f" ({error})" if error else "")
        if len(rows) <= 3:
            lines += [f"  - {r.get('key', '?')}{where}: {why}" + (f" at {r['path']}" if r.get("path") else "")
                      for r in rows]
            continue
        keys = [str(r.get("key", "?")) for r in rows]
        shown = ", ".join(keys) if len(keys) <= keys_shown else ", ".join(keys[:keys_shown - 1]) + f", ..., {keys[-1]}"
        lines.append(f"  - {len(rows)} episodes{where}: {why}: {shown} (each with its path in report.json)")
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"  ... and {len(lines) - max_lines} more line(s); every row in report.json"]
    return lines
