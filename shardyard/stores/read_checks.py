"""Integrity on read: what the readers check against the checksums recorded when a store was written, as they
read, and the `StoreDamagedError` naming the store, field, episode, step and file that they raise.

With `verify_reads` on (every reader's default):
- a frame chunk of a sharded field (episodic frame fields, a feature store's tokens): its crc32c against
  `meta/chunk_crc32c/<field>` as it is read (`ShardReader(crc=...)`; google_crc32c runs at GB/s);
- a video field's MP4: the file's crc32c against `meta/video_crc32c/<field>` when the reader opens it, once per
  process and file (`VideoFrameReader(crc=...)`; reopened unchanged, by inode, size and mtime, it is not
  hashed again);
- a low-dim array: its files' size and sha256 against `checksums.json` when it is first loaded (once per
  process: it is read whole); a listed file that is missing is damage, not zarr's fill value;
- `meta/episode_ends`: its files against `checksums.json` and its values (positive, non-decreasing, as many and
  ending where the manifest says) at open, and each data array's length against its last value when the
  array is first opened;
- a shard store's tar shard (`ClipStream`): its size and sha256 against the store's manifest before any of its
  samples is served (`checked_shard`).
Whatever `verify_reads`, a reader never serves a frame chunk the store says exists but that is missing, and a
truncated shard, a shard index failing its crc32c or a chunk that does not decode is a `StoreDamagedError`
naming the file. A writer's own view of a store it is finalizing (its manifest given in memory, none on disk
yet) checks nothing: the store is not complete, and may sit beside the `checksums.json` of an earlier finalize;
`shardyard verify` checks the finished store.

The recorded arrays and `checksums.json` are read once per process, on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Sequence

import google_crc32c
import numpy as np

from shardyard.errors import StoreDamagedError
from shardyard.stores.checksums import CHECKSUMS, CHUNK_CRC, VIDEO_CRC
from shardyard.stores.episode_reader import EpisodeTable
from shardyard.stores.episode_table import EPISODES as EPISODES_PARQUET
from shardyard.stores.episode_table import EPISODES_JSON
from shardyard.stores.lowdim_chunks import ChunkRows
from shardyard.stores.manifest import MANIFEST, read_json

__all__ = ["FieldNamer", "ReadChecks", "checked_shard", "crc32c", "crc_mismatch", "damaged_file",
           "recorded_shards"]

log = logging.getLogger(__name__)

LAZY_CRC_ROWS = 1 << 20  # recorded crc32c arrays longer than this are read by chunk


def crc32c(data: bytes | np.ndarray) -> int:
    """crc32c (Castagnoli) of `data`: bytes or a contiguous uint8 array (no copy; not a memoryview)."""
    return int(google_crc32c.value(data))


def damaged_file(reason: str, *, row: int | None = None, file: str | None = None, **_: Any) -> StoreDamagedError:
    """The error of a reader that knows only the file (and row): no store, field or episode to name."""
    return StoreDamagedError(reason if row is None else f"{reason} (row {row})", path=file)


def crc_mismatch(data: bytes | np.ndarray, recorded: int) -> str | None:
    """None when `data`'s crc32c is `recorded`, else the reason naming both."""
    got = crc32c(data)
    return None if got == recorded else \
        f"chunk crc32c {got:08x} differs from the one recorded at ingest ({recorded:08x})"


@dataclass
class FieldNamer:
    """Builds the `StoreDamagedError` of one field of a store: called as `namer(reason, row=, episode=, step=,
    file=)` with a global `row` (the episode and step are found from it) or an `episode` index and `step`."""

    checks: "ReadChecks"
    field: str | None

    def __call__(self, reason: str, *, row: int | None = None, episode: int | None = None, step: int | None = None,
                 file: str | None = None) -> StoreDamagedError:
        """The error (`ReadChecks.damaged` with this field)."""
        return self.checks.damaged(reason, field=self.field, row=row, episode=episode, step=step, file=file)


class ReadChecks:
    """What one store's reader checks, and how it names what it finds (module docstring).

    store: the store's URL or path as the user gave it (named in errors). root: its path (inside `fs` for a
    store at a URL). fs: `ProcessLocalFS` or None (local). verify: check recorded checksums (`verify_reads`).
    manifest_in_memory: the reader was given its manifest (a writer's view): checks only if `manifest.json` is
    on disk (a complete store, e.g. `shardyard stats` rewriting its split). keys: the episode keys (a list,
    e.g. a feature store's source keys) or None to read them from the episode table (`meta/episodes.parquet`,
    or a format-1 store's `meta/episodes.json`) when an error needs them. ends: `(E,) int64` episode ends,
    or None to read `meta/episode_ends` when an error needs them.
    Picklable; per-process caches rebuild lazily.
    """

    def __init__(self, store: str, root: str, fs: Any = None, *, verify: bool = True,
                 manifest_in_memory: bool = False, keys: Sequence[str] | None = None,
                 ends: np.ndarray | None = None) -> None:
        self.store, self.root, self.fs, self.ends = str(store), str(root), fs, ends
        self.verify = verify and (not manifest_in_memory or self._exists(MANIFEST))
        self._keys = None if keys is None else list(keys)
        self._sums: dict[str, dict[str, Any]] | None | bool = False  # False: not read yet; None: none recorded
        self._checked: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"_sums": False, "_checked": set()}

    # -- naming ------------------------------------------------------------------------------------------
    def join(self, rel: str) -> str:
        """Path (or path inside `fs`) of `rel` under the store's root."""
        return f"{self.root}/{rel}" if self.fs is not None else os.path.join(self.root, rel)

    def position(self, row: int) -> tuple[int | None, int | None]:
        """(episode index, step within it) of global `row`; (None, None) when the ends are unknown or past."""
        ends = self._ends()
        if ends is None:
            return None, None
        e = int(np.searchsorted(ends, row, side="right"))
        if e >= len(ends):
            return None, None
        return e, row - (int(ends[e - 1]) if e else 0)

    def damaged(self, reason: str, *, field: str | None = None, row: int | None = None, episode: int | None = None,
                step: int | None = None, file: str | None = None) -> StoreDamagedError:
        """The error for damage at global `row` (or `episode` and `step`) of `field` in `file`."""
        if row is not None and episode is None:
            episode, step = self.position(row)
            reason = f"{reason} (row {row})"
        return StoreDamagedError(reason, store=self.store, path=file, key=self._key(episode), field=field,
                                 episode_index=episode, step=step)

    def namer(self, field: str | None) -> FieldNamer:
        """The error builder of `field` (for `ShardReader` and `VideoFrameReader`)."""
        return FieldNamer(self, field)

    def _ends(self) -> np.ndarray | None:
        if self.ends is None:
            try:
                import zarr

                path = self.join("meta/episode_ends")
                arr = zarr.open_array(self.fs.url(path) if self.fs is not None else path, mode="r",
                                      **({"storage_options": self.fs.storage_options} if self.fs is not None else {}))
                self.ends = np.asarray(arr[:], dtype=np.int64)
            except Exception:  # noqa: BLE001 - naming must not fail where the ends are damaged too
                return None
        return self.ends

    def _key(self, episode: int | None) -> str | None:
        if episode is None:
            return None
        if self._keys is None:
            try:
                self._keys = EpisodeTable(self.root, self.fs, 0).key_list() if self._exists(EPISODES_PARQUET) \
                    else [e["key"] for e in read_json(self.join(EPISODES_JSON), self.fs)]
            except Exception:  # noqa: BLE001 - an unreadable episode table leaves the index alone to name it
                self._keys = []
        return self._keys[episode] if episode < len(self._keys) else None

    # -- recorded checksums -------------------------------------------------------------------------------
    def recorded_crc(self, kind: str, field: str, n: int) -> np.ndarray | None:
        """`meta/<kind>/<field>` `(n,) uint32` (kind `CHUNK_CRC` or `VIDEO_CRC`), or None when verify is off or
        none (or not `n`: a store resumed from before they were recorded) was recorded."""
        if not self.verify:
            return None
        try:
            import zarr

            path = self.fs.url(self.join(f"meta/{kind}/{field}")) if self.fs is not None \
                else self.join(f"meta/{kind}/{field}")
            arr = zarr.open_array(path, mode="r", **({"storage_options": self.fs.storage_options} if self.fs else {}))
            # A frame field of 10^7 rows has 40 MB of them: read by chunk as rows are checked, not whole in
            # every DataLoader worker (`stores.lowdim_chunks`)
            crc = ChunkRows(arr, int(arr.chunks[0]), lambda c: None) if arr.shape[0] > LAZY_CRC_ROWS \
                else np.asarray(arr[:], dtype=np.uint32)
        except (FileNotFoundError, KeyError):
            crc = None
        except Exception as e:  # noqa: BLE001 - a damaged crc array is damage of the store
            raise self.damaged(f"recorded crc32c array does not read ({type(e).__name__}: {e})", field=field,
                               file=self.join(f"meta/{kind}/{field}")) from e
        if crc is None or len(crc) != n:
            log.debug("%s: no crc32c recorded for %s (%s)", self.store, field, kind)
            return None
        return crc

    def chunk_crc(self, field: str, n: int) -> np.ndarray | None:
        """The recorded crc32c of each of the `n` one-row chunks of a sharded field (None: not checked)."""
        return self.recorded_crc(CHUNK_CRC, field, n)

    def video_crc(self, field: str, n: int) -> np.ndarray | None:
        """The recorded crc32c of each of the `n` episode MP4s of a video field (None: not checked)."""
        return self.recorded_crc(VIDEO_CRC, field, n)

    def attach(self, field: str, reader: Any, file: str, *, fill_ok: bool = False, name: str | None = None) -> Any:
        """Arm a `ShardReader` of `field` (None passes through): its length checked against the episode ends
        (with `fill_ok` False: an episodic store's frame field, every chunk written), the recorded crc32c of
        each chunk, errors naming `name` (default `field`). `fill_ok`: an unwritten chunk whose recorded
        crc32c is 0 is the fill value (a feature store's missing frame). Returns `reader`."""
        if reader is not None:
            if not fill_ok:
                self.check_rows(field, reader.shape[0], file)
            reader.crc = self.chunk_crc(field, reader.shape[0]) if reader.chunk_rows == 1 else None
            reader.fill_ok, reader.damaged = fill_ok, self.namer(name or field)
        return reader

    def video_options(self, field: str, rows: int, file: str) -> dict[str, Any]:
        """`VideoFrameReader` keywords of a video field whose frame index (at `file`) has `rows` rows: the
        recorded crc32c of each episode's MP4 and named errors; `rows` is checked against the episode ends."""
        self.check_rows(field, rows, file)
        n = len(self.ends) if self.ends is not None else 0
        return {"crc": self.video_crc(field, n), "damaged": self.namer(field)}

    def _entries(self) -> dict[str, dict[str, Any]] | None:
        """`checksums.json` entries by name, or None when the store has none."""
        if self._sums is False:
            try:
                sums = read_json(self.join(CHECKSUMS), self.fs)
            except FileNotFoundError:
                sums = None
            except Exception as e:  # noqa: BLE001 - an unreadable checksums.json is damage of the store
                raise self.damaged(f"checksums.json does not read ({type(e).__name__}: {e})",
                                   file=self.join(CHECKSUMS)) from e
            self._sums = None if sums is None else {f["name"]: f for f in sums.get("files", [])}
        return self._sums  # type: ignore[return-value]

    def _exists(self, rel: str) -> bool:
        path = self.join(rel)
        return bool(self.fs.exists(path)) if self.fs is not None else os.path.isfile(path)

    def _read(self, rel: str) -> bytes | None:
        try:
            if self.fs is not None:
                return bytes(self.fs.cat_file(self.join(rel)))
            with open(self.join(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def check_files(self, prefix: str, field: str | None = None, *, exact: bool = False) -> None:
        """Every file `checksums.json` lists under `prefix` (e.g. `data/obs.state/`; with `exact`, the one file
        named `prefix`, e.g. a chunk `data/obs.state/c/3/0`) against its size and sha256, once per process; a
        listed file that is missing is damage. Nothing when verify is off or no `checksums.json` counts.
        Raises `StoreDamagedError` naming the file (and the rows of a chunk file)."""
        if not self.verify or prefix in self._checked:
            return
        entries = self._entries() or {}
        listed = ([(prefix, entries[prefix])] if prefix in entries else []) if exact else sorted(entries.items())
        for name, entry in listed:
            if not name.startswith(prefix):
                continue
            data = self._read(name)
            if data is None:
                raise self.damaged("file listed in checksums.json is missing (a reader would get zarr's fill "
                                   "value)", field=field, file=self.join(name))
            if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise self.damaged(f"{len(data)} bytes whose sha256 differs from checksums.json ({entry['bytes']} "
                                   "bytes recorded at ingest)", field=field, file=self.join(name))
        self._checked.add(prefix)

    # -- episode ends ---------------------------------------------------------------------------------------
    def load_episode_ends(self, group: Any, manifest: dict[str, Any]) -> np.ndarray:
        """`meta/episode_ends` `(E,) int64` of the zarr `group` of the store: its files checked against
        `checksums.json` before they are decoded, its values after (`check_episode_ends`, against the
        `manifest` dict's counts). Keeps them for naming rows. Raises `StoreDamagedError`."""
        self.check_files("meta/episode_ends/")
        try:
            ends = np.asarray(group["meta/episode_ends"][:], dtype=np.int64)
        except KeyError:
            raise
        except Exception as e:  # noqa: BLE001 - a codec error on damaged bytes, named
            raise self.damaged(f"meta/episode_ends does not read ({type(e).__name__}: {e})",
                               file=self.join("meta/episode_ends")) from e
        self.check_episode_ends(ends, manifest.get("num_episodes"), manifest.get("num_steps"))
        self.ends = ends
        return ends

    def check_episode_ends(self, ends: np.ndarray, num_episodes: int | None, num_steps: int | None) -> None:
        """`meta/episode_ends` at open: positive, non-decreasing, `num_episodes` of them ending at `num_steps`
        (the manifest's counts; None: not checked). Nothing when verify is off."""
        if not self.verify:
            return
        file = self.join("meta/episode_ends")
        why = None
        if len(ends) and int(ends[0]) < 1:
            why = f"first episode end {int(ends[0])} is not positive"
        elif np.any(np.diff(ends) < 0):
            e = int(np.flatnonzero(np.diff(ends) < 0)[0]) + 1
            why = f"episode ends decrease at episode {e} ({int(ends[e - 1])} -> {int(ends[e])})"
        elif num_episodes is not None and len(ends) != num_episodes:
            why = f"{len(ends)} episode ends, the manifest says {num_episodes} episodes"
        elif num_steps is not None and (int(ends[-1]) if len(ends) else 0) != num_steps:
            why = f"episode ends stop at {int(ends[-1]) if len(ends) else 0}, the manifest says {num_steps} steps"
        if why is not None:
            raise self.damaged(f"meta/episode_ends: {why}", file=file)

    def check_rows(self, field: str, rows: int, file: str) -> None:
        """A data array's length (`rows`, from its metadata at `file`) against the last episode end."""
        ends = self.ends
        if not self.verify or ends is None:
            return
        total = int(ends[-1]) if len(ends) else 0
        if rows != total:
            raise self.damaged(f"array has {rows} rows, meta/episode_ends say {total}", field=field, file=file)


# -- tar shards of a shard store (ClipStream) ---------------------------------------------------------------
def recorded_shards(source: Any) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """For a shard store (a folder or URL with `manifest.json`): its root and `{shard URL: manifest entry}`
    (`name`, `bytes`, `sha256`), keyed as `wds.list_shards` names the shards; `(None, {})` for other sources
    (a folder of tars, a `.tar`, a list), which record no checksums."""
    from shardyard.stores.wds import ShardStore

    if isinstance(source, (list, tuple)) or str(source).endswith(".tar"):
        return None, {}
    text = str(source)
    if "://" not in text and not os.path.isfile(os.path.join(text, MANIFEST)):
        return None, {}
    store = ShardStore(text)
    return store.root, {f"{store.root}/{f['name']}": f for f in store.manifest.files if f.get("sha256")}


@contextlib.contextmanager
def checked_shard(f: BinaryIO, url: str, entry: dict[str, Any] | None, store: str | None) -> Iterator[BinaryIO]:
    """`f` (an open shard) to be read once its bytes match the manifest `entry` (size and sha256; None: not
    recorded, `f` as is). A local file is hashed in place, then rewound; a stream (HTTP, object store) is
    copied while hashed into a spool (in memory up to 64 MiB, then a temporary file) that is then read, so no
    sample is served before the whole shard is checked. Raises `StoreDamagedError` naming the store and shard."""
    if entry is None:
        yield f
        return
    local = "://" not in url
    digest, n = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        spool = None if local else stack.enter_context(tempfile.SpooledTemporaryFile(max_size=64 << 20))
        while piece := f.read(8 << 20):
            digest.update(piece)
            n += len(piece)
            if spool is not None:
                spool.write(piece)
        why = (f"tar shard is {n} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
               if n != entry["bytes"] else "tar shard sha256 differs from the manifest"
               if digest.hexdigest() != entry["sha256"] else None)
        if why is not None:
            raise StoreDamagedError(why, store=store, path=url)
        out = f if spool is None else spool
        out.seek(0)
        yield out
