"""`shardyard ingest SOURCE ...` (and the `ingest` shortcut): one thin command per source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shardyard.commands.common import (
    FrameCodec,
    ImageSize,
    OnError,
    Out,
    OutURL,
    Overwrite,
    PauseAfter,
    PauseFile,
    SplitSeed,
    ValFraction,
    Workers,
    fail,
    finish_ingest,
    ingest_app,
    parse_size,
    run_ingest_job,
)
from shardyard.errors import ConfigError, ShardyardError
from shardyard.pause import PausePoint
from shardyard.progress import ProgressLog

__all__ = ["ingest_dino_cmd", "ingest_lerobot", "ingest_libero", "ingest_nyu_cmd", "ingest_webvid_cmd", "ingest_yam"]

FollowLinks = Annotated[bool, typer.Option(
    "--follow-links", help="Read symlinks and HDF5 external links that lead out of the input folder, and LeRobot "
                           "path templates with '..' (refused by default).")]


@ingest_app.command("yam")
def ingest_yam(
    raw_dir: Path = typer.Argument(..., help="Folder of YAM episodes (i2rt recorder or per-demo layout)."),
    out: OutURL = ...,
    robot_model: Optional[Path] = typer.Option(None, help="MJCF of the robot for FK and cameras."),
    eef_site: Optional[str] = typer.Option(None, help="Grasp site (default tcp_<arm>, else grasp_site)."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON for a real rig's cameras."),
    camera: Optional[list[str]] = typer.Option(None, "--camera", help="Camera stream(s) to store (default all)."),
    image_size: ImageSize = None,
    workers: Workers = 1,
    on_error: OnError = "skip",
    overwrite: Overwrite = False,
    val_fraction: ValFraction = 0.1,
    split_seed: SplitSeed = 0,
    frame_codec: FrameCodec = "jpeg",
    ray_address: Optional[str] = typer.Option(None, help="Read with Ray: 'local' or a cluster address."),
    commit_every: int = typer.Option(32, help="Episodes committed together (a kill redoes at most one group)."),
    commit_seconds: float = typer.Option(30.0, help="Or commit a group once it is this old (s)."),
    timestamp_tolerance_ms: float = typer.Option(50.0, help="Largest step-to-frame gap when aligning cameras."),
    video_backend: str = typer.Option("pyav", help="pyav (default, frame-exact) or decord."),
    follow_links: FollowLinks = False,
    pause_file: PauseFile = None,
    pause_after: PauseAfter = 1,
) -> None:
    """Ingest YAM robot-arm demos into an episodic zarr store, with stats and a report."""
    from shardyard.ingest.yam import YamConfig, YamSource

    try:
        pause = PausePoint.from_options(pause_file, pause_after)
        source = YamSource(YamConfig(
            root=raw_dir, robot_model=robot_model, eef_site=eef_site, calibration=calibration,
            cameras=tuple(camera) if camera else None, image_size=parse_size(image_size),
            timestamp_tolerance_s=timestamp_tolerance_ms / 1000.0, video_backend=video_backend,
            follow_links=follow_links))
    except ShardyardError as e:
        fail(e)
    run_ingest_job(source, out, pause=pause, workers=workers, on_error=on_error, overwrite=overwrite,
                   val_fraction=val_fraction, split_seed=split_seed, frame_codec=frame_codec, ray_address=ray_address,
                   commit_every=commit_every, commit_seconds=commit_seconds, follow_links=follow_links)


@ingest_app.command("libero")
def ingest_libero(
    path: Path = typer.Argument(..., help="A LIBERO/robomimic/robosuite *.hdf5 file or a folder of them."),
    out: OutURL = ...,
    image_convention: Optional[str] = typer.Option(None, help="opengl|opencv (default: file attr, else opengl)."),
    fps: Optional[float] = typer.Option(None, help="Control rate in Hz (default 20)."),
    group_by_schema: bool = typer.Option(
        False, "--group-by-schema", help="Demos whose fields or shapes differ (other robots, scenes) go to one "
        "store per schema under --out, named <robot>-<schema hash> and listed in --out/groups.json (default: one "
        "store; such demos are refused with a report row naming the differing fields; nothing is padded)."),
    follow_links: FollowLinks = False,
    workers: Workers = 1,
    on_error: OnError = "skip",
    overwrite: Overwrite = False,
    val_fraction: ValFraction = 0.1,
    split_seed: SplitSeed = 0,
    frame_codec: FrameCodec = "jpeg",
    pause_file: PauseFile = None,
    pause_after: PauseAfter = 1,
) -> None:
    """Ingest LIBERO / robomimic / raw robosuite HDF5 demos into an episodic zarr store."""
    from shardyard.ingest.libero import LiberoConfig, LiberoSource

    try:
        pause = PausePoint.from_options(pause_file, pause_after)
        source = LiberoSource(LiberoConfig(root=path, image_convention=image_convention, fps=fps,
                                           follow_links=follow_links))
    except ShardyardError as e:
        fail(e)
    options = dict(workers=workers, on_error=on_error, overwrite=overwrite, val_fraction=val_fraction,
                   split_seed=split_seed, frame_codec=frame_codec, follow_links=follow_links)
    if group_by_schema:
        _ingest_libero_groups(source, out, options)
    run_ingest_job(source, out, pause=pause, **options)


def _ingest_libero_groups(source, out: str, options: dict) -> None:
    """`ingest libero --group-by-schema`: one store per schema under `out`, a summary line each, then exit 0,
    or 2 when any store skipped episodes (`schema_groups.ingest_groups`)."""
    from dataclasses import replace

    from shardyard.ingest.libero import LiberoSource, add_report_notes
    from shardyard.ingest.runner import IngestConfig, run_ingest
    from shardyard.ingest.schema_groups import GROUPS_FILE, ingest_groups

    try:
        groups, info = source.schema_groups()
        cfg = IngestConfig(out=Path(out), **options)
        results = ingest_groups(lambda keys: LiberoSource(replace(source.cfg, keys=tuple(keys))), groups, cfg,
                                run_ingest, info)
    except ShardyardError as e:
        fail(e)
    for name, result in results.items():
        add_report_notes(result.store, LiberoSource(replace(source.cfg, keys=tuple(groups[name]))).report_notes())
        typer.echo(f"{name}: {result.num_written} episode(s) written, {result.num_already_committed} already "
                   f"stored, {len(result.skipped)} skipped -> {result.store}")
    skipped = sum(len(r.skipped) for r in results.values())
    typer.echo(f"{len(results)} store(s), listed in {Path(out) / GROUPS_FILE}")
    if skipped:
        typer.secho(f"{skipped} episode(s) skipped; reasons in each store's report.json", fg=typer.colors.YELLOW,
                    err=True)
    raise typer.Exit(2 if skipped else 0)


@ingest_app.command("lerobot")
def ingest_lerobot(
    path: str = typer.Argument(..., help="LeRobot dataset folder (v2.1 or v3.0), or a Hub dataset repo id "
                                         "ORG/NAME[@REVISION], downloaded into the Hugging Face cache as needed."),
    out: OutURL = ...,
    episodes: Optional[str] = typer.Option(None, help="Episode ids to ingest, e.g. 0-9,42 (default all); of a "
                                                      "repo id only their files are downloaded."),
    camera: Optional[list[str]] = typer.Option(
        None, "--camera", help="Camera to store (observation.images.NAME), repeat for several; 'none' stores no "
        "camera (default all; a camera with no video file for any episode is refused unless left out here)."),
    image_size: ImageSize = None,
    timestamp_tolerance_ms: float = typer.Option(1.0, help="Largest row-to-frame gap when decoding video."),
    follow_links: FollowLinks = False,
    workers: Workers = 1,
    on_error: OnError = "skip",
    overwrite: Overwrite = False,
    val_fraction: ValFraction = 0.1,
    split_seed: SplitSeed = 0,
    frame_codec: FrameCodec = "jpeg",
    pause_file: PauseFile = None,
    pause_after: PauseAfter = 1,
) -> None:
    """Ingest a LeRobot dataset (v2.1 or v3.0, AV1 video included) into an episodic zarr store."""
    from shardyard.ingest.episode_ranges import parse_episodes
    from shardyard.ingest.lerobot import LeRobotConfig
    from shardyard.ingest.lerobot_hub import open_lerobot

    try:
        pause = PausePoint.from_options(pause_file, pause_after)
        source = open_lerobot(path, LeRobotConfig(root=path, image_size=parse_size(image_size),
                                                  timestamp_tolerance_s=timestamp_tolerance_ms / 1000.0,
                                                  follow_links=follow_links, episodes=parse_episodes(episodes),
                                                  cameras=None if camera is None else tuple(camera)))
    except ShardyardError as e:
        fail(e)
    run_ingest_job(source, out, pause=pause, workers=workers, on_error=on_error, overwrite=overwrite,
                   val_fraction=val_fraction, split_seed=split_seed, frame_codec=frame_codec,
                   follow_links=follow_links)


@ingest_app.command("nyu")
def ingest_nyu_cmd(
    path: str = typer.Argument(..., help="NYU Depth V2 in any public layout: labeled .mat, FastDepth h5 folder, "
                                        "BTS/mmseg folder, DenseDepth nyu2_*, eigen_test npy, HF parquet "
                                        "folder or cached hub id, raw Kinect ppm+pgm folder."),
    out: Out = ...,
    layout: Optional[str] = typer.Option(None, help="Force a layout (default: detect)."),
    max_episode_frames: int = typer.Option(256, help="Longest episode; longer scenes are cut into parts."),
    mat_depth: str = typer.Option("depths", help="Labeled .mat depth: depths (inpainted) or rawDepths."),
    hf_cache_dir: Optional[str] = typer.Option(None, help="`datasets` cache folder for the HF layout."),
    follow_links: FollowLinks = False,
    workers: Workers = 1,
    on_error: OnError = "skip",
    overwrite: Overwrite = False,
    val_fraction: float = typer.Option(0.1, help="Held-out fraction when the layout has no official split."),
    split_seed: int = typer.Option(0, help="Seed of that by-episode split."),
    frame_codec: FrameCodec = "jpeg",
) -> None:
    """Ingest NYU Depth V2 (obs.rgb + obs.depth in metres, scenes as episodes, official split) into a store."""
    from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, ingest_nyu
    from shardyard.ingest.runner import IngestConfig

    try:
        source = NyuSource(NyuConfig(root=path, layout=layout, max_episode_frames=max_episode_frames,
                                     mat_depth=mat_depth, hf_cache_dir=hf_cache_dir, follow_links=follow_links))
        cfg = IngestConfig(out=out, workers=workers, on_error=on_error, overwrite=overwrite,
                           val_fraction=val_fraction, split_seed=split_seed, frame_codec=frame_codec,
                           follow_links=follow_links)
        result = ingest_nyu(source, cfg)
    except ShardyardError as e:
        fail(e)
    typer.echo(f"layout: {source.layout}")
    finish_ingest(out, result)


@ingest_app.command("webvid")
def ingest_webvid_cmd(
    meta: Path = typer.Argument(..., help="WebVid CSV (10M or 2.5M order), parquet, saved HF dataset, a "
                                          "video2dataset output folder to verify, or a folder of local clips "
                                          "(captions from <clip>.txt or a captions CSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Shard store to write (resumed if it exists)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Transcode: short side in px."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Transcode: output frame rate (Hz)."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="Transcode: keep the first S s."),
    samples_per_shard: int = typer.Option(1000, help="Rows per shard."),
    concurrency: int = typer.Option(16, help="Downloads in flight."),
    timeout: float = typer.Option(30.0, help="Per-attempt timeout (s)."),
    retries: int = typer.Option(4, help="Retries on timeouts, 429 and 5xx (never on 403/404)."),
    backoff: float = typer.Option(1.0, help="First retry backoff (s), doubled per retry."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Refetch only the failed samples."),
    split: str = typer.Option("train", help="Shard name prefix."),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls", help="Also fetch URLs that lead to loopback, private, link-local or "
        "metadata-service addresses (refused by default: metadata from elsewhere must not reach your network)."),
    overwrite: Overwrite = False,
    captions: Optional[Path] = typer.Option(None, help="Folder of clips: CSV of captions (a clip column file|"
                                            "filename|path|video|videoid and a caption column caption|name|text); "
                                            "default <clip>.txt beside each clip, else the folder's only .csv."),
    follow_links: FollowLinks = False,
) -> None:
    """Download WebVid rows into checksummed webdataset shards (or verify a video2dataset folder, or shard a
    folder of local clips)."""
    from shardyard.ingest.fetch import FetchConfig
    from shardyard.ingest.webvid import TranscodeConfig, WebvidConfig, ingest_webvid
    from shardyard.ingest.webvid_local import folder_kind, ingest_local_clips

    lines = None if sys.stderr.isatty() else ProgressLog("ingest webvid", None, "samples")
    try:
        cfg = WebvidConfig(out=out, samples_per_shard=samples_per_shard, split=split, overwrite=overwrite,
                           retry_failed=retry_failed,
                           fetch=FetchConfig(concurrency=concurrency, timeout_s=timeout, retries=retries,
                                             backoff_s=backoff, allow_private_urls=allow_private_urls),
                           transcode=TranscodeConfig(short_side=resize, fps=fps, max_seconds=max_seconds))
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
    except ShardyardError as e:
        fail(e)
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


@ingest_app.command("dino")
def ingest_dino_cmd(
    store: str = typer.Argument(..., help="Source store (made by `ingest yam` etc.)."),
    model: str = typer.Option("tiny-random-dinov2", help="HF id, local folder, hub entry, or tiny-random-dinov2."),
    out: str = typer.Option(..., "--out", "-o", help="Feature store to write (resumed on the same key): a "
                            "directory, or an fsspec URL (s3://...) written through local staging."),
    field: str = typer.Option("obs.rgb.top", help="Image field of the source store."),
    hub_repo: Optional[Path] = typer.Option(None, help="Local torch.hub repository (with hubconf.py)."),
    weights: Optional[Path] = typer.Option(None, help="State-dict file for --hub-repo."),
    layers: str = typer.Option("-1", help="Block outputs to keep, comma-separated (default: last), or `all`: "
                               "every block's input hidden states + the last output (per-layer K/V, seed 002)."),
    dtype: str = typer.Option("float16", help="Stored token dtype: float16, bfloat16 or float32."),
    image_size: str = typer.Option("224", help="Model input size S or WxH (rounded to the patch size)."),
    batch_size: int = typer.Option(32, help="Frames per forward and per completion record."),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu) or a torch device."),
    ray: bool = typer.Option(False, "--ray", help="Run with Ray Data on a local Ray."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (implies --ray)."),
    workers: int = typer.Option(2, help="Ray actors."),
    num_gpus_per_worker: float = typer.Option(0.0, help="GPUs per Ray actor."),
    overwrite: bool = typer.Option(False, help="Delete an existing feature store at --out first."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Shard store of videos: frames sampled per second."),
    pause_file: PauseFile = None,
    pause_after: PauseAfter = 1,
) -> None:
    """Cache DINO patch and CLS tokens of one camera field in a feature store (exit 2 if frames are missing)."""
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.models.backbones import BackboneConfig
    from shardyard.stores.remote import StagedStore, default_staging_dir
    from shardyard.stores.remote_fs import is_remote

    try:
        staged = StagedStore(out, default_staging_dir(out)) if is_remote(out) else None
        if staged is not None:
            staged.prepare(overwrite=overwrite)
        size = parse_size(image_size)
        every = layers.strip().lower() == "all"
        bcfg = BackboneConfig(spec=model, layers=(-1,) if every else tuple(int(x) for x in layers.split(",")),
                              image_size=size, all_layers=every,
                              hub_repo=str(hub_repo) if hub_repo else None,
                              weights=str(weights) if weights else None, device=device)
        cfg = DinoConfig(store=store, out=staged.local if staged else Path(out), backbone=bcfg, field=field,
                         dtype=dtype, batch_size=batch_size, overwrite=overwrite and staged is None, ray=ray,
                         ray_address=ray_address, workers=workers, num_gpus_per_worker=num_gpus_per_worker, fps=fps,
                         pause=PausePoint.from_options(pause_file, pause_after))
        lines = None if sys.stderr.isatty() else ProgressLog("ingest dino", None, "frames")

        def on_batch(n: int) -> None:
            if staged is not None:
                staged.sync()
            if lines is not None:
                lines.update(lines.done + n)

        result = ingest_dino(cfg, on_batch=on_batch)
        if staged is not None:
            staged.finish()
    except ShardyardError as e:
        fail(e)
    except ValueError as e:
        fail(e)
    if lines is not None:
        lines.finish()
    typer.echo(f"{result.num_samples} frame(s): {result.num_batches_run} batch(es) run, "
               f"{result.num_batches_done_before} already stored, in {result.seconds:.1f} s -> {out}")
    if result.errors:
        typer.secho(f"{len(result.errors)} frame(s) failed to decode and are masked missing; see "
                    f"{out}/report.json", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)
