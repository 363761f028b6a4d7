"""`shardyard recode STORE --frame-codec C [--out NEW]`: rewrite an episodic store's frame fields."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import FrameCodec, app, fail
from shardyard.errors import ShardyardError
from shardyard.stores.frames.registry import DEFAULT_FRAME_CODEC

__all__ = ["recode_cmd"]


@app.command("recode")
def recode_cmd(
    store: Path = typer.Argument(..., help="Local episodic store."),
    frame_codec: FrameCodec = DEFAULT_FRAME_CODEC,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write a new store here (default: in place)."),
) -> None:
    """Rewrite the frame fields of an episodic store with another codec; low-dim arrays, metadata, split and
    report are kept, stats recomputed on the stored frames. In place unless --out is given (atomically)."""
    from shardyard.tools.recode import recode_store

    try:
        result = recode_store(store, frame_codec, out)
    except ShardyardError as e:
        fail(e)
    typer.echo(f"recoded {result.num_episodes} episode(s), {result.num_steps} step(s) to {frame_codec}: "
               f"data/ {result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB ({result.out})")
