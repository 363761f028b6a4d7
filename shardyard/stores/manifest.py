"""`manifest.json`: written last, its presence is what makes a directory a store. Its `generation` (a random
id, new with every manifest a writer makes) names the store's version: readers compare it to notice a store
replaced under them (`stores.snapshot`).

`read_manifest` is the one reader of a store's manifest (local path or fsspec URL), typed as `Manifest`;
`read_manifest_dict` gives the raw dict, for the callers that keep it as read (the fingerprint of a store is
the sha256 of that dict, `manifest_fingerprint`)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardyard.version import __version__

__all__ = ["MANIFEST", "Manifest", "fingerprint_paths", "manifest_fingerprint", "new_generation", "provenance",
           "read_json", "read_manifest", "read_manifest_dict", "sha256_file"]

MANIFEST = "manifest.json"


def new_generation() -> str:
    """A fresh store generation id: 32 hex digits, random (uuid4), so no two writes share one."""
    return uuid.uuid4().hex


@dataclass
class Manifest:
    """Typed content of `manifest.json` (format, version, schema, counts, provenance, split)."""

    format: str                         # "episodic-zarr3" | "shards-webdataset" | "features-zarr3"
    format_version: int
    schema: dict[str, Any]
    num_episodes: int
    num_steps: int
    source: dict[str, Any] = field(default_factory=dict)      # name, path, fingerprint
    provenance: dict[str, Any] = field(default_factory=dict)  # tool version, config
    split: dict[str, list[int]] = field(default_factory=dict)  # "train"/"val" -> episode indices
    files: list[dict[str, Any]] = field(default_factory=list)  # shard stores: name, samples, bytes, sha256
    extra: dict[str, Any] = field(default_factory=dict)
    # The version id readers check (`stores.snapshot`): kept when a manifest is rewritten from `from_dict`
    # for the same data (a new split), new for every store a writer makes.
    generation: str = field(default_factory=new_generation)
    # The dict it was read from (`from_dict`), keys a newer writer added included; never written back.
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able content of `manifest.json` (without `raw`)."""
        d = asdict(self)
        d.pop("raw")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        """Inverse of `to_dict`; keys this version does not know are kept only in `raw` (a newer writer's
        additions)."""
        known = {f for f in cls.__dataclass_fields__} - {"raw"}
        return cls(**{k: v for k, v in d.items() if k in known}, raw=dict(d))


def provenance(config: dict[str, Any]) -> dict[str, Any]:
    """Provenance block: shardyard version and the job's config."""
    return {"tool": "shardyard", "tool_version": __version__, "config": config}


def fingerprint_paths(paths: list[Path], root: Path) -> str:
    """Cheap fingerprint of raw input: sha256 over (relative path, size, mtime_ns) of every file."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 of a store's manifest (its source fingerprint, config, schema and counts), as hex digits.

    This is the `source_fingerprint` that keys a feature store: `ingest dino` writes it and the feature-store
    edits check it, so both must compute it here, from the manifest as read (keys sorted, values the JSON
    encoder cannot write as their `str`)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in `bufsize` chunks. Raises `FileNotFoundError`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str, fs: Any = None) -> Any:
    """Load JSON from a local path or a path on an fsspec filesystem."""
    if fs is not None:
        return json.loads(fs.cat_file(path))
    with open(path, "rb") as f:
        return json.load(f)


def read_manifest_dict(store: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of `manifest.json` in the store at `store` (a local path or an fsspec URL, opened with
    `storage_options`), as read. Raises `FileNotFoundError` (or the filesystem's `OSError`) when there is
    none, `ValueError` when it is not JSON."""
    path = f"{str(store).rstrip('/')}/{MANIFEST}"
    if "://" not in path:
        return read_json(path)
    import fsspec

    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        return json.load(f)


def read_manifest(store: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Manifest:
    """The manifest of the store at `store` (local path or fsspec URL), typed; the dict as read is its `raw`.
    Raises as `read_manifest_dict`, and `TypeError` when a required key (format, schema, counts) is missing."""
    return Manifest.from_dict(read_manifest_dict(store, storage_options))
