"""EpisodeDataset over a tiny real episodic store: windows and `*_is_pad` against a per-episode reference read,
delta_timestamps, split and episode selection, normalisation and its inverse, relative actions and their
stats, DataLoader workers with the resumable sampler, and the `shardyard.loaders` exports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from shardyard import open_store
from shardyard.errors import ConfigError
from shardyard.loaders import BatchStream, EpisodeDataset, EpisodeDatasetConfig, ResumableSampler, normalize_images
from shardyard.loaders.episodes import gather_rows
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.stats import compute_stats

LENGTHS = (9, 14, 6, 11)
SCHEMA = Schema({
    "obs.rgb.cam_high": FieldSpec("uint8", (6, 8, 3), None, "image"),
    "obs.state": FieldSpec("float32", (3,), "rad", "vector"),
    "action": FieldSpec("float32", (3,), "rad", "vector"),
    "timestamp": FieldSpec("float32", (), "s", "scalar"),
})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """4 episodes at 10 Hz; action and state are random walks, frames random; stats on the train split."""
    path = tmp_path_factory.mktemp("episodes") / "store"
    cfg = EpisodicWriterConfig(val_fraction=0.25, split_seed=0)
    with EpisodicWriter(path, SCHEMA, config=cfg, stats_fn=compute_stats) as w:
        for i, T in enumerate(LENGTHS):
            rng = np.random.default_rng(i)
            state = np.cumsum(rng.normal(size=(T, 3)), 0).astype(np.float32)
            w.write(Episode(key=f"ep{i:03d}", steps={
                "obs.rgb.cam_high": rng.integers(0, 256, (T, 6, 8, 3), dtype=np.uint8),
                "obs.state": state,
                "action": (state + rng.normal(scale=0.1, size=(T, 3))).astype(np.float32),
                "timestamp": (np.arange(T) / 10.0).astype(np.float32),
            }, meta={"task": f"task {i}", "fps": 10.0}))
    return str(path)


def reference(store, name, deltas, e, t):
    """Window of `name` at step `t` of episode `e` read the slow way, with LeRobot's padding rule."""
    x = store.read(e, [name])[name]
    want = t + np.asarray(deltas)
    return x[np.clip(want, 0, len(x) - 1)], (want < 0) | (want >= len(x))


def test_contract_sample_through_dataloader_with_two_workers(store_path):
    ds = EpisodeDataset(store_path, deltas={"observation.images.cam_high": [0], "action": range(16)})
    store = open_store(store_path)
    assert len(ds) == sum(LENGTHS)
    s = ds[12]
    assert s["observation.images.cam_high"].dtype == torch.uint8
    assert s["observation.images.cam_high"].shape == (1, 3, 6, 8)
    assert s["action"].dtype == torch.float32 and s["action"].shape == (16, 3)
    assert s["action_is_pad"].shape == (16,) and s["action_is_pad"].dtype == torch.bool
    assert all(isinstance(s[k], int) for k in ("episode_index", "frame_index", "index"))
    sampler = ResumableSampler(len(ds), seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["observation.images.cam_high"].shape[1:] == (1, 3, 6, 8)
        for j in range(len(batch["index"])):
            e, t = int(batch["episode_index"][j]), int(batch["frame_index"][j])
            assert int(batch["index"][j]) == store.episode_starts[e] + t
            act, pad = reference(store, "action", range(16), e, t)
            np.testing.assert_array_equal(batch["action"][j].numpy(), act)
            np.testing.assert_array_equal(batch["action_is_pad"][j].numpy(), pad)
            img, _ = reference(store, "obs.rgb.cam_high", [0], e, t)
            np.testing.assert_array_equal(batch["observation.images.cam_high"][j].numpy(),
                                          img.transpose(0, 3, 1, 2))
            seen.append(int(batch["index"][j]))
    assert sorted(seen) == list(range(sum(LENGTHS)))


@pytest.mark.parametrize("deltas", [[0], [-1, 0], [-3, 2, 5], list(range(-2, 13, 3))])
def test_windows_and_padding_match_reference_at_every_anchor(store_path, deltas):
    ds = EpisodeDataset(store_path, deltas={"obs.state": deltas, "obs.rgb.cam_high": deltas[::-1]})
    store = ds.store
    batch = ds.fetch(np.arange(len(ds))[::-1])                  # reversed order: rows unsorted on purpose
    for j, i in enumerate(range(len(ds))[::-1]):
        e, t = int(ds.episode_of[i]), int(ds.rows[i] - store.episode_starts[ds.episode_of[i]])
        assert (batch["episode_index"][j], batch["frame_index"][j]) == (e, t)
        for name, d in (("obs.state", deltas), ("obs.rgb.cam_high", deltas[::-1])):
            want, pad = reference(store, name, d, e, t)
            np.testing.assert_array_equal(batch[name][j], want)
            np.testing.assert_array_equal(batch[f"{name}_is_pad"][j], pad)
    if min(deltas) < 0:                                          # the first step of an episode pads before it
        assert batch["obs.state_is_pad"][len(ds) - 1][int(np.argmin(deltas))]


@pytest.mark.parametrize("gap", [1, 3, 1000])
def test_gather_rows_any_order_with_repeats(store_path, gap):
    store = open_store(store_path)
    full = store.read_rows("obs.rgb.cam_high", 0, store.num_steps)
    rng = np.random.default_rng(gap)
    for rows in (rng.integers(0, store.num_steps, 37), np.array([5, 5, 4, 30, 31, 32, 0]), np.arange(7)):
        np.testing.assert_array_equal(gather_rows(store, "obs.rgb.cam_high", rows, gap), full[rows])
        np.testing.assert_array_equal(gather_rows(store, "action", rows, gap),
                                      store.read_rows("action", 0, store.num_steps)[rows])


def test_delta_timestamps_are_steps_at_the_store_fps(store_path):
    by_time = EpisodeDataset(store_path, delta_timestamps={"action": [-0.1, 0.0, 0.1, 0.2]})
    by_step = EpisodeDataset(store_path, deltas={"action": [-1, 0, 1, 2]})
    np.testing.assert_array_equal(by_time.deltas["action"], [-1, 0, 1, 2])
    a, b = by_time.fetch(range(len(by_time))), by_step.fetch(range(len(by_step)))
    np.testing.assert_array_equal(a["action"], b["action"])
    np.testing.assert_array_equal(a["action_is_pad"], b["action_is_pad"])
    with pytest.raises(ConfigError, match="not whole steps at 10.0 Hz"):
        EpisodeDataset(store_path, delta_timestamps={"action": [0.0, 0.15]})
    with pytest.raises(ConfigError, match="whole numbers"):
        EpisodeDataset(store_path, deltas={"action": [0.5]})


def test_split_and_episode_selection(store_path):
    store = open_store(store_path)
    train, val = store.split["train"], store.split["val"]
    assert len(val) == 1
    ds = EpisodeDataset(store_path, deltas={"action": [0]}, config=EpisodeDatasetConfig(split="train"))
    assert sorted(set(ds.episode_of.tolist())) == train and len(ds) == sum(LENGTHS[e] for e in train)
    vds = EpisodeDataset(store_path, deltas={"action": [0]}, config=EpisodeDatasetConfig(split="val"))
    assert set(vds.episode_of.tolist()) == set(val)
    keep = [f"ep{train[0]:03d}", train[1]]
    sel = EpisodeDataset(store_path, deltas={"action": [0]},
                         config=EpisodeDatasetConfig(split="train", episodes=keep, include_task=True))
    assert sorted(set(sel.episode_of.tolist())) == sorted(train[:2])
    assert sel[0]["task"] == f"task {sel.episode_of[0]}"
    for bad, match in (({"split": "test"}, "no split"), ({"episodes": ["nope"]}, "no episode 'nope'"),
                       ({"episodes": [99]}, "out of range"), ({"split": "val", "episodes": train}, "no valid")):
        with pytest.raises(ConfigError, match=match):
            EpisodeDataset(store_path, deltas={"action": [0]}, config=EpisodeDatasetConfig(**bad))


@pytest.mark.parametrize("mode,lo,hi", [("mean_std", "mean", "std"), ("min_max", "min", "max"),
                                        ("quantiles", "q01", "q99")])
def test_normalisation_from_stats_json_and_its_inverse(store_path, mode, lo, hi):
    store = open_store(store_path)
    st = store.stats["fields"]["obs.state"]
    ds = EpisodeDataset(store_path, deltas={"observation.state": [-1, 0], "action": [0]},
                        config=EpisodeDatasetConfig(normalization={"observation.state": mode}))
    raw = EpisodeDataset(store_path, deltas={"observation.state": [-1, 0]})
    x, r = ds.fetch(range(len(ds)))["observation.state"], raw.fetch(range(len(raw)))["observation.state"]
    a, b = np.asarray(st[lo]), np.asarray(st[hi])
    want = (r - a) / b if mode == "mean_std" else (r - (a + b) / 2) / ((b - a) / 2)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.unnormalize("observation.state", x), r, rtol=1e-5, atol=1e-5)
    back = ds.unnormalize("obs.state", torch.from_numpy(x))               # store name, tensor
    np.testing.assert_array_equal(ds.unnormalize("action", x[:, :1]), x[:, :1])   # not normalised: as is
    np.testing.assert_allclose(back.numpy(), r, rtol=1e-5, atol=1e-5)
    train = np.isin(raw.episode_of, store.split["train"])
    if mode == "min_max":                                        # stats are the train split's
        np.testing.assert_allclose(x[train, 1].min(0), -1, atol=1e-5)
        np.testing.assert_allclose(x[train, 1].max(0), 1, atol=1e-5)
    np.testing.assert_array_equal(ds.fetch([3])["action"], raw.store.read_rows("action", 3, 4)[None])
    with pytest.raises(ConfigError, match="images stay uint8"):
        EpisodeDataset(store_path, deltas={"obs.rgb.cam_high": [0]},
                       config=EpisodeDatasetConfig(normalization={"obs.rgb.cam_high": "mean_std"}))
    with pytest.raises(ConfigError, match="unknown normalisation mode"):
        EpisodeDataset(store_path, deltas={"action": [0]}, config=EpisodeDatasetConfig(normalization={"action": "z"}))


def test_relative_actions_with_their_own_stats(store_path):
    store = open_store(store_path)
    cfg = EpisodeDatasetConfig(relative_action=True, normalization={"action": "mean_std"})
    ds = EpisodeDataset(store_path, deltas={"action": range(4), "obs.state": [0]}, config=cfg)
    # hand-made reference over the train split: action[t + k] - state[t] for every in-episode k
    rows = []
    for e in store.split["train"]:
        a, s = store.read(e, ["action"])["action"], store.read(e, ["obs.state"])["obs.state"]
        rows += [a[t + k] - s[t] for t in range(len(a)) for k in range(4) if t + k < len(a)]
    rows = np.asarray(rows, np.float64)
    rs = ds.relative_stats
    assert rs["count"] == [len(rows)]
    np.testing.assert_allclose(rs["mean"], rows.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rs["std"], rows.std(0), rtol=1e-6, atol=1e-6)
    width = (rows.max(0) - rows.min(0)) / 2048
    assert np.all(np.abs(np.asarray(rs["q01"]) - np.quantile(rows, 0.01, axis=0)) <= width + 1e-9)
    batch = ds.fetch(range(len(ds)))
    for i in (0, 7, len(ds) - 1):
        e, t = int(ds.episode_of[i]), int(batch["frame_index"][i])
        act, _ = reference(store, "action", range(4), e, t)
        state = store.read(e, ["obs.state"], t, t + 1)["obs.state"][0]
        np.testing.assert_allclose(batch["action"][i], (act - state - rs["mean"]) / rs["std"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ds.decode_action(batch["action"][i:i + 1], state[None])[0], act, atol=1e-4)
        torch_abs = ds.decode_action(torch.from_numpy(batch["action"][i:i + 1]), torch.from_numpy(state[None]))
        np.testing.assert_allclose(torch_abs[0].numpy(), act, atol=1e-4)
    only0 = EpisodeDataset(store_path, deltas={"action": [0]},
                           config=EpisodeDatasetConfig(relative_action=True, relative_dims=[0]))
    r = only0.fetch([2])["action"][0, 0]
    a, s = store.read_rows("action", 2, 3)[0], store.read_rows("obs.state", 2, 3)[0]
    np.testing.assert_allclose(r, [a[0] - s[0], a[1], a[2]], rtol=1e-6)
    with pytest.raises(ConfigError, match="among the deltas"):
        EpisodeDataset(store_path, deltas={"obs.state": [0]}, config=EpisodeDatasetConfig(relative_action=True))


def test_mid_epoch_resume_through_a_dataloader(store_path):
    ds = EpisodeDataset(store_path, deltas={"action": range(2)})
    s = ResumableSampler(len(ds), seed=11)
    s.set_epoch(1)

    def order(sampler):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
        return [int(i) for b in loader for i in b["index"]]

    full = order(s)
    s2 = ResumableSampler(len(ds), seed=11)
    s2.load_state_dict(s.state_dict(consumed=8))
    assert order(s2) == full[8:] and sorted(full) == list(range(sum(LENGTHS)))
    stream = torch.utils.data.DataLoader(BatchStream(ds, s2, batch_size=4), batch_size=None)   # whole batches
    batches = [b["index"].tolist() for b in stream]
    assert sum(batches, []) == full[8:] and {len(b) for b in batches[:-1]} == {4}


def test_errors_name_the_field(store_path):
    with pytest.raises(ConfigError, match="no field 'observation.images.wrist'"):
        EpisodeDataset(store_path, deltas={"observation.images.wrist": [0]})
    with pytest.raises(ConfigError, match="exactly one"):
        EpisodeDataset(store_path)
    with pytest.raises(ConfigError, match="non-empty"):
        EpisodeDataset(store_path, deltas={"action": []})
    with pytest.raises(IndexError):
        EpisodeDataset(store_path, deltas={"action": [0]})[sum(LENGTHS)]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_normalize_images_on_the_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randint(0, 256, (2, 1, 3, 4, 5), dtype=torch.uint8).to(device)
    y = normalize_images(x)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(3, 1, 1)
    torch.testing.assert_close(y, (x.float() / 255 - mean) / std)
    assert y.device == x.device and y.dtype == torch.float32
    torch.testing.assert_close(normalize_images(x, mean=None), x.float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(x.float())


def test_loaders_exports_every_public_dataset():
    code = ("import sys, shardyard.loaders as L; assert 'torch' not in sys.modules; "
            "missing = [n for n in L.__all__ if getattr(L, n, None) is None]; print(sorted(L.__all__), missing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]")
    import shardyard.loaders as L
    from shardyard.loaders import (  # noqa: F401
        ClipStream,
        EpisodeWindows,
        StreamConfig,
        TokenDataset,
        TokenDatasetConfig,
        WindowConfig,
    )
    for name in ("EpisodeDataset", "EpisodeDatasetConfig", "EpisodeWindows", "WindowConfig", "TokenDataset",
                 "TokenDatasetConfig", "ClipStream", "ResumableSampler"):
        assert name in L.__all__
    with pytest.raises(AttributeError):
        L.NoSuchDataset
