"""Source adapters (one per file) and the ingest runner. `SOURCES` maps a source name to its class."""

from shardyard.ingest.yam import YamConfig, YamSource

SOURCES = {"yam": YamSource}

__all__ = ["SOURCES", "YamConfig", "YamSource"]
