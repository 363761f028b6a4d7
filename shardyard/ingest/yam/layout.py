"""What a YAM layout reader takes and gives: `LayoutInputs` (everything besides the episode folder, passed in,
never reached for) and `RawEpisode` (the episode with the specs of its fields), and `detect_layout`.

A layout reader is a plain function `read(folder, key, inputs) -> RawEpisode` (`i2rt.read_i2rt`,
`per_demo.read_per_demo`), registered by layout name in `source.LAYOUT_READERS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardyard.ingest.yam.frames import FrameReader
from shardyard.mjcf import RobotKinematics
from shardyard.schema import Episode, FieldSpec
from shardyard.stores.frames.encoding import FrameEncoding

__all__ = ["I2RT", "LayoutInputs", "PER_DEMO", "RawEpisode", "detect_layout"]

I2RT, PER_DEMO = "i2rt", "per_demo"


@dataclass(frozen=True)
class LayoutInputs:
    """Inputs of a layout reader besides the folder.

    frames: opens videos and image files (size, backend, probe mode). kinematics: the robot model for forward
    kinematics and model cameras, or None (no EEF pose from joints, no model cameras). calibration: the
    calibration JSON's `cameras` block (stream or role -> `K`, `width`, `height`, `T_world_cam` or `link` +
    `T_link_cam`), empty when none was given. cameras: streams to store (None: all). timestamp_tolerance_s:
    largest step-to-frame gap, seconds. quat_norm_tolerance: largest |norm - 1| of a recorded quaternion.
    encodings: image fields to return as `EncodedRows`, compressed frame by frame as decoded.
    """

    frames: FrameReader
    kinematics: RobotKinematics | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    cameras: tuple[str, ...] | None = None
    timestamp_tolerance_s: float = 0.05
    quat_norm_tolerance: float = 1e-3
    encodings: dict[str, FrameEncoding] = field(default_factory=dict)


@dataclass
class RawEpisode:
    """A layout reader's result: the episode (steps `(T, ...)` and meta) and the spec (dtype, per-step shape,
    unit, kind, names) of each field it knows more about than its array's dtype and shape."""

    episode: Episode
    specs: dict[str, FieldSpec]


def detect_layout(folder: Path) -> str | None:
    """"i2rt", "per_demo" or None for a folder that is not an episode."""
    if (folder / "metadata.json").exists() or any(folder.glob("*-joint_pos.npy")):
        return I2RT
    if (folder / "eef_pos.npy").exists():
        return PER_DEMO
    return None
