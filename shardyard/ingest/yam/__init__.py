"""YAM robot-arm demos: the i2rt recorder layout (`i2rt.py`) and seed 001's per-demo layout (`per_demo.py`),
detected per episode folder (`layout.detect_layout`) and read by `YamSource` (`source.py`).

Layout "i2rt" (`../shared/data/yam/LAYOUT.md`): `metadata.json`, `<arm>-joint_pos.npy (N, 6)` rad,
`<arm>-gripper_pos.npy (N, 1)` in [0, 1], `action-<arm>-joint.npy`, `action-<arm>-gripper.npy`,
`<role>-images-<key>.mp4` (H.264) with `<role>-timestamp.npy (N,)` ms, and `write_complete.flag` written
last. The EEF pose is not recorded: it comes from forward kinematics of `robot_model` at the grasp site;
`K` and `T_world_cam` come from the model's camera for each role (or a calibration JSON).

Layout "per_demo" (seed 001): `frames/*.png|jpg` or one `*.mp4`, `eef_pos.npy (T, 3)` m,
`eef_quat.npy (T, 4)` xyzw, `gripper.npy (T,)`, `camera.json` (`K`, `T_world_cam`, optional `name`,
`width`, `height`), optional `meta.json` (`task`, `fps`) and `action.npy (T, A)`.
"""

from __future__ import annotations

from shardyard.ingest.yam.layout import I2RT, PER_DEMO, LayoutInputs, RawEpisode, detect_layout
from shardyard.ingest.yam.source import LAYOUT_READERS, YamConfig, YamSource

__all__ = ["I2RT", "PER_DEMO", "LAYOUT_READERS", "LayoutInputs", "RawEpisode", "YamConfig", "YamSource",
           "detect_layout"]
