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
    url: str = typer.Argument(..., help="Destination: s3://bucket/store, gs://..., hf://datasets/user/repo/path."),
    storage_option: Optional[list[str]] = StorageOption,
) -> None:
    """Upload a complete store with checksums.json, manifest last (files already there are skipped)."""
    from shardyard.stores.remote import push

    try:
        r = push(store, url, storage_options=_options(storage_option))
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
