"""Command line: `shardyard ingest|stats|inspect` and the `ingest` shortcut (`ingest yam DIR`).

Commands are thin: parse, build a config, call the library, print a summary. Exit status of ingest jobs:
0 when every episode was stored, 2 when some were skipped (see report.json), 1 on a fatal error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from shardyard.errors import ShardyardError

app = typer.Typer(help="shardyard: raw datasets into sharded, cached stores.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
ingest_app = typer.Typer(help="Ingest a raw source into a store.", no_args_is_help=True,
                         pretty_exceptions_enable=False)
app.add_typer(ingest_app, name="ingest")


@ingest_app.callback()
def _ingest_group() -> None:
    """Ingest a raw source into a store (`ingest SOURCE PATH --out STORE`)."""


@app.callback()
def _main_group() -> None:
    """shardyard: raw datasets into sharded, cached stores."""


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """"448" -> (448, 448); "640x480" -> (640, 480)."""
    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"--image-size takes S or WxH, got {text!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise typer.BadParameter(f"--image-size takes S or WxH, got {text!r}")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@ingest_app.command("yam")
def ingest_yam(
    raw_dir: Path = typer.Argument(..., help="Folder of YAM episodes (i2rt recorder or per-demo layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory to write (resumed if it exists)."),
    robot_model: Optional[Path] = typer.Option(None, help="MJCF of the robot for FK and cameras."),
    eef_site: Optional[str] = typer.Option(None, help="Grasp site (default tcp_<arm>, else grasp_site)."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration JSON for a real rig's cameras."),
    camera: Optional[list[str]] = typer.Option(None, "--camera", help="Camera stream(s) to store (default all)."),
    image_size: Optional[str] = typer.Option(None, help="Resize frames on ingest: S or WxH (default keep)."),
    workers: int = typer.Option(1, help="Reader processes."),
    on_error: str = typer.Option("skip", help="skip: report bad episodes and go on; fail: stop at the first."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out first."),
    val_fraction: float = typer.Option(0.1, help="Fraction of episodes held out (stats use train only)."),
    split_seed: int = typer.Option(0, help="Seed of the by-episode train/val split."),
    image_codec: str = typer.Option("lz4", help="lz4 (fast decode), zstd (smaller) or none."),
    ray_address: Optional[str] = typer.Option(None, help="Read with Ray: 'local' or a cluster address."),
    timestamp_tolerance_ms: float = typer.Option(50.0, help="Largest step-to-frame gap when aligning cameras."),
    video_backend: str = typer.Option("pyav", help="pyav (default, frame-exact) or decord."),
) -> None:
    """Ingest YAM robot-arm demos into an episodic zarr store, with stats and a report."""
    from shardyard.ingest.yam import YamConfig, YamSource

    try:
        source = YamSource(YamConfig(
            root=raw_dir, robot_model=robot_model, eef_site=eef_site, calibration=calibration,
            cameras=tuple(camera) if camera else None, image_size=_parse_size(image_size),
            timestamp_tolerance_s=timestamp_tolerance_ms / 1000.0, video_backend=video_backend))
    except ShardyardError as e:
        _fail(e)
    _run(source, out, workers=workers, on_error=on_error, overwrite=overwrite, val_fraction=val_fraction,
         split_seed=split_seed, image_codec=image_codec, ray_address=ray_address)


@ingest_app.command("libero")
def ingest_libero(
    path: Path = typer.Argument(..., help="A LIBERO/robomimic/robosuite *.hdf5 file or a folder of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory to write (resumed if it exists)."),
    image_convention: Optional[str] = typer.Option(None, help="opengl|opencv (default: file attr, else opengl)."),
    fps: Optional[float] = typer.Option(None, help="Control rate in Hz (default 20)."),
    workers: int = typer.Option(1, help="Reader processes."),
    on_error: str = typer.Option("skip", help="skip: report bad episodes and go on; fail: stop at the first."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out first."),
    val_fraction: float = typer.Option(0.1, help="Fraction of episodes held out (stats use train only)."),
    split_seed: int = typer.Option(0, help="Seed of the by-episode train/val split."),
    image_codec: str = typer.Option("lz4", help="lz4 (fast decode), zstd (smaller) or none."),
) -> None:
    """Ingest LIBERO / robomimic / raw robosuite HDF5 demos into an episodic zarr store."""
    from shardyard.ingest.libero import LiberoConfig, LiberoSource

    try:
        source = LiberoSource(LiberoConfig(root=path, image_convention=image_convention, fps=fps))
    except ShardyardError as e:
        _fail(e)
    _run(source, out, workers=workers, on_error=on_error, overwrite=overwrite, val_fraction=val_fraction,
         split_seed=split_seed, image_codec=image_codec)


@ingest_app.command("lerobot")
def ingest_lerobot(
    path: str = typer.Argument(..., help="LeRobot dataset folder (v2.1 or v3.0) or a Hub repo id in the cache."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory to write (resumed if it exists)."),
    image_size: Optional[str] = typer.Option(None, help="Resize frames on ingest: S or WxH (default keep)."),
    timestamp_tolerance_ms: float = typer.Option(1.0, help="Largest row-to-frame gap when decoding video."),
    workers: int = typer.Option(1, help="Reader processes."),
    on_error: str = typer.Option("skip", help="skip: report bad episodes and go on; fail: stop at the first."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out first."),
    val_fraction: float = typer.Option(0.1, help="Fraction of episodes held out (stats use train only)."),
    split_seed: int = typer.Option(0, help="Seed of the by-episode train/val split."),
    image_codec: str = typer.Option("lz4", help="lz4 (fast decode), zstd (smaller) or none."),
) -> None:
    """Ingest a LeRobot dataset (v2.1 or v3.0, AV1 video included) into an episodic zarr store."""
    from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource

    try:
        source = LeRobotSource(LeRobotConfig(root=path, image_size=_parse_size(image_size),
                                             timestamp_tolerance_s=timestamp_tolerance_ms / 1000.0))
    except ShardyardError as e:
        _fail(e)
    _run(source, out, workers=workers, on_error=on_error, overwrite=overwrite, val_fraction=val_fraction,
         split_seed=split_seed, image_codec=image_codec)


export_app = typer.Typer(help="Export a store to another dataset format.", no_args_is_help=True,
                         pretty_exceptions_enable=False)
app.add_typer(export_app, name="export")


@export_app.callback()
def _export_group() -> None:
    """Export a store to another dataset format (`export lerobot STORE --out DIR`)."""


@export_app.command("lerobot")
def export_lerobot_cmd(
    store: str = typer.Argument(..., help="Episodic store path."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the LeRobot v3.0 dataset to write."),
    crf: int = typer.Option(10, help="x264 quality of the videos (lower = closer to the stored frames)."),
    overwrite: bool = typer.Option(False, help="Delete an existing folder at --out first."),
) -> None:
    """Write an episodic store as a LeRobot v3.0 dataset (parquet + mp4 + meta)."""
    from shardyard.stores.export_lerobot import ExportConfig, export_lerobot

    try:
        info = export_lerobot(store, ExportConfig(out=out, crf=crf, overwrite=overwrite))
    except ShardyardError as e:
        _fail(e)
    typer.echo(f"wrote LeRobot v3.0 dataset: {info['total_episodes']} episode(s), {info['total_frames']} "
               f"frame(s), {len([k for k, v in info['features'].items() if v['dtype'] == 'video'])} video "
               f"stream(s) -> {out}")


def _run(source, out: Path, **kwargs) -> None:
    from rich.progress import Progress

    from shardyard.ingest.runner import IngestConfig, run_ingest

    try:
        cfg = IngestConfig(out=out, **kwargs)
        keys = source.keys()
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task(f"ingest {source.name}", total=len(keys))
            result = run_ingest(source, cfg, on_episode=lambda key, status: progress.advance(task))
        if hasattr(source, "report_notes"):  # e.g. files without observations (ingest libero)
            from shardyard.ingest.libero import add_report_notes

            add_report_notes(out, source.report_notes())
    except ShardyardError as e:
        _fail(e)
    from shardyard import open_store
    from shardyard.inspection import summarize

    typer.echo(summarize(open_store(str(out))))
    typer.echo(f"\n{result.num_written} episode(s) written, {result.num_already_committed} already stored, "
               f"{len(result.skipped)} skipped, in {result.seconds:.1f} s -> {out}")
    if result.skipped:
        typer.secho(f"{len(result.skipped)} episode(s) skipped; reasons in {result.report_path}",
                    fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


@ingest_app.command("webvid")
def ingest_webvid_cmd(
    meta: Path = typer.Argument(..., help="WebVid CSV (10M or 2.5M order), parquet, saved HF dataset, "
                                          "or a video2dataset output folder to verify."),
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
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out first."),
) -> None:
    """Download WebVid rows into checksummed webdataset shards (or verify a video2dataset folder)."""
    from shardyard.ingest.fetch import FetchConfig
    from shardyard.ingest.webvid import TranscodeConfig, WebvidConfig, ingest_webvid

    try:
        cfg = WebvidConfig(out=out, samples_per_shard=samples_per_shard, split=split, overwrite=overwrite,
                           retry_failed=retry_failed,
                           fetch=FetchConfig(concurrency=concurrency, timeout_s=timeout, retries=retries,
                                             backoff_s=backoff),
                           transcode=TranscodeConfig(short_side=resize, fps=fps, max_seconds=max_seconds))
        result = ingest_webvid(meta, cfg)
    except ShardyardError as e:
        _fail(e)
    r = result.report
    typer.echo(f"{r['num_success']} of {r['num_samples']} sample(s) ok ({100 * r['success_rate']:.1f} %), "
               f"{r['num_shards']} shard(s), in {r['seconds']:.1f} s -> {out}")
    for status, n in sorted(r["by_status"].items()):
        typer.echo(f"  {status}: {n}")
    if r["num_failed"]:
        typer.secho(f"{r['num_failed']} sample(s) not stored; reasons in {out / 'report.json'}",
                    fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


@ingest_app.command("dino")
def ingest_dino_cmd(
    store: str = typer.Argument(..., help="Source store (made by `ingest yam` etc.)."),
    model: str = typer.Option("tiny-random-dinov2", help="HF id, local folder, hub entry, or tiny-random-dinov2."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store to write (resumed on the same key)."),
    field: str = typer.Option("obs.rgb.top", help="Image field of the source store."),
    hub_repo: Optional[Path] = typer.Option(None, help="Local torch.hub repository (with hubconf.py)."),
    weights: Optional[Path] = typer.Option(None, help="State-dict file for --hub-repo."),
    layers: str = typer.Option("-1", help="Block outputs to keep, comma-separated (default: last)."),
    dtype: str = typer.Option("float16", help="Stored token dtype: float16, bfloat16 or float32."),
    image_size: str = typer.Option("224", help="Model input size S or WxH (rounded to the patch size)."),
    batch_size: int = typer.Option(32, help="Frames per forward and per completion record."),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu) or a torch device."),
    ray: bool = typer.Option(False, "--ray", help="Run with Ray Data on a local Ray."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (implies --ray)."),
    workers: int = typer.Option(2, help="Ray actors."),
    num_gpus_per_worker: float = typer.Option(0.0, help="GPUs per Ray actor."),
    overwrite: bool = typer.Option(False, help="Delete an existing feature store at --out first."),
) -> None:
    """Cache DINO patch and CLS tokens of one camera field in a feature store (exit 2 if frames are missing)."""
    from shardyard.ingest.dino import DinoConfig, ingest_dino
    from shardyard.models.backbones import BackboneConfig

    try:
        size = _parse_size(image_size)
        bcfg = BackboneConfig(spec=model, layers=tuple(int(x) for x in layers.split(",")), image_size=size,
                              hub_repo=str(hub_repo) if hub_repo else None,
                              weights=str(weights) if weights else None, device=device)
        cfg = DinoConfig(store=store, out=out, backbone=bcfg, field=field, dtype=dtype, batch_size=batch_size,
                         overwrite=overwrite, ray=ray, ray_address=ray_address, workers=workers,
                         num_gpus_per_worker=num_gpus_per_worker)
        result = ingest_dino(cfg)
    except ShardyardError as e:
        _fail(e)
    except ValueError as e:
        _fail(e)
    typer.echo(f"{result.num_samples} frame(s): {result.num_batches_run} batch(es) run, "
               f"{result.num_batches_done_before} already stored, in {result.seconds:.1f} s -> {out}")
    if result.errors:
        typer.secho(f"{len(result.errors)} frame(s) failed to decode and are masked missing; see "
                    f"{out / 'report.json'}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


@app.command("stats")
def stats_cmd(
    store: str = typer.Argument(..., help="Store path or URL."),
    height_bins: int = typer.Option(32), height_margin: float = typer.Option(0.05),
    gripper_bins: int = typer.Option(32), rotation_bins: int = typer.Option(32),
    kmeans_clusters: int = typer.Option(32), pca_threshold: float = typer.Option(0.8),
    val_fraction: Optional[float] = typer.Option(None, help="Re-split episodes (rewrites the manifest's split)."),
    split_seed: Optional[int] = typer.Option(None),
) -> None:
    """Recompute stats.json of a local store with other options."""
    from shardyard.stores.stats import StatsConfig, recompute_store_stats

    try:
        cfg = StatsConfig(height_bins=height_bins, height_margin=height_margin, gripper_bins=gripper_bins,
                          rotation_bins=rotation_bins, kmeans_clusters=kmeans_clusters, pca_threshold=pca_threshold)
        stats = recompute_store_stats(store, cfg, val_fraction=val_fraction, split_seed=split_seed)
    except ShardyardError as e:
        _fail(e)
    typer.echo(f"stats.json rewritten for {store} (train episodes: {len(stats['split']['train'])})")


@app.command("inspect")
def inspect_cmd(
    store: str = typer.Argument(..., help="Store path or URL."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNG plots."),
    max_episodes: int = typer.Option(4, help="Episodes to draw frames from."),
) -> None:
    """Print a store's summary and write plots (frames with projected EEF, height/gripper/rotation, paths)."""
    from shardyard import open_store
    from shardyard.inspection import summarize, write_plots
    from shardyard.inspection_tokens import inspect_features, is_feature_store

    if is_feature_store(store):
        try:
            text, paths = inspect_features(store, out, max_episodes=max_episodes)
        except ShardyardError as e:
            _fail(e)
        typer.echo(text)
        for p in paths:
            typer.echo(f"  wrote {p}")
        return
    try:
        s = open_store(store)
    except ShardyardError as e:
        _fail(e)
    typer.echo(summarize(s))
    if out is not None:
        paths = write_plots(s, out, max_episodes=max_episodes)
        typer.echo(f"\nwrote {len(paths)} plot(s) to {out}:")
        for p in paths:
            typer.echo(f"  {p}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


def ingest_main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ingest_app()


if __name__ == "__main__":
    main()
