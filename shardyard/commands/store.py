"""`shardyard stats|inspect|export|upgrade`: commands on an existing store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import app, export_app, fail
from shardyard.errors import ShardyardError

__all__ = ["export_lerobot_cmd", "inspect_cmd", "stats_cmd", "upgrade_cmd"]


@export_app.command("lerobot")
def export_lerobot_cmd(
    store: str = typer.Argument(..., help="Episodic store path."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the LeRobot v3.0 dataset to write."),
    vcodec: str = typer.Option("auto", help="auto (SVT-AV1 when PyAV has it, else H.264), libsvtav1 or libx264."),
    crf: int = typer.Option(30, help="Video quality (lower = closer to the stored frames; LeRobot's default 30)."),
    g: int = typer.Option(2, "--g", help="GOP size: a keyframe every G frames (LeRobot's default 2)."),
    pix_fmt: str = typer.Option("yuv420p", help="Encoder pixel format (LeRobot's default)."),
    preset: int = typer.Option(12, help="SVT-AV1 speed preset (LeRobot's default 12; libx264 ignores it)."),
    overwrite: bool = typer.Option(False, help="Delete an existing folder at --out first."),
    push_to_hub: Optional[str] = typer.Option(None, help="Then upload it to this Hub dataset repo (ORG/NAME, made "
                                                         "when missing; HF_ENDPOINT/HF_TOKEN apply), tagged with "
                                                         "its codebase version as LeRobotDataset(ORG/NAME) needs."),
) -> None:
    """Write an episodic store as a LeRobot v3.0 dataset (parquet + mp4 + meta), with LeRobot's video encoding."""
    from shardyard.stores.hub import push_lerobot
    from shardyard.tools.export_lerobot import ExportConfig, export_lerobot

    try:
        cfg = ExportConfig(out=out, vcodec=vcodec, crf=crf, g=g, pix_fmt=pix_fmt, preset=preset, overwrite=overwrite)
        info = export_lerobot(store, cfg)
    except ShardyardError as e:
        fail(e)
    typer.echo(f"wrote LeRobot v3.0 dataset: {info['total_episodes']} episode(s), {info['total_frames']} "
               f"frame(s), {len([k for k, v in info['features'].items() if v['dtype'] == 'video'])} video "
               f"stream(s) -> {out}")
    if push_to_hub:
        try:
            r = push_lerobot(out, push_to_hub)
        except (ShardyardError, OSError) as e:
            fail(e)
        typer.echo(f"{r.uploaded} file(s) uploaded ({r.bytes / 1e6:.1f} MB) in {r.commits} commit(s), {r.skipped} "
                   f"already there -> hf://datasets/{push_to_hub} (tag {info['codebase_version']})")


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
        fail(e)
    typer.echo(f"stats.json rewritten for {store} (train episodes: {len(stats['split']['train'])})")


@app.command("upgrade")
def upgrade_cmd(store: Path = typer.Argument(..., help="Local episodic store.")) -> None:
    """Rewrite an older store's metadata to the current format (columnar episode table and stats parts)."""
    from shardyard.tools.upgrade import upgrade_store

    try:
        result = upgrade_store(store)
    except ShardyardError as e:
        fail(e)
    typer.echo(result.summary())


@app.command("inspect")
def inspect_cmd(
    store: str = typer.Argument(..., help="Store path or URL."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNG plots."),
    max_episodes: int = typer.Option(4, help="Episodes to draw frames from."),
) -> None:
    """Print a store's summary and write plots (frames with projected EEF, height/gripper/rotation, paths)."""
    from shardyard import open_store
    from shardyard.stores import FORMATS, store_format
    from shardyard.stores.features import FeatureStore
    from shardyard.tools.inspect.foveated import draw_run, is_foveated_run
    from shardyard.tools.inspect.summary import summarize, write_plots
    from shardyard.tools.inspect.tokens import inspect_features

    try:  # a checkpoint that is not plain tensors and values is refused with a named error, never unpickled
        foveated = is_foveated_run(store)
    except ShardyardError as e:
        fail(e)
    if foveated:  # a `train foveated-caption` run folder: attention overlays (seed 002)
        try:
            paths = draw_run(store, out or Path(store) / "attention", clips=max_episodes)
        except ShardyardError as e:
            fail(e)
        for p in paths:
            typer.echo(f"  wrote {p}")
        return
    fmt = FORMATS.get(store_format(store) or "")
    if fmt is not None and fmt.reader_class() is FeatureStore:  # tokens: their own summary and plots
        try:
            text, paths = inspect_features(store, out, max_episodes=max_episodes)
        except ShardyardError as e:
            fail(e)
        typer.echo(text)
        for p in paths:
            typer.echo(f"  wrote {p}")
        return
    try:
        s = open_store(store)
    except ShardyardError as e:
        fail(e)
    typer.echo(summarize(s))
    if out is not None:
        paths = write_plots(s, out, max_episodes=max_episodes)
        typer.echo(f"\nwrote {len(paths)} plot(s) to {out}:")
        for p in paths:
            typer.echo(f"  {p}")
