"""`shardyard edit ...`: fix a dataset (delete episodes, split, merge, rename or drop a field, recompute
stats). Each writes a new store (`--out`) or replaces the store atomically (`--in-place`); `--dry-run`
prints what would change and writes nothing. `shardyard verify STORE` checks a store's files."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from shardyard.commands.common import app, fail
from shardyard.errors import ShardyardError

__all__ = ["edit_app", "delete_episodes_cmd", "split_cmd", "merge_cmd", "rename_field_cmd", "drop_field_cmd",
           "recompute_stats_cmd", "verify_cmd"]

edit_app = typer.Typer(help="Edit a store: each operation writes a new store or commits atomically in place.",
                       no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(edit_app, name="edit")

Store = Annotated[str, typer.Argument(help="Episodic store path.")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="New store to write.")]
InPlace = Annotated[bool, typer.Option("--in-place", help="Replace the store itself (atomic swap).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would change; write nothing.")]
Overwrite = Annotated[bool, typer.Option(help="Delete an existing store at --out first.")]
Features = Annotated[Optional[List[str]], typer.Option(
    "--features", help="`ingest dino` feature store of each input store (in order), edited along.")]
FeaturesOut = Annotated[Optional[List[str]], typer.Option(
    "--features-out", help="Feature store to write per output (default with --in-place: in place).")]


def _target(out: str | None, in_place: bool, dry_run: bool, overwrite: bool,
            features: list[str] | None = None, features_out: list[str] | None = None):
    from shardyard.tools.edit import EditTarget

    return EditTarget(out=out, in_place=in_place, dry_run=dry_run, overwrite=overwrite,
                      features=list(features or []), features_out=list(features_out or []))


def _run(fn, *args) -> None:
    try:
        result = fn(*args)
    except (ShardyardError, OSError) as e:
        fail(e)
    typer.echo(result.summary())


@edit_app.command("delete-episodes")
def delete_episodes_cmd(
    store: Store,
    episodes: Annotated[Optional[str], typer.Option(help="Indices, e.g. 3,7-9.")] = None,
    keys: Annotated[Optional[str], typer.Option(help="Comma-separated episode keys.")] = None,
    where: Annotated[Optional[str], typer.Option(help="Filter on episode metadata, e.g. 'length < 20'.")] = None,
    out: OutOpt = None, in_place: InPlace = False, dry_run: DryRun = False, overwrite: Overwrite = False,
    features: Features = None, features_out: FeaturesOut = None,
) -> None:
    """Delete episodes by index, key or a metadata filter (refuses to delete every episode)."""
    from shardyard.tools.edit import EpisodeSelection, delete_episodes

    sel = EpisodeSelection(episodes=episodes, keys=None if keys is None else [k for k in keys.split(",") if k],
                           where=where)
    _run(delete_episodes, store, sel, _target(out, in_place, dry_run, overwrite, features, features_out))


@edit_app.command("split")
def split_cmd(
    store: Store,
    out: Annotated[List[str], typer.Option("--out", "-o", help="PATH:FRACTION, two or more.")],
    seed: Annotated[int, typer.Option(help="Seed of the by-episode shuffle.")] = 0,
    dry_run: DryRun = False, overwrite: Overwrite = False, features: Features = None,
    features_out: FeaturesOut = None,
) -> None:
    """Split a store by episode into stores of the given fractions."""
    from shardyard.tools.edit import split_store

    outs = []
    for item in out:
        path, sep, frac = item.rpartition(":")
        try:
            outs.append((path, float(frac)))
        except ValueError:
            raise typer.BadParameter(f"--out takes PATH:FRACTION, got {item!r}") from None
        if not sep or not path:
            raise typer.BadParameter(f"--out takes PATH:FRACTION, got {item!r}")
    _run(split_store, store, outs, seed, _target(None, False, dry_run, overwrite, features, features_out))


@edit_app.command("merge")
def merge_cmd(
    stores: Annotated[List[str], typer.Argument(help="Two or more episodic stores.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Merged store to write.")],
    dry_run: DryRun = False, overwrite: Overwrite = False, features: Features = None,
    features_out: FeaturesOut = None,
    val_fraction: Annotated[Optional[float], typer.Option(
        help="Draw the train/val split anew over the merged episodes (seeded by key, as an ingest); default: "
             "each episode keeps its input's split.")] = None,
) -> None:
    """Merge stores (schemas and units checked; keys kept unique; each input's split kept; frames copied
    without re-encoding)."""
    from shardyard.tools.edit import merge_stores

    _run(merge_stores, stores, _target(out, False, dry_run, overwrite, features, features_out), val_fraction)


@edit_app.command("rename-field")
def rename_field_cmd(
    store: Store, old: Annotated[str, typer.Argument()], new: Annotated[str, typer.Argument()],
    out: OutOpt = None, in_place: InPlace = False, dry_run: DryRun = False, overwrite: Overwrite = False,
    features: Features = None, features_out: FeaturesOut = None,
) -> None:
    """Rename a field."""
    from shardyard.tools.edit import rename_field

    _run(rename_field, store, old, new, _target(out, in_place, dry_run, overwrite, features, features_out))


@edit_app.command("drop-field")
def drop_field_cmd(
    store: Store, name: Annotated[str, typer.Argument()],
    out: OutOpt = None, in_place: InPlace = False, dry_run: DryRun = False, overwrite: Overwrite = False,
    features: Features = None, features_out: FeaturesOut = None,
) -> None:
    """Remove a field."""
    from shardyard.tools.edit import drop_field

    _run(drop_field, store, name, _target(out, in_place, dry_run, overwrite, features, features_out))


@edit_app.command("recompute-stats")
def recompute_stats_cmd(store: Store, dry_run: DryRun = False) -> None:
    """Recompute stats.json from the store's contents and stored per-episode parts."""
    from shardyard.tools.edit import recompute_stats

    _run(recompute_stats, store, dry_run)


@app.command("verify")
def verify_cmd(
    store: Annotated[str, typer.Argument(help="Store path or fsspec URL (episodic, features or shards).")],
    stats: Annotated[bool, typer.Option(help="Recompute stats.json and compare (episodic stores).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    storage_option: Annotated[Optional[List[str]], typer.Option(
        "--storage-option", "-S", help="fsspec option of a URL's filesystem, key=value (repeatable), e.g. "
                                       "endpoint_url=http://127.0.0.1:9000; else fsspec's configuration.")] = None,
    tmp_dir: Annotated[Optional[str], typer.Option(
        help="Where a store at a URL is downloaded to be checked (room for the whole store).")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="First delete what killed jobs left (.spill/ folders, temp files) in a local store no "
                         "job is writing; each removed path is printed.")] = False,
) -> None:
    """Check a store's files (shard indexes, chunks, tar checksums, episode_ends, provenance, stats);
    exit 0 when intact, 1 with a report naming each damaged episode, field and file. A store at a URL
    (`s3://...`) is downloaded into a temporary folder and checked there. `--repair` first removes a killed
    job's spill folders and temp files (printed; on stderr with --json)."""
    import json

    from shardyard.stores.remote_fs import parse_storage_options
    from shardyard.tools.repair import repair_store
    from shardyard.tools.verify import verify_store

    try:
        options = parse_storage_options(storage_option)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if repair:
        try:
            removed = repair_store(store)
        except ShardyardError as e:
            fail(e)
        typer.echo(f"repair: removed {len(removed)} leftover(s)" + "".join(f"\n  removed {p}" for p in removed),
                   err=json_out)
    report = verify_store(store, check_stats=stats, storage_options=options, tmp_dir=tmp_dir)
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_out else report.summary())
    raise typer.Exit(0 if report.ok else 1)
