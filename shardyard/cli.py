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
    commit_every: int = typer.Option(32, help="Episodes committed together (a kill redoes at most one group)."),
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
         split_seed=split_seed, image_codec=image_codec, ray_address=ray_address, commit_every=commit_every)


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


@ingest_app.command("nyu")
def ingest_nyu_cmd(
    path: str = typer.Argument(..., help="NYU Depth V2 in any public layout: labeled .mat, FastDepth h5 folder, "
                                        "BTS/mmseg folder, DenseDepth nyu2_*, eigen_test npy, HF parquet "
                                        "folder or cached hub id, raw Kinect ppm+pgm folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory to write (resumed if it exists)."),
    layout: Optional[str] = typer.Option(None, help="Force a layout (default: detect)."),
    max_episode_frames: int = typer.Option(256, help="Longest episode; longer scenes are cut into parts."),
    mat_depth: str = typer.Option("depths", help="Labeled .mat depth: depths (inpainted) or rawDepths."),
    hf_cache_dir: Optional[str] = typer.Option(None, help="`datasets` cache folder for the HF layout."),
    workers: int = typer.Option(1, help="Reader processes."),
    on_error: str = typer.Option("skip", help="skip: report bad episodes and go on; fail: stop at the first."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out first."),
    val_fraction: float = typer.Option(0.1, help="Held-out fraction when the layout has no official split."),
    split_seed: int = typer.Option(0, help="Seed of that by-episode split."),
    image_codec: str = typer.Option("lz4", help="lz4 (fast decode), zstd (smaller) or none."),
) -> None:
    """Ingest NYU Depth V2 (obs.rgb + obs.depth in metres, scenes as episodes, official split) into a store."""
    from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, ingest_nyu
    from shardyard.ingest.runner import IngestConfig

    try:
        source = NyuSource(NyuConfig(root=path, layout=layout, max_episode_frames=max_episode_frames,
                                     mat_depth=mat_depth, hf_cache_dir=hf_cache_dir))
        cfg = IngestConfig(out=out, workers=workers, on_error=on_error, overwrite=overwrite,
                           val_fraction=val_fraction, split_seed=split_seed, image_codec=image_codec)
        result = ingest_nyu(source, cfg)
    except ShardyardError as e:
        _fail(e)
    from shardyard import open_store
    from shardyard.inspection import summarize

    typer.echo(f"layout: {source.layout}")
    typer.echo(summarize(open_store(str(out))))
    typer.echo(f"\n{result.num_written} episode(s) written, {result.num_already_committed} already stored, "
               f"{len(result.skipped)} skipped, in {result.seconds:.1f} s -> {out}")
    if result.skipped:
        typer.secho(f"{len(result.skipped)} episode(s) skipped; reasons in {result.report_path}",
                    fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


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
        typer.secho(f"{r['num_failed']} sample(s) failed; reasons in {out / 'report.json'}",
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
    fps: Optional[float] = typer.Option(None, "--fps", help="Shard store of videos: frames sampled per second."),
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
                         num_gpus_per_worker=num_gpus_per_worker, fps=fps)
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


train_app = typer.Typer(help="Train a model on a store.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(train_app, name="train")


@train_app.callback()
def _train_group() -> None:
    """Train a model on a store (`train volume-query --store S --out RUN`)."""


@train_app.command("patch-predict")
def train_patch_predict_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino --fps`."),
    gap: int = typer.Option(8, help="Rows (frames at the store's --fps) between input and target."),
    gaps: Optional[str] = typer.Option(None, help="Comma-separated gaps: one run each + seed 004's table."),
    model: str = typer.Option("mlp", help="copy, linear or mlp."), steps: int = typer.Option(200),
    batch_size: int = typer.Option(32), lr: float = typer.Option(1e-3), eval_every: int = typer.Option(50),
    stream: Optional[str] = typer.Option(None, "--stream", help="Shard store / folder of tars to stream clips from."),
    live_backbone: bool = typer.Option(False, "--live-backbone", help="Tokens from the frozen backbone per step."),
    backbone: str = typer.Option("tiny-random-dinov2"), image_size: int = typer.Option(224),
    stream_fps: float = typer.Option(8.0), seed: int = typer.Option(0), device: str = typer.Option("cpu"),
) -> None:
    """Predict future DINO patches (seed 004): cosine / MSE vs the copy baseline, per gap."""
    from shardyard.train.patch_predict import PatchPredictConfig, format_table, run, run_gaps

    try:
        cfg = PatchPredictConfig(out=str(out), features=features, gap=gap, model=model, steps=steps,
                                 batch_size=batch_size, lr=lr, eval_every=eval_every, ckpt_every=eval_every,
                                 stream=stream, live_backbone=live_backbone, backbone=backbone,
                                 image_size=image_size, stream_fps=stream_fps, seed=seed, device=device)
        if gaps:
            typer.echo(format_table(run_gaps(cfg, [int(g) for g in gaps.split(",")]), model), nl=False)
        else:
            r = run(cfg)
            typer.echo(f"gap {gap} {model}: cos {r['cos']:.4f} mse {r['mse']:.4f} | copy cos "
                       f"{r['copy_cos']:.4f} mse {r['copy_mse']:.4f} | improvement {r['improvement']:+.1f}%")
    except (ShardyardError, ValueError) as e:
        _fail(e)


@train_app.command("volume-query")
def train_volume_query_cmd(
    store: str = typer.Option(..., "--store", help="Episodic store with robot stats (ingest yam/libero/lerobot)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl, plots/ (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino` on STORE."),
    steps: int = typer.Option(300, help="Optimiser steps in total."),
    batch_size: int = typer.Option(8), lr: float = typer.Option(5e-5), weight_decay: float = typer.Option(1e-4),
    warmup_steps: int = typer.Option(0), decay_steps: int = typer.Option(0, help="Cosine decay end (0: constant)."),
    window: int = typer.Option(8, help="Future steps T."), frame_stride: int = typer.Option(3),
    pred_size: int = typer.Option(56), camera: Optional[str] = typer.Option(None),
    robot: Optional[str] = typer.Option(None, help="Robot prefix of the stats (default the first)."),
    rotation_mode: Optional[str] = typer.Option(None, help="1d_pca or kmeans (default: the stats' choice)."),
    model_opt: Optional[list[str]] = typer.Option(None, "--model-opt", help="VolumeQueryConfig override k=v."),
    backbone: str = typer.Option("tiny-random-dinov2", help="Live backbone when no --features."),
    num_workers: int = typer.Option(0), seed: int = typer.Option(0), log_every: int = typer.Option(10),
    ckpt_every: int = typer.Option(100), plot_every: int = typer.Option(100),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if RUN/latest.pth exists."),
    device: str = typer.Option("auto"),
) -> None:
    """Train seed 001's volume-query trajectory model; prints the metric table and where the plots are."""
    from shardyard.train.volume_query import TrainConfig, run

    opts = {}
    for kv in model_opt or []:
        k, _, v = kv.partition("=")
        opts[k] = float(v) if "." in v else int(v)
    try:
        run(TrainConfig(store=store, out=str(out), features=features, backbone=backbone, camera=camera, robot=robot,
                        rotation_mode=rotation_mode, window=window, frame_stride=frame_stride, pred_size=pred_size,
                        model=opts, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, decay_steps=decay_steps, num_workers=num_workers, seed=seed,
                        log_every=log_every, ckpt_every=ckpt_every, plot_every=plot_every,
                        resume=not no_resume, device=device))
    except ShardyardError as e:
        _fail(e)


@train_app.command("depth")
def train_depth_cmd(
    store: str = typer.Option(..., "--store", help="Episodic store with obs.rgb + obs.depth (ingest nyu)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: latest.pth, metrics.jsonl, PNGs (resumed)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino --layers` on STORE."),
    steps: int = typer.Option(2000, help="Optimiser steps in total (the schedule's length)."),
    stop_at: Optional[int] = typer.Option(None, help="Stop at this step (checkpointed; rerun to resume)."),
    batch_size: int = typer.Option(4), lr: float = typer.Option(1e-4, help="Decoder lr."),
    encoder_lr: float = typer.Option(5e-6, help="Backbone lr with --live-backbone."),
    weight_decay: float = typer.Option(0.01), warmup_steps: int = typer.Option(500),
    eta_min: float = typer.Option(1e-6), silog_lambda: float = typer.Option(0.85),
    features_dim: int = typer.Option(64, help="DPT fusion width D."),
    reassemble_channels: str = typer.Option("48,96,192,384", help="DPT reassemble widths per level."),
    live_backbone: bool = typer.Option(False, "--live-backbone", help="Fine-tune the ViT with BTS augmentation."),
    no_augment: bool = typer.Option(False, "--no-augment", help="No BTS augmentation in live mode."),
    model: str = typer.Option("tiny-random-dinov2", help="Live backbone when no --features."),
    layers: str = typer.Option("-1", help="Live backbone layers when no --features."),
    image_size: str = typer.Option("224", help="Live backbone input S or WxH when no --features."),
    eval_every: int = typer.Option(500), ckpt_every: int = typer.Option(500), log_every: int = typer.Option(10),
    eval_max_images: Optional[int] = typer.Option(None), seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Train seed 003's DPT depth decoder (SILog) on cached DINO tokens; prints the metric table."""
    from shardyard.train.depth import DepthTrainConfig, train_depth
    from shardyard.train.depth_metrics import format_table

    try:
        cfg = DepthTrainConfig(
            store=store, out=out, features=features, steps=steps, stop_at=stop_at, batch_size=batch_size, lr=lr,
            encoder_lr=encoder_lr, weight_decay=weight_decay, warmup_steps=warmup_steps, eta_min=eta_min,
            silog_lambda=silog_lambda, features_dim=features_dim, live_backbone=live_backbone,
            reassemble_channels=tuple(int(x) for x in reassemble_channels.split(",")),
            augment=not no_augment, model=model, layers=tuple(int(x) for x in layers.split(",")),
            image_size=_parse_size(image_size), eval_every=eval_every, ckpt_every=ckpt_every,
            log_every=log_every, eval_max_images=eval_max_images, seed=seed, device=device)
        result = train_depth(cfg)
    except ShardyardError as e:
        _fail(e)
    if result.resumed_from:
        typer.echo(f"resumed from step {result.resumed_from}")
    if result.metrics:
        typer.echo(format_table([result.metrics]))
    typer.echo(f"step {result.step}: checkpoint {out / 'latest.pth'}, metrics {out / 'metrics.jsonl'}")


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
