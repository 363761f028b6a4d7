"""`shardyard edit`: operations on episodic stores, each writing a new store (or, with `in_place`, swapping
the result in atomically), with a dry run that says what would change (issue 16, item 2).

- `delete_episodes`: by index (`"3,7-9"`), by key, or by a filter on episode metadata (`"length < 20"`);
  deleting every episode is refused (a wrong index must not empty a dataset).
- `split_store`: by episode, seeded, into outputs with given fractions.
- `merge_stores`: schemas and units checked (one `SchemaError` listing every mismatch); per-episode
  metadata (task, fps, cameras with `K` and `T_world_cam`) kept; episode keys kept unique (prefixed with the
  source store's name when they collide); episodes ordered by key, as an ingest orders them, so merging is
  commutative and associative and equals a fresh ingest of the union with the inputs' splits.
- `rename_field`, `drop_field`, `recompute_stats`.

The split: every edit keeps each episode's train/val membership of its input store (an episode never leaves
training or validation silently: merging all-train stores gives an all-train store, whose stats are the
union's); `merge_stores(..., val_fraction=F)` (`edit merge --val-fraction F`) draws a seeded split over the
result instead, as an ingest of its keys would, and `shardyard stats STORE --val-fraction F` redraws any
store's. Frame chunks are copied without re-encoding, and the stats of every result equal those of ingesting
its episodes from scratch with the same split (`tools.edit_copy`, `stores.stats.parts`).

In place, the new store (and feature store) gets a new manifest `generation` and is swapped in by renames:
a reader that opened the old one raises `StoreChangedError` at its next read, never mixing the two
(`stores.snapshot`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from shardyard.errors import ConfigError, SchemaError
from shardyard.stores.atomic import atomic_write_json
from shardyard.stores.episode_where import match_value, parse_clauses
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.stats import compute_stats
from shardyard.tools.edit_copy import (
    CopyPlan,
    commit_in_place,
    frame_parts_of,
    restore_interrupted,
    stats_config_of,
    write_plan,
)
from shardyard.tools.edit_features import check_features, edit_features

log = logging.getLogger(__name__)

__all__ = ["EditTarget", "EpisodeSelection", "EditResult", "parse_episodes", "parse_where", "delete_episodes",
           "split_store", "merge_stores", "rename_field", "drop_field", "recompute_stats", "check_mergeable"]



@dataclass
class EditTarget:
    """Where an edit goes: a new store at `out`, or the store itself (`in_place`); `dry_run` only reports.
    `features`: the inputs' `ingest dino` feature stores (one per input store, in order), edited along
    into `features_out` (one per output; in place when omitted with `in_place`)."""

    out: str | None = None
    in_place: bool = False
    dry_run: bool = False
    overwrite: bool = False
    features: list[str] = field(default_factory=list)
    features_out: list[str] = field(default_factory=list)


@dataclass
class EpisodeSelection:
    """Episodes to act on; exactly one of `episodes` (indices or `"3,7-9"`), `keys`, `where` (a filter
    such as `"length < 20"` or `"task == pick and length >= 5"`, see `parse_where`)."""

    episodes: str | Sequence[int] | None = None
    keys: Sequence[str] | None = None
    where: str | None = None


@dataclass
class EditResult:
    """What an edit did (or, in a dry run, would do): one line per change and the outputs' sizes."""

    op: str
    dry_run: bool
    changes: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable lines, prefixed `would` in a dry run."""
        head = f"{'dry run: would ' if self.dry_run else ''}{self.op}"
        lines = [head] + [f"  {c}" for c in self.changes]
        lines += [f"  -> {o['path']}: {o['num_episodes']} episode(s), {o['num_steps']} step(s)" for o in self.outputs]
        return "\n".join(lines)


def parse_episodes(text: str | Sequence[int], num_episodes: int, path: str = "") -> list[int]:
    """`"3,7-9"` (or a list of ints) -> sorted unique indices `[3, 7, 8, 9]`. Raises ConfigError for bad
    syntax or an index outside `[0, num_episodes)`."""
    if isinstance(text, str):
        out: set[int] = set()
        for item in filter(None, (t.strip() for t in text.split(","))):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if not m:
                raise ConfigError(f"bad episode list item {item!r}; expected N or N-M", path=path)
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise ConfigError(f"empty episode range {item!r}", path=path)
            out.update(range(lo, hi + 1))
    else:
        out = {int(i) for i in text}
    bad = sorted(i for i in out if not 0 <= i < num_episodes)
    if bad:
        raise ConfigError(f"episode index {bad} out of range [0, {num_episodes})", path=path)
    return sorted(out)


def parse_where(text: str) -> Callable[[dict[str, Any]], bool]:
    """A filter on one episode record (key, length, task, fps, ...) from `NAME OP VALUE [and NAME OP VALUE
    ...]`, OP one of `< <= > >= == !=`; VALUE a number or a (quoted) string (`stores.episode_where`). No
    eval. Raises ConfigError on bad syntax. `EpisodicStore.select_where` applies the same filter to a whole
    store on its metadata columns."""
    clauses = parse_clauses(text)

    def match(rec: dict[str, Any]) -> bool:
        for name, op, value in clauses:
            got = rec.get(name)
            if got is None:
                raise ConfigError(f"--where names {name!r}, which episode {rec.get('key')!r} lacks")
            if not match_value(got, op, value):
                return False
        return True

    return match


def _select(store: EpisodicStore, sel: EpisodeSelection) -> list[int]:
    given = [x for x in (sel.episodes, sel.keys, sel.where) if x is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --episodes, --keys, --where", path=store.url)
    if sel.episodes is not None:
        return parse_episodes(sel.episodes, store.num_episodes, store.url)
    if sel.keys is not None:
        found = store.episode_indices(list(sel.keys))
        missing = [k for k, i in zip(sel.keys, found) if i < 0]
        if missing:
            raise ConfigError(f"no episode with key {missing}", path=store.url)
        return sorted({int(i) for i in found})
    return store.select_where(sel.where or "").tolist()


def _open(path: str) -> EpisodicStore:
    if restore_interrupted(path):
        log.warning("restored %s from an in-place edit that was interrupted", path)
    return EpisodicStore(path)


def _all_fields(store: EpisodicStore) -> dict[str, str]:
    return {k: k for k in store.schema.keys()}


def _features_out(plans: list[tuple[str, CopyPlan]], target: EditTarget) -> list[str]:
    if not target.features:
        return []
    if target.in_place and not target.features_out and len(target.features) == 1:
        return list(target.features)
    if len(target.features_out) != len(plans):
        raise ConfigError(f"give one --features-out per output store ({len(plans)}), got "
                          f"{len(target.features_out)}")
    return list(target.features_out)


def _finish(plans: list[tuple[str, CopyPlan]], result: EditResult, target: EditTarget,
            store: EpisodicStore | None = None) -> EditResult:
    """Report (dry run) or write each (path, plan), and its feature store; in place, the one plan
    replaces `store`."""
    feats_out = _features_out(plans, target)
    for i, (path, plan) in enumerate(plans):
        steps = sum(plan.sources[s].episode_length(e) for s, e in plan.episodes)
        result.outputs.append({"path": path, "num_episodes": len(plan.episodes), "num_steps": int(steps)})
        if feats_out:
            check_features(plan, target.features)
            result.changes.append(f"features {', '.join(target.features)} -> {feats_out[i]}")
    if target.dry_run:
        return result
    for i, (path, plan) in enumerate(plans):
        if target.in_place and store is not None:
            new = commit_in_place([plan], store.root)
        else:
            new = write_plan(plan, path, overwrite=target.overwrite)
        if feats_out:
            _write_features(plan, target.features, new, feats_out[i], target.overwrite)
    return result


def _write_features(plan: CopyPlan, features: list[str], new: EpisodicStore, out: str, overwrite: bool) -> None:
    """`edit_features` to `out`; when `out` is an input, through a sibling temp folder swapped in."""
    if out not in features:
        edit_features(plan, features, new, out, overwrite=overwrite)
        return
    p = Path(out)
    tmp, old = p.with_name(f".{p.name}.edit-new"), p.with_name(f".{p.name}.edit-old")
    shutil.rmtree(tmp, ignore_errors=True)
    edit_features(plan, features, new, tmp)
    os.rename(p, old)
    os.rename(tmp, p)
    shutil.rmtree(old)


def _single_output(store: EpisodicStore, target: EditTarget) -> str:
    if target.in_place == (target.out is not None):
        raise ConfigError("give exactly one of --out and --in-place", path=store.url)
    if target.out is not None and Path(target.out).resolve() == Path(store.root).resolve():
        raise ConfigError("--out is the store itself; use --in-place", path=store.url)
    return store.root if target.in_place else str(target.out)


def delete_episodes(path: str, selection: EpisodeSelection, target: EditTarget) -> EditResult:
    """Drop the selected episodes. Raises ConfigError when nothing or everything would be deleted."""
    store = _open(path)
    out = _single_output(store, target)
    drop = set(_select(store, selection))
    if not drop:
        raise ConfigError("no episode matches the selection: nothing to delete", path=store.url)
    if len(drop) == store.num_episodes:
        raise ConfigError(f"the selection matches all {store.num_episodes} episodes; refusing to delete a "
                          "whole store", path=store.url)
    keep = [i for i in range(store.num_episodes) if i not in drop]
    keys = store.episode_keys.to_list()  # one column read, then O(1) lookups
    result = EditResult("delete-episodes", target.dry_run,
                        [f"delete episode {i} ({keys[i]}, {store.episode_length(i)} steps)" for i in sorted(drop)])
    plan = CopyPlan([store], [(0, i) for i in keep], [keys[i] for i in keep], _all_fields(store),
                    {"op": "delete-episodes", "deleted": [keys[i] for i in sorted(drop)]})
    return _finish([(out, plan)], result, target, store)


def split_store(path: str, outs: Sequence[tuple[str, float]], seed: int, target: EditTarget) -> EditResult:
    """Split by episode into `outs` (path, fraction): a seeded permutation of the episodes is cut by the
    fractions (largest remainder), each output keeping the source order. Raises ConfigError when the
    fractions do not sum to 1 or an output would be empty."""
    store = _open(path)
    fractions = np.array([f for _, f in outs], dtype=np.float64)
    if len(outs) < 2 or np.any(fractions <= 0) or abs(fractions.sum() - 1.0) > 1e-6:
        raise ConfigError(f"split takes two or more --out PATH:FRACTION with fractions > 0 summing to 1, got "
                          f"{[f for _, f in outs]}", path=store.url)
    n = store.num_episodes
    exact = fractions * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if np.any(counts == 0):
        raise ConfigError(f"{n} episodes cannot fill {len(outs)} outputs with fractions "
                          f"{fractions.tolist()}", path=store.url)
    order = np.random.default_rng(seed).permutation(n)
    keys = store.episode_keys.to_list()  # one column read, then O(1) lookups
    result = EditResult("split", target.dry_run)
    plans = []
    start = 0
    for (out, _), c in zip(outs, counts):
        chosen = sorted(int(i) for i in order[start:start + c])
        start += c
        result.changes.append(f"{out}: episodes {chosen}")
        plans.append((out, CopyPlan([store], [(0, i) for i in chosen], [keys[i] for i in chosen],
                                    _all_fields(store), {"op": "split", "seed": seed, "episodes": chosen})))
    return _finish(plans, result, EditTarget(dry_run=target.dry_run, overwrite=target.overwrite,
                                             features=target.features, features_out=target.features_out))


def check_mergeable(stores: Sequence[EpisodicStore]) -> None:
    """Raise one SchemaError listing every field missing from a store or differing in dtype, per-step
    shape, unit or kind from the first store."""
    ref = stores[0].schema
    problems, fields = [], set()
    for st in stores[1:]:
        for k in sorted(set(ref.keys()) ^ set(st.schema.keys())):
            where = stores[0].url if k in ref else st.url
            problems.append(f"{k}: only in {where}")
            fields.add(k)
        for k in ref.keys():
            if k not in st.schema:
                continue
            a, b = ref[k], st.schema[k]
            for attr in ("dtype", "shape", "unit", "kind"):
                if getattr(a, attr) != getattr(b, attr):
                    problems.append(f"{k}: {attr} {getattr(a, attr)!r} in {stores[0].url}, "
                                    f"{getattr(b, attr)!r} in {st.url}")
                    fields.add(k)
    if problems:
        raise SchemaError("stores do not merge: " + "; ".join(problems), field=",".join(sorted(fields)))


def _merged_keys(stores: Sequence[EpisodicStore]) -> list[list[str]]:
    """Each store's output keys: unchanged, or all prefixed `<store name>/` when any key collides."""
    seen: set[str] = set()
    collide = False
    for st in stores:
        ks = set(st.episode_keys)
        collide |= bool(seen & ks) or len(ks) != st.num_episodes
        seen |= ks
    if not collide:
        return [st.episode_keys for st in stores]
    names = [Path(st.root).name for st in stores]
    if len(set(names)) != len(names):
        names = [f"{i}" for i in range(len(stores))]
    log.warning("episode keys collide across the merged stores: keys are prefixed with %s", names)
    return [[f"{name}/{k}" for k in st.episode_keys] for name, st in zip(names, stores)]


def merge_stores(paths: Sequence[str], target: EditTarget, val_fraction: float | None = None) -> EditResult:
    """Merge two or more stores into `target.out` (see the module docstring). Each episode keeps its input's
    split (train or val); `val_fraction` draws a seeded split over the merged keys instead, as an ingest of
    them would. Raises SchemaError listing every schema/unit mismatch, ConfigError without `--out` or for a
    `val_fraction` outside [0, 1)."""
    if len(paths) < 2 or target.out is None or target.in_place:
        raise ConfigError("merge takes two or more stores and --out (not --in-place)")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}", field="val_fraction")
    stores = [_open(p) for p in paths]
    check_mergeable(stores)
    keys = _merged_keys(stores)
    entries = sorted(((k, s, e) for s, ks in enumerate(keys) for e, k in enumerate(ks)), key=lambda t: t[0])
    result = EditResult("merge", target.dry_run,
                        [f"{st.url}: {st.num_episodes} episode(s)" for st in stores])
    n_val = sum(len((st.split or {}).get("val", [])) for st in stores)
    result.changes.append(f"split: each episode keeps its input's ({n_val} val)" if val_fraction is None else
                          f"split: drawn anew, val_fraction {val_fraction}")
    op: dict[str, Any] = {"op": "merge", "inputs": [st.url for st in stores]}
    if val_fraction is not None:
        op["val_fraction"] = float(val_fraction)
    plan = CopyPlan(stores, [(s, e) for _, s, e in entries], [k for k, _, _ in entries], _all_fields(stores[0]), op)
    return _finish([(target.out, plan)], result, target)


def _field_edit(path: str, fields_of: Callable[[EpisodicStore], dict[str, str]], op: dict[str, Any],
                change: str, target: EditTarget) -> EditResult:
    store = _open(path)
    out = _single_output(store, target)
    fields = fields_of(store)
    plan = CopyPlan([store], [(0, i) for i in range(store.num_episodes)], store.episode_keys.to_list(), fields,
                    op)
    return _finish([(out, plan)], EditResult(op["op"], target.dry_run, [change]), target, store)


def rename_field(path: str, old: str, new: str, target: EditTarget) -> EditResult:
    """Rename field `old` to `new` (data copied as is; stats keyed by the new name). Raises ConfigError
    when `old` is absent or `new` exists."""
    def fields_of(store: EpisodicStore) -> dict[str, str]:
        if old not in store.schema:
            raise ConfigError(f"no field {old!r}; store has {store.schema.keys()}", path=store.url, field=old)
        if new in store.schema:
            raise ConfigError(f"field {new!r} exists already", path=store.url, field=new)
        return {(new if k == old else k): k for k in store.schema.keys()}
    return _field_edit(path, fields_of, {"op": "rename-field", "old": old, "new": new},
                       f"rename field {old} -> {new}", target)


def drop_field(path: str, name: str, target: EditTarget) -> EditResult:
    """Remove field `name`. Raises ConfigError when it is absent or the last field."""
    def fields_of(store: EpisodicStore) -> dict[str, str]:
        if name not in store.schema:
            raise ConfigError(f"no field {name!r}; store has {store.schema.keys()}", path=store.url, field=name)
        if len(store.schema.keys()) == 1:
            raise ConfigError("cannot drop the only field", path=store.url, field=name)
        return {k: k for k in store.schema.keys() if k != name}
    return _field_edit(path, fields_of, {"op": "drop-field", "field": name}, f"drop field {name}", target)


def recompute_stats(path: str, dry_run: bool = False) -> EditResult:
    """Recompute stats.json in place from the store's contents and stored per-episode parts (with the
    config it was computed with), replacing it atomically."""
    store = _open(path)
    result = EditResult("recompute-stats", dry_run, [f"recompute stats.json of {store.num_episodes} episode(s)"])
    if not dry_run:
        stats = compute_stats(store, stats_config_of(store), frame_parts=frame_parts_of(store))
        atomic_write_json(Path(store.root) / "stats.json", stats)
    result.outputs.append({"path": store.root, "num_episodes": store.num_episodes, "num_steps": store.num_steps})
    return result
