"""Pause a running job at a known point while a file exists (`--pause-file PATH`, `--pause-after N`).

A long job can make way for other work on a shared machine without being killed: while the pause file
exists, the job waits after its next stored episode (`ingest yam|libero|lerobot`: the episode has been
written and, when its group closed, committed), after its next stored token batch (`ingest dino`: each
worker, after the batch's completion record), after its next pushed commit (`push`), or after its next
checkpoint (`train ...`: `latest.pth` has been written), and goes on once the file is deleted. A paused job
is also at a known point for a kill: it cannot get past that point while the file exists, so nothing it
commits later can race the kill (the tests that SIGKILL jobs mid-run rely on this rather than on timing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardyard.errors import ConfigError

__all__ = ["PausePoint"]

log = logging.getLogger(__name__)


@dataclass
class PausePoint:
    """Where a job waits: at each pause point from the `after`-th on (counted in this process), for as long
    as `file` exists. `poll_s`: seconds between checks of the file. Raises `ConfigError` for `after < 1`.

    Each worker process holds its own `PausePoint` (a Ray actor builds one from `to_dict()`), so for a job with
    several workers `after` counts the points of each worker, not of the job.
    """

    file: Path
    after: int = 1
    poll_s: float = 0.05
    passed: int = field(default=0, init=False)  # pause points this process has reached

    def __post_init__(self) -> None:
        self.file = Path(self.file)
        if self.after < 1:
            raise ConfigError(f"--pause-after must be >= 1, got {self.after}")

    def reached(self, what: str) -> None:
        """Count one pause point (`what` was stored, e.g. "episode KEY"); from the `after`-th on, block while
        the file exists."""
        self.passed += 1
        if self.passed < self.after or not self.file.exists():
            return
        log.warning("paused after %s (%d stored in this process): waiting while %s exists", what, self.passed,
                    self.file)
        while self.file.exists():
            time.sleep(self.poll_s)
        log.warning("resumed: %s is gone", self.file)

    def to_dict(self) -> dict[str, str | int]:
        """The JSON-able options (`PausePoint(**d)` rebuilds it, with its own count)."""
        return {"file": str(self.file), "after": self.after}

    @classmethod
    def from_options(cls, file: Path | None, after: int) -> PausePoint | None:
        """The CLI's `--pause-file`/`--pause-after` as a `PausePoint`, or None without a file."""
        return None if file is None else cls(file=file, after=after)
