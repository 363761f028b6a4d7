"""`shardyard push STORE URL` and `shardyard pull URL STORE`: copy a finished store to or from any fsspec URL
(`s3://`, `gs://`, `hf://datasets/...`), resumable, checked against `checksums.json` (`stores/remote.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import app, fail
from shardyard.errors import ShardyardError, UnsafePathError

__all__ = ["pull_cmd", "push_cmd"]

StorageOption = typer.Option(None, "--storage-option", "-S",
                             help="fsspec option of the URL's filesystem, key=value (repeatable), e.g. "
                                  "endpoint_url=http://127.0.0.1:9000; else fsspec's configuration applies.")


def _options(pairs: Optional[list[str]]) -> dict:
    from shardyard.stores.remote_fs import parse_storage_options

    try:
        return parse_storage_options(pairs)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command("push")
def push_cmd(
    store: Path = typer.Argument(..., help="A complete local store (episodic, features or shards)."),
    url: str = typer.Argument(..., help="Destination: s3://bucket/store, gs://..., hf://datasets/ORG/NAME "
                                        "(made when missing; @BRANCH and a /FOLDER may follow NAME)."),
    storage_option: Optional[list[str]] = StorageOption,
    commit_files: int = typer.Option(256, help="hf:// only: files per Hub commit."),
    commit_mb: int = typer.Option(1024, help="hf:// only: MiB per Hub commit."),
    pause_file: Optional[Path] = typer.Option(None, help="hf:// only: while this file exists, the push waits after "
                                                         "each commit; a paused push can be killed and rerun."),
    pause_after: int = typer.Option(1, help="Pause no earlier than after this many commits."),
) -> None:
    """Upload a complete store with checksums.json, manifest last (files already there are skipped). To the
    Hub: a few commits within the Hub's limits, a dataset card, the repo made when missing."""
    from shardyard.pause import PausePoint
    from shardyard.stores.hub import CommitLimits
    from shardyard.stores.remote import push

    try:
        pause = PausePoint.from_options(pause_file, pause_after)
        limits = CommitLimits(files=commit_files, bytes=commit_mb << 20)
        r = push(store, url, storage_options=_options(storage_option), hub_limits=limits,
                 on_commit=(lambda n: pause.reached(f"commit {n}")) if pause else None)
    except (ShardyardError, OSError) as e:
        fail(e)
    typer.echo(f"{r.copied} file(s) uploaded ({r.bytes / 1e6:.1f} MB), {r.skipped} already there -> {url}")


@app.command("pull")
def pull_cmd(
    url: str = typer.Argument(..., help="A pushed store: s3://bucket/store, gs://..., hf://datasets/..."),
    store: Path = typer.Argument(..., help="Local directory to fill (files that already match are kept)."),
    storage_option: Optional[list[str]] = StorageOption,
) -> None:
    """Download a pushed store, every file checked against its checksums.json, manifest last (a name in it
    that would land outside STORE fails the pull before anything is written)."""
    from shardyard.stores.remote import pull

    try:
        r = pull(url, store, storage_options=_options(storage_option))
    except UnsafePathError as e:  # a crafted store rather than a damaged one: said by name (nothing written)
        fail(Exception(f"{type(e).__name__}: {e} (nothing written)"))
    except (ShardyardError, OSError) as e:
        fail(e)
    typer.echo(f"{r.copied} file(s) downloaded ({r.bytes / 1e6:.1f} MB), {r.skipped} already matching -> {store}")
