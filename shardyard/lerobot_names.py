"""The LeRobot feature-name map: store field keys <-> LeRobot feature names, and the bookkeeping columns a
LeRobot table has besides its features. Apart from `ingest/lerobot.py` so that the export
(`tools/export_lerobot.py`) and the loaders read it without importing an ingest source."""

from __future__ import annotations

__all__ = ["BOOKKEEPING", "IMAGES", "feature_from_field", "field_from_feature"]

BOOKKEEPING = ("frame_index", "episode_index", "index", "task_index")
IMAGES = "observation.images."


def field_from_feature(name: str) -> str:
    """LeRobot feature name -> store field key (`observation.images.top` -> `obs.rgb.top`,
    `observation.state` -> `obs.state`; any other name is kept)."""
    if name.startswith(IMAGES):
        return "obs.rgb." + name[len(IMAGES):]
    if name.startswith("observation."):
        return "obs." + name[len("observation."):]
    return name


def feature_from_field(key: str) -> str:
    """Store field key -> LeRobot feature name (inverse of `field_from_feature`)."""
    if key.startswith("obs.rgb."):
        return IMAGES + key[len("obs.rgb."):]
    if key.startswith("obs."):
        return "observation." + key[len("obs."):]
    return key
