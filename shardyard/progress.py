"""Progress as log lines: what a job has done, its rate and the time left, for a log file or a CI console.

A progress bar draws only on a terminal, so a job whose stderr goes to a file said nothing until it ended.
`ProgressLog` writes a line to the logger `shardyard.progress` at the first update, at most every `every_s`
seconds after it, and at the last one:

    INFO shardyard.progress: ingest yam: 12/40 episodes (30%), 2.1 episodes/s, ETA 13 s
    INFO shardyard.progress: train volume-query: step 200/300 (67%), 6.8 steps/s, ETA 15 s; loss 1.234

The command line sets that logger to INFO (`shardyard.cli`), so the lines show while other INFO logging stays
quiet; a library user sees them by setting the level too. Resumed jobs say so on the same logger
(`resumed from step N`, `resumed: N of M episodes already stored`).
"""

from __future__ import annotations

import logging
import time

__all__ = ["PROGRESS_LOGGER", "ProgressLog", "format_seconds"]

PROGRESS_LOGGER = "shardyard.progress"
log = logging.getLogger(PROGRESS_LOGGER)


def format_seconds(s: float) -> str:
    """`75.2` -> "1 min 15 s"; `4000` -> "1 h 07 min"; under a minute "42 s"."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class ProgressLog:
    """Periodic progress lines of one job (see the module docstring).

    what: the job ("ingest yam"); total: units in all (None when unknown: no percentage, no ETA); unit: their
    name ("episodes"); every_s: least time between two lines (s); start: units done before this run (a resumed
    job), which count towards done/total but not towards the rate. `prefix`: put before the count ("step ").
    """

    def __init__(self, what: str, total: int | None, unit: str, *, every_s: float = 10.0, start: int = 0,
                 prefix: str = "") -> None:
        self.what, self.total, self.unit, self.every_s, self.prefix = what, total, unit, every_s, prefix
        self.start = self.done = int(start)
        self._t0 = time.monotonic()
        self._last: float | None = None

    def skip(self, n: int = 1) -> None:
        """Count `n` units done before this run (a resumed job's), without a line."""
        self.start += n
        self.done += n

    def update(self, done: int | None = None, note: str = "") -> None:
        """Units done so far (`done`, else one more than before); logs a line when due. `note` is appended."""
        self.done = self.done + 1 if done is None else int(done)
        now = time.monotonic()
        last = self.total is not None and self.done >= self.total
        if self._last is None or last or now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line(now, note))

    def finish(self, note: str = "") -> None:
        """Log the closing line unless the last update already did (a job whose total was not known)."""
        if self._last is None or self.total is None or self.done < self.total:
            self._last = time.monotonic()
            log.info("%s", self.line(self._last, note) + " (done)")

    def line(self, now: float | None = None, note: str = "") -> str:
        """The progress line as of `now` (monotonic seconds; default: now)."""
        elapsed = max((time.monotonic() if now is None else now) - self._t0, 1e-9)
        rate = (self.done - self.start) / elapsed
        count = f"{self.prefix}{self.done}" + (f"/{self.total}" if self.total is not None else "")
        parts = [f"{count} {self.unit}" if not self.prefix else count]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total is not None and self.done >= self.total:
            parts.append(f"done in {format_seconds(elapsed)}")
        elif self.total is not None and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        return f"{self.what}: " + ", ".join(parts) + (f"; {note}" if note else "")
