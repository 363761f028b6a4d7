"""`shardyard view STORE`: an episode as a Rerun recording (and, with `--serve`, Rerun's web viewer on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shardyard.commands.common import app, fail
from shardyard.errors import ShardyardError

__all__ = ["view_cmd"]


@app.command("view")
def view_cmd(
    store: str = typer.Argument(..., help="Episodic store path or URL."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The .rrd file (default STORE_episode<N>.rrd)."),
    episode: int = typer.Option(0, "--episode", help="Episode index (negative counts from the end)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store of `ingest dino` on STORE."),
    max_steps: Optional[int] = typer.Option(None, help="Log only the first steps."),
    jpeg_quality: int = typer.Option(85, help="JPEG quality of the frames in the recording (1-100)."),
    serve: bool = typer.Option(False, "--serve", help="Then serve Rerun's web viewer on it (Ctrl-C stops)."),
) -> None:
    """Write one episode as a Rerun recording: frames, camera frusta, EEF path, joints/gripper/actions, depth."""
    from shardyard.tools.view import ViewConfig, view_store

    path = out or Path(f"{str(store).rstrip('/')}_episode{episode}.rrd")
    try:
        written = view_store(ViewConfig(store=store, out=path, episode=episode, features=features,
                                        max_steps=max_steps, jpeg_quality=jpeg_quality))
    except (ShardyardError, IndexError) as e:
        fail(e)
    typer.echo(f"wrote {written} (open it with `rerun {written}`)")
    if serve:
        import rerun as rr

        rr.init("shardyard-view", spawn=False)
        url = rr.serve_grpc()
        rr.log_file_from_path(str(written))
        rr.serve_web_viewer(connect_to=url)
        typer.echo(f"serving the web viewer for {written}; Ctrl-C stops")
        try:
            import time

            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
