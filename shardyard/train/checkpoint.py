"""Checkpoint files without pickled objects: what `train.loop` writes to and reads from `RUN/latest.pth`.

A checkpoint is read with `torch.load(weights_only=True)`, whose unpickler builds only tensors, primitive
containers (dict, list, tuple, OrderedDict) and str / int / float / bool / None, and refuses any other
object before it is made: a crafted `latest.pth` cannot run code when a run is resumed or inspected. So
everything saved is first made of those: the RNG states become tensors and ints (`rng_state`), configs and
sampler states go through `plain` (paths as strings, numpy values as Python numbers or tensors).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardyard.errors import ConfigError
from shardyard.stores.atomic import atomic_path

__all__ = ["REQUIRED_KEYS", "atomic_torch_save", "plain", "read_checkpoint", "rng_state", "set_rng_state"]

REQUIRED_KEYS = ("model", "optimizer", "step", "config", "rng")

_PRIMITIVE = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, and CUDA when available), numpy's global generator and Python's, as
    tensors and plain values only: numpy's MT19937 key `(624,) int64` with `pos`, `has_gauss`, `gauss`;
    Python's `(625,) int64` words with `version` and `gauss_next`."""
    npy = np.random.get_state(legacy=False)
    version, words, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": npy["bit_generator"],
                       "key": torch.from_numpy(npy["state"]["key"].astype(np.int64)),
                       "pos": int(npy["state"]["pos"]), "has_gauss": int(npy["has_gauss"]),
                       "gauss": float(npy["gauss"])},
             "python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by `rng_state` (CUDA only when present both then and now)."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
                         "has_gauss": npy["has_gauss"], "gauss": npy["gauss"]})
    py = state["python"]
    random.setstate((py["version"], tuple(py["words"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: Any, where: str = "checkpoint") -> Any:
    """`value` made of what `torch.load(weights_only=True)` rebuilds: tensors, str / int / float / bool /
    None, dicts, lists and tuples of them. Paths become strings, numpy scalars Python numbers, numpy arrays
    tensors, dataclasses dicts, enums their value. Raises TypeError naming `where` and the key for anything
    else (caught when the checkpoint is written, not when a resume reads it)."""
    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Enum):
        return plain(value.value, where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value), where)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint (tensors, numbers, "
                    "strings and containers of them only)")


def atomic_torch_save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """`torch.save(state)` to a temp file beside `path`, then rename: a kill never leaves a torn file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict of `path`, read with `torch.load(weights_only=True)`: nothing in the file is
    executed. Raises FileNotFoundError when there is none; ConfigError naming the file when it holds
    anything but tensors and plain values (a crafted file, or one written by a shardyard that pickled its
    RNG state: retrain into another --out), is unreadable, or lacks one of `REQUIRED_KEYS`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with warnings.catch_warnings():      # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises switching the safe loader off; keep only the part naming what was refused
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", str(e))
        what = found.group(1) if found and found.group(1) else f"{type(e).__name__}: {e}"
        raise ConfigError(f"{path} is not a checkpoint of tensors and plain values ({what}): refused, nothing in "
                          "it was run; one written by an older shardyard (pickled RNG states) cannot be resumed "
                          "or inspected: retrain into another --out", path=str(path)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})", path=str(path)) from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"{path} is not a shardyard checkpoint (missing {missing})", path=str(path))
    return state
