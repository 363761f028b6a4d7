"""Snapshot reads (issue 25, item 4; `stores.snapshot`): a reader that opened a store serves the version it
opened, whole, or raises `StoreChangedError` naming the store; never a sample mixed from two versions, never
the new version's rows at the old version's indices. The swaps are the real ones: `shardyard edit ...
--in-place` (with its feature store) and `shardyard recode` run as subprocesses while DataLoader workers
read, `pull` over an open store, and a shard store swapped under a `ClipStream`."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shardyard.errors import StoreChangedError
from shardyard.loaders.episodes import EpisodeDataset
from shardyard.loaders.streaming import ClipStream
from shardyard.loaders.tokens import TokenDataset
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.features import FeatureLayout, FeatureStore, FeatureWriter, FeatureWriterConfig, write_batch
from shardyard.stores.manifest import Manifest, manifest_fingerprint
from shardyard.stores.remote import pull, push
from shardyard.stores.stats import StatsConfig, compute_stats
from shardyard.stores.wds import Sample, ShardWriter
from tests.clipfactory import CLIPS, encode_clip
from tests.conftest import run_cli

SCHEMA = Schema({
    "action": FieldSpec("float32", (3,), "m", "vector"),
    "obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
})
EPISODES, STEPS = 8, 24
DELTAS = {"obs.rgb.top": [0], "action": [0, 1]}


def _episode(i: int) -> Episode:
    """Every row unique: the action holds (episode, step, 7), the frame random per (episode, step)."""
    t = np.arange(STEPS)
    action = np.stack([np.full(STEPS, i), t, np.full(STEPS, 7)], axis=1).astype(np.float32)
    frames = np.random.default_rng(i).integers(0, 256, size=(STEPS, 12, 16, 3), dtype=np.uint8)
    return Episode(key=f"ep{i:02d}", steps={"action": action, "obs.rgb.top": frames}, meta={"fps": 10.0})


def _write_store(path: Path) -> EpisodicStore:
    stats = StatsConfig(kmeans_clusters=2, image_frame_stride=4, image_pixel_stride=4)
    cfg = EpisodicWriterConfig(frame_codec="lz4", config={"frame_codec": "lz4"})
    with EpisodicWriter(path, SCHEMA, config=cfg, stats_fn=lambda s: compute_stats(s, stats)) as w:
        for i in range(EPISODES):
            w.write(_episode(i))
    return EpisodicStore(path)


def _write_features(store: EpisodicStore, out: Path) -> Path:
    """A feature store of `store` keyed as `ingest dino` keys one (so `edit --features` edits it along):
    each sample's tokens are its frame's mean and its global row."""
    key = {"source_fingerprint": manifest_fingerprint(store.manifest), "source_num_steps": store.num_steps,
           "field": "obs.rgb.top", "model": {"spec": "row-ids"}, "dtype": "float32"}
    layout = FeatureLayout(num_samples=store.num_steps, grid=(1, 2), embed_dim=2, patch_size=8, dtype="float32",
                           batch_size=16)
    cfg = FeatureWriterConfig(episode_ends=store.episode_ends.tolist(),
                              source={"path": store.root, "episode_keys": store.episode_keys})
    with FeatureWriter(out, key=key, layout=layout, config=cfg) as w:
        for a, b in w.layout.batches():
            mean = store.read_rows("obs.rgb.top", a, b).reshape(b - a, -1).mean(axis=1)
            cls = np.stack([mean, np.arange(a, b)], axis=1).astype(np.float32)
            write_batch(w.path, a, np.repeat(cls[:, None, :], 2, axis=1), cls, np.zeros(b - a, bool))
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A store and its feature store, written once; each test edits a copy."""
    root = tmp_path_factory.mktemp("snapshot")
    _write_features(_write_store(root / "store"), root / "store.dino")
    return root


def _copy(pristine: Path, dest: Path) -> tuple[Path, Path]:
    shutil.copytree(pristine / "store", dest / "store")
    shutil.copytree(pristine / "store.dino", dest / "store.dino")
    return dest / "store", dest / "store.dino"


def _old_rows(store: EpisodicStore) -> dict[str, np.ndarray]:
    """An independent read of a whole store: field -> all rows."""
    return {f: store.read_rows(f, 0, store.num_steps) for f in store.schema.keys()}


def _check_episode_batch(batch: dict, old: dict[str, np.ndarray], ends: np.ndarray) -> int:
    """Assert every sample equals the old store's rows at its index (frame and both action rows)."""
    rows = batch["index"].numpy()
    last = ends[np.searchsorted(ends, rows, side="right")] - 1
    np.testing.assert_array_equal(batch["obs.rgb.top"][:, 0].permute(0, 2, 3, 1).numpy(), old["obs.rgb.top"][rows])
    want = np.stack([old["action"][rows], old["action"][np.minimum(rows + 1, last)]], axis=1)
    np.testing.assert_array_equal(batch["action"].numpy(), want)
    return len(rows)


def _check_token_batch(batch: dict, old_cls: np.ndarray, old: dict[str, np.ndarray]) -> int:
    rows = batch["index"].numpy()
    np.testing.assert_array_equal(batch["dino.cls_token"].numpy(), old_cls[rows])
    np.testing.assert_array_equal(batch["dino.patch_tokens"].numpy(), np.repeat(old_cls[rows][:, None], 2, axis=1))
    np.testing.assert_array_equal(batch["action"].numpy(), old["action"][rows])
    return len(rows)


def _epoch(ds, check, *where: Path, **loader) -> tuple[int, bool]:
    """One epoch through a 2-worker DataLoader: (samples checked, True when it ended in StoreChangedError
    naming one of the stores `where`)."""
    n = 0
    try:
        for batch in DataLoader(ds, batch_size=8, num_workers=2, shuffle=True, **loader):
            n += check(batch)
    except StoreChangedError as e:
        assert any(f"[file={w}]" in str(e) for w in where) and "open it again" in str(e), str(e)
        return n, True
    return n, False


def test_edit_in_place_under_running_dataloaders(pristine, tmp_path) -> None:
    src, feats = _copy(pristine, tmp_path)
    old_store = EpisodicStore(shutil.copytree(src, tmp_path / "old"))  # what the readers opened, kept aside
    old, ends = _old_rows(old_store), old_store.episode_ends
    old_cls = FeatureStore(shutil.copytree(feats, tmp_path / "old.dino")).cls_token(0, old_store.num_steps)
    episodes = EpisodeDataset(str(src), DELTAS)
    tokens = TokenDataset(str(feats), store=str(src), fields=["action"])
    proc = subprocess.Popen([sys.executable, "-m", "shardyard.cli", "edit", "delete-episodes", str(src),
                             "--episodes", "0", "--in-place", "--features", str(feats)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def both_epochs() -> tuple[tuple[int, bool], tuple[int, bool]]:
        return (_epoch(episodes, lambda b: _check_episode_batch(b, old, ends), src),
                _epoch(tokens, lambda b: _check_token_batch(b, old_cls, old), feats, src))

    runs = [both_epochs()]
    while proc.poll() is None and not (runs[-1][0][1] and runs[-1][1][1]):  # epochs before and during the swap
        runs.append(both_epochs())
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    runs.append(both_epochs())  # after: each epoch's workers open their files afresh, and must refuse
    for reader in (0, 1):
        refused = [r[reader][1] for r in runs]
        # read after the swap: refused, and from the first refusal on, every epoch is (until reopened)
        assert refused[-1] and all(refused[refused.index(True):]), runs
        assert all(n == len(episodes) for n, bad in (r[reader] for r in runs) if not bad)  # else all served
    # reopened: the new store, whose row r is the old row r + 24 (episode 0 deleted)
    new, new_tokens = EpisodeDataset(str(src), DELTAS), TokenDataset(str(feats), store=str(src), fields=["action"])
    assert len(new) == len(episodes) - STEPS and len(new_tokens) == len(new)
    shifted = {k: v[STEPS:] for k, v in old.items()}
    n, refused = _epoch(new, lambda b: _check_episode_batch(b, shifted, ends[1:] - STEPS), src)
    assert (n, refused) == (len(new), False)
    n, refused = _epoch(new_tokens, lambda b: _check_token_batch(b, old_cls[STEPS:], shifted), feats)
    assert (n, refused) == (len(new), False)


def test_recode_in_place_mid_epoch_with_persistent_workers(pristine, tmp_path) -> None:
    src, _ = _copy(pristine, tmp_path)
    old_store = EpisodicStore(shutil.copytree(src, tmp_path / "old"))
    old, ends = _old_rows(old_store), old_store.episode_ends
    ds = EpisodeDataset(str(src), DELTAS)
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True, prefetch_factor=1)
    it = iter(loader)
    served = sum(_check_episode_batch(next(it), old, ends) for _ in range(3))  # workers hold caches and handles
    run_cli("recode", src, "--frame-codec", "jpeg:50", check=True)  # swapped while the workers wait
    with pytest.raises(StoreChangedError, match="store changed since it was opened"):
        for batch in it:  # at most the 2 batches the workers had prefetched come from before the swap
            served += _check_episode_batch(batch, old, ends)
    assert served <= 5 * 8
    with pytest.raises(StoreChangedError):  # a new epoch on the same workers: still the old version's reader
        next(iter(loader))
    new = EpisodicStore(src)
    assert new.manifest["generation"] != old_store.manifest["generation"]
    frames = new.read_rows("obs.rgb.top", 0, new.num_steps)
    assert not np.array_equal(frames, old["obs.rgb.top"])  # JPEG at quality 50: other pixels
    batch = next(iter(DataLoader(EpisodeDataset(str(src), DELTAS), batch_size=8, num_workers=2)))
    rows = batch["index"].numpy()
    np.testing.assert_array_equal(batch["obs.rgb.top"][:, 0].permute(0, 2, 3, 1).numpy(), frames[rows])
    np.testing.assert_array_equal(batch["action"][:, 0].numpy(), old["action"][rows])


def test_pull_over_an_open_store_and_same_version_rewrites(pristine, tmp_path) -> None:
    src, _ = _copy(pristine, tmp_path)
    reader = EpisodicStore(src)
    first = reader.read(1)
    spawned = copy.deepcopy(reader)  # what a spawned DataLoader worker gets: the state pickling carries
    # the manifest rewritten for the same data (`shardyard stats` with a new split): not a change
    manifest = Manifest.from_dict(json.loads((src / "manifest.json").read_text()))
    manifest.split = {"train": list(range(EPISODES)), "val": []}
    (src / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    np.testing.assert_array_equal(reader.read(1)["action"], first["action"])
    # another version pulled over it: its manifest goes first, so the next read refuses
    other = tmp_path / "other"
    shutil.copytree(src, other)
    run_cli("edit", "delete-episodes", other, "--episodes", "1", "--in-place", check=True)
    push(other, str(tmp_path / "remote"))
    pull(str(tmp_path / "remote"), src)
    with pytest.raises(StoreChangedError) as e:
        reader.read(1)
    assert e.value.path == str(src)
    with pytest.raises(StoreChangedError):  # sticky: the opened version is gone for this reader
        reader.read_rows("action", 0, 1)
    with pytest.raises(StoreChangedError):  # a worker's first read, its low-dim arrays loaded after the pull
        spawned.read_rows("action", 0, 1)
    again = EpisodicStore(src)
    assert again.num_episodes == EPISODES - 1
    np.testing.assert_array_equal(again.read(1)["action"][:, 0], np.full(STEPS, 2))  # old episode 2


def test_clip_stream_over_a_swapped_shard_store(tmp_path) -> None:
    spec = CLIPS["mp4_h264_bframes"]
    data, ext = encode_clip(spec)[0], spec.ext

    def write(root: Path, captions: str) -> None:
        with ShardWriter(root) as w:
            for si in range(2):
                w.write_shard(si, [Sample(f"{si}{j}", {ext: data, "txt": f"{captions}{si}{j}".encode()})
                                   for j in range(2)], [])

    write(tmp_path / "clips", "a")
    write(tmp_path / "clips.new", "b")
    stream = ClipStream(str(tmp_path / "clips"), num_frames=2, shuffle_buffer=0, seed=0)
    got = iter(stream)
    assert next(got)["caption"].startswith("a")
    os.rename(tmp_path / "clips", tmp_path / "clips.old")  # the swap `edit --in-place` does
    os.rename(tmp_path / "clips.new", tmp_path / "clips")
    with pytest.raises(StoreChangedError, match="changed since it was opened"):
        next(got)
    assert [s["caption"][0] for s in ClipStream(str(tmp_path / "clips"), num_frames=2, shuffle_buffer=0)] == ["b"] * 4
    assert torch.is_tensor(next(iter(ClipStream(str(tmp_path / "clips"), num_frames=2)))["frames"])
