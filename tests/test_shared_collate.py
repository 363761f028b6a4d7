"""SharedCollate: batches equal to default_collate's through real DataLoader workers (held or dropped), slots
reused only once the training process has freed every tensor of their batch, and the default_collate fallbacks."""

from __future__ import annotations

import gc
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch

from shardyard.loaders import EpisodeDataset, EpisodeDatasetConfig, SharedCollate
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episodic_writer import EpisodicWriter
from shardyard.stores.stats import compute_stats

SCHEMA = Schema({"obs.rgb.top": FieldSpec("uint8", (12, 16, 3), None, "image"),
                 "obs.state": FieldSpec("float32", (4,), "rad", "vector"),
                 "action": FieldSpec("float32", (4,), "rad", "vector")})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared") / "store"
    with EpisodicWriter(path, SCHEMA, stats_fn=compute_stats) as w:
        for i, T in enumerate((23, 17, 30)):
            rng = np.random.default_rng(i)
            w.write(Episode(f"ep{i}", {"obs.rgb.top": rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8),
                                       "obs.state": rng.normal(size=(T, 4)).astype(np.float32),
                                       "action": rng.normal(size=(T, 4)).astype(np.float32)},
                            {"task": f"task {i}", "fps": 10.0}))
    return str(path)


def _batches(ds, collate_fn=None, workers=2):
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    return torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order), batch_size=8, num_workers=workers,
                                       collate_fn=collate_fn)


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert isinstance(b[k], torch.Tensor) and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_batches_equal_default_collate_through_workers_held_or_dropped(store_path):
    ds = EpisodeDataset(store_path, deltas={"obs.rgb.top": [-1, 0], "action": range(5), "obs.state": [0]},
                        config=EpisodeDatasetConfig(include_task=True, normalization={"action": "mean_std"}))
    want = list(_batches(ds))
    assert all(b["obs.rgb.top"].is_shared() for b in want)  # default_collate: new shared memory per batch
    held = list(_batches(ds, SharedCollate(slots=1)))  # every batch kept: slots run out, none overwritten
    assert len(held) == len(want) == -(-len(ds) // 8) == 9
    for a, b in zip(want, held):
        _assert_same(a, b)
    assert isinstance(held[0]["task"], list) and held[0]["index"].dtype == torch.int64
    # a slot batch's tensors view the worker's slot (not a new shared segment); held, the rest fell back
    via_slot = [not b["obs.rgb.top"].is_shared() for b in held]
    assert via_slot[:2] == [True, True] and 2 <= sum(via_slot) < len(held), via_slot
    got = 0
    for a, b in zip(want, _batches(ds, SharedCollate(slots=8))):  # each dropped before the next: all slots
        _assert_same(a, b)
        assert not b["obs.rgb.top"].is_shared() and not b["action"].is_shared()
        got += 1
    assert got == len(want)


def _unpickle(obj):
    """What the training process gets from a worker's queue."""
    return pickle.loads(ForkingPickler.dumps(obj))


def _items(value: int, n: int = 3) -> list[dict]:
    return [{"frame": torch.full((2, 3), value + i, dtype=torch.uint8), "n": value + i, "x": 0.5 * i,
             "ok": bool(i % 2), "arr": np.full(4, value, np.int16), "name": f"s{i}",
             "bf16": torch.full((2,), i, dtype=torch.bfloat16), "conj": torch.full((2,), 1j * i).conj()}
            for i in range(n)]


def test_a_slot_is_reused_only_after_its_batch_is_freed():
    sc = SharedCollate(slots=2)
    a = _unpickle(sc.pack(_items(10)))
    _assert_same(a, torch.utils.data.default_collate(_items(10)))
    assert a["n"].dtype == torch.int64 and a["x"].dtype == torch.float64 and a["ok"].dtype == torch.bool
    assert a["arr"].dtype == torch.int16 and a["name"] == ["s0", "s1", "s2"]
    assert a["bf16"].dtype == torch.bfloat16 and torch.equal(a["conj"][:, 0], torch.tensor([0j, -1j, -2j]))
    b = _unpickle(sc.pack(_items(20)))
    assert sc.slots_in_use == 2
    plain = sc.pack(_items(30))  # both slots held: default_collate
    assert isinstance(plain, dict)
    assert torch.equal(plain["frame"][:, 0, 0], torch.tensor([30, 31, 32], dtype=torch.uint8))
    view = a["frame"][1]  # a view of batch a keeps its slot
    del a
    gc.collect()
    assert sc.slots_in_use == 2
    del view
    gc.collect()
    assert sc.slots_in_use == 1
    c = _unpickle(sc.pack(_items(40)))  # into a's slot
    assert torch.equal(c["frame"][:, 0, 0], torch.tensor([40, 41, 42], dtype=torch.uint8))
    assert torch.equal(b["frame"][:, 0, 0], torch.tensor([20, 21, 22], dtype=torch.uint8))  # b untouched
    d = _unpickle(sc.pack(_items(50, n=40)))  # bigger than any slot: none free, so default_collate
    assert sc.slots_in_use == 2 and d["frame"].shape == (40, 2, 3)
    del b, c
    gc.collect()
    e = _unpickle(sc.pack(_items(60, n=40)))  # a free slot too small is made anew
    assert torch.equal(e["frame"][:, 0, 0], torch.arange(60, 100, dtype=torch.uint8)) and sc.slots_in_use == 1


def test_samples_that_are_not_mappings_and_bad_slots():
    sc = SharedCollate()
    items = [(torch.ones(2), 1), (torch.zeros(2), 2)]
    out = sc.pack(items)
    assert isinstance(out, list) and torch.equal(out[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert sc.slots_in_use == 0
    with pytest.raises(ValueError, match="slots must be >= 1"):
        SharedCollate(slots=0)
