"""`run_ingest`: read episodes in parallel, write them in key order, record skips, finish the store.

Ordering is what makes the output independent of the worker count: workers only read (decode, FK), the
single writer appends episodes in `source.keys()` order, and an episode that fails is skipped at its place
in that order. Episodes already committed (a rerun after a kill) are not read again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from shardyard.errors import ConfigError, SchemaError, SourceError
from shardyard.schema import Episode, Schema
from shardyard.stores.episodic import EpisodicWriter, EpisodicWriterConfig
from shardyard.stores.shardwrite import ChunkCodec
from shardyard.stores.stats import StatsConfig, compute_stats

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_SKIPPED = 0, 1, 2


class Source(Protocol):
    """What `run_ingest` needs of a source (DESIGN.md, "Core interfaces")."""

    name: str

    def schema(self) -> Schema: ...

    def keys(self) -> list[str]: ...

    def read(self, key: str) -> Episode: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class IngestConfig:
    """Options shared by every `ingest` command.

    workers: reader processes (1 reads in the writer's process). commit_every: episodes written and
    committed together (a kill loses at most one group; larger groups make small episodes cheaper). ray_address: read with Ray tasks instead
    ("local" starts Ray on this machine). on_error: "skip" records a bad episode in report.json and goes on,
    "fail" stops at the first.
    """

    out: Path
    workers: int = 1
    on_error: str = "skip"
    overwrite: bool = False
    ray_address: str | None = None
    image_codec: str = "lz4"
    commit_every: int = 32
    val_fraction: float = 0.1
    split_seed: int = 0
    stats: StatsConfig = field(default_factory=StatsConfig)

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ConfigError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


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
        return EXIT_SKIPPED if self.skipped else EXIT_OK

    @property
    def report_path(self) -> Path:
        return self.store / "report.json"


def _read_one(source: Source, key: str, codecs: dict[str, ChunkCodec] | None = None) -> Episode | dict[str, Any]:
    """Worker body: the episode, with frame fields already encoded as store chunks when `codecs` names them
    (compression then runs in parallel, and only compressed bytes cross to the writer), or the report row
    of its `SourceError`/`SchemaError`."""
    try:
        ep = source.read(key)
    except (SourceError, SchemaError) as e:
        return e.to_dict() | {"key": key}
    for name, codec in (codecs or {}).items():
        if name in ep.steps and isinstance(ep.steps[name], np.ndarray):
            ep.steps[name] = codec.encode_rows(ep.steps[name])
    return ep


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


def _warm(source: Source) -> None:
    """First task of each reader process: imports and per-process set-up (`source.warm()` if it has one)."""
    warm = getattr(source, "warm", None)
    if warm is not None:
        warm()


def _ordered_reads(source: Source, keys: list[str], cfg: IngestConfig, codecs: dict[str, ChunkCodec],
                   pool: ProcessPoolExecutor | None) -> Iterator[tuple[str, Any]]:
    """Yield `(key, Episode | error row)` in key order, with at most 2 x workers reads in flight."""
    if cfg.ray_address is not None:
        yield from _ray_reads(source, keys, cfg, codecs)
        return
    if pool is None:
        for key in keys:
            yield key, _read_one(source, key)
        return
    yield from _windowed(lambda k: pool.submit(_read_one, source, k, codecs), Future.result, keys, 2 * cfg.workers)


def _ray_reads(source: Source, keys: list[str], cfg: IngestConfig,
               codecs: dict[str, ChunkCodec]) -> Iterator[tuple[str, Any]]:
    import ray

    if not ray.is_initialized():
        if cfg.ray_address in ("local", ""):
            ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray_address, log_to_driver=False)
    remote_read = ray.remote(_read_one)
    source_ref = ray.put(source)
    yield from _windowed(lambda k: remote_read.remote(source_ref, k, codecs), ray.get, keys, 2 * cfg.workers)


def run_ingest(source: Source, cfg: IngestConfig, *,
               on_episode: Callable[[str, str], None] | None = None) -> IngestResult:
    """Ingest every episode of `source` into an episodic store at `cfg.out`.

    Resumes a store whose job was interrupted (committed episodes are skipped). `on_episode(key, status)` is
    called after each episode with status "written", "skipped" or "committed" (for a progress bar).
    Returns an `IngestResult`; raises the first `SourceError`/`SchemaError` when `cfg.on_error == "fail"`
    (the store stays resumable), and `ConfigError` for unusable options.
    """
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pool = None
        if cfg.workers > 1 and cfg.ray_address is None:
            # spawn: the writer process runs zarr's event-loop thread, which must not be forked. The pool
            # starts first so that worker start-up (imports, robot model) overlaps the schema probe.
            pool = stack.enter_context(ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")))
            for _ in range(cfg.workers):
                pool.submit(_warm, source)
        # Stats need scikit-learn at the end; importing it meanwhile takes ~1 s off the critical path.
        threading.Thread(target=importlib.import_module, args=("sklearn.cluster",), daemon=True).start()
        return _run(source, cfg, pool, on_episode, t0)


def _run(source: Source, cfg: IngestConfig, pool: ProcessPoolExecutor | None,
         on_episode: Callable[[str, str], None] | None, t0: float) -> IngestResult:
    schema = source.schema()
    keys = source.keys()
    writer_cfg = EpisodicWriterConfig(
        overwrite=cfg.overwrite, image_codec=cfg.image_codec, commit_every=cfg.commit_every,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed, source=source.describe(),
        config={k: v for k, v in asdict(cfg).items() if k not in ("out",)} | {"source": source.name})
    skipped: list[dict[str, Any]] = []
    written = 0
    stats_cfg = cfg.stats
    with EpisodicWriter(cfg.out, schema, config=writer_cfg,
                        stats_fn=lambda store: compute_stats(store, stats_cfg)) as writer:
        done = set(writer.committed_keys)
        todo = [k for k in keys if k not in done]
        for key in keys:
            if key in done and on_episode:
                on_episode(key, "committed")
        for key, result in _ordered_reads(source, todo, cfg, writer.codecs, pool):
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
        writer.report = {
            "source": source.name, "num_keys": len(keys), "num_written": written,
            "num_already_committed": len(done), "num_stored": len(writer.committed_keys),
            "num_skipped": len(skipped), "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        num_steps = writer.num_steps
    return IngestResult(store=Path(cfg.out), num_keys=len(keys), num_written=written,
                        num_already_committed=len(done), skipped=skipped,
                        seconds=time.perf_counter() - t0, num_steps=num_steps)
