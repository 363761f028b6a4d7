"""Command line: `shardyard ingest|train|stats|inspect|export|recode` and the `ingest` shortcut (`ingest yam DIR`).

Commands are thin: parse, build a config, call the library, print a summary. Exit status of ingest jobs:
0 when every episode was stored, 2 when some were skipped (see report.json), 1 on a fatal error.
"""

from __future__ import annotations

import logging

import shardyard.commands.edit  # noqa: F401  (edit commands)
import shardyard.commands.ingest  # noqa: F401  (registers the ingest commands)
import shardyard.commands.recode  # noqa: F401  (recode)
import shardyard.commands.remote  # noqa: F401  (push, pull)
import shardyard.commands.store  # noqa: F401  (stats, inspect, export)
import shardyard.commands.train  # noqa: F401  (train commands)
import shardyard.commands.view  # noqa: F401  (view)
from shardyard.commands.common import app, ingest_app
from shardyard.progress import PROGRESS_LOGGER

__all__ = ["ingest_main", "main"]


def _logging() -> None:
    """Warnings and errors of every module, and the progress lines of `shardyard.progress` (INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)


def main() -> None:
    """Entry point of the `shardyard` console script."""
    _logging()
    app()


def ingest_main() -> None:
    """Entry point of the `ingest` console script (`ingest yam DIR` == `shardyard ingest yam DIR`)."""
    _logging()
    ingest_app()


if __name__ == "__main__":
    main()

