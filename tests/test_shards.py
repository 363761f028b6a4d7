"""Shard store: atomic shard writes, manifest written last with counts/bytes/sha256, resume, listing,
and that other webdataset readers (the `webdataset` library) read our shards."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from shardyard.errors import StoreError
from shardyard.stores.manifest import sha256_file
from shardyard.stores.wds import (
    Sample,
    ShardStore,
    ShardWriter,
    ShardWriterConfig,
    iter_tar_samples,
    list_shards,
    write_tar,
)


def _samples(prefix: str, n: int) -> list[Sample]:
    return [Sample(f"{prefix}{i:04d}", {"mp4": bytes([i]) * (100 + i), "txt": f"caption {i}".encode(),
                                        "json": json.dumps({"i": i}).encode()}) for i in range(n)]


def test_write_read_manifest_and_verify(tmp_path):
    root = tmp_path / "s"
    with ShardWriter(root, config=ShardWriterConfig(split="train")) as w:
        w.write_shard(0, _samples("a", 3), [{"key": "a0000", "status": "success"}])
        w.write_shard(1, _samples("b", 2), [])
        assert not (root / "manifest.json").exists()  # written last
        assert not list((root / "shards").glob(".*.tmp"))
    store = ShardStore(str(root))
    assert [f["name"] for f in store.manifest.files] == ["shards/train-000000.tar", "shards/train-000001.tar"]
    assert [f["samples"] for f in store.manifest.files] == [3, 2] and store.num_samples == 5
    f0 = store.manifest.files[0]
    assert f0["sha256"] == sha256_file(root / f0["name"]) and f0["bytes"] == (root / f0["name"]).stat().st_size
    assert store.verify() == []
    with open(root / f0["name"], "rb") as f:
        got = list(iter_tar_samples(f))
    assert [s.key for s in got] == ["a0000", "a0001", "a0002"] and got[1].members == _samples("a", 3)[1].members
    (root / "shards/train-000001.tar").write_bytes(b"corrupt")
    assert store.verify() == ["shards/train-000001.tar"]
    assert list_shards(str(root)) == store.shards()


def test_crash_leaves_no_manifest_and_resume_sees_finished(tmp_path):
    root = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with ShardWriter(root) as w:
            w.write_shard(0, _samples("a", 2), [{"key": "a0000", "status": "success"}])
            raise RuntimeError("killed")
    assert not (root / "manifest.json").exists()
    with pytest.raises(StoreError):
        ShardStore(str(root))
    (root / "shards" / ".train-000001.tar.abc.tmp").write_bytes(b"half")  # a killed writer's temp
    with ShardWriter(root) as w:
        assert w.finished() == {"train-000000.tar": [{"key": "a0000", "status": "success"}]}
        assert not list((root / "shards").glob(".*.tmp"))
    assert ShardStore(str(root)).num_samples == 2


def test_deterministic_bytes_and_bad_keys(tmp_path):
    a, b = io.BytesIO(), io.BytesIO()
    write_tar(a, _samples("k", 3))
    write_tar(b, _samples("k", 3))
    assert a.getvalue() == b.getvalue()
    with pytest.raises(StoreError):
        write_tar(io.BytesIO(), [Sample("bad.key", {"txt": b""})])


def test_truncated_tar_raises_and_list_folder(tmp_path):
    buf = io.BytesIO()
    write_tar(buf, _samples("k", 4))
    (tmp_path / "x.tar").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2 + 100])
    with pytest.raises((tarfile.TarError, OSError)):
        with open(tmp_path / "x.tar", "rb") as f:
            list(iter_tar_samples(f))
    assert list_shards(tmp_path) == [str(tmp_path / "x.tar")]
    with pytest.raises(StoreError):
        list_shards(tmp_path / "empty")


def test_webdataset_library_reads_our_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    with ShardWriter(tmp_path / "s") as w:
        w.write_shard(0, _samples("a", 3), [])
    shards = ShardStore(str(tmp_path / "s")).shards()
    got = list(wds.WebDataset(shards, shardshuffle=False))
    assert [g["__key__"] for g in got] == ["a0000", "a0001", "a0002"]
    assert got[2]["txt"] == b"caption 2" and got[2]["mp4"] == bytes([2]) * 102
