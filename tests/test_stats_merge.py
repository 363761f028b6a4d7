"""Exact statistics under merges and edits (stores/stats/parts.py), in the spirit of the open LeRobot
statistics issue: merged quantiles must be the quantiles of the merged population, not frame-weighted
averages of per-source quantiles; widening ranges must not lose histogram counts; merges are exact
whatever their grouping; deletes that change min and max; relative-action stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shardyard.loaders.normalize import relative_actions
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.stats import StatsConfig, compute_stats
from shardyard.stores.stats.parts import (
    MANTISSA_BITS,
    SparsePart,
    bucket_edges,
    bucket_keys,
    empty,
    finalize_part,
    from_dict,
    merge,
    merge_many,
    of_rows,
    quantiles,
)
from shardyard.tools.edit import EditTarget, EpisodeSelection, delete_episodes

REL = 2.0 ** -MANTISSA_BITS  # a bucket's width relative to its values' power of two


def _fold(parts: list[SparsePart]) -> SparsePart:
    out = empty(parts[0].num_features, None)
    for p in parts:
        out = merge(out, p)
    return out


def _assert_close_to_numpy(part: SparsePart, x: np.ndarray, qs=(0.01, 0.5, 0.99)) -> None:
    got = quantiles(part, qs)
    want = np.quantile(x, qs, axis=0)
    np.testing.assert_allclose(got, want, rtol=2 * REL, atol=1e-300)


def test_bucket_keys_are_monotone_and_edges_contain_values() -> None:
    scales = 10.0 ** np.arange(-6, 7).repeat(400)[:5000]  # values over 13 decades
    x = np.sort(np.concatenate([np.random.default_rng(0).normal(size=len(scales)) * scales,
                                [0.0, -0.0, 1e-300, -1e300, 5e-324]]))
    k = bucket_keys(x)
    assert np.all(np.diff(k.astype(np.float64)) >= 0)
    lo, hi = bucket_edges(k)
    assert np.all((lo <= x) & (x < hi))
    assert bucket_keys(np.array([-0.0]))[0] == bucket_keys(np.array([0.0]))[0]


def test_bimodal_merge_of_two_unimodal_sources() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(3000, 2))
    b = rng.normal(10.0, 0.5, size=(1000, 2))
    merged = merge(of_rows(a, None), of_rows(b, None))
    full = np.concatenate([a, b])
    _assert_close_to_numpy(merged, full)
    stats = finalize_part(merged)
    assert stats["count"] == [4000]
    np.testing.assert_array_equal(stats["min"], full.min(0))
    np.testing.assert_array_equal(stats["max"], full.max(0))
    np.testing.assert_allclose(stats["mean"], full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], full.std(0), rtol=1e-12)
    # what a frame-weighted average of per-source quantiles gives is far from the population's
    weighted = (3000 * np.quantile(a, 0.99, axis=0) + 1000 * np.quantile(b, 0.99, axis=0)) / 4000
    assert np.all(np.abs(weighted - np.quantile(full, 0.99, axis=0)) > 1.0)


def test_merge_that_widens_the_range_keeps_every_count() -> None:
    rng = np.random.default_rng(2)
    narrow = rng.uniform(0.0, 1.0, size=(500, 3)).astype(np.float32)
    wide = rng.uniform(-1e4, 1e6, size=(700, 3)).astype(np.float32)
    merged = merge(of_rows(narrow, None), of_rows(wide, None))
    for j in range(3):
        assert int(merged.counts[j].sum()) == 1200
    full = np.concatenate([narrow, wide]).astype(np.float64)
    _assert_close_to_numpy(merged, full)
    # the same data in one part: identical buckets
    whole = of_rows(np.concatenate([narrow, wide]), None)
    for j in range(3):
        np.testing.assert_array_equal(merged.keys[j], whole.keys[j])
        np.testing.assert_array_equal(merged.counts[j], whole.counts[j])


@pytest.mark.parametrize("grouping", [(1,) * 8, (3, 5), (2, 2, 4), (8,)])
def test_repeated_incremental_merges_are_exact(grouping) -> None:
    rng = np.random.default_rng(3)
    chunks = [rng.normal(i, 1 + i, size=(50 + 10 * i, 2)) for i in range(8)]
    episode_parts = [of_rows(c, None) for c in chunks]
    ref = _fold(episode_parts)
    groups, i = [], 0
    for g in grouping:  # merge within groups first, then the groups' parts: an incremental merge
        groups.append(_fold(episode_parts[i:i + g]))
        i += g
    got = _fold(groups)
    for j in range(2):
        np.testing.assert_array_equal(got.keys[j], ref.keys[j])
        np.testing.assert_array_equal(got.counts[j], ref.counts[j])
    s_got, s_ref = finalize_part(got), finalize_part(ref)
    for name in ("count", "min", "max", "q01", "q99"):  # independent of grouping, bit for bit
        assert s_got[name] == s_ref[name]
    np.testing.assert_allclose(s_got["mean"], s_ref["mean"], rtol=1e-13)
    _assert_close_to_numpy(got, np.concatenate(chunks))
    assert finalize_part(from_dict(json.loads(json.dumps(got.to_dict())))) == s_got
    many = merge_many(empty(2, None), episode_parts)  # one sort for all parts: the fold's result, bit for bit
    assert finalize_part(many) == s_ref and np.array_equal(many.moments.m2, ref.moments.m2)


def test_integer_data_quantiles_are_exact() -> None:
    x = np.random.default_rng(4).integers(-3000, 3000, size=(999, 2)).astype(np.int32)
    p = merge(of_rows(x[:400], None), of_rows(x[400:], None))
    np.testing.assert_array_equal(quantiles(p, [0.01, 0.5, 0.99]), np.quantile(x, [0.01, 0.5, 0.99], axis=0))
    with pytest.raises(ValueError, match="integer and float"):
        merge(p, of_rows(x.astype(np.float32), None))


SCHEMA = Schema({"obs.state": FieldSpec("float32", (2,), "m", "vector"),
                 "action": FieldSpec("float32", (2,), "m", "vector")})


def _write(path, episodes) -> EpisodicStore:
    stats = StatsConfig(kmeans_clusters=2)
    with EpisodicWriter(path, SCHEMA, config=EpisodicWriterConfig(val_fraction=0.0),
                        stats_fn=lambda s: compute_stats(s, stats)) as w:
        for ep in episodes:
            w.write(ep)
    return EpisodicStore(path)


def _episodes() -> list[Episode]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(5):
        state = np.cumsum(rng.normal(size=(20 + i, 2)), axis=0).astype(np.float32)
        action = (state + rng.normal(0, 0.1, size=state.shape)).astype(np.float32)
        if i == 2:
            state[3] = [-500.0, 900.0]  # the store's min and max
        out.append(Episode(f"ep{i}", {"obs.state": state, "action": action}, {"fps": 10.0}))
    return out


def test_delete_that_changes_min_and_max(tmp_path) -> None:
    eps = _episodes()
    src = _write(tmp_path / "src", eps)
    assert src.stats["fields"]["obs.state"]["min"][0] == -500.0
    delete_episodes(src.root, EpisodeSelection(keys=["ep2"]), EditTarget(out=str(tmp_path / "out")))
    out, fresh = EpisodicStore(tmp_path / "out"), _write(tmp_path / "fresh", [e for e in eps if e.key != "ep2"])
    assert out.stats["fields"] == fresh.stats["fields"]
    rest = np.concatenate([e.steps["obs.state"] for e in eps if e.key != "ep2"]).astype(np.float64)
    got = out.stats["fields"]["obs.state"]
    assert got["min"] == rest.min(0).tolist() and got["max"] == rest.max(0).tolist()
    np.testing.assert_allclose(got["q01"], np.quantile(rest, 0.01, axis=0), rtol=2 * REL)


def test_relative_action_parts_merge_exactly(tmp_path) -> None:
    """Per-episode parts of relative action chunks (`action[t + k] - state[t]`) from two stores merge into
    exactly the part of the union, whatever each store's range."""
    eps = _episodes()
    deltas, dims = np.arange(4), np.arange(2)

    def rel(ep: Episode) -> np.ndarray:
        return relative_actions(ep.steps["action"], ep.steps["obs.state"], deltas, dims)

    a, b = eps[:2], eps[2:]
    from_a = _fold([of_rows(rel(e), None) for e in a])
    from_b = _fold([of_rows(rel(e), None) for e in b])
    union = _fold([of_rows(rel(e), None) for e in eps])
    merged = merge(from_a, from_b)
    assert finalize_part(merged) == finalize_part(union)
    _assert_close_to_numpy(merged, np.concatenate([rel(e) for e in eps]).astype(np.float64))
