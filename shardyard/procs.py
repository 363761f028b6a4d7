"""Child processes that die with their parent, so a SIGKILLed `ingest` or `train` leaves nothing running.

A reader or DataLoader worker whose parent is killed is not told: it waits on its task queue (a pipe whose
write end it holds itself) or on a lock, for ever, holding its memory. `die_with_parent`, run first thing
in each child (a pool's initializer, a DataLoader's `worker_init_fn`), asks Linux to SIGKILL the child
when its parent exits (`prctl(PR_SET_PDEATHSIG)`), then closes the race in which the parent died before
that request: if the parent is already gone, the child exits there. Elsewhere than Linux only that check
runs.

The kernel ties the signal to the parent *thread* that forked the child: start these children from a
thread that lives as long as the process (the main thread, as the pools and DataLoaders here do).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
from typing import Callable

__all__ = ["die_with_parent", "loader_worker_init"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process die with `parent_pid`, the pid of the process that started it (taken in
    the parent, before the child existed): on Linux it gets SIGKILL when that process exits, and if it
    has exited already, this process exits now (status 1). A failing `prctl` is logged, not raised."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # orphaned before the request: now adopted by init or a subreaper
        os._exit(1)


def _init_loader_worker(parent_pid: int, worker_id: int) -> None:
    die_with_parent(parent_pid)


def loader_worker_init() -> Callable[[int], None]:
    """A `worker_init_fn` for `torch.utils.data.DataLoader`, made in the process that iterates the loader:
    each worker dies with that process (`die_with_parent`). Picklable (spawned workers)."""
    return functools.partial(_init_loader_worker, os.getpid())
