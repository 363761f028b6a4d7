"""Source adapters (one per file) and the ingest runner. `SOURCES` maps a source name to its class."""

from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource
from shardyard.ingest.libero import LiberoConfig, LiberoSource
from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource
from shardyard.ingest.yam import YamConfig, YamSource

SOURCES = {"libero": LiberoSource, "lerobot": LeRobotSource, "nyu": NyuSource, "yam": YamSource}

__all__ = ["SOURCES", "LeRobotConfig", "LeRobotSource", "LiberoConfig", "LiberoSource", "NyuConfig", "NyuSource", "YamConfig", "YamSource"]
