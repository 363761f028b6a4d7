"""ResumableSampler / BatchStream: order a pure function of (seed, epoch), split by rank then worker, exact
mid-epoch resume (invariants over a grid of parameters, as Streaming's test_shuffle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardyard.loaders.sampler import BatchStream, ResumableSampler


class Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return {"i": torch.tensor(i), "sq": torch.tensor(i * i)}


@pytest.mark.parametrize("n,world", [(37, 1), (37, 2), (37, 3), (8, 8), (5, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_partition_each_epoch(n, world, drop_last):
    if drop_last and n < world:
        return
    samplers = [ResumableSampler(n, seed=3, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    for epoch in (0, 1):
        parts = [s.rank_indices(epoch) for s in samplers]
        assert len({len(p) for p in parts}) == 1                     # every rank takes the same steps
        allidx = np.concatenate(parts)
        if drop_last:
            assert len(set(allidx.tolist())) == len(allidx) == n // world * world
        else:
            assert set(allidx.tolist()) == set(range(n)) and len(allidx) == -(-n // world) * world
    assert not np.array_equal(samplers[0].epoch_order(0), samplers[0].epoch_order(1))


def test_order_is_pure_function_of_seed_and_epoch():
    a = ResumableSampler(100, seed=7)
    b = ResumableSampler(100, seed=7)
    a.set_epoch(4)
    list(a)                                       # consuming a sampler does not change later orders
    b.set_epoch(4)
    assert list(b) == a.rank_indices(4).tolist() == ResumableSampler(100, seed=7).rank_indices(4).tolist()
    assert list(ResumableSampler(100, seed=8).rank_indices(4)) != list(a.rank_indices(4))
    assert list(ResumableSampler(10, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("cut", [0, 5, 13, 19])
def test_mid_epoch_resume_is_exact(world, cut):
    for rank in range(world):
        full = ResumableSampler(37, seed=1, rank=rank, world_size=world)
        full.set_epoch(2)
        ref = list(full)
        s = ResumableSampler(37, seed=1, rank=rank, world_size=world)
        s.set_epoch(2)
        head = list(s)[:cut]
        state = s.state_dict(consumed=cut)          # what the loop used, not what was prefetched
        resumed = ResumableSampler(37, seed=0, rank=rank, world_size=world)
        resumed.load_state_dict(state)
        assert head + list(resumed) == ref and len(resumed) == len(ref) - cut
    with pytest.raises(ValueError, match="num_samples"):
        ResumableSampler(36).load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_stream_order_independent_of_workers_and_resumable(workers):
    ds = Squares()
    s = ResumableSampler(len(ds), seed=5, rank=1, world_size=2)
    loader = torch.utils.data.DataLoader(BatchStream(ds, s, batch_size=4), batch_size=None, num_workers=workers)
    got = [b["i"].tolist() for b in loader]
    want = s.rank_indices(0)
    assert sum(got, []) == want.tolist() and [len(b) for b in got] == [4, 4, 4, 4, 3]
    assert all((b["sq"] == b["i"] ** 2).all() for b in loader)
    s.load_state_dict(s.state_dict(consumed=8))   # resume after two batches
    assert sum((b["i"].tolist() for b in loader), []) == want[8:].tolist()


def test_worker_split_inside_sampler():
    """Iterated inside DataLoader workers, each worker yields its [worker::num_workers] share."""

    class Echo(torch.utils.data.IterableDataset):
        def __init__(self, sampler):
            self.sampler = sampler

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            return iter([(info.id, i) for i in self.sampler])

    s = ResumableSampler(20, seed=2)
    got = list(torch.utils.data.DataLoader(Echo(s), batch_size=None, num_workers=2))
    ref = s.rank_indices(0)
    for w in (0, 1):
        assert [int(i) for wid, i in got if int(wid) == w] == ref[w::2].tolist()
