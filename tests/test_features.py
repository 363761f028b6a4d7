"""Feature store: layout invariants, writer protocol (key refusal, completion records, manifest last),
fast reads equal to zarr-python, stats, a crc32c per stored token chunk (also after a torn batch is rewritten)."""

from __future__ import annotations

import json

import google_crc32c
import numpy as np
import pytest
import zarr

from shardyard.errors import ConfigError, StoreError
from shardyard.stores.checksums import CHUNK_CRC, read_crc32c
from shardyard.stores.features import (
    FeatureLayout,
    FeatureStore,
    FeatureWriter,
    FeatureWriterConfig,
    key_diff,
    open_features,
    write_batch,
)
from shardyard.tools.verify import verify_store


@pytest.mark.parametrize("n,batch,shard", [(1, 1, 0), (10, 3, 6), (100, 8, 0), (37, 4, 8), (64, 64, 64)])
def test_batches_cover_once_and_never_cross_shards(n, batch, shard):
    lay = FeatureLayout(num_samples=n, grid=(4, 5), embed_dim=8, patch_size=14, batch_size=batch,
                        shard_rows=shard)
    assert lay.shard_rows % lay.batch_size == 0
    covered = np.concatenate([np.arange(a, b) for a, b in lay.batches()])
    assert np.array_equal(covered, np.arange(n))
    for a, b in lay.batches():
        assert a // lay.shard_rows == (b - 1) // lay.shard_rows and b - a <= batch
    units = lay.shard_units({lay.batches()[0]})
    assert sum(len(u) for u in units) == len(lay.batches()) - 1
    assert all(len({a // lay.shard_rows for a, _ in u}) == 1 for u in units)


def test_key_diff_names_each_difference():
    old = {"model": {"spec": "a", "layers": [1]}, "dtype": "float16", "field": "x"}
    new = {"model": {"spec": "b", "layers": [1]}, "dtype": "float32", "field": "x", "extra": 1}
    assert key_diff(old, new) == ["dtype: 'float16' -> 'float32'", "extra: '<absent>' -> 1",
                                  "model.spec: 'a' -> 'b'"]
    assert key_diff(old, old) == []


def _fill(path, lay, rng, skip=()):
    ref = rng.standard_normal((lay.num_samples, lay.num_patches, lay.embed_dim)).astype(np.float32)
    cls = ref.mean(axis=1)
    missing = np.zeros(lay.num_samples, dtype=bool)
    missing[3] = True
    ref[3] = 0
    cls[3] = 0
    for a, b in lay.batches():
        if (a, b) not in skip:
            write_batch(path, a, ref[a:b], cls[a:b], missing[a:b],
                        errors=[{"index": 3, "reason": "test"}] if a <= 3 < b else [])
    return ref, cls, missing


def test_writer_resumes_refuses_and_writes_manifest_last(tmp_path):
    path = tmp_path / "f"
    lay = FeatureLayout(num_samples=21, grid=(2, 3), embed_dim=4, patch_size=14, batch_size=4, shard_rows=8)
    key = {"model": {"spec": "m"}, "dtype": "float16"}
    rng = np.random.default_rng(0)
    with FeatureWriter(path, key=key, layout=lay, config=FeatureWriterConfig(episode_ends=[10, 21])) as w:
        ref, cls, missing = _fill(path, lay, rng, skip={(16, 20)})
        assert (16, 20) not in w.done_batches() and len(w.done_batches()) == len(lay.batches()) - 1
    assert not (path / "manifest.json").exists()  # one batch short: not a store
    with pytest.raises(StoreError, match="never finished"):
        open_features(path)
    with pytest.raises(ConfigError, match=r"model\.spec: 'm' -> 'n'"):
        with FeatureWriter(path, key={"model": {"spec": "n"}, "dtype": "float16"}, layout=lay):
            pass
    asked = FeatureLayout(num_samples=21, grid=(2, 3), embed_dim=4, patch_size=14, batch_size=2)
    with FeatureWriter(path, key=key, layout=asked, config=FeatureWriterConfig(episode_ends=[10, 21])) as w:
        assert w.resumed and w.layout == lay  # the stored layout wins
        write_batch(path, 16, ref[16:20], cls[16:20], missing[16:20])
    fs = open_features(path)
    assert fs.num_samples == 21 and fs.grid == (2, 3) and fs.embed_dim == 4
    np.testing.assert_array_equal(fs.patch_tokens(0, 21), ref.astype(np.float16))
    np.testing.assert_array_equal(fs.cls_token(5, 13), cls[5:13].astype(np.float16))
    np.testing.assert_array_equal(fs.missing, missing)
    np.testing.assert_array_equal(fs.episode_ends, [10, 21])
    assert fs.report["missing"] == [3] and fs.report["errors"] == [{"index": 3, "reason": "test"}]
    # the fast path is really taken and equals zarr-python
    fs.array_reader("patch_tokens")
    assert type(fs._readers["patch_tokens"]).__name__ == "ShardReader"
    np.testing.assert_array_equal(fs.patch_tokens(2, 19), zarr.open_array(str(path / "patch_tokens"))[2:19])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "features-zarr3" and manifest["extra"]["key"] == key
    assert manifest["schema"]["dino.patch_tokens"]["shape"] == [6, 4]


def test_stats_mean_std_and_pca_basis(tmp_path):
    path = tmp_path / "f"
    lay = FeatureLayout(num_samples=12, grid=(4, 4), embed_dim=6, patch_size=14, batch_size=4,
                        dtype="float32")
    rng = np.random.default_rng(1)
    with FeatureWriter(path, key={"k": 1}, layout=lay):
        ref, _, missing = _fill(path, lay, rng)
    fs = FeatureStore(path)
    valid = ref[~missing].reshape(-1, 6).astype(np.float64)
    st = fs.stats["dino.patch_tokens"]
    np.testing.assert_allclose(st["mean"], valid.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(st["std"], valid.std(axis=0), rtol=1e-9)
    comps = np.asarray(fs.stats["pca"]["components"])
    assert comps.shape == (3, 6)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-9)
    evr = fs.stats["pca"]["explained_variance_ratio"]
    assert evr == sorted(evr, reverse=True) and 0 < sum(evr) <= 1
    assert fs.stats["frames_used"] == 11  # the missing frame is not counted


def test_not_a_feature_store(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    lay = FeatureLayout(num_samples=2, grid=(1, 1), embed_dim=2, patch_size=14)
    with pytest.raises(StoreError, match="not a feature store"):
        with FeatureWriter(tmp_path / "junk", key={}, layout=lay):
            pass
    with pytest.raises(ConfigError, match="dtype"):
        FeatureLayout(num_samples=2, grid=(1, 1), embed_dim=2, patch_size=14, dtype="int8")


def test_bfloat16_is_stored_as_bits_and_read_back_as_float32(tmp_path):
    import torch

    lay = FeatureLayout(num_samples=6, grid=(2, 2), embed_dim=3, patch_size=14, dtype="bfloat16", batch_size=3)
    x = np.random.default_rng(2).standard_normal((6, 4, 3)).astype(np.float32)
    with FeatureWriter(tmp_path / "f", key={}, layout=lay):
        for a, b in lay.batches():
            write_batch(tmp_path / "f", a, x[a:b], x[a:b, 0], np.zeros(b - a, bool))
    fs = open_features(tmp_path / "f")
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    got = fs.patch_tokens(0, 6)
    assert got.dtype == np.float32 and zarr.open_array(str(tmp_path / "f" / "patch_tokens")).dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    from shardyard.loaders.tokens import TokenDataset

    np.testing.assert_array_equal(TokenDataset(fs)[4]["dino.patch_tokens"].numpy(), want[4])


def test_rewriting_recorded_or_torn_batches_keeps_other_rows(tmp_path):
    """A batch written but not recorded (driver killed in between) or rewritten out of order goes through
    zarr's read-modify-write instead of the shard appender, which would drop later rows."""
    path = tmp_path / "f"
    lay = FeatureLayout(num_samples=16, grid=(1, 2), embed_dim=3, patch_size=14, batch_size=4, shard_rows=16,
                        dtype="float32")
    x = np.arange(16 * 2 * 3, dtype=np.float32).reshape(16, 2, 3)
    with FeatureWriter(path, key={}, layout=lay):
        for a, b in lay.batches():
            write_batch(path, a, x[a:b], x[a:b, 0], np.zeros(b - a, bool))
    (path / "progress" / f"{4:012d}.json").unlink()  # a middle batch: the rows after it are on disk
    import shardyard.stores.feature_rows as feature_rows

    feature_rows._WRITERS.clear()  # a fresh process
    with FeatureWriter(path, key={}, layout=lay) as w:
        assert (4, 8) not in w.done_batches()
        redo = -x[4:8]
        redo[1] = 0.0  # a missing frame's zero tokens: zarr stores no chunk for them (the fill value)
        crc = write_batch(path, 4, redo, redo[:, 0], np.eye(4, dtype=bool)[1])
    got = open_features(path).patch_tokens(0, 16)
    want = x.copy()
    want[4:8] = redo
    np.testing.assert_array_equal(got, want)
    # the checksums of the rewritten batch are those of the bytes zarr stored; the rest are the appender's
    recorded = read_crc32c(path, CHUNK_CRC, "patch_tokens")
    assert recorded.shape == (16,) and recorded[5] == 0 and crc["patch_tokens"][1] == 0
    assert list(recorded[4:8]) == crc["patch_tokens"]
    assert recorded[0] == google_crc32c.value(x[0].tobytes())
    report = verify_store(path)
    assert report.ok and not report.warnings, report.summary()
