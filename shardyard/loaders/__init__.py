"""Loaders over shardyard stores (PyTorch datasets): every public dataset, its config and the sampler.

    from shardyard.loaders import EpisodeDataset, ClipStream, ResumableSampler

Names are imported on first use (PEP 562 `__getattr__`), so `import shardyard.loaders` does not import torch,
and each dataset's module (and its optional dependencies) loads only when that dataset is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EpisodeDataset": "episodes",
    "EpisodeDatasetConfig": "episodes",
    "EpisodeWindows": "windows",
    "WindowConfig": "windows",
    "collate_numpy": "windows",
    "TokenDataset": "tokens",
    "TokenDatasetConfig": "tokens",
    "ClipStream": "streaming",
    "StreamConfig": "streaming",
    "UrlClipStream": "url_stream",
    "UrlStreamConfig": "url_stream",
    "ResumableSampler": "sampler",
    "BatchStream": "sampler",
    "SharedCollate": "shared_batches",
    "FieldNorm": "normalize",
    "normalize_images": "normalize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardyard.loaders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shardyard.loaders.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
