"""`YamSource`: a folder of YAM episodes in either layout, detected per episode folder at any depth.

Each layout is a reader function with explicit inputs (`layout.LayoutInputs`: the frame reader, the robot
kinematics, the calibration), registered in `LAYOUT_READERS`; the source owns that state and hands it over.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, ClassVar

from shardyard.errors import ConfigError, SchemaError, SourceError
from shardyard.ingest.configs import YamConfig
from shardyard.ingest.failures import reading
from shardyard.ingest.inside import check_folder, is_inside
from shardyard.ingest.readers import read_json
from shardyard.ingest.yam.frames import FrameReader
from shardyard.ingest.yam.i2rt import read_i2rt
from shardyard.ingest.yam.layout import I2RT, PER_DEMO, LayoutInputs, RawEpisode, detect_layout
from shardyard.ingest.yam.per_demo import read_per_demo
from shardyard.mjcf import RobotKinematics
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.frames.encoding import FrameEncoding
from shardyard.stores.manifest import fingerprint_paths, sha256_file

__all__ = ["LAYOUT_READERS", "YamConfig", "YamSource"]

log = logging.getLogger(__name__)

LAYOUT_READERS: dict[str, Callable[[Path, str, LayoutInputs], RawEpisode]] = {
    I2RT: read_i2rt,
    PER_DEMO: read_per_demo,
}


class YamSource:
    """Source over a folder of YAM episodes (any depth; an episode folder is one `detect_layout` accepts).

    `keys()` are episode folder paths relative to the root, sorted. `read(key)` raises `SourceError` naming
    the file, episode and field for a missing/short/non-finite array, an undecodable video, camera frames
    that cannot be matched to steps within `timestamp_tolerance_s`, a non-unit quaternion, or an episode
    without `write_complete.flag`, or (without `follow_links`) an episode folder or file that is a link leading
    outside the root; `SchemaError` for an episode that differs from the store schema. The
    constructor raises `ConfigError` when the root is not a folder, `SourceError` when the calibration JSON is
    missing or invalid.
    """

    name: ClassVar[str] = "yam"

    def __init__(self, config: YamConfig) -> None:
        self.cfg = config
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise ConfigError("raw data folder not found", path=str(self.root))
        self.kinematics = RobotKinematics(config.robot_model, config.eef_site) \
            if config.robot_model is not None else None
        self.calibration: dict[str, Any] = {}
        if config.calibration is not None:
            self.calibration = read_json(Path(config.calibration), key="*").get("cameras", {})
        self._schema: Schema | None = None

    # -- discovery ---------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Episode folders under the root (`.` for the root itself), relative, sorted."""
        found = []
        for p in sorted(self.root.rglob("*")):
            if p.is_dir() and detect_layout(p) is not None:
                found.append(p.relative_to(self.root).as_posix())
        if detect_layout(self.root) is not None:
            found.append(".")
        return sorted(found)

    def warm(self) -> None:
        """Load what every read needs (the MuJoCo model), so a fresh worker process starts ready."""
        if self.kinematics is not None:
            self.kinematics.load()

    def fingerprint(self) -> str:
        """Fingerprint of every file under the root (names, sizes, contents; `stores.manifest`), less the links
        leading outside it unless `follow_links` (their episodes are refused: their contents are not read)."""
        return fingerprint_paths([p for p in self.root.rglob("*") if p.is_file()
                                  and (self.cfg.follow_links or is_inside(self.root, p))], self.root)

    def describe(self) -> dict[str, Any]:
        """Source block of the manifest: name, root, input fingerprint, robot model path and sha256."""
        d: dict[str, Any] = {"name": self.name, "root": str(self.root), "fingerprint": self.fingerprint()}
        if self.cfg.robot_model is not None:
            d["robot_model"] = {"path": str(self.cfg.robot_model), "sha256": sha256_file(self.cfg.robot_model),
                                "eef_site": self.cfg.eef_site}
        if self.cfg.calibration is not None:
            d["calibration"] = {"path": str(self.cfg.calibration), "sha256": sha256_file(self.cfg.calibration)}
        return d

    # -- schema ------------------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """Schema of the store, taken from the first episode (in key order) that reads cleanly (one frame per
        camera is decoded for it)."""
        if self._schema is None:
            last: Exception | None = None
            for key in self.keys():
                try:
                    raw = self._read_raw(key, self._inputs({}, first_only=True))
                except ConfigError:
                    raise
                except Exception as e:  # any bad episode: the next one may give the schema (`failures`)
                    last = e
                    continue
                specs = raw.specs
                self._schema = Schema({k: specs[k] if k in specs else FieldSpec(str(a.dtype), a.shape[1:])
                                       for k, a in raw.episode.steps.items()})
                break
            if self._schema is None:
                raise ConfigError(f"no readable episode under the folder (last error: {last})",
                                  path=str(self.root))
        return self._schema

    # -- reading -----------------------------------------------------------------------------------------
    def _inputs(self, encodings: dict[str, FrameEncoding], *, first_only: bool = False) -> LayoutInputs:
        cfg = self.cfg
        return LayoutInputs(frames=FrameReader(cfg.image_size, cfg.video_backend, first_only),
                            kinematics=self.kinematics, calibration=self.calibration, cameras=cfg.cameras,
                            timestamp_tolerance_s=cfg.timestamp_tolerance_s,
                            quat_norm_tolerance=cfg.quat_norm_tolerance, encodings=encodings)

    def episode_path(self, key: str) -> str:
        """The episode's folder (named by the report row of a read that failed in an unforeseen way)."""
        return str(self.root / key)

    def _read_raw(self, key: str, inputs: LayoutInputs) -> RawEpisode:
        folder = self.root / key
        check_folder(self.root, folder, follow_links=self.cfg.follow_links, key=key, subfolders=("frames",))
        reader = LAYOUT_READERS.get(detect_layout(folder))
        if reader is None:
            raise SourceError("not an episode folder (no metadata.json or eef_pos.npy)", path=str(folder), key=key)
        with reading(folder, key):  # an unforeseen failure still names the episode's folder
            return reader(folder, key, inputs)

    def read(self, key: str) -> Episode:
        """One episode, checked against the store schema (taken from the first readable episode)."""
        return self.read_encoded(key, {})

    def read_encoded(self, key: str, encodings: dict[str, FrameEncoding]) -> Episode:
        """As `read`, but video fields named in `encodings` come back as `EncodedRows`: each frame is
        compressed as it is decoded (`VideoReader.decode_each`), so no `(T, H, W, 3)` array is built."""
        raw = self._read_raw(key, self._inputs(encodings))
        ep, schema = raw.episode, self.schema()
        try:
            schema.validate(ep, path=str(self.root / key))
        except SchemaError as e:
            raise SchemaError(e.reason + " (the store schema comes from the first readable episode)",
                              path=str(self.root / key), key=key, field=e.field) from None
        for k, spec in raw.specs.items():
            if k in schema and spec != schema[k]:
                raise SchemaError(f"{k}: spec {spec} differs from the store's {schema[k]}",
                                  path=str(self.root / key), key=key, field=k)
        return ep
