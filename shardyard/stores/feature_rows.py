"""Writing the token rows of a feature store (layout in `stores.features`), batch by batch, from any process,
with a crc32c of every stored chunk.

A batch `[start, stop)` of `patch_tokens` and `cls_token` is encoded one sample per inner chunk and appended to
its shard file (`ShardAppender`); when the shard's rows before `start` are not all there (a resumed or torn
shard) it goes through zarr's read-modify-write instead. The crc32c of each chunk is taken where it is encoded
(append path) or read back from the shard file just written (zarr path; a sample zarr left out because it is
all zeros, the fill value, a missing frame's, gets the crc32c of no bytes, 0). The checksums go into the
batch's completion record `progress/<start>.json`, which is written after the rows and is the batch's commit
point: a kill before it leaves a batch that the rerun recomputes, checksums included, so the checksums of
every recorded batch are those of the bytes on disk. At finalize (`write_chunk_crc32c`) the records'
checksums become `meta/chunk_crc32c/<array>` `(N,) uint32`, the episodic stores' layout (`stores.checksums`),
which `shardyard verify` checks: a flipped byte inside an uncompressed token chunk decodes fine and is only
found this way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from shardyard.stores.atomic import atomic_write_json
from shardyard.stores.checksums import CHUNK_CRC
from shardyard.stores.commit_log import PROGRESS_DIR
from shardyard.stores.frames.registry import chunk_codec_of
from shardyard.stores.frames.shard_append import ShardAppender
from shardyard.stores.frames.zarr_shard import EMPTY, load_array_meta, read_shard_index, shard_file

__all__ = ["CLS", "MISSING", "PATCH", "PROGRESS_DIR", "TOKEN_ARRAYS", "write_batch", "write_chunk_crc32c"]

log = logging.getLogger(__name__)

PATCH, CLS, MISSING = "patch_tokens", "cls_token", "missing"
TOKEN_ARRAYS = (PATCH, CLS)  # the arrays with one sample per inner chunk, and a crc32c per chunk

_WRITERS: dict[tuple[int, str], dict[str, Any]] = {}


def _to_stored(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype != np.uint16:
        return x.astype(dtype, copy=False)
    import torch  # bfloat16 bits, rounded to nearest even by torch
    bits = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16)
    return bits.numpy().view(np.uint16)


def _array_writer(root: Path, name: str) -> dict[str, Any]:
    """Per-process writer state of one array: `ShardAppender` fast path (pre-encoded one-row chunks
    concatenated into shard files, `stores/frames/zarr_shard.py`) and the zarr array as the general fallback."""
    states = _WRITERS.setdefault((os.getpid(), str(root)), {})
    if name not in states:
        meta = load_array_meta(str(root / name))
        codec = chunk_codec_of(meta)
        shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        states[name] = {"codec": codec, "zarr": zarr.open_array(str(root / name), mode="r+"),
                        "app": ShardAppender(root / name, shard_rows, len(meta["shape"]), n_rows=-1)}
    return states[name]


def _stored_crc32c(app: ShardAppender, start: int, stop: int) -> list[int]:
    """crc32c of the chunks of rows `[start, stop)` (one shard) as they are in its file now; 0 for a row
    zarr did not store (its value is the fill value)."""
    s, k = divmod(start, app.shard_rows)
    path = shard_file(str(app.array_dir), s, app.ndim)
    index = read_shard_index(path, app.shard_rows)
    out = []
    with open(path, "rb") as f:
        for off, n in index[k:k + stop - start]:
            if off == EMPTY:
                out.append(0)
                continue
            f.seek(int(off))
            out.append(int(google_crc32c.value(f.read(int(n)))))
    return out


def _write_rows(root: Path, name: str, start: int, x: np.ndarray) -> list[int]:
    """Store rows `[start, start + len(x))` of array `name`; returns the crc32c of each stored chunk."""
    st = _array_writer(root, name)
    x = _to_stored(x, st["zarr"].dtype)
    app = st["app"]
    if st["codec"] is not None:
        try:
            if app.n_rows != start:
                if app.has_rows_from(start):
                    raise ValueError("shard already holds rows past the start")
                app.load(start)  # a new shard, or resuming one: re-read its committed rows
            rows = st["codec"].encode_rows(x)
            app.append(rows.chunks)
            return [int(c) for c in rows.crc32c]
        except (OSError, ValueError) as e:  # rows before `start` in this shard are not all there
            log.debug("append path not usable at row %d of %s (%s); writing through zarr", start, name, e)
            app.n_rows = -1
    st["zarr"][start:start + len(x)] = x
    return _stored_crc32c(app, start, start + len(x))


def write_batch(path: str | os.PathLike, start: int, patch_tokens: np.ndarray, cls_token: np.ndarray,
                missing: np.ndarray, errors: list[dict[str, Any]] | None = None,
                node: str | None = None) -> dict[str, list[int]]:
    """Write the tokens of samples `[start, start + B)` and then their completion record (which also
    carries the batch's missing rows, filled into the `missing` array at finalize, and the crc32c of each
    stored chunk, `{"patch_tokens": [B], "cls_token": [B]}`, which it also returns).

    patch_tokens `(B, h*w, D)`, cls_token `(B, D)` (any float dtype; cast to the store's), missing `(B,)`
    bool. `node`: the Ray node id of the process writing, kept in the record (where the work ran). Safe to call
    from any process, provided one shard is only ever written by one process at a time;
    fastest when a shard's batches come in order (the shard file is then appended, not re-encoded).
    """
    root = Path(path)
    stop = start + patch_tokens.shape[0]
    crc = {PATCH: _write_rows(root, PATCH, start, patch_tokens), CLS: _write_rows(root, CLS, start, cls_token)}
    atomic_write_json(root / PROGRESS_DIR / f"{start:012d}.json", {
        "start": int(start), "stop": int(stop), "missing": (np.flatnonzero(missing) + start).tolist(),
        "errors": errors or [], "crc32c": crc, **({"node": node} if node else {})})
    return crc


def write_chunk_crc32c(path: str | os.PathLike, num_samples: int, records: list[dict[str, Any]]) -> list[str]:
    """Gather the completion records' checksums into `meta/chunk_crc32c/<array>` `(num_samples,) uint32`
    of the feature store at `path` (replacing any from an earlier finalize). An array some record has no
    checksums for (a batch written before they were recorded) gets none, and verify warns; returns the
    arrays written."""
    group = zarr.open_group(str(path), mode="r+").require_group("meta").require_group(CHUNK_CRC)
    written = []
    for name in TOKEN_ARRAYS:
        crc = np.zeros(num_samples, dtype=np.uint32)
        covered = 0
        for r in records:
            values = (r.get("crc32c") or {}).get(name)
            if values is None or len(values) != r["stop"] - r["start"]:
                break
            crc[r["start"]:r["stop"]] = values
            covered += r["stop"] - r["start"]
        if name in group:
            del group[name]
        if covered != num_samples:
            log.warning("%s: %s has no checksums for some batches; none recorded", path, name)
            continue
        group.create_array(name, data=crc, chunks=(max(min(num_samples, 1 << 16), 1),), compressors=None)
        written.append(name)
    return written
