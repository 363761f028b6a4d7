"""`run_ingest`: read episodes in parallel, write them in key order, record skips, finish the store.

Ordering is what makes the output independent of the worker count: workers only read and encode (decode,
FK, compress frames into spill files, sample the image stats), the single writer appends episodes in
`source.keys()` order, and an episode that fails is skipped at its place in that order. Episodes already
committed (a rerun after a kill) are not read again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from shardyard.errors import ConfigError, SchemaError, SourceError
from shardyard.ingest.configs import IngestConfig
from shardyard.ingest.failures import failure_row
from shardyard.procs import die_with_parent
from shardyard.schema import Episode, Schema
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.frames.codec import FrameCodec
from shardyard.stores.frames.encoding import EncodedRows, EncodedVideo, FrameEncoding
from shardyard.stores.stats import StatsConfig, compute_stats, frame_sampling, sampled_frames_part

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_SKIPPED", "IngestConfig", "IngestResult", "OfficialSplit", "Source",
           "run_ingest", "source_hook"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_SKIPPED = 0, 1, 2


@dataclass(frozen=True)
class OfficialSplit:
    """A source's own train/val split (NYU's official one): `val` the keys held out, every other key train;
    `note` is recorded as the manifest's `extra.split_source`."""

    val: frozenset[str]
    note: str


class Source(Protocol):
    """What `run_ingest` needs of a source (docs/design.md, "Core interfaces"). The methods after `describe`
    are optional: a source without one gets the default written here, which `run_ingest` applies
    (`source_hook`)."""

    name: str

    def schema(self) -> Schema:
        """The fields every episode has."""

    def keys(self) -> list[str]:
        """Episode keys, deterministic and cheap (they drive parallelism and resume)."""

    def read(self, key: str) -> Episode:
        """One episode; raises `SourceError(path=, key=, field=, reason=)`."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source (path, fingerprint)."""

    def read_encoded(self, key: str, encodings: dict[str, FrameEncoding]) -> Episode:
        """One episode whose frame fields named in `encodings` may already be encoded (`EncodedRows`), decoded
        straight into the encoder frame by frame. Default: `read(key)`; the runner encodes what is left."""
        return self.read(key)

    def warm(self) -> None:
        """Load what every read needs (imports, a compiled robot model), once per reader process. Default:
        nothing."""

    def report_notes(self) -> list[str]:
        """Plain sentences for report.json's "notes" (e.g. files without observations). Default: none."""
        return []

    def official_split(self) -> OfficialSplit | None:
        """The source's own split, written instead of the seeded one (stats on its train keys). Default: None."""
        return None

    # Also optional: `episode_path(key) -> str | None`, the file or folder an episode is read from; the report
    # row of a read that raised something other than a `ShardyardError` names it (`failures.failure_row`).


def source_hook(source: Any, name: str) -> Callable[..., Any]:
    """`source`'s optional method `name` of the `Source` protocol, bound, or the protocol's default."""
    own = getattr(type(source), name, None)
    return own.__get__(source) if own is not None else getattr(Source, name).__get__(source)


@dataclass
class IngestResult:
    """Outcome of one run: counts, skipped episodes (report rows), paths and the exit status."""

    store: Path
    num_keys: int
    num_written: int
    num_already_committed: int
    skipped: list[dict[str, Any]]
    seconds: float
    num_steps: int

    @property
    def exit_code(self) -> int:
        """0 when every episode was stored, 2 when some were skipped."""
        return EXIT_SKIPPED if self.skipped else EXIT_OK

    @property
    def report_path(self) -> Path:
        """`STORE/report.json`."""
        return self.store / "report.json"


@dataclass(frozen=True)
class _ReadPlan:
    """What each reader worker does to an episode besides `source.read`: frame fields it encodes into store
    chunks (so compression runs in parallel, and the chunks, or only their offsets in a spill file, cross
    to the writer), the schema and the stats options for the stats part it samples on the way."""

    encodings: dict[str, FrameEncoding]
    schema: Schema
    stats: StatsConfig


def _read_one(source: Source, key: str, plan: _ReadPlan | None = None) -> Episode | dict[str, Any]:
    """Worker body: the episode, with the plan's frame fields encoded (sources with `read_encoded` decode
    straight into the encoder, frame by frame), or the report row of whatever it raised (`failures.failure_row`:
    any exception type but `ConfigError`, which says the job itself is unusable and propagates)."""
    try:
        encodings = plan.encodings if plan is not None else {}
        ep = source_hook(source, "read_encoded")(key, encodings) if encodings else source.read(key)
        for name, enc in encodings.items():
            value = ep.steps.get(name)
            if isinstance(value, np.ndarray):
                ep.steps[name] = value = enc.encode_array(value)
            if isinstance(value, (EncodedRows, EncodedVideo)) and value.sample is not None and name in plan.schema:
                value.stats_part = sampled_frames_part(value.sample, plan.schema[name], plan.stats)
                value.sample = None
    except ConfigError:
        raise
    except Exception as e:  # one rule for every source: a bad episode is a report row, never the job's end
        where = getattr(source, "episode_path", None)
        return failure_row(e, key, _quiet(where, key) if where is not None else None)
    return ep


def _quiet(where: Callable[[str], Any], key: str) -> str | None:
    """`source.episode_path(key)` as a string, or None when even that fails (the row still names the key)."""
    try:
        path = where(key)
    except Exception:
        return None
    return None if path is None else str(path)


def _windowed(submit: Callable[[str], Any], wait: Callable[[Any], Any], keys: list[str],
              in_flight: int) -> Iterator[tuple[str, Any]]:
    """Yield `(key, wait(submit(key)))` in key order, keeping `in_flight` submissions ahead."""
    pending: deque[tuple[str, Any]] = deque()
    it = iter(keys)
    for key in it:
        pending.append((key, submit(key)))
        if len(pending) >= in_flight:
            break
    while pending:
        key, handle = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, submit(nxt)))
        yield key, wait(handle)


# Per reader process: the source each run registered there, by run token. A source travels to a worker
# once (pool initializer, or a Ray worker's first task) rather than pickled with every task, so its
# per-process state (a compiled MuJoCo model, open HDF5 files) serves all the episodes that worker reads.
_WORKER_SOURCES: dict[str, Source] = {}


def _register(token: str, source: Source) -> None:
    """Keep the run's source in this process and warm it (`source.warm()`: imports, robot model)."""
    from numcodecs import blosc

    # One reader process per core already: blosc's own threads only add ~10 % CPU per frame here.
    blosc.set_nthreads(1)
    _WORKER_SOURCES.clear()
    _WORKER_SOURCES[token] = source
    source_hook(source, "warm")()


def _init_worker(token: str, source: Source, parent_pid: int) -> None:
    """Initializer of a spawned pool (the source arrives as multiprocessing sends a process's arguments):
    the worker dies with the writer's process `parent_pid`."""
    die_with_parent(parent_pid)
    _register(token, source)


def _init_forked(token: str, parent_pid: int) -> None:
    """Initializer of a forked pool: the worker dies with the writer's process `parent_pid`; the source is
    the writer's own object, inherited with its warm state (imports, a compiled robot model), less what its
    `__getstate__` says must not cross a process (open HDF5 files): exactly what unpickling it would give,
    without the copy."""
    die_with_parent(parent_pid)
    source = _WORKER_SOURCES[token]
    getstate = getattr(source, "__getstate__", None)
    state = getstate() if getstate is not None else None
    if isinstance(state, dict):
        source.__dict__.update(state)
    _register(token, source)


def _read_in_worker(token: str, key: str, plan: _ReadPlan) -> Episode | dict[str, Any]:
    return _read_one(_WORKER_SOURCES[token], key, plan)


def _read_in_ray(token: str, source_ref: list, key: str,
                 plan: _ReadPlan) -> tuple[str, Episode | dict[str, Any]]:
    """Ray task body; `source_ref` is `[ObjectRef]` (wrapped, so Ray does not resolve it for each task).
    Returns the id of the Ray node that read the episode with the result (the run report lists them)."""
    import ray

    if token not in _WORKER_SOURCES:
        _register(token, ray.get(source_ref[0]))
    return ray.get_runtime_context().get_node_id(), _read_one(_WORKER_SOURCES[token], key, plan)


def _ordered_reads(source: Source, keys: list[str], cfg: IngestConfig, plan: _ReadPlan,
                   pool: tuple[str, ProcessPoolExecutor] | None,
                   nodes: dict[str, str] | None = None) -> Iterator[tuple[str, Any]]:
    """Yield `(key, Episode | error row)` in key order, with at most 2 x workers reads in flight. On Ray,
    `nodes[key]` is set to the id of the node whose task returned the episode."""
    if cfg.ray_address is not None:
        yield from _ray_reads(source, keys, cfg, plan, {} if nodes is None else nodes)
        return
    if pool is None:
        for key in keys:
            yield key, _read_one(source, key, plan)
        return
    token, executor = pool
    yield from _windowed(lambda k: executor.submit(_read_in_worker, token, k, plan), Future.result, keys,
                         2 * cfg.workers)


def _ray_reads(source: Source, keys: list[str], cfg: IngestConfig, plan: _ReadPlan,
               nodes: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """Reads as Ray tasks: a task lost with its node is retried elsewhere by Ray (`max_retries`), and a
    result lost with the node's object store is rebuilt from lineage, so the writer sees each key once."""
    import ray

    if not ray.is_initialized():
        if cfg.ray_address in ("local", ""):
            # address="local": always a new local instance, never a cluster another job started on this machine
            ray.init(address="local", num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray_address, log_to_driver=False)
    remote_read = ray.remote(_read_in_ray)
    source_ref = [ray.put(source)]
    token = uuid.uuid4().hex
    for key, (node_id, result) in _windowed(lambda k: remote_read.remote(token, source_ref, k, plan), ray.get,
                                            keys, 2 * cfg.workers):
        nodes[key] = node_id
        yield key, result


def _encodings(codecs: dict[str, FrameCodec], schema: Schema, stats: StatsConfig,
               spill_dir: str | None) -> dict[str, FrameEncoding]:
    """Per frame field, the encoding the workers apply; uint8 images also get their stats sample.
    `spill_dir`: where local reader processes leave encoded frames for the writer (None: in memory)."""
    out = {}
    for name, codec in codecs.items():
        sampling = frame_sampling(schema[name], stats) if name in schema else None
        every, stride = sampling if sampling is not None else (0, 1)
        out[name] = FrameEncoding(codec, every, stride, spill_dir)
    return out


def _start_pool(source: Source, cfg: IngestConfig,
                stack: contextlib.ExitStack) -> tuple[str, ProcessPoolExecutor]:
    """The reader processes and this run's token for them.

    Forked (Linux) after the schema probe when this process runs no other thread, so the workers inherit
    its imports and the source's warm state (a compiled robot model) instead of repeating them (about a
    second of CPU each); a thread must not be forked, and zarr's event loop or a progress bar's refresh
    thread would be one. Otherwise spawned, before the probe, so that worker start-up overlaps it. Either
    way each worker dies with this process (`procs.die_with_parent`): a killed ingest leaves no reader.
    """
    token = uuid.uuid4().hex
    fork = sys.platform.startswith("linux") and threading.active_count() == 1
    if fork:
        source.schema()
        source.keys()
        _WORKER_SOURCES[token] = source  # handed down by the fork itself (see _init_forked)
        executor = ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("fork"), initializer=_init_forked,
                                       initargs=(token, os.getpid()))
    else:
        executor = ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                       initargs=(token, source, os.getpid()))
    stack.enter_context(executor)
    for _ in range(cfg.workers):  # start every worker now (a spawn pool starts them on demand)
        executor.submit(int)
    _WORKER_SOURCES.pop(token, None)  # a fork pool has forked all its workers at the first submit
    return token, executor


def run_ingest(source: Source, cfg: IngestConfig, *, on_episode: Callable[[str, str], None] | None = None,
               on_commit: Callable[[], None] | None = None) -> IngestResult:
    """Ingest every episode of `source` into an episodic store at `cfg.out`.

    Resumes a store whose job was interrupted (committed episodes are skipped). `on_episode(key, status)` is
    called after each episode with status "written", "skipped" or "committed" (for a progress bar);
    `on_commit()` after each commit group is recorded. An fsspec URL `cfg.out` (`s3://bucket/store`) is
    written through a local staging directory (`stores.remote.StagedStore`, `default_staging_dir`), each
    commit uploaded as it is made and the rest at the end; the result's `store` is then that directory.
    The source's optional hooks (`Source`) apply: its official split and report notes go into the store.
    Returns an `IngestResult`; raises the first `SourceError`/`SchemaError` when `cfg.on_error == "fail"`
    (the store stays resumable), and `ConfigError` for unusable options.
    """
    from shardyard.stores.remote_fs import is_remote

    if is_remote(str(cfg.out)):
        from shardyard.stores.remote import StagedStore, default_staging_dir

        staged = StagedStore(str(cfg.out), default_staging_dir(str(cfg.out)))
        staged.prepare(overwrite=cfg.overwrite)
        sync = staged.sync if on_commit is None else (lambda: (staged.sync(), on_commit()))
        result = run_ingest(source, replace(cfg, out=staged.local, overwrite=False), on_episode=on_episode,
                            on_commit=sync)
        staged.finish()
        return result
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pool = _start_pool(source, cfg, stack) if cfg.workers > 1 and cfg.ray_address is None else None
        return _run(source, cfg, pool, on_episode, t0, on_commit)


def _run(source: Source, cfg: IngestConfig, pool: tuple[str, ProcessPoolExecutor] | None,
         on_episode: Callable[[str, str], None] | None, t0: float,
         on_commit: Callable[[], None] | None = None) -> IngestResult:
    schema = source.schema()
    keys = source.keys()
    official = source_hook(source, "official_split")()
    writer_cfg = EpisodicWriterConfig(
        overwrite=cfg.overwrite, frame_codec=cfg.frame_codec, commit_every=cfg.commit_every,
        commit_seconds=cfg.commit_seconds, val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed, source=source.describe(),
        config={k: v for k, v in asdict(cfg).items() if k not in ("out",)} | {"source": source.name},
        extra={} if official is None else {"split_source": official.note})
    skipped: list[dict[str, Any]] = []
    written = 0
    report: dict[str, Any] = {}  # filled below, written when the store is finished
    # `writer` in stats_fn is read when the stats run, after this assignment; the reader pool is idle by then,
    # so the rotation k-means runs go side by side on it (0.3 s of 0.5 s of finishing at 50 LIBERO demos).
    writer = EpisodicWriter(
        cfg.out, schema, config=writer_cfg, on_commit=on_commit, report=report,
        stats_fn=lambda store: compute_stats(store, cfg.stats, frame_parts=writer.stats_parts,
                                             map_fn=pool[1].map if pool is not None else map),
        split_fn=None if official is None else partial(_given_split, official))
    with writer:
        done = set(writer.committed_keys)
        todo = [k for k in keys if k not in done]
        for key in keys:
            if key in done and on_episode:
                on_episode(key, "committed")
        spill = str(writer.spill_dir) if pool is not None else None  # Ray workers may be on other machines
        plan = _ReadPlan(encodings=_encodings(writer.codecs, schema, cfg.stats, spill), schema=schema,
                         stats=cfg.stats)
        nodes: dict[str, str] = {}
        for key, result in _ordered_reads(source, todo, cfg, plan, pool, nodes):
            if isinstance(result, Episode):
                try:
                    writer.write(result)
                except SchemaError as e:
                    result = e.to_dict() | {"key": key}
                else:
                    written += 1
                    if on_episode:
                        on_episode(key, "written")
                    continue
            log.warning("skipped episode %s: %s", key, result["reason"])
            if cfg.on_error == "fail":
                err = SchemaError if result.get("error") == "SchemaError" else SourceError
                raise err(result["reason"], path=result.get("path"), key=key, field=result.get("field"))
            skipped.append(result)
            if on_episode:
                on_episode(key, "skipped")
        writer.commit()
        report |= {
            "source": source.name, "num_keys": len(keys), "num_written": written,
            "num_already_committed": len(done), "num_stored": len(writer.committed_keys),
            "num_skipped": len(skipped), "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if nodes:  # where the reads of this run ran: Ray node id -> episode keys
            report["ray_nodes"] = {n: sorted(k for k, v in nodes.items() if v == n)
                                   for n in sorted(set(nodes.values()))}
        notes = source_hook(source, "report_notes")()
        if notes:
            report["notes"] = list(dict.fromkeys(notes))
        num_steps = writer.num_steps
    return IngestResult(store=Path(cfg.out), num_keys=len(keys), num_written=written,
                        num_already_committed=len(done), skipped=skipped,
                        seconds=time.perf_counter() - t0, num_steps=num_steps)


def _given_split(official: OfficialSplit, keys: list[str]) -> dict[str, list[int]]:
    """Episode indices of the stored `keys` in `official`'s train and val."""
    return {"train": [i for i, k in enumerate(keys) if k not in official.val],
            "val": [i for i, k in enumerate(keys) if k in official.val]}
