"""Dataset cards (`README.md` at a Hub repo's root) for what `shardyard push` and `export lerobot --push-to-hub`
upload: a YAML header the Hub indexes (tags, task category; `viewer: false` for a shardyard store, whose zarr
chunks the Hub's dataset viewer cannot read), then what the repo holds and how to read it, from the store's
`manifest.json` and `stats.json` or the LeRobot dataset's `meta/info.json`.

A card tagged `shardyard` is rewritten by the next push; a card without that tag is the owner's and is kept.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["lerobot_card", "store_card"]


def _header(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x[:8]) + (", ..." if len(x) > 8 else "") + "]"
    return str(x)


def _fields_table(schema: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    rows = ["| field | kind | dtype | shape | unit | mean | std |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, spec in schema.items():
        s = stats.get(key) or {}
        image = spec.get("kind") == "image"  # image stats are per channel, in [0, 1]
        mean, std = ("-", "-") if not s else (_fmt(s.get("mean")), _fmt(s.get("std")))
        rows.append(f"| `{key}` | {spec.get('kind', '')} | {spec.get('dtype', '')} | "
                    f"{tuple(spec.get('shape') or ())} | {spec.get('unit') or ''} | "
                    f"{mean}{' (per channel, 0-1)' if image and s else ''} | {std} |")
    return rows


def store_card(manifest: dict[str, Any], stats: dict[str, Any] | None, repo_id: str, url: str) -> bytes:
    """The card of a shardyard store: format, counts, source, split, every field with its stats, and how to
    open, stream or pull it from `url` (`hf://datasets/...`)."""
    fmt = str(manifest.get("format", ""))
    source = manifest.get("source") or {}
    meta = {"tags": ["shardyard", fmt] + (["robotics"] if fmt.startswith("episodic") else []),
            "viewer": False}
    if fmt.startswith("episodic"):
        meta["task_categories"] = ["robotics"]
    counts = (f"{manifest.get('num_episodes', 0)} episode(s), {manifest.get('num_steps', 0)} step(s)"
              if "num_episodes" in manifest else f"{len(manifest.get('files') or [])} file(s)")
    lines = [_header(meta), f"# {repo_id}", "",
             f"A shardyard `{fmt}` store (format version {manifest.get('format_version')}): "
             f"{counts}.", ""]
    if source:
        lines += [f"Ingested from `{source.get('name', '?')}`"
                  + (f" (Hub dataset `{source['hub']['repo_id']}` at commit `{source['hub']['commit']}`)"
                     if isinstance(source.get("hub"), dict) else "") + ".", ""]
    split = manifest.get("split") or (stats or {}).get("split") or {}  # format 2: in meta/split.parquet
    if split:
        lines += ["Split by episode: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + ".", ""]
    schema = manifest.get("schema") or {}
    if schema:
        lines += ["## Fields", "", *_fields_table(schema, (stats or {}).get("fields") or {}), ""]
    lines += ["## Reading it", "", "```python", "from shardyard import open_store",
              f'store = open_store("{url}")  # reads byte ranges in place; nothing is downloaded whole', "```", "",
              "or a local copy, every file checked against `checksums.json`:", "", "```bash",
              f"shardyard pull {url} ./store", "```", "",
              "`manifest.json` is committed last, with `checksums.json`: a repo without it holds an unfinished push.",
              ""]
    return "\n".join(lines).encode()


def lerobot_card(info: dict[str, Any], repo_id: str) -> bytes:
    """The card of a LeRobot v3.0 dataset exported by shardyard (the layout of LeRobot's own cards: tagged
    `LeRobot`, parquet files as the default config, `meta/info.json` quoted)."""
    meta = {"task_categories": ["robotics"], "tags": ["LeRobot", "shardyard"],
            "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}]}
    lines = [_header(meta), f"# {repo_id}", "",
             f"A LeRobot {info.get('codebase_version')} dataset written by `shardyard export lerobot`: "
             f"{info.get('total_episodes')} episode(s), {info.get('total_frames')} frame(s) at {info.get('fps')} fps, "
             f"robot type `{info.get('robot_type')}`.", "", "```python",
             "from lerobot.datasets.lerobot_dataset import LeRobotDataset",
             f'ds = LeRobotDataset("{repo_id}")', "```", "", "## meta/info.json", "", "```json",
             json.dumps(info, indent=2), "```", ""]
    return "\n".join(lines).encode()
