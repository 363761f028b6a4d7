"""What `export lerobot` records beside LeRobot's own metadata, so that `ingest lerobot` of the export gives the
store back field for field: `meta/shardyard.json`.

LeRobot's `info.json` knows a feature's dtype, shape and names, not a store field's unit, kind ("pose",
"scalar", ...) or description, nor the per-episode metadata (camera `K` and `T_world_cam`, task, fps, layout,
...), and LeRobot numbers episodes `0..E-1` by position (`LeRobotDataset` indexes `meta/episodes` rows by
episode index), so a store whose episodes carry other indices (a LeRobot store ingested from episodes 1 and 2)
cannot keep them there. The file holds:

    format, version                 "shardyard-lerobot-export", 1
    store                           url, generation and source block of the exported store's manifest
    schema                          {field: FieldSpec.to_dict()} of every exported field, in store order
    features                        {field: LeRobot feature name} (`observation.timestamp` for a store
                                    `timestamp` that is not the frame times, `export_lerobot`)
    not_exported                    fields a LeRobot dataset cannot hold (kind "text", "tokens", "video")
    split                           the store's train/val split (episode indices; the export's equal the store's)
    episodes                        per exported episode (its LeRobot `episode_index` is its position):
                                    {"episode_index", "key", "record"}: the store's episode key and its
                                    `meta/episodes.json` record without `key` and `length`

`read_export_meta` checks the file before `ingest lerobot` uses it: its keys come from outside, so each must be
a plain relative name (`stores.safe_paths`) and unique.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from shardyard.errors import ConfigError, SchemaError, UnsafePathError
from shardyard.schema import FieldSpec
from shardyard.stores.safe_paths import safe_relative

__all__ = ["EXPORT_META", "EXPORT_FORMAT", "EXPORT_VERSION", "NOT_EXPORTED_KINDS", "ExportRecord", "export_meta",
           "read_export_meta"]

EXPORT_META = "meta/shardyard.json"
EXPORT_FORMAT = "shardyard-lerobot-export"
EXPORT_VERSION = 1
NOT_EXPORTED_KINDS = ("text", "tokens", "video")


def export_meta(store: Any, features: dict[str, str]) -> dict[str, Any]:
    """The `meta/shardyard.json` dict of exporting the fields of the episodic `store` that `features` maps to
    their LeRobot feature names (every episode, in store order: export episode `i` is store episode `i`)."""
    fields = [k for k in store.schema.keys() if k in features]
    episodes = []
    for e in range(store.num_episodes):
        rec = store.episode_record(e)
        episodes.append({"episode_index": e, "key": str(rec["key"]),
                         "record": {k: v for k, v in rec.items() if k not in ("key", "length")}})
    manifest = store.manifest or {}
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "store": {"url": str(store.url), "generation": manifest.get("generation"),
                      "source": manifest.get("source", {})},
            "schema": {k: store.schema[k].to_dict() for k in fields}, "features": {k: features[k] for k in fields},
            "not_exported": [k for k in store.schema.keys() if k not in fields],
            "split": {k: [int(i) for i in v] for k, v in (store.split or {}).items()},
            "episodes": episodes}


@dataclass(frozen=True)
class ExportRecord:
    """A checked `meta/shardyard.json`: `schema` (field -> FieldSpec, store order) and `features` (field ->
    LeRobot feature name), `keys` and `records` by LeRobot episode index (store key, per-episode metadata),
    `split` as recorded."""

    schema: dict[str, FieldSpec]
    features: dict[str, str]
    keys: dict[int, str]
    records: dict[int, dict[str, Any]]
    split: dict[str, list[int]]

    def restore_schema(self, derived: dict[str, FieldSpec], field_of: Callable[[str], str]) -> dict[str, FieldSpec]:
        """The store's field specs in place of those derived from `info.json` (`derived`, keyed by `field_of`
        of their feature name): unit, kind, names and description as recorded, dtype and per-step shape as
        derived (a resize on ingest changes the shape). LeRobot's `timestamp` column, which is no store field
        when the store had none or kept its own as `observation.timestamp`, is left out."""
        out, used = {}, {"timestamp"}
        for k, spec in self.schema.items():
            d = field_of(self.features.get(k, k))
            used.add(d)
            if d in derived:
                out[k] = replace(spec, dtype=derived[d].dtype, shape=derived[d].shape)
        out.update({k: s for k, s in derived.items() if k not in used})
        return out


def read_export_meta(path: Path) -> ExportRecord | None:
    """The checked `meta/shardyard.json` at `path`, or None when there is none (a dataset not written by
    `export lerobot`). Raises ConfigError naming the file when it is unreadable, of another format or a newer
    version, when a field spec is malformed, or when an episode key is not a plain relative name or repeats."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read the export's metadata: {e}", path=str(path)) from e
    if not isinstance(d, dict) or d.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"not a {EXPORT_FORMAT} file (format {d.get('format') if isinstance(d, dict) else d!r})",
                          path=str(path))
    if int(d.get("version", 0)) > EXPORT_VERSION:
        raise ConfigError(f"written by a newer shardyard (version {d.get('version')}, this one reads "
                          f"{EXPORT_VERSION})", path=str(path))
    try:
        schema = {str(k): FieldSpec.from_dict(v) for k, v in dict(d.get("schema") or {}).items()}
        features = {str(k): str(v) for k, v in dict(d.get("features") or {}).items()}
        episodes = [(int(e["episode_index"]), e["key"], dict(e.get("record") or {})) for e in d.get("episodes", [])]
    except (KeyError, TypeError, ValueError, SchemaError) as e:
        raise ConfigError(f"malformed export metadata: {e}", path=str(path), field="schema") from e
    keys: dict[int, str] = {}
    for index, key, _ in episodes:
        try:
            keys[index] = safe_relative(key, source=path)
        except UnsafePathError as e:
            raise ConfigError(f"episode {index}: key {e.reason}", path=str(path), field="key") from None
    if len(set(keys.values())) != len(keys) or len(keys) != len(episodes):
        raise ConfigError("episode keys or indices repeat", path=str(path), field="key")
    split = {str(k): [int(i) for i in v] for k, v in dict(d.get("split") or {}).items()}
    return ExportRecord(schema=schema, features=features, keys=keys, records={i: r for i, _, r in episodes},
                        split=split)
