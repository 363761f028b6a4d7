"""The trainers' config dataclasses, in one torch-free module: the CLI derives its options from them
(`commands/options.py`) without importing torch or the trainers until a command runs. Each trainer module
imports its config from here (`from shardyard.train.volume_query import TrainConfig` keeps working).

A field's `metadata={"options_of": "module:Class"}` marks a dict of overrides of another dataclass's fields
(given on the command line as repeatable `KEY=VALUE`, converted by that class's field types).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shardyard.errors import ConfigError

# Every trainer's config ends with these two (`shardyard.pause`): while `pause_file` exists the run waits after
# each checkpoint from the `pause_after`-th on (a run can make way on a shared machine, or be killed at a known
# point). They never change what a run computes, so resume ignores them (`PAUSE_FIELDS` in each RESUME_IGNORES).
PAUSE_FIELDS = ("pause_file", "pause_after")

__all__ = ["BTSAugmentConfig", "DepthTrainConfig", "FOVEATED_MODEL_KEYS", "FoveatedTrainConfig", "ModeWeights",
           "PAUSE_FIELDS", "PatchPredictConfig", "TrainConfig"]


@dataclass
class BTSAugmentConfig:
    """crop_hw: crop on 480x640 frames (scaled for other sizes); angles in degrees; ranges are uniform."""

    crop_hw: tuple[int, int] = (416, 544)
    max_rotation_deg: float = 2.5
    flip_p: float = 0.5
    colour_p: float = 0.5
    gamma: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.75, 1.25)
    colour: tuple[float, float] = (0.9, 1.1)


@dataclass
class TrainConfig:
    """Options of the volume-query trainer (defaults from seed 001).

    store, features: episodic store and (optional) its feature store; out: run folder. backbone: spec of the
    live backbone used without features. model: overrides of `VolumeQueryConfig` fields (d_feat, n_blocks...).
    steps: optimiser steps in total (a resumed run goes on to this count). num_workers: DataLoader workers.
    log_every / ckpt_every / plot_every / eval_every: in steps (0 disables plots / validation).
    val_max_samples: held-out windows per evaluation. device: "auto", "cpu", "cuda"... amp: autocast,
    "auto" (bf16 on CUDA), "bf16", "fp16" or "off". verify_reads: check every read against the stores'
    recorded checksums (`stores.read_checks`; off: `--no-verify-reads`).
    """

    store: str
    out: str
    features: str | None = None
    backbone: str = "tiny-random-dinov2"
    camera: str | None = None
    robot: str | None = None
    rotation_mode: str | None = None
    window: int = 8
    frame_stride: int = 3
    pred_size: int = 56
    model: dict[str, Any] = field(default_factory=dict,
                                  metadata={"options_of": "shardyard.models.volume_query:VolumeQueryConfig"})
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    decay_steps: int = 0
    grad_clip: float = 1.0
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    plot_every: int = 100
    eval_every: int = 100
    val_max_samples: int = 256
    resume: bool = True
    device: str = "auto"
    amp: str = "auto"
    verify_reads: bool = True
    pause_file: str | None = None
    pause_after: int = 1


@dataclass
class DepthTrainConfig:
    """Options of `train_depth`. `stop_at` ends the run early at that step (as a kill would, after a
    checkpoint) without changing the schedule, whose length is `steps`. `model`/`layers`/`image_size`
    configure the live backbone when no feature store is given (else they come from the store's key).
    freeze_backbone: with `live_backbone`, run the ViT forward only (no fine-tuning, no gradient through it).
    amp: autocast, "auto" (bf16 on CUDA), "bf16", "fp16" or "off". verify_reads: check every read against the
    stores' recorded checksums."""

    store: str
    out: Path
    features: str | None = None
    steps: int = 2000
    stop_at: int | None = None
    batch_size: int = 4
    lr: float = 1e-4
    encoder_lr: float = 5e-6
    weight_decay: float = 0.01
    warmup_steps: int = 500
    eta_min: float = 1e-6
    silog_lambda: float = 0.85
    features_dim: int = 64
    reassemble_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    live_backbone: bool = False
    freeze_backbone: bool = False
    augment: bool = True
    model: str = "tiny-random-dinov2"
    layers: tuple[int, ...] = (-1,)
    image_size: tuple[int, int] = (224, 224)
    eval_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    eval_max_images: int | None = None
    png_samples: int = 2
    rgb_field: str = "obs.rgb"
    depth_field: str = "obs.depth"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    verify_reads: bool = True
    pause_file: str | None = None
    pause_after: int = 1
    augment_cfg: BTSAugmentConfig = field(default_factory=BTSAugmentConfig)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.features is None and not self.live_backbone:
            raise ConfigError("train depth needs --features (cached tokens) or --live-backbone")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")


@dataclass
class PatchPredictConfig:
    """features: feature store path; or stream (shard store / folder of tars / URL) with live_backbone.
    gap: frames between input and target (in rows of the feature store, i.e. at its --fps). model: copy,
    linear or mlp. steps: optimizer updates. lr, weight_decay, warmup_steps: AdamW, constant after warmup.
    eval_every / ckpt_every / log_every: in steps. val_fraction: episodes held out. max_eval_pairs: cap.
    Stream only: backbone (spec), image_size (px), stream_fps (Hz), clips_per_step, stream_size (decode
    size, px), num_workers (DataLoader worker processes decoding the clips; a resumed run keeps the count).
    device: "cpu", "cuda" or "auto". amp: autocast ("auto": bf16 on CUDA; "bf16", "off").
    verify_reads: check token chunks and stream shards against their recorded checksums."""

    out: str
    features: str | None = None
    gap: int = 8
    model: str = "mlp"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    hidden: int = 0
    eval_every: int = 50
    ckpt_every: int = 50
    log_every: int = 10
    val_fraction: float = 0.2
    max_eval_pairs: int = 1024
    seed: int = 0
    resume: bool = True
    device: str = "cpu"
    stream: str | None = None
    live_backbone: bool = False
    backbone: str = "tiny-random-dinov2"
    image_size: int = 224
    stream_fps: float = 8.0
    clips_per_step: int = 2
    stream_size: int = 128
    num_workers: int = 0
    amp: str = "auto"
    verify_reads: bool = True
    pause_file: str | None = None
    pause_after: int = 1

    def __post_init__(self) -> None:
        if (self.features is None) == (self.stream is None):
            raise ConfigError("give exactly one of --features or --stream")
        if self.stream is not None and not self.live_backbone:
            raise ConfigError("--stream computes tokens on the fly: add --live-backbone")
        if self.gap < 1 or self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"need gap >= 1, steps >= 0, batch_size >= 1 (got {self.gap}, {self.steps}, "
                              f"{self.batch_size})")


@dataclass
class ModeWeights:
    """Relative weight of each training mode of the foveated captioner (`models.foveated.BATCH_MODES`), drawn once
    per optimiser step: caption (both passes, fine and coarse) and coarse (the coarse pass only)."""

    caption: float = 1.0
    coarse: float = 0.0


# set by FoveatedTrainConfig's own fields (or by the runtime), so not overridable through `model`
FOVEATED_MODEL_KEYS = ("encoder", "lm", "image_size", "checkpointing", "device")


@dataclass
class FoveatedTrainConfig:
    """Options of `train foveated-caption` (seed 002's foveated captioner; defaults from the seed's
    `scripts/train_captioning_scaled.py` but for the tiny models).

    out: run folder. shards: shard store path or http(s) URL; or urls: a WebVid-style URL list (CSV, parquet or
    `save_to_disk` folder) streamed with `loaders.url_stream.UrlClipStream`, with cache (a folder the downloaded
    blocks are written to as `ingest webvid` shards, None: nothing written), in_flight (downloads at once per
    DataLoader worker), ahead (clips decoded ahead per worker), fetch_ahead / fetch_ahead_mb (rows whose
    download starts ahead per worker, and the MB of their bodies a worker holds at most), min_success /
    min_success_window (the run stops when fewer than this fraction of a worker's last `min_success_window`
    downloads give a clip), allow_private_urls (fetch from loopback and private addresses: only for metadata
    you trust) and fetch (overrides of `ingest.fetch.FetchConfig`: timeout_s, retries, backoff_s, ...).
    frames / size / fps: clip length T, side in px,
    sampling rate in Hz (None: consecutive frames). encoder / lm / image_size: the DINO encoder, the causal LM
    and the encoder input side (px). model: overrides of other `FoveatedConfig` fields (deep, temperature,
    top_k, freeze_dino, query_dim, ...). steps: optimiser steps in total, the length of the cosine schedule.
    batch_size: clips per micro-batch; grad_accum: micro-batches per step. mode_weights: `ModeWeights`
    (a dict `{mode: weight}` is accepted, absent modes weighing 0). log_every / ckpt_every / sample_every:
    in steps (sample_every 0: no samples). checkpointing: gradient checkpointing, "auto" (on CUDA), "on"
    or "off". device: "auto", "cpu", "cuda"... amp: autocast, "auto" (bf16 on CUDA), "bf16", "fp16", "off".
    verify_reads: check each tar shard against the store's manifest before its clips are served.
    Raises ConfigError for unknown modes, negative weights, counts < 1 or a `model` key set elsewhere.
    """

    out: str
    shards: str | None = None
    urls: str | None = None
    cache: str | None = None
    in_flight: int = 8
    ahead: int = 64
    fetch_ahead: int = 512
    fetch_ahead_mb: float = 256.0
    min_success: float = 0.5
    min_success_window: int = 50
    allow_private_urls: bool = False
    fetch: dict[str, Any] = field(default_factory=dict, metadata={"options_of": "shardyard.ingest.fetch:FetchConfig"})
    frames: int = 16
    size: int = 256
    resize: str = "stretch"
    fps: float | None = None
    encoder: str = "tiny-random-dinov2"
    lm: str = "tiny-random-llama"
    image_size: int = 224
    model: dict[str, Any] = field(default_factory=dict,
                                  metadata={"options_of": "shardyard.models.foveated:FoveatedConfig"})
    steps: int = 200
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 3e-5
    min_lr: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mode_weights: ModeWeights = field(default_factory=ModeWeights)
    num_workers: int = 0
    shuffle_buffer: int = 16
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    sample_every: int = 50
    sample_clips: int = 2
    sample_tokens: int = 32
    checkpointing: str = "auto"
    resume: bool = True
    device: str = "auto"
    amp: str = "auto"
    verify_reads: bool = True
    pause_file: str | None = None
    pause_after: int = 1

    def __post_init__(self) -> None:
        names = [f.name for f in fields(ModeWeights)]
        if isinstance(self.mode_weights, dict):
            bad = set(self.mode_weights) - set(names)
            if bad:
                raise ConfigError(f"mode_weights {self.mode_weights}: unknown modes {sorted(bad)} (modes: {names})")
            self.mode_weights = ModeWeights(**(dict.fromkeys(names, 0.0) | self.mode_weights))
        weights = [getattr(self.mode_weights, m) for m in names]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"mode_weights {self.mode_weights}: weights >= 0 with a sum > 0")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.frames < 1:
            raise ConfigError("steps, batch_size, grad_accum and frames must be >= 1")
        if self.checkpointing not in ("auto", "on", "off"):
            raise ConfigError(f"checkpointing must be auto, on or off, got {self.checkpointing!r}")
        if (self.shards is None) == (self.urls is None) or (self.cache is not None and self.urls is None):
            raise ConfigError("give exactly one of --shards (a shard store) or --urls (a URL list); --cache goes "
                              "with --urls")
        if not 0 <= self.min_success <= 1 or min(self.in_flight, self.ahead, self.fetch_ahead,
                                                 self.min_success_window) < 1 or not self.fetch_ahead_mb > 0:
            raise ConfigError("need 0 <= min_success <= 1, in_flight, ahead, fetch_ahead and min_success_window >= 1, "
                              "fetch_ahead_mb > 0")
        taken = sorted(set(self.model) & set(FOVEATED_MODEL_KEYS))
        if taken:
            raise ConfigError(f"model overrides {taken} are options of their own (--encoder, --lm, --image-size, "
                              "--checkpointing, --device)")
