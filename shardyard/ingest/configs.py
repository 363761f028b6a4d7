"""The config dataclasses of the ingest jobs, apart from their sources so that the command line reads them
(its options and every default, through `commands/options.py`) without importing a source's readers (h5py,
pyarrow, torch). Each source module imports its config from here (`from shardyard.ingest.yam import
YamConfig` keeps working)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shardyard.errors import ConfigError
from shardyard.models.backbone_config import BackboneConfig
from shardyard.pause import PausePoint
from shardyard.stores.frames.registry import DEFAULT_FRAME_CODEC

if TYPE_CHECKING:
    from shardyard.stores.stats import StatsConfig

__all__ = ["DinoConfig", "FetchConfig", "IngestConfig", "LeRobotConfig", "LiberoConfig", "NyuConfig",
           "TranscodeConfig", "WebvidConfig", "YamConfig"]


def _stats_config() -> StatsConfig:
    from shardyard.stores.stats import StatsConfig  # the stats package imports pyarrow: not at CLI start

    return StatsConfig()


@dataclass
class IngestConfig:
    """Options shared by every `ingest` command.

    workers: reader processes (1 reads in the writer's process). commit_every, commit_seconds: a group of
    episodes is committed at this many episodes, at 1 GiB of encoded frames, or this long (s) after its first
    episode, whichever comes first (a kill loses at most one group; larger groups make small episodes
    cheaper). frame_codec: codec of the image fields (`stores.episodic_writer.parse_frame_codecs`: "jpeg"
    default, "jpeg:Q", "lz4", "zstd", "none", `FIELD=CODEC` overrides). ray_address: read with Ray tasks
    instead ("local" starts Ray on this machine). on_error: "skip" records a bad episode in report.json and goes on,
    "fail" stops at the first. follow_links: the `--follow-links` choice, recorded in the manifest's provenance;
    the sources apply it (each source config has the same field: read links leading out of the input folder,
    `ingest.inside`). out: a directory, or an fsspec URL (`s3://bucket/store`) that `run_ingest` writes through
    local staging (`stores.remote.StagedStore`).
    """

    out: str | Path
    workers: int = 1
    on_error: str = "skip"
    overwrite: bool = False
    ray_address: str | None = None
    frame_codec: str = DEFAULT_FRAME_CODEC
    commit_every: int = 32
    commit_seconds: float = 30.0
    val_fraction: float = 0.1
    split_seed: int = 0
    stats: StatsConfig = field(default_factory=_stats_config)
    follow_links: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ConfigError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class YamConfig:
    """Options of the YAM source.

    root: the raw folder. robot_model: MJCF file for forward kinematics and model cameras (i2rt layout).
    eef_site: grasp site (None: `tcp_<arm>`, else `grasp_site`). calibration: calibration JSON (`cameras`).
    cameras: camera streams to store (role, or `<role>_<key>` for stereo); None stores all.
    image_size: `(W, H)` to resize frames on ingest (area filter; `K` is scaled to match); None keeps size.
    timestamp_tolerance_s: largest gap between a control step and the camera frame matched to it.
    quat_norm_tolerance: largest |norm - 1| of a recorded quaternion. video_backend: "pyav" or "decord".
    follow_links: read episode folders and files that are links leading outside `root` (refused by default,
    `ingest.inside`).
    """

    root: Path
    robot_model: Path | None = None
    eef_site: str | None = None
    calibration: Path | None = None
    cameras: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    timestamp_tolerance_s: float = 0.05
    quat_norm_tolerance: float = 1e-3
    video_backend: str = "pyav"
    follow_links: bool = False


@dataclass
class LiberoConfig:
    """Options of the LIBERO / robomimic / robosuite source.

    root: one `*.hdf5` file or a folder of them (searched recursively).
    image_convention: "opengl" (stored upside down: flipped on ingest) or "opencv"; None reads the file attr
    `macros_image_convention` and defaults to "opengl" (robosuite's default renderer convention).
    fps: control rate in Hz; None uses 20 Hz (LIBERO, robomimic, robosuite v1) and marks it assumed for
    robosuite v0.x files, whose rate is not recorded.
    follow_links: read what is refused by default (`ingest.inside`): links leading out of the root folder, HDF5
    data in other files, and files a demo's `model_file` MJCF names (meshes, includes: else compiled without).
    keys: read only these episode keys (one store of `--group-by-schema`); None reads all.
    """

    root: Path
    image_convention: str | None = None
    fps: float | None = None
    follow_links: bool = False
    keys: tuple[str, ...] | None = None


@dataclass
class LeRobotConfig:
    """Options of the LeRobot source.

    root: dataset folder, or a Hub repo id resolved offline from the local cache (`snapshot_download(...,
    local_files_only=True)`: nothing is downloaded). image_size: `(W, H)` to resize frames (area filter).
    timestamp_tolerance_s: largest gap between a row's timestamp and the video frame matched to it.
    follow_links: read files that resolve outside the dataset folder, and path templates in `meta/info.json`
    with `..` or an absolute path (refused by default, `ingest.inside`). A Hub cache snapshot's folder is its
    repository's cache folder (the snapshot's files are links into its `blobs/`). episodes: episode ids to
    ingest (None: every episode listed in meta); selected ones without a data file in the folder (a partial
    download) are left out, named in one summary line. hub: where a downloaded dataset came from (repo id,
    revision, commit: `ingest.lerobot_hub`), recorded in the manifest's source block. cameras: the cameras
    (`observation.images.<name>`) to store, None all, `()` none; a camera to store with no video for any
    episode is refused (`lerobot_checks.skipped_cameras`), one missing for some episodes is a report row each.
    """

    root: str | Path
    image_size: tuple[int, int] | None = None
    timestamp_tolerance_s: float = 1e-3
    revision: str | None = None
    follow_links: bool = False
    episodes: tuple[int, ...] | None = None
    hub: dict[str, str] | None = None
    cameras: tuple[str, ...] | None = None


@dataclass
class NyuConfig:
    """Options of the NYU source.

    root: file (`.mat`) or folder, or a cached HF hub id. layout: one of `LAYOUT_NAMES`, or None to detect.
    max_episode_frames: longest episode (a worker holds one whole episode in memory: ~2.1 MB per 480x640 pair).
    max_depth: clamp of raw Kinect depth (m), as the NYU toolbox. mat_depth: "depths" (inpainted) or
    "rawDepths" of the labeled .mat. hf_cache_dir: `datasets` cache for the HF layout. follow_links: read
    files that resolve outside the root folder (a `.mat` root: its folder) and HDF5 datasets stored in other
    files (refused by default, `ingest.inside`; a hub id is read by `datasets` from its cache, unchecked).
    """

    root: Path | str
    layout: str | None = None
    max_episode_frames: int = 256
    max_depth: float = 10.0
    mat_depth: str = "depths"
    hf_cache_dir: str | None = None
    follow_links: bool = False

    def __post_init__(self) -> None:
        from shardyard.ingest.nyu_layouts import LAYOUTS  # imported here: the CLI reads this class at start

        if self.layout is not None and self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; expected one of {tuple(LAYOUTS)}")
        if self.max_episode_frames < 1:
            raise ConfigError(f"max_episode_frames must be >= 1, got {self.max_episode_frames}")
        if self.mat_depth not in ("depths", "rawDepths"):
            raise ConfigError(f"mat_depth must be depths or rawDepths, got {self.mat_depth!r}")


@dataclass
class FetchConfig:
    """concurrency: downloads in flight. timeout_s: connect/read timeout and deadline per attempt (s).
    retries: extra attempts after the first. backoff_s: first backoff (s), doubled per retry up to
    backoff_max_s, with +-25 % jitter; a 429's Retry-After is honoured up to backoff_max_s.
    max_bytes: bodies larger than this fail (status "too_large"). allow_private_urls: fetch from loopback,
    private, link-local and metadata-service addresses too (off: such URLs get status "refused"; turn it on
    only for metadata you trust, e.g. a test server on 127.0.0.1)."""

    concurrency: int = 16
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_bytes: int = 512 * 1024 * 1024
    user_agent: str = "shardyard (+https://github.com/; WebVid ingest)"
    allow_private_urls: bool = False


@dataclass
class TranscodeConfig:
    """short_side: resize so the short side is this many px (even dims), None keeps the size. fps: output
    rate in Hz (frames picked by timestamp), None keeps every frame. max_seconds: keep the first S seconds."""

    short_side: int | None = None
    fps: float | None = None
    max_seconds: float | None = None

    @property
    def active(self) -> bool:
        """Whether any option asks for a re-encode."""
        return any(v is not None for v in (self.short_side, self.fps, self.max_seconds))


@dataclass
class WebvidConfig:
    """Options of `ingest webvid`. samples_per_shard: rows per shard. retry_failed: refetch the failed rows
    of finished shards (successes are kept, never refetched). fetch/transcode: see their classes."""

    out: Path
    samples_per_shard: int = 1000
    split: str = "train"
    overwrite: bool = False
    retry_failed: bool = False
    fetch: FetchConfig = field(default_factory=FetchConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ConfigError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.fetch.concurrency < 1 or self.fetch.retries < 0 or self.fetch.timeout_s <= 0:
            raise ConfigError("concurrency >= 1, retries >= 0 and timeout > 0 are required")


@dataclass
class DinoConfig:
    """Options of `ingest_dino`.

    store: source store path (episodic, or a shard store of videos). field: image field, `(H, W, 3) uint8`
    (shard stores: the video member extension, or any other name for the first video member). fps: frames
    per second sampled from each video (shard stores only, required there). dtype: stored token dtype.
    batch_size: frames per forward (also per completion record). ray / ray_address: run on Ray ("local" or
    None with ray=True starts Ray here). workers: Ray actors. num_gpus_per_worker: GPUs per actor. pause: wait
    after stored batches while a file exists (`shardyard.pause`; on Ray, `after` counts each actor's batches).
    """

    store: str
    out: Path
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    field: str = "obs.rgb.top"
    dtype: str = "float16"
    batch_size: int = 32
    overwrite: bool = False
    compressor: str = "none"
    ray: bool = False
    ray_address: str | None = None
    workers: int = 2
    num_gpus_per_worker: float = 0.0
    fps: float | None = None
    pause: PausePoint | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
