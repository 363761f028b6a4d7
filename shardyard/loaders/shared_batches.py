"""`SharedCollate`: a DataLoader `collate_fn` that hands batches from the workers to the training process
through shared-memory slots each worker reuses, instead of new shared memory for every tensor of every batch.

Why: torch's `default_collate` stacks each field of a batch into a new shared-memory segment inside the worker,
so every batch costs the kernel a fresh allocation, zeroing and page fault per 4 KiB page (225 per 640x480 RGB
frame). On the 2-core CI machine, with 2 workers serving the G1 `jpeg` store (frame + 16-step action chunk,
batch 32), that kernel work took as much worker time as the JPEG decode itself (35 % and 35 % of the
workers' samples under `perf`, 226 page faults per sample); the same loader with these slots served 1.41x the
samples/s (1,357 against 960; 1.25x from the `video` store, 837 against 671: `benchmarks/vs_lerobot.py`, rows
`*_default_collate` against the plain ones, in the benchmark table's run).

How: in a worker, a batch of mapping samples is stacked field by field into one free slot (a shared uint8
buffer the worker keeps: at most `slots` of them, made on first need), and only a small record (slot, offsets,
shapes, dtypes) crosses the queue; the slot's storage crosses once and stays mapped. In the training process
the record becomes the same dict `default_collate` gives (tensors `(B, ...)` of the same dtypes, lists of str),
whose tensors are views of the slot. The slot returns to its worker when the last of those tensors (and every
view of them) is freed, so a batch is never overwritten while the program can still read it; a worker that
finds no free slot (the program holds many batches), or cannot get shared memory, collates that batch with
`default_collate`. In the main process (`num_workers=0`) it is `default_collate`. A worker holds at most
`slots` batches' worth of shared memory, made as the training process keeps batches (about `prefetch_factor`
+ 1 at a time in a plain loop), where `default_collate` allocates the same amount anew for every batch.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = ["SharedCollate"]

log = logging.getLogger(__name__)

_ALIGN = 64  # each field starts on a cache line


def _column(values: list[Any]) -> tuple[Any, tuple[int, ...], np.dtype] | None:
    """The values of one field over a batch, as `(parts, shape, dtype)` to stack into a `(B, ...)` array,
    when `default_collate` would make them one tensor of that dtype (CPU tensors or arrays of one shape and
    dtype, python bools, ints or floats); None for anything else (collated by `default_collate`)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if first.dtype == torch.bfloat16 or first.layout != torch.strided or first.is_nested or not all(
                isinstance(v, torch.Tensor) and v.device.type == "cpu" and not v.requires_grad
                and v.shape == first.shape and v.dtype == first.dtype for v in values):
            return None
        try:
            parts = [v.numpy() for v in values]
        except (RuntimeError, TypeError):  # no numpy view (a lazy conjugate, say): default_collate
            return None
        return parts, (len(values), *first.shape), parts[0].dtype
    if isinstance(first, np.ndarray):
        if first.dtype.kind in "OSUV" or not all(isinstance(v, np.ndarray) and v.shape == first.shape
                                                 and v.dtype == first.dtype for v in values):
            return None
        return values, (len(values), *first.shape), first.dtype
    kinds = {type(v) for v in values}
    dtype = {bool: np.bool_, int: np.int64, float: np.float64}.get(next(iter(kinds))) if len(kinds) == 1 else None
    if dtype is None:
        return None
    try:
        arr = np.asarray(values, dtype=dtype)
    except OverflowError:  # an int beyond int64: default_collate says so
        return None
    return arr, arr.shape, arr.dtype


def _release(flags: np.ndarray, slot: int) -> None:
    flags[slot] = 0


def _rebuild(buffer: torch.Tensor, flags: torch.Tensor, slot: int, layout: list[tuple[str, Any]]) -> dict:
    """The training process's side: the batch dict over slot `slot` of `buffer`; `flags[slot]` is cleared
    when the last tensor viewing it is freed."""
    root = buffer.numpy()  # one array per batch: its finaliser is this batch's, views keep it alive
    out: dict[str, Any] = {}
    for key, entry in layout:
        if entry[0] == "slot":
            _, offset, shape, dtype = entry
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            out[key] = torch.from_numpy(root[offset:offset + size].view(dtype).reshape(shape))
        else:
            out[key] = entry[1]
    weakref.finalize(root, _release, flags.numpy(), slot)
    return out


class _SlotBatch:
    """What crosses the worker queue for one batch: the slot's buffer and the flags (torch shares both once,
    then finds them in its cache), the slot and the layout. Unpickles as the batch dict (`_rebuild`)."""

    def __init__(self, buffer: torch.Tensor, flags: torch.Tensor, slot: int, layout: list[tuple[str, Any]]) -> None:
        self.args = (buffer, flags, slot, layout)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, self.args


class SharedCollate:
    """`collate_fn` for `torch.utils.data.DataLoader`: batches equal to `default_collate`'s, carried from the
    workers through at most `slots` reused shared-memory buffers per worker (see the module docstring).

        loader = DataLoader(ds, batch_size=64, num_workers=2, sampler=sampler, collate_fn=SharedCollate())

    Samples must be mappings (field -> tensor, array, number or str), as `EpisodeDataset`'s and most
    datasets' are; other samples, and fields that are not one tensor per batch (nested mappings, str), are
    collated by `default_collate` (str fields give a list, as there). `slots` (>= 1): buffers per worker; a
    worker whose slots are all still held by the training process collates with `default_collate`, so
    keeping batches costs speed, never correctness. Raises ValueError for `slots` < 1.
    """

    def __init__(self, slots: int = 4) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = int(slots)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._buffers: list[torch.Tensor] = []
        self._flags: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots}  # a spawned worker makes its own buffers

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.slots = state["slots"]
        self._reset()

    @property
    def slots_in_use(self) -> int:
        """How many of this process's slots hold a batch the training process has not freed yet."""
        if self._flags is None or self._pid != os.getpid():
            return 0
        return int(self._flags.numpy()[:len(self._buffers)].sum())

    def __call__(self, items: Sequence[Any]) -> Any:
        """The batch of `items`: through a slot in a DataLoader worker (`pack`), `default_collate` elsewhere."""
        if get_worker_info() is None:
            return default_collate(items)
        return self.pack(items)

    def pack(self, items: Sequence[Any]) -> Any:
        """`items` stacked into a free slot (a `_SlotBatch`, which unpickles as the batch dict), or
        `default_collate(items)` when the samples are not mappings or no slot is free."""
        if not items or not isinstance(items[0], Mapping):
            return default_collate(items)
        columns: list[tuple[str, Any]] = []
        size = 0
        for key in items[0]:
            values = [it[key] for it in items]
            col = _column(values)
            if col is None:
                columns.append((key, ("inline", values)))  # collated below, once a slot is sure
            else:
                parts, shape, dtype = col
                columns.append((key, ("slot", size, parts, shape, dtype)))
                size += -(-int(np.prod(shape, dtype=np.int64)) * dtype.itemsize // _ALIGN) * _ALIGN
        slot = self._acquire(size) if size else None  # nothing to put in a slot: the plain path
        if slot is None:
            return default_collate(items)
        root = self._buffers[slot].numpy()
        layout: list[tuple[str, Any]] = []
        for key, entry in columns:
            if entry[0] == "slot":
                _, offset, parts, shape, dtype = entry
                dst = root[offset:offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype)
                dst = dst.reshape(shape)
                if isinstance(parts, np.ndarray):
                    dst[...] = parts
                else:
                    np.stack(parts, out=dst)  # straight into the slot: no batch array in between
                layout.append((key, ("slot", offset, shape, dtype.str)))
            else:
                layout.append((key, ("inline", default_collate(entry[1]))))
        return _SlotBatch(self._buffers[slot], self._flags, slot, layout)

    def _acquire(self, size: int) -> int | None:
        """A free slot of at least `size` bytes, marked in use (made, or remade larger, when needed); None
        when every slot is held or shared memory is short."""
        if self._pid != os.getpid():  # forked with a parent's buffers: they are the parent's, not ours
            self._reset()
        try:
            if self._flags is None:
                self._flags = torch.zeros(self.slots, dtype=torch.uint8).share_memory_()
            flags = self._flags.numpy()
            free = [k for k in range(len(self._buffers)) if flags[k] == 0]
            fits = [k for k in free if self._buffers[k].numel() >= size]
            if fits:
                slot = fits[0]
            elif len(self._buffers) < self.slots:
                self._buffers.append(torch.empty(max(size, 1), dtype=torch.uint8).share_memory_())
                slot = len(self._buffers) - 1
            elif free:  # a free slot too small for this batch: replace it (the old one is no longer read)
                slot = free[0]
                self._buffers[slot] = torch.empty(size, dtype=torch.uint8).share_memory_()
            else:
                return None
        except RuntimeError as e:  # /dev/shm full (a small container's default): the plain path still works
            log.debug("no shared-memory slot (%s); collating with default_collate", e)
            return None
        flags[slot] = 1
        return slot
