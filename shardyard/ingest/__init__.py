"""Source adapters (one per file) and the ingest runner.

`SOURCES` maps a source name to where its class lives; `source_class(name)` imports it (the CLI's
`ingest yam|libero|lerobot|nyu` find their source class here). Kept lazy so that
`ingest yam` does not import h5py, pyarrow or `datasets` for the other adapters (and one adapter's missing
optional dependency never breaks another).
"""

from __future__ import annotations

import importlib

SOURCES: dict[str, str] = {
    "yam": "shardyard.ingest.yam:YamSource",
    "libero": "shardyard.ingest.libero:LiberoSource",
    "lerobot": "shardyard.ingest.lerobot:LeRobotSource",
    "nyu": "shardyard.ingest.nyu_depth_v2:NyuSource",
}


def source_class(name: str) -> type:
    """The Source class registered as `name`. Raises `KeyError` naming the known sources."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
    module, cls = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["SOURCES", "source_class"]
