"""Shard store (webdataset tar): `shards/{split}-{000000}.tar` with members `<key>.<ext>`, plus a
`manifest.json` written last that lists every shard with its sample count, bytes and sha256.

Each shard is written whole: the tar goes to a temp name in `shards/` and is renamed when complete, so a
`.tar` under its final name is always a finished shard (that is what resume trusts). Beside each tar a
`{split}-{000000}.status.json` sidecar (written before the rename) holds one row per input sample of that
shard, failures included, as video2dataset's per-shard parquet does; reports and `--retry-failed` use it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from shardyard.errors import StoreError
from shardyard.stores.atomic import atomic_write_json, chmod_as_umask, remove_stale_temps
from shardyard.stores.manifest import (
    MANIFEST,
    Manifest,
    provenance,
    read_json,
    read_manifest,
    read_manifest_dict,
    sha256_file,
)
from shardyard.stores.safe_paths import safe_relatives

__all__ = ["FORMAT", "FORMAT_VERSION", "SCHEMA", "SHARD_RE", "Sample", "ShardStore", "ShardWriter",
           "ShardWriterConfig", "iter_tar_samples", "list_shards", "shard_name", "split_key_ext", "write_tar"]

log = logging.getLogger(__name__)

FORMAT = "shards-webdataset"
FORMAT_VERSION = 1
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
SCHEMA = {"members": {"<container>": "video (bytes as fetched or transcoded), the extension naming the container: "
                      "mp4, mov, mkv, webm, avi, ... (shardyard.video.VIDEO_EXTS)",
                      "txt": "caption (utf-8)", "json": "input columns + status, error_message, "
                      "duration (s), fps (Hz), num_frames, width, height, bytes"}}


@dataclass
class Sample:
    """One webdataset sample: `key` (no dots or slashes) and member bytes by extension (`{"mp4": b"..."}`)."""

    key: str
    members: dict[str, bytes]


@dataclass
class ShardWriterConfig:
    """split: shard name prefix. overwrite: delete an existing store first. source/config: provenance."""

    split: str = "train"
    overwrite: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def shard_name(split: str, index: int) -> str:
    """`shard_name("train", 3)` -> `"train-000003.tar"`."""
    return f"{split}-{index:06d}.tar"


def split_key_ext(name: str) -> tuple[str, str]:
    """Webdataset's rule: key = basename up to its first dot, extension = the rest (`a/b.seg.mp4`)."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, ext


def write_tar(fileobj: BinaryIO, samples: list[Sample]) -> None:
    """Write `samples` as a tar to `fileobj`: members in sample order, extensions sorted, fixed mtime/owner
    so the same samples give the same bytes. Raises `StoreError` for a key containing `.` or an empty one."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            if not s.key or "." in s.key:
                raise StoreError(f"invalid sample key {s.key!r} (empty or contains '.')")
            for ext in sorted(s.members):
                data = s.members[ext]
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = "shardyard"
                tar.addfile(info, io.BytesIO(data))


def iter_tar_samples(fileobj: BinaryIO) -> Iterator[Sample]:
    """Stream samples from a tar file object (read once, front to back): consecutive members sharing a key
    form one sample. Raises `tarfile.TarError` or `OSError` when the stream is truncated or corrupt."""
    current: Sample | None = None
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_key_ext(info.name)
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"member {info.name} truncated ({len(data)} of {info.size} bytes)")
            if current is not None and current.key != key:
                yield current
                current = None
            if current is None:
                current = Sample(key, {})
            current.members[ext] = data
        # tarfile ends iteration quietly on a short header; a whole archive ends with a zero block.
        if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("truncated tar: no end-of-archive block")
    if current is not None:
        yield current


class ShardWriter:
    """Context manager writing a shard store at `root`; the manifest is written on a clean exit.

    `write_shard(index, samples, status_rows)` writes one whole shard atomically; `finished()` maps the
    names of shards already complete (a resumed job) to their status rows. Raises `StoreError` when `root`
    holds another kind of store."""

    def __init__(self, root: str | os.PathLike, *, config: ShardWriterConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or ShardWriterConfig()
        self.report: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    def __enter__(self) -> "ShardWriter":
        if self.config.overwrite and self.root.exists():
            shutil.rmtree(self.root)
        if (self.root / MANIFEST).exists():
            fmt = read_manifest_dict(self.root).get("format")
            if fmt != FORMAT:
                raise StoreError(f"{self.root} is a {fmt!r} store, not {FORMAT!r}", path=str(self.root))
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.shard_dir)
        return self

    @property
    def shard_dir(self) -> Path:
        """The `shards/` folder."""
        return self.root / "shards"

    def finished(self) -> dict[str, list[dict[str, Any]]]:
        """Shard name -> status rows, for every complete shard of this split already on disk."""
        out = {}
        for p in sorted(self.shard_dir.glob(f"{self.config.split}-*.tar")):
            if SHARD_RE.match(p.name):
                out[p.name] = self._status_rows(p)
        return out

    def _status_rows(self, tar_path: Path) -> list[dict[str, Any]]:
        side = tar_path.with_suffix(".status.json")
        if side.exists():
            d = read_json(str(side))
            if d.get("file", {}).get("bytes", tar_path.stat().st_size) == tar_path.stat().st_size:
                return d["samples"]
        # no sidecar, or one for a replacement that never got renamed in: the tar's json members (successes)
        with open(tar_path, "rb") as f:
            return [json.loads(s.members["json"]) for s in iter_tar_samples(f) if "json" in s.members]

    def read_shard(self, name: str) -> list[Sample]:
        """All samples of a finished shard (for a rewrite that keeps its successes)."""
        with open(self.shard_dir / name, "rb") as f:
            return list(iter_tar_samples(f))

    def write_shard(self, index: int, samples: list[Sample], status_rows: list[dict[str, Any]]) -> str:
        """Write shard `index` (replacing a finished one): tar to a temp name, fsync, sidecar, rename.
        Returns the shard's file name."""
        name = shard_name(self.config.split, index)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.shard_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                write_tar(f, samples)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, name, len(samples), {"samples": status_rows})
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("wrote shard %s (%d samples)", name, len(samples))
        return name

    def add_foreign_shard(self, index: int, src: Path, status_rows: list[dict[str, Any]]) -> str:
        """Copy an existing tar (e.g. a video2dataset shard) in byte for byte as shard `index`."""
        name = shard_name(self.config.split, index)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.shard_dir)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                n = sum(1 for _ in iter_tar_samples(f))
            self._commit(tmp, name, n, {"source": str(src), "samples": status_rows})
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return name

    def _commit(self, tmp: str, name: str, num_samples: int, sidecar: dict[str, Any]) -> None:
        """Sidecar (with the shard's manifest entry) first, then the rename that makes the shard finished."""
        chmod_as_umask(tmp)
        entry = {"name": f"shards/{name}", "split": self.config.split, "samples": num_samples,
                 "bytes": os.path.getsize(tmp), "sha256": sha256_file(tmp)}
        atomic_write_json((self.shard_dir / name).with_suffix(".status.json"),
                          {"shard": name, "file": entry, **sidecar})
        os.replace(tmp, self.shard_dir / name)

    def _entry(self, p: Path) -> dict[str, Any]:
        side = p.with_suffix(".status.json")
        entry = read_json(str(side)).get("file") if side.exists() else None
        if entry and entry["bytes"] == p.stat().st_size:
            return entry
        with open(p, "rb") as f:  # a shard without a sidecar: count and hash it
            n = sum(1 for _ in iter_tar_samples(f))
        return {"name": f"shards/{p.name}", "split": SHARD_RE.match(p.name)["split"], "samples": n,
                "bytes": p.stat().st_size, "sha256": sha256_file(p)}

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return  # no manifest: the store stays resumable and never looks complete
        if self.report is not None:
            atomic_write_json(self.root / "report.json", self.report)
        files = [self._entry(p) for p in sorted(self.shard_dir.glob("*.tar")) if SHARD_RE.match(p.name)]
        total = sum(f["samples"] for f in files)
        manifest = Manifest(format=FORMAT, format_version=FORMAT_VERSION, schema=SCHEMA, num_episodes=total,
                            num_steps=0, source=self.config.source, provenance=provenance(self.config.config),
                            files=files, extra=self.extra)
        atomic_write_json(self.root / MANIFEST, manifest.to_dict())


@dataclass
class ShardStore:
    """A complete shard store (local path or fsspec URL): its manifest and shard URLs.
    Raises `StoreError` when there is no manifest or it is not a shard store."""

    root: str
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.root = str(self.root).rstrip("/")
        path = f"{self.root}/{MANIFEST}"
        try:
            self.manifest = read_manifest(self.root)
        except (FileNotFoundError, OSError) as e:
            raise StoreError(f"no {MANIFEST}: not a complete store ({e})", path=self.root) from e
        if self.manifest.format != FORMAT:
            raise StoreError(f"store format is {self.manifest.format!r}, not {FORMAT!r}", path=self.root)
        # shard names are joined onto the root by every reader and by verify: none may lead outside it
        safe_relatives([f.get("name") for f in self.manifest.files], source=path)

    def shards(self, split: str | None = None) -> list[str]:
        """Paths or URLs of the shards (all splits, or one), in manifest order."""
        return [f"{self.root}/{f['name']}" for f in self.manifest.files if split in (None, f.get("split"))]

    @property
    def num_samples(self) -> int:
        """Samples in all shards, from the manifest."""
        return sum(f["samples"] for f in self.manifest.files)

    def verify(self) -> list[str]:
        """Local stores: names of shards whose size or sha256 differ from the manifest (empty when intact)."""
        bad = []
        for f in self.manifest.files:
            p = Path(self.root) / f["name"]
            if not p.exists() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                bad.append(f["name"])
        return bad


def list_shards(source: str | os.PathLike | list[str]) -> list[str]:
    """Shard paths/URLs of a source: a shard store (dir or URL with `manifest.json`), a local folder of
    `.tar` files, one `.tar` path/URL, or a list of them. Raises `StoreError` when nothing is found."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    s = str(source)
    if s.endswith(".tar"):
        return [s]
    if "://" in s:
        return ShardStore(s).shards()
    p = Path(s)
    if (p / MANIFEST).exists():
        return ShardStore(s).shards()
    if p.is_dir():
        tars = sorted(str(t) for t in p.rglob("*.tar"))
        if tars:
            return tars
    raise StoreError("no shards found (expected a shard store, a folder of .tar files or .tar URLs)", path=s)
