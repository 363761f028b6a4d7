"""TokenDataset over real zarr stores: values, aligned step fields, batched reads, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardyard import open_store
from shardyard.loaders.tokens import TokenDataset, TokenDatasetConfig
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic_writer import EpisodicWriter
from shardyard.stores.features import FeatureLayout, FeatureWriter, FeatureWriterConfig, write_batch

N_EPS, T = 3, 30  # 90 steps


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    schema = Schema({"obs.joint_pos": FieldSpec("float32", (6,), unit="rad"),
                     "obs.rgb.top": FieldSpec("uint8", (8, 8, 3), kind="image")})
    with EpisodicWriter(root / "store", schema) as w:
        for e in range(N_EPS):
            steps = np.arange(e * T, (e + 1) * T)
            w.write(Episode(key=f"ep{e}", steps={
                "obs.joint_pos": np.repeat(steps[:, None], 6, axis=1).astype(np.float32),
                "obs.rgb.top": np.zeros((T, 8, 8, 3), np.uint8)}))
    n = N_EPS * T
    lay = FeatureLayout(num_samples=n, grid=(3, 4), embed_dim=16, patch_size=14, batch_size=8, shard_rows=32)
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((n, 12, 16)).astype(np.float16)
    cls = rng.standard_normal((n, 16)).astype(np.float16)
    missing = np.zeros(n, bool)
    missing[[5, 40]] = True
    with FeatureWriter(root / "feat", key={"k": 0}, layout=lay,
                       config=FeatureWriterConfig(episode_ends=[T * (e + 1) for e in range(N_EPS)])):
        for a, b in lay.batches():
            write_batch(root / "feat", a, patch[a:b], cls[a:b], missing[a:b])
    return root / "store", root / "feat", patch, cls, missing


def test_items_match_arrays_and_aligned_fields(stores):
    store, feat, patch, cls, missing = stores
    ds = TokenDataset(feat, store=store, fields=["obs.joint_pos"])
    assert len(ds) == 90
    item = ds[41]
    assert item["index"] == 41 and item["dino.patch_tokens"].shape == (12, 16)
    assert item["dino.patch_tokens"].dtype == torch.float16
    np.testing.assert_array_equal(item["dino.patch_tokens"].numpy(), patch[41])
    np.testing.assert_array_equal(item["dino.cls_token"].numpy(), cls[41])
    assert item["obs.joint_pos"].tolist() == [41.0] * 6 and not item["dino.missing"]
    assert bool(ds[40]["dino.missing"]) and ds[-1]["index"] == 89
    with pytest.raises(IndexError):
        ds[90]
    f32 = TokenDataset(feat, config=TokenDatasetConfig(as_float32=True, tokens=("dino.cls_token",)))
    assert set(f32[0]) == {"index", "dino.cls_token", "dino.missing"}
    assert f32[0]["dino.cls_token"].dtype == torch.float32


def test_batched_reads_keep_order_and_duplicates(stores):
    _, feat, patch, cls, _ = stores
    ds = TokenDataset(feat)
    idx = [70, 3, 4, 5, 70, 31, 32, 33, 0]  # runs across a shard boundary (32), repeats, unsorted
    items = ds.__getitems__(idx)
    assert [it["index"] for it in items] == idx
    np.testing.assert_array_equal(np.stack([it["dino.patch_tokens"].numpy() for it in items]), patch[idx])
    np.testing.assert_array_equal(np.stack([it["dino.cls_token"].numpy() for it in items]), cls[idx])


def test_dataloader_with_two_workers_sees_every_sample_once(stores):
    store, feat, patch, _, missing = stores
    ds = TokenDataset(feat, store=open_store(str(store)), fields=["obs.joint_pos"])
    ds[0]  # open handles in the parent first: workers must reopen their own
    dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=True,
                                     generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in dl:
        assert batch["dino.patch_tokens"].shape[1:] == (12, 16)
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["dino.patch_tokens"].numpy(), patch[idx])
        np.testing.assert_array_equal(batch["obs.joint_pos"][:, 0].numpy(), idx.astype(np.float32))
        np.testing.assert_array_equal(batch["dino.missing"].numpy(), missing[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(90))


def test_misaligned_store_and_unknown_fields_are_refused(stores, tmp_path):
    store, feat, *_ = stores
    schema = Schema({"x": FieldSpec("float32", (1,))})
    with EpisodicWriter(tmp_path / "short", schema) as w:
        w.write(Episode(key="a", steps={"x": np.zeros((5, 1), np.float32)}))
    with pytest.raises(ValueError, match="not aligned"):
        TokenDataset(feat, store=tmp_path / "short")
    with pytest.raises(ValueError, match="unknown field"):
        TokenDataset(feat, store=store, fields=["nope"])
    with pytest.raises(ValueError, match="need the source store"):
        TokenDataset(feat, fields=["obs.joint_pos"])
