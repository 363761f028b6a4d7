"""Shared pieces of the command line: the typer apps, option types used by several commands, and helpers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shardyard.errors import ShardyardError
from shardyard.pause import PausePoint
from shardyard.progress import PROGRESS_LOGGER, ProgressLog
from shardyard.stores.frames.registry import frame_codec_help

__all__ = ["fail", "finish_ingest", "run_ingest_job"]

app = typer.Typer(help="shardyard: raw datasets into sharded, cached stores.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
ingest_app = typer.Typer(help="Ingest a raw source into a store.", no_args_is_help=True,
                         pretty_exceptions_enable=False)
app.add_typer(ingest_app, name="ingest")

# Options every `ingest` job takes, declared once.
OutURL = Annotated[str, typer.Option("--out", "-o", help="Store to write (resumed if it exists): a directory, or "
                                     "an fsspec URL (s3://bucket/store, gs://...) written through local staging.")]
Overwrite = Annotated[bool, typer.Option(help="Delete an existing store at --out first.")]
FrameCodec = Annotated[str, typer.Option("--frame-codec", help=frame_codec_help())]
PauseFile = Annotated[Optional[Path], typer.Option(
    help="While this file exists, the job waits after each stored episode (dino: token batch) and goes on once "
         "it is deleted; a paused job can be killed and resumed.")]
PauseAfter = Annotated[int, typer.Option(help="Pause no earlier than after this many stored episodes (dino: "
                                              "batches per worker) of this run.")]


@ingest_app.callback()
def _ingest_group() -> None:
    """Ingest a raw source into a store (`ingest SOURCE PATH --out STORE`)."""


@app.callback()
def _main_group() -> None:
    """shardyard: raw datasets into sharded, cached stores."""


def fail(e: Exception) -> None:
    """Print `error: <e>` in red on stderr and exit with status 1 (a fatal error)."""
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


export_app = typer.Typer(help="Export a store to another dataset format.", no_args_is_help=True,
                         pretty_exceptions_enable=False)
app.add_typer(export_app, name="export")


@export_app.callback()
def _export_group() -> None:
    """Export a store to another dataset format (`export lerobot STORE --out DIR`)."""


def run_ingest_job(source, cfg, pause: PausePoint | None = None) -> None:
    """Run `run_ingest` (cfg: `IngestConfig`; an `out` URL is written through local staging) for a CLI command
    with a progress bar, then print the summary and exit 0, or 2 when episodes were skipped, via
    `finish_ingest`. `pause`: reached after each episode written (`--pause-file`, `--pause-after`)."""
    from rich.progress import Progress

    from shardyard.ingest.runner import run_ingest

    try:
        keys = source.keys()
        progress = Progress(transient=True, disable=not sys.stderr.isatty())
        task = progress.add_task(f"ingest {source.name}", total=len(keys))
        # not on a terminal (a log file, CI): periodic lines instead of the bar
        lines = None if sys.stderr.isatty() else ProgressLog(f"ingest {source.name}", len(keys), "episodes")
        stored_before = [0, False]  # episodes a resumed job finds stored; said once

        def advance(key: str, status: str) -> None:
            # Started at the first episode, after the reader processes: its refresh thread would make
            # run_ingest spawn them instead of forking (see runner._start_pool).
            if not progress.live.is_started:
                progress.start()
            progress.advance(task)
            if status == "committed":
                stored_before[0] += 1
                if lines is not None:
                    lines.skip()
            else:
                if stored_before[0] and not stored_before[1]:
                    stored_before[1] = True
                    logging.getLogger(PROGRESS_LOGGER).info("resumed: %d of %d episode(s) already stored in %s",
                                                            stored_before[0], len(keys), cfg.out)
                if lines is not None:
                    lines.update()
            if pause is not None and status == "written":
                pause.reached(f"episode {key}")

        try:
            result = run_ingest(source, cfg, on_episode=advance)
        finally:
            if progress.live.is_started:
                progress.stop()
    except ShardyardError as e:
        fail(e)
    finish_ingest(cfg.out, result)


def finish_ingest(out: str | Path, result) -> None:
    """Print the store summary and the run's counts, then exit with the ingest status (0, or 2 on skips)."""
    from shardyard import open_store
    from shardyard.tools.inspect.summary import summarize

    typer.echo(summarize(open_store(str(out))))
    typer.echo(f"\n{result.num_written} episode(s) written, {result.num_already_committed} already stored, "
               f"{len(result.skipped)} skipped, in {result.seconds:.1f} s -> {out}")
    if result.skipped:
        typer.secho(f"{len(result.skipped)} episode(s) skipped; reasons in {result.report_path}",
                    fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(result.exit_code)


train_app = typer.Typer(help="Train a model on a store.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(train_app, name="train")


@train_app.callback()
def _train_group() -> None:
    """Train a model on a store (`train volume-query --store S --out RUN`)."""
