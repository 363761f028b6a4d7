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


def _run(source, out: Path, **kwargs) -> None:
    from rich.progress import Progress

    from shardyard.ingest.runner import IngestConfig, run_ingest

    try:
        cfg = IngestConfig(out=out, **kwargs)
        keys = source.keys()
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task(f"ingest {source.name}", total=len(keys))
            result = run_ingest(source, cfg, on_episode=lambda key, status: progress.advance(task))
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
