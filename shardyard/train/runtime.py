"""Where a trainer runs, once for every trainer: the device, the process group under torchrun, autocast,
and moving batches onto the device.

Under `torchrun` on CUDA, each process first binds its GPU (`torch.cuda.set_device
(LOCAL_RANK)`), then joins an `nccl` group; on CPU (or `device="cpu"`) the group is `gloo`. Collectives
run on the group's device (nccl needs CUDA tensors). Batches come from the DataLoader as numpy arrays
(cheaper through its worker queue, see `loaders.windows.collate_numpy`); `to_device` makes them tensors
and, on CUDA, pins them and copies with `non_blocking=True`, so the copy overlaps the step.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from shardyard.errors import ConfigError
from shardyard.models.backbones import best_device

__all__ = ["AMP_DTYPES", "Runtime", "amp_dtype", "resolve_device", "setup_runtime"]

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """device: where the model runs. rank / world_size / local_rank: this process in the group (0 / 1 / 0
    without torchrun). backend: "nccl", "gloo" or None (one process). amp_dtype: autocast dtype, None for
    full float32."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    amp_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager:
        """`torch.autocast` on this device with `amp_dtype` (disabled when None)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Move the numpy arrays and tensors of `batch` as tensors onto the device (pinned and copied
        `non_blocking` on CUDA); other values (strings, lists) pass through."""
        out: dict[str, Any] = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
                v = torch.from_numpy(np.ascontiguousarray(v))
            if isinstance(v, torch.Tensor):
                if self.device.type == "cuda" and v.device.type == "cpu":
                    v = v.pin_memory()
                v = v.to(self.device, non_blocking=True)
            out[k] = v
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in DDP inside a process group (bound to this GPU on CUDA), else as is."""
        if self.backend is None:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sums(self, sums: Mapping[str, float]) -> dict[str, float]:
        """`sums` added over the processes (float64, on the group's device); as is without a group."""
        if self.backend is None:
            return dict(sums)
        dev = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(list(sums.values()), dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return dict(zip(sums, t.cpu().tolist()))

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every process, in rank order (`[obj]` without a group)."""
        if self.backend is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every process (no-op without a group)."""
        if self.backend is not None:
            dist.barrier(device_ids=[self.device.index]) if self.backend == "nccl" else dist.barrier()

    def peak_memory_gib(self) -> float | None:
        """Peak CUDA memory allocated on this device since the start (GiB); None off CUDA."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def close(self) -> None:
        """Leave the process group, if this process is in one."""
        if dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> `cuda:LOCAL_RANK` when CUDA is present, then mps, else cpu; "cuda" -> `cuda:LOCAL_RANK`;
    anything else is passed to `torch.device` (`models.backbones.best_device`, plus the process's GPU)."""
    device = best_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `amp`: "auto" -> bf16 on CUDA, none elsewhere; "bf16" / "fp16" -> that dtype on
    any device (bf16 autocast runs on CPU too); "off" -> None. Raises ConfigError for another value."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "off":
        return None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")
    return AMP_DTYPES[amp]


def setup_runtime(device: str = "auto", amp: str = "auto") -> Runtime:
    """The runtime of this process: joins the process group when started by torchrun (even with one
    process, so `torchrun --nproc_per_node 1` runs the nccl path) or WORLD_SIZE > 1, binding the GPU first
    on CUDA, then `nccl`; `gloo` on CPU. Raises ConfigError for a bad `amp`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    dtype = amp_dtype(amp, dev)
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Runtime(device=dev, amp_dtype=dtype)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)            # before the group: nccl binds each rank to its current GPU
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rt = Runtime(device=dev, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                 backend=backend, amp_dtype=dtype)
    log.info("rank %d/%d on %s (%s)", rt.rank, rt.world_size, dev, backend)
    return rt
