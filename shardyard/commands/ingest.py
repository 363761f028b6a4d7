"""`shardyard ingest SOURCE ...` (and the `ingest` shortcut): one thin command per source.

Every option comes from a config dataclass of `ingest/configs.py` (the source's, `IngestConfig`, ...) through
`commands/options.py`'s `sections_command`, so each default is declared once, there; this module names the
sections, the flags that differ from the field names, and the help. The episodic sources' classes are found
through `ingest.SOURCES` (imported when their command runs). `COMMANDS` lists each command's sections
(tests/test_ingest_options.py checks every field is an option with its default in `--help`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shardyard.commands.common import (
    OutURL,
    PauseAfter,
    PauseFile,
    ingest_app,
    run_ingest_job,
)
from shardyard.commands.options import Section, section_config, sections_command
from shardyard.errors import ConfigError
from shardyard.ingest import source_class
from shardyard.ingest.configs import (
    DinoConfig,
    FetchConfig,
    IngestConfig,
    LeRobotConfig,
    LiberoConfig,
    NyuConfig,
    TranscodeConfig,
    WebvidConfig,
    YamConfig,
)
from shardyard.models.backbone_config import BackboneConfig
from shardyard.pause import PausePoint
from shardyard.progress import ProgressLog
from shardyard.stores.frames.registry import frame_codec_help

__all__ = ["COMMANDS", "JOB_HELP"]

JOB = Section(IngestConfig, skip=("out", "stats"))
JOB_HELP = {
    "workers": "Reader processes: 1 reads in the job's own process; N decode in parallel (up to the number of cores).",
    "on_error": "skip: report bad episodes and go on; fail: stop at the first.",
    "overwrite": "Delete an existing store at --out first.",
    "val_fraction": "Fraction of episodes held out (stats use train only).",
    "split_seed": "Seed of the by-episode train/val split.",
    "frame_codec": frame_codec_help(),
    "ray_address": "Read with Ray: 'local' or a cluster address.",
    "commit_every": "Episodes committed together (a kill redoes at most one group).",
    "commit_seconds": "Or commit a group once it is this old (s).",
    "follow_links": "Read symlinks and HDF5 external links that lead out of the input folder, and LeRobot path "
                    "templates with '..' (refused by default).",
    "image_size": "Resize frames on ingest: S or WxH (default keep).",
}
PAUSE: dict[str, tuple[Any, Any]] = {"pause_file": (PauseFile, None), "pause_after": (PauseAfter, PausePoint.after)}
OUT_URL: dict[str, tuple[Any, Any]] = {"out": (OutURL, ...)}

COMMANDS: dict[str, tuple[Section, ...]] = {
    "yam": (Section(YamConfig, skip=("quat_norm_tolerance",)), JOB),
    "libero": (Section(LiberoConfig, skip=("keys",)), JOB),
    "lerobot": (Section(LeRobotConfig, skip=("revision", "hub")), JOB),
    "nyu": (Section(NyuConfig, skip=("max_depth",)), JOB),
    "webvid": (Section(WebvidConfig, skip=("fetch", "transcode")),
               Section(FetchConfig, skip=("backoff_max_s", "max_bytes", "user_agent")), Section(TranscodeConfig)),
    "dino": (Section(DinoConfig, skip=("out", "backbone", "compressor", "pause")),
             Section(BackboneConfig, skip=("seed", "all_layers"))),
}


def _yam(*, out: str, pause_file: Path | None, pause_after: int, **values: Any) -> None:
    """Ingest YAM robot-arm demos into an episodic zarr store, with stats and a report."""
    pause = PausePoint.from_options(pause_file, pause_after)
    source = source_class("yam")(section_config(YamConfig, values))
    run_ingest_job(source, section_config(IngestConfig, values, out=out), pause=pause)


sections_command(
    ingest_app, "yam", COMMANDS["yam"], _yam, extra=OUT_URL | PAUSE,
    help="Ingest YAM robot-arm demos into an episodic zarr store, with stats and a report.",
    arguments=("root",), repeat=("cameras",), scale={"timestamp_tolerance_s": 1000.0},
    names={"root": "raw_dir", "cameras": "--camera", "timestamp_tolerance_s": "--timestamp-tolerance-ms"},
    option_help=JOB_HELP | {
        "root": "Folder of YAM episodes (i2rt recorder or per-demo layout).",
        "robot_model": "MJCF of the robot for FK and cameras.",
        "eef_site": "Grasp site (default tcp_<arm>, else grasp_site).",
        "calibration": "Calibration JSON for a real rig's cameras.",
        "cameras": "Camera stream(s) to store (default all).",
        "timestamp_tolerance_s": "Largest step-to-frame gap when aligning cameras (ms).",
        "video_backend": "pyav (default, frame-exact) or decord.",
    })


GroupBySchema = Annotated[bool, typer.Option(
    "--group-by-schema", help="Demos whose fields or shapes differ (other robots, scenes) go to one store per "
    "schema under --out, named <robot>-<schema hash> and listed in --out/groups.json (default: one store; such "
    "demos are refused with a report row naming the differing fields; nothing is padded).")]


def _libero(*, out: str, group_by_schema: bool, pause_file: Path | None, pause_after: int, **values: Any) -> None:
    """Ingest LIBERO / robomimic / raw robosuite HDF5 demos into an episodic zarr store."""
    pause = PausePoint.from_options(pause_file, pause_after)
    source = source_class("libero")(section_config(LiberoConfig, values))
    cfg = section_config(IngestConfig, values, out=out)
    if group_by_schema:
        _ingest_libero_groups(source, cfg)
    run_ingest_job(source, cfg, pause=pause)


def _ingest_libero_groups(source, cfg: IngestConfig) -> None:
    """`ingest libero --group-by-schema`: one store per schema under `cfg.out`, a summary line each, then exit
    0, or 2 when any store skipped episodes (`schema_groups.ingest_groups`)."""
    from dataclasses import replace

    from shardyard.ingest.runner import run_ingest
    from shardyard.ingest.schema_groups import GROUPS_FILE, ingest_groups

    groups, info = source.schema_groups()
    cfg = replace(cfg, out=Path(cfg.out))
    results = ingest_groups(lambda keys: type(source)(replace(source.cfg, keys=tuple(keys))), groups, cfg,
                            run_ingest, info)
    for name, result in results.items():
        typer.echo(f"{name}: {result.num_written} episode(s) written, {result.num_already_committed} already "
                   f"stored, {len(result.skipped)} skipped -> {result.store}")
    skipped = sum(len(r.skipped) for r in results.values())
    typer.echo(f"{len(results)} store(s), listed in {Path(cfg.out) / GROUPS_FILE}")
    if skipped:
        typer.secho(f"{skipped} episode(s) skipped; reasons in each store's report.json", fg=typer.colors.YELLOW,
                    err=True)
    raise typer.Exit(2 if skipped else 0)


sections_command(
    ingest_app, "libero", COMMANDS["libero"], _libero,
    extra=OUT_URL | {"group_by_schema": (GroupBySchema, False)} | PAUSE,
    help="Ingest LIBERO / robomimic / raw robosuite HDF5 demos into an episodic zarr store.",
    arguments=("root",), names={"root": "path"},
    option_help=JOB_HELP | {
        "root": "A LIBERO/robomimic/robosuite *.hdf5 file or a folder of them.",
        "image_convention": "opengl|opencv (default: file attr, else opengl).",
        "fps": "Control rate in Hz (default 20).",
    })


def _lerobot(*, out: str, pause_file: Path | None, pause_after: int, **values: Any) -> None:
    """Ingest a LeRobot dataset (v2.1 or v3.0, AV1 video included) into an episodic zarr store."""
    from shardyard.ingest.episode_ranges import parse_episodes
    from shardyard.ingest.lerobot_hub import open_lerobot

    pause = PausePoint.from_options(pause_file, pause_after)
    cfg = section_config(LeRobotConfig, values, episodes=parse_episodes(values["episodes"]))
    run_ingest_job(open_lerobot(values["root"], cfg), section_config(IngestConfig, values, out=out), pause=pause)


sections_command(
    ingest_app, "lerobot", COMMANDS["lerobot"], _lerobot, extra=OUT_URL | PAUSE,
    help="Ingest a LeRobot dataset (v2.1 or v3.0, AV1 video included) into an episodic zarr store.",
    arguments=("root",), repeat=("cameras",), text=("episodes",), scale={"timestamp_tolerance_s": 1000.0},
    names={"root": "path", "cameras": "--camera", "timestamp_tolerance_s": "--timestamp-tolerance-ms"},
    option_help=JOB_HELP | {
        "root": "LeRobot dataset folder (v2.1 or v3.0), or a Hub dataset repo id ORG/NAME[@REVISION], downloaded "
                "into the Hugging Face cache as needed.",
        "episodes": "Episode ids to ingest, e.g. 0-9,42 (default all); of a repo id only their files are "
                    "downloaded.",
        "cameras": "Camera to store (observation.images.NAME), repeat for several; 'none' stores no camera "
                   "(default all; a camera with no video file for any episode is refused unless left out here).",
        "timestamp_tolerance_s": "Largest row-to-frame gap when decoding video (ms).",
    })


def _nyu(*, out: str, **values: Any) -> None:
    """Ingest NYU Depth V2 (scenes as episodes, official split) into a store."""
    source = source_class("nyu")(section_config(NyuConfig, values))
    typer.echo(f"layout: {source.layout}")
    run_ingest_job(source, section_config(IngestConfig, values, out=out))


sections_command(
    ingest_app, "nyu", COMMANDS["nyu"], _nyu,
    extra={"out": (Annotated[str, typer.Option("--out", "-o", help="Store to write (resumed if it exists): a "
                                                "directory, or an fsspec URL written through local staging.")], ...)},
    help="Ingest NYU Depth V2 (obs.rgb + obs.depth in metres, scenes as episodes, official split) into a store.",
    arguments=("root",), names={"root": "path"},
    option_help=JOB_HELP | {
        "root": "NYU Depth V2 in any public layout: labeled .mat, FastDepth h5 folder, BTS/mmseg folder, DenseDepth "
                "nyu2_*, eigen_test npy, HF parquet folder or cached hub id, raw Kinect ppm+pgm folder.",
        "layout": "Force a layout (default: detect).",
        "max_episode_frames": "Longest episode; longer scenes are cut into parts.",
        "mat_depth": "Labeled .mat depth: depths (inpainted) or rawDepths.",
        "hf_cache_dir": "`datasets` cache folder for the HF layout.",
        "val_fraction": "Held-out fraction when the layout has no official split.",
        "split_seed": "Seed of that by-episode split.",
    })


Captions = Annotated[Path | None, typer.Option(
    help="Folder of clips: CSV of captions (a clip column file|filename|path|video|videoid and a caption column "
         "caption|name|text); default <clip>.txt beside each clip, else the folder's only .csv.")]
FollowLinks = Annotated[bool, typer.Option("--follow-links", help=JOB_HELP["follow_links"])]


def _webvid(*, meta: Path, captions: Path | None, follow_links: bool, **values: Any) -> None:
    """Download WebVid rows into checksummed webdataset shards (or verify a video2dataset folder, or shard a
    folder of local clips)."""
    from shardyard.ingest.webvid import ingest_webvid
    from shardyard.ingest.webvid_local import folder_kind, ingest_local_clips

    out = Path(values["out"])
    lines = None if sys.stderr.isatty() else ProgressLog("ingest webvid", None, "samples")
    cfg = section_config(WebvidConfig, values, fetch=section_config(FetchConfig, values),
                         transcode=section_config(TranscodeConfig, values))
    kind = folder_kind(meta) if meta.is_dir() else "file"
    on_sample = None if lines is None else (lambda key, status: lines.update())
    if kind == "clips":
        result = ingest_local_clips(meta, cfg, captions=captions, follow_links=follow_links, on_sample=on_sample)
    elif kind is None:
        raise ConfigError("this folder holds no .tar shards (a video2dataset output), no video clips (mp4, mov, "
                          "mkv, webm, ...) and no dataset (a saved Hugging Face dataset, parquet or CSV files)",
                          path=str(meta))
    else:
        result = ingest_webvid(meta, cfg, on_sample=on_sample)
    if lines is not None:
        lines.finish()
    r = result.report
    typer.echo(f"{r['num_success']} of {r['num_samples']} sample(s) ok ({100 * r['success_rate']:.1f} %), "
               f"{r['num_shards']} shard(s), in {r['seconds']:.1f} s -> {out}")
    for status, n in sorted(r["by_status"].items()):
        typer.echo(f"  {status}: {n}")
    if r["num_failed"]:
        typer.secho(f"{r['num_failed']} sample(s) failed; reasons in {out / 'report.json'}",
                    fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


sections_command(
    ingest_app, "webvid", COMMANDS["webvid"], _webvid,
    extra={"meta": (Path, typer.Argument(..., help="WebVid CSV (10M or 2.5M order), parquet, saved HF dataset, a "
                                         "video2dataset output folder to verify, or a folder of local clips "
                                         "(captions from <clip>.txt or a captions CSV).")),
           "captions": (Captions, None), "follow_links": (FollowLinks, False)},
    help="Download WebVid rows into checksummed webdataset shards (or verify a video2dataset folder, or shard a "
         "folder of local clips).",
    names={"timeout_s": "--timeout", "backoff_s": "--backoff", "short_side": "--resize"},
    option_help={
        "out": "Shard store to write (resumed if it exists).",
        "short_side": "Transcode: short side in px.", "fps": "Transcode: output frame rate (Hz).",
        "max_seconds": "Transcode: keep the first S s.",
        "samples_per_shard": "Rows per shard.", "concurrency": "Downloads in flight.",
        "timeout_s": "Per-attempt timeout (s).", "retries": "Retries on timeouts, 429 and 5xx (never on 403/404).",
        "backoff_s": "First retry backoff (s), doubled per retry.",
        "retry_failed": "Refetch only the failed samples.", "split": "Shard name prefix.",
        "allow_private_urls": "Also fetch URLs that lead to loopback, private, link-local or metadata-service "
                              "addresses (refused by default: metadata from elsewhere must not reach your network).",
        "overwrite": "Delete an existing store at --out first.",
    })


def _dino(*, out: str, pause_file: Path | None, pause_after: int, **values: Any) -> None:
    """Cache DINO patch and CLS tokens of one camera field in a feature store (exit 2 if frames are missing)."""
    from dataclasses import replace

    from shardyard.ingest.dino import ingest_dino
    from shardyard.stores.remote import StagedStore, default_staging_dir
    from shardyard.stores.remote_fs import is_remote

    staged = StagedStore(out, default_staging_dir(out)) if is_remote(out) else None
    if staged is not None:
        staged.prepare(overwrite=values["overwrite"])
    every = values["layers"].strip().lower() == "all"
    layers = BackboneConfig.layers if every else tuple(int(x) for x in values["layers"].split(","))
    backbone = section_config(BackboneConfig, values, layers=layers, all_layers=every)
    cfg = section_config(DinoConfig, values, out=staged.local if staged else Path(out), backbone=backbone,
                         pause=PausePoint.from_options(pause_file, pause_after))
    cfg = replace(cfg, overwrite=cfg.overwrite and staged is None)
    lines = None if sys.stderr.isatty() else ProgressLog("ingest dino", None, "frames")

    def on_batch(n: int) -> None:
        if staged is not None:
            staged.sync()
        if lines is not None:
            lines.update(lines.done + n)

    result = ingest_dino(cfg, on_batch=on_batch)
    if staged is not None:
        staged.finish()
    if lines is not None:
        lines.finish()
    typer.echo(f"{result.num_samples} frame(s): {result.num_batches_run} batch(es) run, "
               f"{result.num_batches_done_before} already stored, in {result.seconds:.1f} s -> {out}")
    if result.errors:
        typer.secho(f"{len(result.errors)} frame(s) failed to decode and are masked missing; see "
                    f"{out}/report.json", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


sections_command(
    ingest_app, "dino", COMMANDS["dino"], _dino,
    extra={"out": (Annotated[str, typer.Option("--out", "-o", help="Feature store to write (resumed on the same "
                                                "key): a directory, or an fsspec URL (s3://...) written through "
                                                "local staging.")], ...)} | PAUSE,
    help="Cache DINO patch and CLS tokens of one camera field in a feature store (exit 2 if frames are missing).",
    arguments=("store",), text=("layers",), names={"spec": "--model", "store": "store"},
    option_help={
        "store": "Source store (made by `ingest yam` etc.).",
        "spec": "HF id, local folder, hub entry, or tiny-random-dinov2.",
        "field": "Image field of the source store.",
        "hub_repo": "Local torch.hub repository (with hubconf.py).", "weights": "State-dict file for --hub-repo.",
        "layers": "Block outputs to keep, comma-separated (default: last), or `all`: every block's input hidden "
                  "states + the last output (per-layer K/V, seed 002).",
        "dtype": "Stored token dtype: float16, bfloat16 or float32.",
        "image_size": "Model input size S or WxH (rounded to the patch size).",
        "batch_size": "Frames per forward and per completion record.",
        "device": "auto (cuda, mps, cpu) or a torch device.", "ray": "Run with Ray Data on a local Ray.",
        "ray_address": "Ray cluster address (implies --ray).", "workers": "Ray actors.",
        "num_gpus_per_worker": "GPUs per Ray actor.", "overwrite": "Delete an existing feature store at --out first.",
        "fps": "Shard store of videos: frames sampled per second.",
    })
