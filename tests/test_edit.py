"""Tests of `shardyard edit` (tools/edit.py, tools/edit_copy.py): every edit's store equals, data and
stats value for value, a store written from scratch with the resulting episodes; frame chunks are copied
byte for byte; bad selections and schema mismatches fail with clear errors; the CLI runs as a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shardyard.errors import ConfigError, SchemaError, StoreError
from shardyard.ingest.dino import FrameReader
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.yam import YamConfig, YamSource
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.checksums import CHUNK_CRC, read_crc32c
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.features import FeatureLayout, FeatureStore, FeatureWriter, FeatureWriterConfig, write_batch
from shardyard.stores.frames.zarr_shard import read_shard_index, shard_file
from shardyard.stores.manifest import manifest_fingerprint
from shardyard.stores.stats import StatsConfig, compute_stats
from shardyard.tools.edit import (
    EditTarget,
    EpisodeSelection,
    delete_episodes,
    drop_field,
    merge_stores,
    parse_episodes,
    recompute_stats,
    rename_field,
    split_store,
)
from shardyard.tools.verify import verify_store
from tests.conftest import run_cli
from tests.libero_fixtures import write_libero_file

SCHEMA = Schema({
    "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
    "obs.gripper": FieldSpec("float32", (), "normalised", "scalar"),
    "obs.count": FieldSpec("int16", (2,), None, "vector"),
    "action": FieldSpec("float64", (4,), "rad", "vector"),
    "obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
})
STATS = StatsConfig(kmeans_clusters=4, image_frame_stride=2, image_pixel_stride=2)


def _episode(i: int, shift: float = 0.0) -> Episode:
    rng = np.random.default_rng(i)
    t = 9 + 3 * i
    return Episode(key=f"ep{i:02d}", steps={
        "obs.eef_pos": (rng.normal(size=(t, 3)) * 0.1 + [0, 0, 0.3 + shift]).astype(np.float32),
        "obs.gripper": rng.uniform(0, 1, t).astype(np.float32),
        "obs.count": rng.integers(-50, 50, size=(t, 2)).astype(np.int16),
        "action": rng.normal(size=(t, 4)) + shift,
        "obs.rgb.top": rng.integers(0, 256, size=(t, 12, 16, 3)).astype(np.uint8)},
        meta={"task": "pick" if i % 2 else "place", "fps": 10.0,
              "cameras": {"top": {"K": np.eye(3) * (i + 1), "T_world_cam": np.eye(4)}}})


def _write(path: Path, episodes: list[Episode], codec: str = "lz4", split: dict | None = None) -> EpisodicStore:
    cfg = EpisodicWriterConfig(val_fraction=0.25, frame_codec=codec, config={"frame_codec": codec}, split=split)
    with EpisodicWriter(path, SCHEMA, config=cfg, stats_fn=lambda s: compute_stats(s, STATS)) as w:
        for ep in episodes:
            w.write(ep)
    return EpisodicStore(path)


def _assert_same_store(a: EpisodicStore, b: EpisodicStore) -> None:
    """Same keys, metadata (but the raw files' path), data and stats, value for value (stats as JSON)."""
    assert a.episode_keys == b.episode_keys and a.split == b.split

    def meta(st: EpisodicStore) -> list[dict]:
        return [{k: v for k, v in st.episode_record(e).items() if k != "source_path"}
                for e in range(st.num_episodes)]

    assert meta(a) == meta(b)
    assert a.schema == b.schema
    for f in a.schema.keys():
        np.testing.assert_array_equal(a.read_rows(f, 0, a.num_steps), b.read_rows(f, 0, b.num_steps))
    assert json.dumps(a.stats, sort_keys=True) == json.dumps(b.stats, sort_keys=True)


def _chunk_bytes(store: EpisodicStore, field: str, row: int) -> bytes:
    d = Path(store.root) / "data" / field
    meta = json.loads((d / "zarr.json").read_text())
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    path = shard_file(str(d), row // rows, len(meta["shape"]))
    off, n = read_shard_index(path, rows)[row % rows]
    with open(path, "rb") as fh:
        fh.seek(int(off))
        return fh.read(int(n))


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [_episode(i) for i in range(6)]


@pytest.fixture(scope="module")
def store(tmp_path_factory, episodes) -> EpisodicStore:
    return _write(tmp_path_factory.mktemp("edit") / "src", episodes)


def test_parse_episodes() -> None:
    assert parse_episodes("3,7-9, 1", 10) == [1, 3, 7, 8, 9]
    with pytest.raises(ConfigError, match=r"\[10\] out of range"):
        parse_episodes("9-10", 10)
    with pytest.raises(ConfigError, match="bad episode list"):
        parse_episodes("3;4", 10)


@pytest.mark.parametrize("selection,dropped", [
    (EpisodeSelection(episodes="1,3-4"), [1, 3, 4]),
    (EpisodeSelection(keys=["ep00", "ep05"]), [0, 5]),
    (EpisodeSelection(where="length < 15"), [0, 1]),      # lengths 9, 12 (min and max of fields change)
    (EpisodeSelection(where="task == 'pick' and length >= 18"), [3, 5]),
])
def test_delete_equals_fresh_store(tmp_path, store, episodes, selection, dropped) -> None:
    res = delete_episodes(store.root, selection, EditTarget(out=str(tmp_path / "out")))
    assert [c.split()[2] for c in res.changes] == [str(i) for i in dropped]
    out = EpisodicStore(tmp_path / "out")
    fresh = _write(tmp_path / "fresh", [e for i, e in enumerate(episodes) if i not in dropped])
    _assert_same_store(out, fresh)
    # frames were copied as their encoded bytes, not re-encoded
    src_row = int(store.episode_starts[2])
    new_row = int(out.episode_starts[out.episode_keys.index("ep02")])
    assert _chunk_bytes(out, "obs.rgb.top", new_row) == _chunk_bytes(store, "obs.rgb.top", src_row)
    assert out.manifest["source"]["op"] == "delete-episodes"


def test_delete_guards_and_dry_run(tmp_path, store) -> None:
    with pytest.raises(ConfigError, match="refusing to delete a whole store"):
        delete_episodes(store.root, EpisodeSelection(where="length > 0"), EditTarget(out=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="out of range"):
        delete_episodes(store.root, EpisodeSelection(episodes="6"), EditTarget(out=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="no episode with key"):
        delete_episodes(store.root, EpisodeSelection(keys=["nope"]), EditTarget(out=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="exactly one of --episodes"):
        delete_episodes(store.root, EpisodeSelection(episodes="1", where="length < 3"),
                        EditTarget(out=str(tmp_path / "x")))
    res = delete_episodes(store.root, EpisodeSelection(episodes="0"), EditTarget(out=str(tmp_path / "x"),
                                                                                 dry_run=True))
    assert "would delete-episodes" in res.summary() and "ep00" in res.summary()
    assert res.outputs[0]["num_episodes"] == 5 and not (tmp_path / "x").exists()


def test_in_place_delete(tmp_path, episodes) -> None:
    src = _write(tmp_path / "s", episodes[:4])
    delete_episodes(src.root, EpisodeSelection(episodes="2"), EditTarget(in_place=True))
    after = EpisodicStore(tmp_path / "s")
    assert after.episode_keys == ["ep00", "ep01", "ep03"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old store left behind
    _assert_same_store(after, _write(tmp_path / "fresh", [episodes[i] for i in (0, 1, 3)]))


def test_split_partitions_episodes(tmp_path, store, episodes) -> None:
    res = split_store(store.root, [(str(tmp_path / "a"), 0.5), (str(tmp_path / "b"), 0.5)], seed=0,
                      target=EditTarget())
    a, b = EpisodicStore(tmp_path / "a"), EpisodicStore(tmp_path / "b")
    assert a.num_episodes == b.num_episodes == 3 and len(res.outputs) == 2
    assert sorted(a.episode_keys + b.episode_keys) == store.episode_keys
    for part in (a, b):
        _assert_same_store(part, _write(tmp_path / f"fresh_{Path(part.root).name}",
                                        [e for e in episodes if e.key in part.episode_keys]))
    again = split_store(store.root, [("x", 0.5), ("y", 0.5)], seed=0, target=EditTarget(dry_run=True))
    assert again.changes[0].endswith(res.changes[0].split(": ")[1])  # the same seed gives the same split
    with pytest.raises(ConfigError, match="summing to 1"):
        split_store(store.root, [("x", 0.5), ("y", 0.4)], seed=0, target=EditTarget(dry_run=True))


def test_merge_equals_fresh_ingest_of_union(tmp_path, episodes) -> None:
    wide = [_episode(i, shift=5.0) for i in range(6, 9)]  # a value range far outside the first store's
    a = _write(tmp_path / "a", [episodes[i] for i in (0, 2, 4)])
    b = _write(tmp_path / "b", [episodes[i] for i in (1, 3, 5)], codec="zstd")  # frames re-encoded to lz4
    c = _write(tmp_path / "c", wide)
    # a merge keeps each input's split; drawn anew (val_fraction, as _write's) it is a fresh ingest's
    merge_stores([a.root, b.root], EditTarget(out=str(tmp_path / "ab")), val_fraction=0.25)
    merge_stores([str(tmp_path / "ab"), c.root], EditTarget(out=str(tmp_path / "abc")), val_fraction=0.25)
    merge_stores([c.root, b.root, a.root], EditTarget(out=str(tmp_path / "cba")), val_fraction=0.25)
    fresh = _write(tmp_path / "fresh", episodes + wide)
    _assert_same_store(EpisodicStore(tmp_path / "abc"), fresh)   # repeated incremental merges
    _assert_same_store(EpisodicStore(tmp_path / "cba"), fresh)   # order of the inputs does not matter
    merged = EpisodicStore(tmp_path / "abc")
    row = int(merged.episode_starts[merged.episode_keys.index("ep06")])
    assert _chunk_bytes(merged, "obs.rgb.top", row) == _chunk_bytes(c, "obs.rgb.top", 0)
    np.testing.assert_array_equal(merged.episode_meta(3)["cameras"]["top"]["K"], np.eye(3) * 4)


def test_merge_keeps_keys_unique(tmp_path, episodes) -> None:
    a = _write(tmp_path / "a", episodes[:2])
    b = _write(tmp_path / "b", episodes[:2])
    merge_stores([a.root, b.root], EditTarget(out=str(tmp_path / "m")))
    assert EpisodicStore(tmp_path / "m").episode_keys == ["a/ep00", "a/ep01", "b/ep00", "b/ep01"]


def test_merge_reports_every_mismatch(tmp_path, episodes) -> None:
    a = _write(tmp_path / "a", episodes[:2])
    other = Schema({**SCHEMA.fields, "obs.eef_pos": FieldSpec("float32", (3,), "mm", "vector"),
                    "action": FieldSpec("float64", (7,), "rad", "vector"),
                    "obs.extra": FieldSpec("float32", (), None, "scalar")})
    b_path = tmp_path / "b"
    with EpisodicWriter(b_path, other) as w:
        ep = episodes[2]
        w.write(Episode(ep.key, {**ep.steps, "action": np.zeros((ep.num_steps, 7)),
                                 "obs.extra": np.zeros(ep.num_steps, np.float32)}, ep.meta))
    with pytest.raises(SchemaError) as err:
        merge_stores([a.root, str(b_path)], EditTarget(out=str(tmp_path / "m")))
    msg = str(err.value)
    assert "obs.eef_pos: unit 'm'" in msg and "'mm'" in msg and "action: shape (4,)" in msg
    assert "obs.extra: only in" in msg and not (tmp_path / "m").exists()


def test_rename_and_drop_field(tmp_path, store) -> None:
    rename_field(store.root, "obs.gripper", "obs.gripper_pos", EditTarget(out=str(tmp_path / "r")))
    r = EpisodicStore(tmp_path / "r")
    assert "obs.gripper_pos" in r.schema and "obs.gripper" not in r.schema
    assert r.stats["fields"]["obs.gripper_pos"] == store.stats["fields"]["obs.gripper"]
    np.testing.assert_array_equal(r.read_rows("obs.gripper_pos", 0, 20), store.read_rows("obs.gripper", 0, 20))
    drop_field(store.root, "obs.rgb.top", EditTarget(out=str(tmp_path / "d")))
    d = EpisodicStore(tmp_path / "d")
    assert "obs.rgb.top" not in d.schema and "obs.rgb.top" not in d.stats["fields"]
    assert d.stats["fields"]["action"] == store.stats["fields"]["action"]
    with pytest.raises(ConfigError, match="exists already"):
        rename_field(store.root, "obs.gripper", "action", EditTarget(out=str(tmp_path / "x")))


def test_recompute_stats_is_idempotent(tmp_path, episodes) -> None:
    s = _write(tmp_path / "s", episodes[:3])
    before = json.dumps(s.stats, sort_keys=True)
    recompute_stats(s.root)
    assert json.dumps(EpisodicStore(s.root).stats, sort_keys=True) == before


def test_cli_edit(tmp_path, store) -> None:
    dry = run_cli("edit", "delete-episodes", store.root, "--episodes", "0-1,99", "--out", tmp_path / "o",
                  "--dry-run")
    assert dry.returncode == 1 and "[99] out of range" in dry.stderr and not (tmp_path / "o").exists()
    done = run_cli("edit", "split", store.root, "--out", f"{tmp_path / 'a'}:0.5", "--out", f"{tmp_path / 'b'}:0.5",
                   "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert EpisodicStore(tmp_path / "a").num_episodes == 3


def test_yam_merge_and_delete_equal_fresh_ingest(tmp_path, yam_raw) -> None:
    """Real YAM episodes (shared data, one camera at 80x60): ingest {0, 2} and {1}, merge, and compare with
    ingesting all three at once; then delete episode 1 from the merge and compare with the {0, 2} ingest."""
    raw = yam_raw(3)
    eps = sorted(p.parent for p in raw.rglob("metadata.json"))
    stats = StatsConfig(kmeans_clusters=4)

    def ingest(root: Path, out: str) -> EpisodicStore:
        cfg = YamConfig(root=root, cameras=("top",), image_size=(80, 60))
        run_ingest(YamSource(cfg), IngestConfig(out=tmp_path / out, stats=stats))
        return EpisodicStore(tmp_path / out)

    fresh = ingest(raw, "fresh")
    for i, ep in enumerate(eps):
        dest = tmp_path / f"h{i % 2}" / ep.relative_to(raw)
        dest.parent.mkdir(parents=True, exist_ok=True)
        ep.rename(dest)
    even, odd = ingest(tmp_path / "h0", "even"), ingest(tmp_path / "h1", "odd")
    merge_stores([odd.root, even.root], EditTarget(out=str(tmp_path / "m")))
    merged = EpisodicStore(tmp_path / "m")
    assert fresh.num_episodes == 3 and "obs.rgb.top" in fresh.schema
    _assert_same_store(merged, fresh)
    delete_episodes(merged.root, EpisodeSelection(keys=[odd.episode_keys[0]]), EditTarget(out=str(tmp_path / "d")))
    _assert_same_store(EpisodicStore(tmp_path / "d"), even)


def _tokens(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in backbone: each frame's 2x2 patch means per channel, (n, 4, 3), and their mean, (n, 3)."""
    x = frames.astype(np.float32).reshape(len(frames), 2, 6, 2, 8, 3).mean(axis=(2, 4)).reshape(len(frames), 4, 3)
    return x, x.mean(axis=1)


def _features(store: EpisodicStore, out: Path) -> Path:
    key = {"source_fingerprint": manifest_fingerprint(store.manifest), "source_num_steps": store.num_steps,
           "field": "obs.rgb.top", "model": {"spec": "patch-means"}, "dtype": "float32"}
    lay = FeatureLayout(num_samples=store.num_steps, grid=(2, 2), embed_dim=3, patch_size=8, dtype="float32",
                        batch_size=8)
    with FeatureWriter(out, key=key, layout=lay,
                       config=FeatureWriterConfig(episode_ends=store.episode_ends.tolist(),
                                                  source={"path": str(store.root),
                                                          "episode_keys": store.episode_keys})) as w:
        for a, b in w.layout.batches():
            patch, cls = _tokens(store.read_rows("obs.rgb.top", a, b))
            write_batch(w.path, a, patch, cls, np.zeros(b - a, bool))
    return out


def test_features_follow_merge_and_delete(tmp_path, episodes) -> None:
    a = _write(tmp_path / "a", [episodes[i] for i in (0, 3, 4)])
    b = _write(tmp_path / "b", [episodes[i] for i in (1, 2)])
    fa, fb = _features(a, tmp_path / "a.dino"), _features(b, tmp_path / "b.dino")
    merge_stores([a.root, b.root], EditTarget(out=str(tmp_path / "m"), features=[str(fa), str(fb)],
                                              features_out=[str(tmp_path / "m.dino")]))
    merged = EpisodicStore(tmp_path / "m")
    got, want = FeatureStore(tmp_path / "m.dino"), FeatureStore(_features(merged, tmp_path / "fresh.dino"))
    assert got.key == want.key  # keyed by the merged store's provenance: `ingest dino` would resume it
    n = merged.num_steps
    np.testing.assert_array_equal(got.patch_tokens(0, n), want.patch_tokens(0, n))
    np.testing.assert_array_equal(got.cls_token(0, n), want.cls_token(0, n))
    np.testing.assert_array_equal(got.episode_ends, merged.episode_ends)
    report = verify_store(got.path)  # its token chunks have checksums, as a fresh `ingest dino`'s
    assert report.ok and not report.warnings, report.summary()
    np.testing.assert_array_equal(read_crc32c(got.path, CHUNK_CRC, "patch_tokens"),
                                  read_crc32c(want.path, CHUNK_CRC, "patch_tokens"))
    # in place: the store and its features edited together
    delete_episodes(merged.root, EpisodeSelection(keys=["ep01"]), EditTarget(in_place=True,
                                                                             features=[str(tmp_path / "m.dino")]))
    after, feats = EpisodicStore(tmp_path / "m"), FeatureStore(tmp_path / "m.dino")
    assert feats.key["source_fingerprint"] == manifest_fingerprint(after.manifest)
    assert feats.key["source_fingerprint"] == FrameReader(after.root, "obs.rgb.top").fingerprint()  # ingest dino's
    np.testing.assert_array_equal(feats.patch_tokens(0, after.num_steps),
                                  _tokens(after.read_rows("obs.rgb.top", 0, after.num_steps))[0])
    assert verify_store(feats.path).ok
    # a token damaged in an input since it was written is refused, not copied under new checksums
    row = int(b.episode_starts[1]) + 2
    shard = Path(shard_file(str(fb / "cls_token"), 0, 2))
    off, n = read_shard_index(shard, FeatureStore(fb).layout.shard_rows)[row]
    data = bytearray(shard.read_bytes())
    data[int(off) + int(n) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"differs from the one recorded at ingest .* \(row {row}\) .*"
                                         r"field=dino.cls_token, episode=ep02 \(index 1\), step=2"):  # read check
        merge_stores([a.root, b.root], EditTarget(out=str(tmp_path / "y"), features=[str(fa), str(fb)],
                                                  features_out=[str(tmp_path / "y.dino")]))
    with pytest.raises(ConfigError, match="was not computed from"):
        merge_stores([a.root, b.root], EditTarget(out=str(tmp_path / "x"), features=[str(fb), str(fa)],
                                                  features_out=[str(tmp_path / "x.dino")]))


def test_official_split_is_kept_by_episode(tmp_path, episodes) -> None:
    """A split that is not the seeded hash (NYU's official one, `extra.split_source`) survives an edit:
    each kept episode stays in train or val."""
    src = _write(tmp_path / "s", episodes[:5])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["split"] = {"train": [1, 2, 4], "val": [0, 3]}
    manifest["extra"]["split_source"] = "official"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    delete_episodes(src.root, EpisodeSelection(keys=["ep02"]), EditTarget(out=str(tmp_path / "d")))
    out = EpisodicStore(tmp_path / "d")
    assert out.episode_keys == ["ep00", "ep01", "ep03", "ep04"]
    assert out.split == {"train": [1, 3], "val": [0, 2]} and out.manifest["extra"]["split_source"] == "official"
    assert out.stats["split"] == out.split and out.stats["num_episodes"] == 2


def _video_files(store: EpisodicStore) -> dict[tuple[str, str], bytes]:
    """(field, episode key) -> bytes of the episode's MP4, for every video field of the store."""
    return {(f, key): (Path(store.root) / "data" / f / "video" / f"{e:06d}.mp4").read_bytes()
            for f in store.schema.keys() if (Path(store.root) / "data" / f / "video").is_dir()
            for e, key in enumerate(store.episode_keys)}


def _round_trip(tmp_path: Path, store: EpisodicStore) -> None:
    """Split 50/50 and merge back, and delete episode 0 / every other episode and merge back: each gives
    the store itself, data and stats value for value."""
    a, b = str(tmp_path / "rt_a"), str(tmp_path / "rt_b")
    split_store(store.root, [(a, 0.5), (b, 0.5)], seed=1, target=EditTarget())
    merge_stores([b, a], EditTarget(out=str(tmp_path / "rt_m")))
    _assert_same_store(EpisodicStore(tmp_path / "rt_m"), store)
    assert verify_store(tmp_path / "rt_m").ok
    assert _video_files(EpisodicStore(tmp_path / "rt_m")) == _video_files(store)  # MP4s copied, not re-encoded
    rest, first = str(tmp_path / "rt_rest"), str(tmp_path / "rt_first")
    delete_episodes(store.root, EpisodeSelection(episodes="0"), EditTarget(out=rest))
    delete_episodes(store.root, EpisodeSelection(episodes=f"1-{store.num_episodes - 1}"), EditTarget(out=first))
    merge_stores([rest, first], EditTarget(out=str(tmp_path / "rt_d")))
    _assert_same_store(EpisodicStore(tmp_path / "rt_d"), store)


@pytest.mark.parametrize("source", ["lerobot_g1", "libero", "libero_video", "robosuite"])
def test_real_and_libero_stores_round_trip(tmp_path, shared_data, source) -> None:
    out = tmp_path / "s"
    if source == "robosuite":  # the real raw robosuite demos of ../shared/data (2 demos, states only)
        proc = run_cli("ingest", "libero", shared_data / "robosuite_hdf5" / "robosuite_SawyerLift.hdf5", "--out", out)
        assert proc.returncode == 0, proc.stderr
        store = EpisodicStore(out)
        assert store.num_episodes == 2 and not store.schema.of_kind("image")
        _round_trip(tmp_path, store)
        return
    if source == "lerobot_g1":
        proc = run_cli("ingest", "lerobot", shared_data / "lerobot" / "unitree_g1_inspire_v2.1", "--out", out,
                       "--image-size", "160x120", "--frame-codec", "zstd")
        assert proc.returncode == 2, proc.stderr  # the sample holds 2 of its 100 episodes
    else:
        write_libero_file(tmp_path / "pick_demo.hdf5", num_demos=4, steps=12, size=32)
        codec = ["--frame-codec", "video"] if source == "libero_video" else []
        proc = run_cli("ingest", "libero", tmp_path / "pick_demo.hdf5", "--out", out, *codec)
        assert proc.returncode == 0, proc.stderr
    store = EpisodicStore(out)
    assert store.num_episodes >= 2 and store.schema.of_kind("image")
    assert bool(_video_files(store)) == (source == "libero_video")
    _round_trip(tmp_path, store)


def test_real_nyu_stores_do_not_merge_across_sizes(tmp_path, shared_data) -> None:
    stores = []
    for name in ("mmseg_bts_style", "open3d_raw_kinect"):
        proc = run_cli("ingest", "nyu", shared_data / "nyu_depth_v2" / name, "--out", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        stores.append(str(tmp_path / name))
        assert verify_store(tmp_path / name).ok
    with pytest.raises(SchemaError) as err:
        merge_stores(stores, EditTarget(out=str(tmp_path / "m")))
    assert "obs.rgb: shape" in str(err.value) and "obs.depth: shape" in str(err.value)


def _mp4(store: EpisodicStore, key: str) -> bytes:
    folder = Path(store.root) / "data" / "obs.rgb.top" / "video"
    return (folder / f"{store.episode_keys.index(key):06d}.mp4").read_bytes()


def _assert_videos_copied(out: EpisodicStore, *sources: EpisodicStore) -> None:
    """Each episode of `out` has its source's MP4 bytes and decoded frames, and `out` verifies clean."""
    for src in sources:
        for e, key in enumerate(src.episode_keys):
            if key in out.episode_keys:
                assert _mp4(out, key) == _mp4(src, key)
                np.testing.assert_array_equal(out.read(out.episode_keys.index(key), ["obs.rgb.top"])["obs.rgb.top"],
                                              src.read(e, ["obs.rgb.top"])["obs.rgb.top"])
    report = verify_store(out.root)
    assert report.ok and not report.warnings, report.summary()


def test_video_fields_are_copied_as_mp4_files(tmp_path, episodes, caplog) -> None:
    """A `video` field is copied file for file on delete, split and merge (repeated, edited inputs too): the
    result equals a fresh video ingest of its episodes, MP4 bytes, frames and stats."""
    src = _write(tmp_path / "src", episodes, codec="video")
    with caplog.at_level("WARNING", logger="shardyard.tools.edit_copy"):
        delete_episodes(src.root, EpisodeSelection(episodes="1,4"), EditTarget(out=str(tmp_path / "d")))
        split_store(src.root, [(str(tmp_path / "a"), 0.5), (str(tmp_path / "b"), 0.5)], seed=0, target=EditTarget())
        merge_stores([str(tmp_path / "b"), str(tmp_path / "a")], EditTarget(out=str(tmp_path / "m")))
    assert "re-encoded" not in caplog.text
    for name in ("d", "a", "b", "m"):
        out = EpisodicStore(tmp_path / name)
        assert json.loads((Path(out.root) / "data/obs.rgb.top/zarr.json").read_text())["attributes"][
            "frame_codec"]["name"] == "video"
        _assert_videos_copied(out, src)
        # an edit keeps each episode's split: the fresh ingest is given the same one
        _assert_same_store(out, _write(tmp_path / f"fresh_{name}", [e for e in episodes if e.key in out.episode_keys],
                                       codec="video", split=out.split))


def test_video_copies_keep_a_non_default_gop_and_crf(tmp_path, episodes, caplog) -> None:
    """A store encoded with `video:28:8` (not the defaults) is edited by copying its MP4s: the output keeps
    CRF 28 and GOP 8 instead of re-encoding to the current defaults."""
    src = _write(tmp_path / "src", episodes, codec="video:28:8")
    with caplog.at_level("WARNING", logger="shardyard.tools.edit_copy"):
        delete_episodes(src.root, EpisodeSelection(episodes="2"), EditTarget(out=str(tmp_path / "d")))
    assert "re-encoded" not in caplog.text
    out = EpisodicStore(tmp_path / "d")
    codec = json.loads((Path(out.root) / "data/obs.rgb.top/zarr.json").read_text())["attributes"]["frame_codec"]
    assert (codec["crf"], codec["gop"]) == (28, 8)
    _assert_videos_copied(out, src)


def test_video_merge_with_other_codec_reencodes_only_those(tmp_path, episodes, caplog) -> None:
    """Merging a video store with an lz4 one: the output takes the first input's codec; the video episodes
    keep their MP4 bytes, the lz4 ones are encoded (with a warning), as a fresh video ingest would."""
    v = _write(tmp_path / "v", [episodes[i] for i in (0, 2, 4)], codec="video")
    raw = _write(tmp_path / "raw", [episodes[i] for i in (1, 3)])
    with caplog.at_level("WARNING", logger="shardyard.tools.edit_copy"):
        merge_stores([v.root, raw.root], EditTarget(out=str(tmp_path / "m")), val_fraction=0.25)
    assert "frames are re-encoded" in caplog.text
    merged = EpisodicStore(tmp_path / "m")
    _assert_videos_copied(merged, v)
    _assert_same_store(merged, _write(tmp_path / "fresh", episodes[:5], codec="video"))
