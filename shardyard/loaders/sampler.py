"""Deterministic, resumable, rank- and worker-aware sample order (DESIGN.md, style example 7).

The order of an epoch is a pure function of `(seed, epoch)`: a permutation drawn from
`np.random.default_rng([seed, epoch])`. It is split by rank first (`order[rank::world_size]`, after padding
by wrap-around so that every rank gets the same count, as `torch.utils.data.DistributedSampler` does, or
truncating with `drop_last`), then by worker (`share[worker::num_workers]`, as webdataset's
`split_by_worker`). `state_dict()` / `load_state_dict()` carry `(seed, epoch, offset)`, where `offset` counts
the samples of this rank already consumed in the epoch, so a resumed run sees exactly the remaining ones.

`BatchStream` serves a map-style dataset through this order as whole batches: batch `b` of a rank is read by
worker `b % num_workers`; the DataLoader returns worker outputs round-robin, so the batch sequence is the
same whatever the worker count, and one `__getitems__` call reads each batch.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import numpy as np
import torch

__all__ = ["BatchStream", "MAX_WORKERS", "ResumableSampler", "record_consumed"]

log = logging.getLogger(__name__)

# Most DataLoader workers a stream serves: the rows of the shared-memory counters each stream keeps per worker.
MAX_WORKERS = 64
_ITER_BLOCK = 1 << 16


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Sample indices of `[0, num_samples)` for one rank, one epoch at a time.

    num_samples: dataset size (> 0). seed: order seed. shuffle: permute (else identity order). rank,
    world_size: this process and the process count (0 <= rank < world_size). drop_last: truncate to a
    multiple of world_size instead of padding by wrap-around.

    Raises ValueError for an empty dataset or a rank outside `[0, world_size)`.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if num_samples <= 0:
            raise ValueError(f"sampler needs at least one sample, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if drop_last and num_samples < world_size:
            raise ValueError(f"drop_last with {num_samples} samples leaves nothing for {world_size} ranks")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.offset = 0

    # -- the pure part ---------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global order `(num_samples,) int64` of `epoch`: a function of `(seed, epoch)` only."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples).astype(np.int64)

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's share `(per_rank,) int64` of `epoch_order(epoch)` (padded or truncated first)."""
        order = self.epoch_order(epoch)
        total = self.per_rank * self.world_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[:total][self.rank::self.world_size]

    @property
    def per_rank(self) -> int:
        """Samples per rank and epoch."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    # -- iteration and state ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.per_rank - self.offset

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning."""
        self.epoch, self.offset = int(epoch), 0

    def remaining(self) -> np.ndarray:
        """Indices of this rank not yet consumed in the current epoch."""
        return self.rank_indices(self.epoch)[self.offset:]

    def __iter__(self) -> Iterator[int]:
        """Remaining indices of this rank; inside a DataLoader worker, only that worker's
        `[worker::num_workers]` part of them."""
        idx = self.remaining()
        info = torch.utils.data.get_worker_info()
        if info is not None:
            idx = idx[info.id::info.num_workers]
        # converted a block at a time: `tolist()` of a 10^7-sample epoch is ~0.5 s before the first batch
        return (i for start in range(0, len(idx), _ITER_BLOCK) for i in idx[start:start + _ITER_BLOCK].tolist())

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """`{"seed", "epoch", "offset", "num_samples", "world_size", "rank"}`. With `consumed` (samples taken
        since the last `set_epoch`/`load_state_dict`), offset is advanced by it: pass what the training loop
        actually used, since DataLoader prefetching runs ahead of it."""
        offset = self.offset + (int(consumed) if consumed is not None else 0)
        return {"seed": self.seed, "epoch": self.epoch, "offset": min(offset, self.per_rank),
                "num_samples": self.num_samples, "world_size": self.world_size, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`'s epoch and offset. Raises ValueError when the dataset size or the world size
        differ (the order would not be the same)."""
        for k in ("num_samples", "world_size"):
            if int(state[k]) != getattr(self, k):
                raise ValueError(f"sampler state has {k}={state[k]}, this sampler {getattr(self, k)}")
        self.seed, self.epoch, self.offset = int(state["seed"]), int(state["epoch"]), int(state["offset"])


class BatchStream(torch.utils.data.IterableDataset):
    """Batches of a map-style `dataset` in `sampler`'s order, for `DataLoader(stream, batch_size=None)`.

    Batch `b` (indices `remaining[b * batch_size:(b + 1) * batch_size]`) is read by worker
    `b % num_workers` with one `collate(dataset.__getitems__(indices))` call; the last batch may be short
    unless `drop_last`. The sampler's state is read when iteration starts (in each worker).
    """

    def __init__(self, dataset: Any, sampler: ResumableSampler, batch_size: int,
                 collate: Callable[[list[Any]], Any] | None = None, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, int(batch_size)
        self.collate = collate or torch.utils.data.default_collate
        self.drop_last = drop_last

    def batches(self) -> list[np.ndarray]:
        """All remaining batches of the epoch (index arrays), whatever worker reads them."""
        idx = self.sampler.remaining()
        n = len(idx) // self.batch_size if self.drop_last else -(-len(idx) // self.batch_size)
        return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(n)]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        get = getattr(self.dataset, "__getitems__", None)
        for b, idx in enumerate(self.batches()):
            if b % nw != wid:
                continue
            items = get(idx.tolist()) if get is not None else [self.dataset[int(i)] for i in idx]
            yield self.collate(items)


def record_consumed(consumed: dict[int, int], batch: dict[str, Any]) -> int:
    """Mark the items of `batch` (one item or a collated batch of a stream whose items carry `worker`,
    `position` and `num_workers`) as consumed: `consumed[worker]` becomes one past the highest position taken.
    Returns the stream's worker count. Shared by `ClipStream` and `UrlClipStream`, whose resume states are
    "positions taken per worker"."""
    workers = torch.as_tensor(batch["worker"]).reshape(-1).tolist()
    positions = torch.as_tensor(batch["position"]).reshape(-1).tolist()
    for w, p in zip(workers, positions):
        consumed[w] = max(consumed.get(w, 0), p + 1)
    return int(torch.as_tensor(batch["num_workers"]).reshape(-1)[0])
