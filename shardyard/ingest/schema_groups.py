"""Episodes whose fields differ: one store schema that is never padded, or one store per schema.

A source whose episodes may carry different fields (robosuite files of different robots and scenes: `sim_state`
45 columns wide in one, 32 in another, `action` in some and not others) states each episode's fields
(`FieldSpec`s, from metadata). `plan_schema` then makes the store's schema without padding anything:

- the first episode (in key order) whose fields are consistent sets each field's dtype, per-step shape and
  kind; a later episode with a field of another dtype, shape or kind, with an image field the store lacks, or
  without one the store has, is refused: `SchemaPlan.check` raises a `SchemaError` naming every differing
  field (a report row; `--group-by-schema` stores it in a store of its own instead);
- a low-dim field that some episodes lack is recorded as absent for them (`absent_fields` in their meta): the
  writer keeps a placeholder, stats leave those episodes out of that field, and `EpisodeDataset` serves the
  field with `<field>_is_pad` True there (never as real zeros).

`group_keys` splits the keys by their exact set of fields and specs (`schema_hash`); `ingest_groups` writes one
store per group under one folder, named by the group's robot (or the source's label) and its schema hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from shardyard.errors import ConfigError, SchemaError
from shardyard.schema import FieldSpec, Schema

__all__ = ["GROUPS_FILE", "SchemaPlan", "group_keys", "group_name", "ingest_groups", "plan_schema", "schema_hash"]

GROUPS_FILE = "groups.json"
_FRAME_KINDS = ("image", "depth", "video")  # a missing frame field is never stood in for: the episode is refused


def _spec_text(spec: FieldSpec) -> str:
    return f"{spec.dtype} {spec.shape} {spec.kind}"


def _same(a: FieldSpec, b: FieldSpec) -> bool:
    return (a.dtype, tuple(a.shape), a.kind) == (b.dtype, tuple(b.shape), b.kind)


def schema_hash(specs: Mapping[str, FieldSpec]) -> str:
    """8 hex digits identifying a set of fields with their dtypes, per-step shapes and kinds."""
    text = json.dumps(sorted([k, s.dtype, list(s.shape), s.kind] for k, s in specs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class SchemaPlan:
    """The store schema of a set of episodes and what it means for each: `refused[key]` (reason) and
    `differing[key]` (fields) for the episodes it cannot hold, `absent[key]` (fields it lacks, recorded as
    absent), `reference` (field -> the episode that set its spec)."""

    schema: Schema
    refused: dict[str, str] = field(default_factory=dict)
    differing: dict[str, list[str]] = field(default_factory=dict)
    absent: dict[str, list[str]] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)

    def check(self, key: str, path: str | None = None) -> None:
        """Raise `SchemaError` (path, key, the differing fields) when episode `key` is refused."""
        if key in self.refused:
            raise SchemaError(self.refused[key], path=path, key=key, field=",".join(self.differing[key]))


def _differences(specs: Mapping[str, FieldSpec], schema: dict[str, FieldSpec], reference: dict[str, str],
                 accepted: bool) -> dict[str, str]:
    """Field -> how an episode's `specs` differ from the store's so far (`accepted`: some episode is in)."""
    out = {}
    for name, spec in specs.items():
        if name in schema and not _same(spec, schema[name]):
            out[name] = (f"{_spec_text(spec)} here, {_spec_text(schema[name])} in the store "
                         f"(from {reference[name]})")
        elif name not in schema and accepted and spec.kind in _FRAME_KINDS:
            out[name] = "a frame field the store's other episodes lack"
    for name, spec in schema.items():
        if name not in specs and spec.kind in _FRAME_KINDS:
            out[name] = f"missing here, a frame field of the store (from {reference[name]})"
    return out


def plan_schema(per_key: Mapping[str, Mapping[str, FieldSpec]], hint: str = "") -> SchemaPlan:
    """The store schema of the episodes `per_key` (key -> its fields, in key order), never padded (see the
    module docstring). `hint` ends each refusal's reason (e.g. how to store such episodes). Raises
    `ConfigError` when `per_key` is empty."""
    if not per_key:
        raise ConfigError("no episode to take a schema from")
    schema: dict[str, FieldSpec] = {}
    reference: dict[str, str] = {}
    plan = SchemaPlan(Schema({}))
    accepted: list[str] = []
    for key, specs in per_key.items():
        diff = _differences(specs, schema, reference, bool(accepted))
        if diff:
            plan.differing[key] = sorted(diff)
            plan.refused[key] = ("fields differ from the store's: " + "; ".join(f"{k}: {v}" for k, v in
                                                                             sorted(diff.items())) + hint)
            continue
        accepted.append(key)
        for name, spec in specs.items():
            if name not in schema:
                schema[name], reference[name] = spec, key
    for key in accepted:
        lacking = [name for name in schema if name not in per_key[key]]
        if lacking:
            plan.absent[key] = sorted(lacking)
    plan.schema, plan.reference = Schema(dict(sorted(schema.items()))), reference
    return plan


def group_keys(per_key: Mapping[str, Mapping[str, FieldSpec]]) -> dict[str, list[str]]:
    """`schema_hash` -> the keys with exactly those fields and specs, groups in order of their first key."""
    groups: dict[str, list[str]] = {}
    for key, specs in per_key.items():
        groups.setdefault(schema_hash(specs), []).append(key)
    return groups


def group_name(label: str | None, digest: str) -> str:
    """Folder name of a group's store: `<label>-<hash>` (label: robot or env, made file-name safe), or
    `schema-<hash>` without one."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label or "").strip("._")[:60]
    return f"{safe or 'schema'}-{digest}"


def ingest_groups(source_for: Callable[[list[str]], Any], groups: Mapping[str, list[str]], cfg: Any,
                  run: Callable[[Any, Any], Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One store per group under the folder `cfg.out` (an `IngestConfig`): `run(source_for(keys),
    replace(cfg, out=cfg.out / name))` for each `name -> keys` of `groups`, then `cfg.out/groups.json`
    (name -> keys, store path, and `extra[name]`). Returns name -> `run`'s result. Raises `ConfigError` when
    `cfg.out` is a URL or a store itself."""
    from shardyard.stores.atomic import atomic_write_json

    out = Path(cfg.out)
    if "://" in str(cfg.out):
        raise ConfigError("--group-by-schema writes several stores: --out must be a local folder", path=str(out))
    if (out / "manifest.json").exists():
        raise ConfigError("--out is a store; --group-by-schema needs a folder to hold one store per schema",
                          path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run(source_for(keys), replace(cfg, out=out / name)) for name, keys in groups.items()}
    atomic_write_json(out / GROUPS_FILE, {name: {"store": name, "keys": list(keys), **dict((extra or {}).get(name, {}))}
                                          for name, keys in groups.items()})
    return results
