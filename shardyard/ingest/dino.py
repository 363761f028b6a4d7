"""`ingest dino STORE --model SPEC --out FEATURES`: cache DINO tokens of one camera field (issue 3).

Work is split into the feature store's shards (`stores/features.py`); a shard is a list of fixed batches and
is processed by one worker, batch by batch, each batch followed by its completion record. The batch
boundaries are a pure function of (N, batch size, shard rows), so the local path, the Ray path and a resumed
run feed the backbone exactly the same batches and, on CPU, store identical tokens.

- local (default): one process, the backbone on the best device present; reading the next batch and
  writing the previous one run in threads beside the forward.
- Ray (`ray=True` or `ray_address`): Ray Data `map_batches` over shard descriptors with an actor pool
  (`concurrency` actors, `num_gpus_per_worker` each). Actors read frames from the source store themselves and
  write only their own shards, so the driver ships no pixels and a cluster sharing a file system fills one
  store. A killed actor or driver loses only the batches in flight.

A frame that fails to decode is marked in the `missing` mask (tokens left zero), listed in report.json, and
the job exits with status 2 (as `ingest` does for skipped episodes).

A shard store of videos (`ingest webvid`) is read through `ingest/dino_frames.py` with `fps` (Hz): one
"episode" per video, its frames sampled at that rate; the key adds the fps and the shards' checksums, and
`videos.json` in the feature store maps each video's key and caption to its rows (issue 6, seed 004).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shardyard.errors import ConfigError, StoreError
from shardyard.ingest.configs import DinoConfig
from shardyard.ingest.dino_frames import ShardFrameReader, ShardFramesConfig, is_shard_source
from shardyard.ingest.runner import EXIT_FATAL, EXIT_OK, EXIT_SKIPPED
from shardyard.models.backbones import Backbone, BackboneConfig, load_backbone
from shardyard.pause import PausePoint
from shardyard.stores.features import PROGRESS_DIR, FeatureLayout, FeatureWriter, FeatureWriterConfig, write_batch
from shardyard.stores.manifest import manifest_fingerprint
from shardyard.version import __version__

__all__ = ["DinoConfig", "DinoResult", "EXIT_FATAL", "EXIT_MISSING", "EXIT_OK", "FrameReader", "ingest_dino",
           "provenance_key", "run_unit"]

log = logging.getLogger(__name__)

EXIT_MISSING = EXIT_SKIPPED  # some frames failed to decode: the status of an ingest that skipped episodes


@dataclass
class DinoResult:
    """Outcome: counts, missing frames (report rows), seconds, exit code (0, or 2 with missing frames)."""

    out: Path
    num_samples: int
    num_batches_done_before: int
    num_batches_run: int
    errors: list[dict[str, Any]]
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 when every frame was stored, 2 when some failed to decode (masked missing)."""
        return EXIT_MISSING if self.errors else EXIT_OK


class FrameReader:
    """Frames of one image field of an episodic store, with per-frame decode-failure isolation.

    `read(a, b)` -> frames `(n, 3, H, W)` float32 in [0, 1], missing `(n,)` bool, error rows. Raises
    `ConfigError` when the field is absent or not an image field. Picklable (the store opens lazily).
    """

    def __init__(self, store_path: str, field_name: str) -> None:
        from shardyard import open_store

        self.store = open_store(store_path)
        if field_name not in self.store.schema:
            images = self.store.schema.of_kind("image")
            raise ConfigError(f"store has no field {field_name!r}; image fields: {images}", path=store_path)
        spec = self.store.schema[field_name]
        if spec.kind != "image" or len(spec.shape) != 3 or spec.shape[2] != 3 or spec.dtype != "uint8":
            raise ConfigError(f"field {field_name!r} is {spec.kind} {spec.dtype} {spec.shape}, not an "
                              "(H, W, 3) uint8 image", path=store_path, field=field_name)
        self.field = field_name
        self.shape = spec.shape

    @property
    def num_frames(self) -> int:
        """Frames of the field, one per step of the source store."""
        return self.store.num_steps

    def fingerprint(self) -> str:
        """sha256 of the source manifest (its source fingerprint, config, schema and counts)."""
        return manifest_fingerprint(self.store.manifest)

    def _error_row(self, i: int, e: Exception) -> dict[str, Any]:
        ep = int(np.searchsorted(self.store.episode_ends, i, side="right"))
        return {"error": type(e).__name__, "index": int(i), "key": self.store.episode_keys[ep],
                "step": int(i - self.store.episode_starts[ep]), "field": self.field, "path": self.store.url,
                "reason": str(e)[:300]}

    def read(self, a: int, b: int) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]]]:
        """Frames `[a, b)` as `(b - a, 3, H, W)` float32 in [0, 1], the `(b - a,)` bool mask of frames that failed
        to decode (zeros in their place), and a report row for each of those."""
        missing = np.zeros(b - a, dtype=bool)
        errors: list[dict[str, Any]] = []
        try:
            frames = self.store.read_rows(self.field, a, b)                      # (n, H, W, 3) uint8
        except Exception:  # noqa: BLE001 - isolate the frame(s) that fail, report each
            frames = np.zeros((b - a,) + self.shape, dtype=np.uint8)
            for i in range(a, b):
                try:
                    frames[i - a] = self.store.read_rows(self.field, i, i + 1)[0]
                except Exception as e:  # noqa: BLE001 - a corrupt chunk can raise anything from a codec
                    missing[i - a] = True
                    errors.append(self._error_row(i, e))
                    log.warning("frame %d of %s failed to decode: %s", i, self.field, e)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, missing, errors                                                # x (n, 3, H, W)


def provenance_key(reader: FrameReader, backbone: Backbone, cfg: DinoConfig) -> dict[str, Any]:
    """The feature store's key: source fingerprint, field, model (spec, weights hash, preprocessing,
    layers, image size), storage dtype, shardyard version (shard stores add fps and shard checksums).
    Equal keys resume; different keys refuse."""
    extra = reader.key_extra() if isinstance(reader, ShardFrameReader) else {}
    return {"source_fingerprint": reader.fingerprint(), "source_num_steps": reader.num_frames,
            "field": cfg.field, "model": backbone.describe(), "dtype": cfg.dtype,
            "shardyard_version": __version__, **extra}


def _store_ref(store: str) -> str:
    """An absolute path for a local source store, the URL itself for a remote one (`s3://...`)."""
    return store if "://" in store else str(Path(store).resolve())


def _open_reader(store: str, field_name: str, fps: float | None,
                 size_hw: tuple[int, int]) -> FrameReader | ShardFrameReader:
    """The frame reader of `store`: `ShardFrameReader` for a shard store of videos (needs `fps`), else
    `FrameReader`. Raises `ConfigError` for `fps` on an episodic store or no `fps` on a shard store."""
    if is_shard_source(store):
        return ShardFrameReader(ShardFramesConfig(store=store, fps=fps, field=field_name, size_hw=size_hw))
    if fps is not None:
        raise ConfigError("--fps samples videos of a shard store; this is an episodic store", path=store)
    return FrameReader(store, field_name)


def run_unit(path: Path, batches: list[tuple[int, int]], reader: FrameReader, backbone: Backbone,
             on_batch: Callable[[int], None] | None = None, pool: ThreadPoolExecutor | None = None,
             node: str | None = None, pause: PausePoint | None = None) -> None:
    """Compute and write `batches` (all in one shard, in order), from the first one not recorded on (a
    resumed or retried unit). `node`: the Ray node id to record with each batch. `pause`: reached after each
    batch's completion record (the next batch's record waits for it).

    With `pool` (2 threads), the next read and the previous write overlap the forward."""

    def write(a: int, patch: np.ndarray, cls: np.ndarray, missing: np.ndarray, errors: list) -> None:
        write_batch(path, a, patch, cls, missing, errors, node)
        if pause is not None:
            pause.reached(f"token batch at row {a} of {path}")

    done = [(path / PROGRESS_DIR / f"{a:012d}.json").exists() for a, _ in batches]
    # a shard is written in batch order, so its recorded batches are a prefix: go on from the first gap
    todo = batches[done.index(False):] if False in done else []
    pending_write = None
    nxt = pool.submit(reader.read, *todo[0]) if (pool and todo) else None
    for k, (a, b) in enumerate(todo):
        x, missing, errors = nxt.result() if nxt is not None else reader.read(a, b)
        if pool and k + 1 < len(todo):
            nxt = pool.submit(reader.read, *todo[k + 1])
        out = backbone(x)                                        # (n, h*w, D), (n, D)
        patch = out.patch_tokens.cpu().numpy()
        cls = out.cls_token.cpu().numpy()
        patch[missing] = 0.0
        cls[missing] = 0.0
        if pending_write is not None:
            pending_write.result()
        if pool:
            pending_write = pool.submit(write, a, patch, cls, missing, errors)
        else:
            write(a, patch, cls, missing, errors)
        if on_batch:
            on_batch(b - a)
    if pending_write is not None:
        pending_write.result()


class _RayShardWorker:
    """Ray Data actor: loads the backbone once, then writes whole shard units it is given."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        bcfg = BackboneConfig(**{**cfg["backbone"], "layers": tuple(cfg["backbone"]["layers"]),
                                 "image_size": tuple(cfg["backbone"]["image_size"])})
        self.backbone = load_backbone(bcfg)
        self.reader = _open_reader(cfg["store"], cfg["field"], cfg.get("fps"), self.backbone.input_hw)
        self.path = Path(cfg["out"])
        self.pause = PausePoint(**cfg["pause"]) if cfg.get("pause") else None  # counts this actor's batches

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        done = []
        node = ray.get_runtime_context().get_node_id()
        for unit in batch["unit"]:
            batches = [tuple(x) for x in json.loads(str(unit))]
            run_unit(self.path, batches, self.reader, self.backbone, node=node, pause=self.pause)
            done.append(batches[0][0])
        return {"shard_start": np.asarray(done, dtype=np.int64), "node_id": np.asarray([node] * len(done))}


def _run_ray(cfg: DinoConfig, units: list[list[tuple[int, int]]], on_batch) -> dict[str, list[int]]:
    """Run `units` on Ray Data actors; returns Ray node id -> first rows of the shards its actors wrote (a unit
    retried after its node died is listed once, under the node that completed it)."""
    import ray

    if not ray.is_initialized():
        if cfg.ray_address in (None, "", "local"):
            # address="local": always a new local instance, never a cluster another job started on this machine
            ray.init(address="local", num_cpus=max(cfg.workers, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray_address, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    conf = {"store": _store_ref(cfg.store), "field": cfg.field, "out": str(cfg.out.resolve()),
            "backbone": asdict(cfg.backbone), "fps": cfg.fps, "pause": cfg.pause.to_dict() if cfg.pause else None}
    items = [{"unit": json.dumps([list(b) for b in u])} for u in units]
    # One unit in flight per actor: a unit is a whole shard (many batches), and a second one queued behind a
    # busy actor (Ray Data's default) would wait there while another actor sits idle.
    pool = ray.data.ActorPoolStrategy(size=min(cfg.workers, len(items)), max_tasks_in_flight_per_actor=1)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RayShardWorker, fn_constructor_kwargs={"cfg": conf}, batch_size=1, batch_format="numpy", compute=pool,
        num_cpus=1, num_gpus=cfg.num_gpus_per_worker or None)
    sizes = {u[0][0]: sum(b - a for a, b in u) for u in units}
    nodes: dict[str, list[int]] = {}
    for row in ds.iter_rows():
        nodes.setdefault(str(row["node_id"]), []).append(int(row["shard_start"]))
        if on_batch:
            on_batch(sizes[int(row["shard_start"])])
    return {n: sorted(v) for n, v in sorted(nodes.items())}


def ingest_dino(cfg: DinoConfig, *, on_batch: Callable[[int], None] | None = None) -> DinoResult:
    """Compute the feature store of `cfg.store`'s `cfg.field` at `cfg.out` (create, or resume on the same
    key). `on_batch(n)` is called as frames are stored (for a progress bar).

    Raises `ConfigError` on a different provenance key in `cfg.out` (listing what differs), an unknown field
    or unavailable weights; `StoreError` when the source is not a complete store.
    """
    t0 = time.perf_counter()
    shard = is_shard_source(cfg.store)
    reader = None if shard else _open_reader(cfg.store, cfg.field, cfg.fps, (0, 0))
    backbone = load_backbone(cfg.backbone)
    if shard:
        reader = _open_reader(cfg.store, cfg.field, cfg.fps, backbone.input_hw)
    cfg.backbone.spec = backbone.config.spec  # a hub spec resolved to its entry name
    if reader.num_frames == 0:
        raise StoreError("source store has no steps", path=cfg.store)
    key = provenance_key(reader, backbone, cfg)
    layout = FeatureLayout(num_samples=reader.num_frames, grid=backbone.grid, embed_dim=backbone.embed_dim,
                           patch_size=backbone.patch_size, dtype=cfg.dtype, batch_size=cfg.batch_size)
    source = {"path": _store_ref(cfg.store), "field": cfg.field, "fingerprint": key["source_fingerprint"]}
    if shard:
        wcfg = FeatureWriterConfig(overwrite=cfg.overwrite, compressor=cfg.compressor,
                                   episode_ends=reader.episode_ends.tolist(), source=source | reader.source_info())
    else:
        store = reader.store
        wcfg = FeatureWriterConfig(
            overwrite=cfg.overwrite, compressor=cfg.compressor, split=store.split,
            episode_ends=store.episode_ends.tolist(),
            source=source | {"format": store.manifest.get("format"), "episode_keys": list(store.episode_keys)})
    with FeatureWriter(cfg.out, key=key, layout=layout, config=wcfg) as writer:
        if shard:
            reader.write_index(writer.path)
        done = writer.done_batches()
        units = writer.layout.shard_units(done)
        n_todo = sum(len(u) for u in units)
        log.info("%d batch(es) done, %d to run in %d shard(s)", len(done), n_todo, len(units))
        if units and (cfg.ray or cfg.ray_address):
            writer.run_info["ray_nodes"] = _run_ray(cfg, units, on_batch)
        elif units:
            with ThreadPoolExecutor(2, thread_name_prefix="dino-io") as pool:
                for unit in units:
                    run_unit(writer.path, unit, reader, backbone, on_batch, pool, pause=cfg.pause)
    report_rows = [e for r in sorted((writer.path / PROGRESS_DIR).glob("*.json"))
                   for e in json.loads(r.read_text()).get("errors", [])]
    return DinoResult(out=cfg.out, num_samples=layout.num_samples, num_batches_done_before=len(done),
                      num_batches_run=n_todo, errors=report_rows, seconds=time.perf_counter() - t0)
