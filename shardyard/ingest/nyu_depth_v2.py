"""`ingest nyu PATH --out STORE`: NYU Depth V2 from any public layout into one episodic store (issue 5).

Every layout (`nyu_layouts.py`; units in `../shared/data/SOURCES.md`, section 3) becomes the same store:

    obs.rgb    (H, W, 3) uint8    kind "image"
    obs.depth  (H, W)    float32  kind "depth", metres, 0 = invalid

`(H, W)` is (480, 640) for the standard files; pairs of another size (e.g. mmsegmentation's 160x120 test
pairs) keep their true size, which the schema states; nothing is resized. Scenes are the episodes (key
`<split>/<scene>`; a scene longer than `max_episode_frames` is cut into `<split>/<scene>/partNN`; frames of
layouts without scenes are grouped in runs of `max_episode_frames` as `<split>/frames_NNNNN`). Each episode's
meta holds its scene, split (train/test/unknown), layout, per-sample names, whether depth is registered to
the RGB camera (raw Kinect dumps are not) and the RGB intrinsics (NYU toolbox `camera_params.m`, scaled).

Where the layout has the official split, `official_split()` gives it to `run_ingest`, whose writer stores it
(`train` = official train, `val` = official test) and computes the stats on the train scenes. The Eigen crop
`[45:471, 41:601]` (on 480x640; scaled for other sizes) and the evaluation range 1e-3..10 m are store
metadata (`manifest["source"]["eval"]`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shardyard.errors import ConfigError, SchemaError, SourceError
from shardyard.ingest import nyu_layouts as L
from shardyard.ingest.configs import IngestConfig, NyuConfig
from shardyard.ingest.failures import reading
from shardyard.ingest.inside import check_inside, is_inside
from shardyard.ingest.nyu_layouts import detect_layout
from shardyard.ingest.readers import open_npy
from shardyard.ingest.runner import IngestResult, OfficialSplit, run_ingest
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.manifest import fingerprint_paths

__all__ = ["EIGEN_CROP", "EVAL_RANGE_M", "K_RGB", "LAYOUT_NAMES", "NYU_HW", "NyuConfig", "NyuSource",
           "eigen_crop", "ingest_nyu"]

log = logging.getLogger(__name__)

LAYOUT_NAMES = tuple(L.LAYOUTS)            # the registry: detect, list, read per layout (nyu_layouts.py)
EIGEN_CROP = (45, 471, 41, 601)            # rows [45, 471), cols [41, 601) on 480x640 (Eigen et al. 2014)
EVAL_RANGE_M = (1e-3, 10.0)
NYU_HW = (480, 640)
K_RGB = np.array([[518.857901, 0.0, 325.582449], [0.0, 519.469611, 253.736166], [0.0, 0.0, 1.0]])
_LISTINGS: dict[tuple, list[L.Pair]] = {}  # per process: pickled sources re-list once, not per episode
_HF: dict[tuple, Any] = {}


def eigen_crop(h: int, w: int) -> list[int]:
    """`[top, bottom, left, right]` of the Eigen crop for an `h x w` frame (exact on 480x640, else scaled)."""
    top, bottom, left, right = EIGEN_CROP
    return [round(top * h / 480), round(bottom * h / 480), round(left * w / 640), round(right * w / 640)]


class NyuSource:
    """Source over one NYU Depth V2 layout. `keys()` are `<split>/<scene>[/partNN]`, and `<split>/unpaired/<name>`
    for a file without its partner, sorted; `read(key)` raises `SourceError` (file, episode, field) for an
    unreadable or mismatched pair, an unpaired file, a depth png of the wrong bit depth for its layout, or a
    file that resolves outside the root (without `follow_links`), and `SchemaError` for a pair whose size
    differs from the store's (the first readable episode's)."""

    name: ClassVar[str] = "nyu"

    def __init__(self, config: NyuConfig) -> None:
        self.cfg = config
        root = config.root
        self.root = root if isinstance(root, str) and not Path(root).exists() else Path(root)
        self.layout = config.layout or detect_layout(self.root)
        self._schema: Schema | None = None
        if not self.episodes():
            raise ConfigError(f"no RGB+depth pairs found ({self.layout} layout)", path=str(self.root))

    # -- listing -------------------------------------------------------------------------------------------
    def _hf(self):
        tag = (str(self.root), self.cfg.hf_cache_dir)
        if tag not in _HF:
            _HF[tag] = L.load_hf(str(self.root), self.cfg.hf_cache_dir)
        return _HF[tag]

    def pairs(self) -> list[L.Pair]:
        """Every RGB-depth pair of the root, listed once per process (`nyu_layouts.list_pairs`)."""
        tag = (str(self.root), self.layout, self.cfg.mat_depth)
        if tag not in _LISTINGS:
            _LISTINGS[tag] = L.list_pairs(self.layout, Path(self.root), self._options())
        return _LISTINGS[tag]

    def episodes(self) -> "OrderedDict[str, list[L.Pair]]":
        """Episode key -> its pairs in frame order (scenes, cut at `max_episode_frames`); a file without its
        partner (`Pair.problem`) is an episode `<split>/unpaired/<name>` of its own."""
        groups: dict[tuple[str, str | None], list[L.Pair]] = {}
        out: dict[str, list[L.Pair]] = {}
        for p in self.pairs():
            if p.problem:  # a file without its partner: an episode of its own, whose read is a report row
                out[f"{p.split}/unpaired/{p.name}"] = [p]
            else:
                groups.setdefault((p.split, p.scene), []).append(p)
        n = self.cfg.max_episode_frames
        for (split, scene), pairs in groups.items():
            for i in range(0, len(pairs), n):
                chunk = pairs[i:i + n]
                if scene is None:
                    out[f"{split}/frames_{i:05d}"] = chunk
                else:
                    out[f"{split}/{scene}" + (f"/part{i // n:02d}" if len(pairs) > n else "")] = chunk
        return OrderedDict(sorted(out.items()))

    def keys(self) -> list[str]:
        """Episode keys `<split>/<scene>[/partNN]`, sorted."""
        return list(self.episodes())

    def official_split(self) -> OfficialSplit | None:
        """The official split where the layout has one (any episode labelled train or test): val = the official
        test episodes, train = the rest ("unknown" ones included); None otherwise (the seeded split is drawn)."""
        split = {k: v[0].split for k, v in self.episodes().items()}
        if not set(split.values()) - {"unknown"}:
            return None
        return OfficialSplit(val=frozenset(k for k, v in split.items() if v == "test"),
                             note="official NYU split (val = official test)")

    def fingerprint(self) -> str:
        """Fingerprint of the input files (`hf:<id>` for a hub id read from the cache)."""
        root = Path(self.root)
        if not root.exists():
            return f"hf:{self.root}"
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()
                                               and (self.cfg.follow_links or is_inside(root, p))]
        return fingerprint_paths(files, root.parent if root.is_file() else root)

    def describe(self) -> dict[str, Any]:
        """Manifest source block: name, root, layout, fingerprint, and `eval` (Eigen crop, range, units)."""
        h, w = self.schema()["obs.depth"].shape
        d = {"name": self.name, "root": str(self.root), "layout": self.layout, "fingerprint": self.fingerprint(),
             "eval": {"eigen_crop": eigen_crop(h, w), "eigen_crop_480x640": list(EIGEN_CROP),
                      "crop_scaled": (h, w) != NYU_HW, "range_m": list(EVAL_RANGE_M), "depth_unit": "m",
                      "invalid": 0.0},
             "depth_registered": self.layout != "raw_kinect"}
        if self.layout == "eigen_npy" and (Path(self.root) / "eigen_test_crop.npy").exists():
            d["eval"]["densedepth_crop"] = open_npy(Path(self.root) / "eigen_test_crop.npy").astype(int).tolist()
        return d

    # -- schema and reading --------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """`obs.rgb (H, W, 3) uint8` and `obs.depth (H, W) float32` m, at the first readable pair's size."""
        if self._schema is None:
            last: Exception | None = None
            for key, pairs in self.episodes().items():
                if pairs[0].problem:
                    continue
                try:
                    rgb, _ = self._read_pair(pairs[0], key)
                except ConfigError:
                    raise
                except Exception as e:  # any bad pair: the next one may give the size (`failures`)
                    last = e
                    continue
                h, w = rgb.shape[:2]
                size = "" if (h, w) == NYU_HW else f"; true source size {w}x{h}, not the standard 640x480 " \
                                                     "(kept, never resized)"
                reg = "; NOT registered to the RGB camera (raw Kinect)" if self.layout == "raw_kinect" else ""
                self._schema = Schema({
                    "obs.rgb": FieldSpec("uint8", (h, w, 3), None, "image",
                                         description=f"NYU Depth V2 RGB ({self.layout}){size}"),
                    "obs.depth": FieldSpec("float32", (h, w), "m", "depth",
                                           description=f"depth in metres, 0 = invalid ({self.layout}){size}{reg}")})
                break
            if self._schema is None:
                raise ConfigError(f"no readable pair (last error: {last})", path=str(self.root))
        return self._schema

    def _options(self) -> L.LayoutOptions:
        return L.LayoutOptions(max_depth=self.cfg.max_depth, mat_depth=self.cfg.mat_depth,
                               hf=self._hf() if self.layout == "hf" else None, follow_links=self.cfg.follow_links)

    def episode_path(self, key: str) -> str | None:
        """The first file of episode `key` (named by the report row of a read that failed unforeseen)."""
        pairs = self.episodes().get(key)
        return (pairs[0].rgb or pairs[0].depth) if pairs else None

    def _read_pair(self, pair: L.Pair, key: str) -> tuple[np.ndarray, np.ndarray]:
        if pair.problem:
            field, _, why = pair.problem.partition(": ")
            raise SourceError(why, path=pair.depth or pair.rgb, key=key, field=field)
        if self.layout != "hf" and not self.cfg.follow_links:
            # the files of a pair are named by listings (a DenseDepth CSV among them): keep them in the root
            root = Path(self.root).resolve()
            inside = root.parent if root.is_file() else root
            for path, fld in ((pair.rgb, "obs.rgb"), (pair.depth, "obs.depth")):
                if path:
                    check_inside(inside, path, follow_links=False, key=key, field=fld)
        with reading(pair.depth or pair.rgb, key, "obs.rgb,obs.depth"):  # an unforeseen failure still names them
            return L.read_pair(self.layout, pair, key, self._options())

    def read(self, key: str) -> Episode:
        """One scene (or part of one): `obs.rgb (T, H, W, 3) uint8`, `obs.depth (T, H, W) float32` metres."""
        pairs = self.episodes().get(key)
        if pairs is None:
            raise ConfigError(f"unknown episode key {key!r}", path=str(self.root))
        schema = self.schema()
        rgbs, depths = [], []
        for p in pairs:
            rgb, depth = self._read_pair(p, key)
            if rgb.shape != schema["obs.rgb"].shape:
                raise SchemaError(f"pair {p.name} is {rgb.shape[1]}x{rgb.shape[0]}, the store's frames are "
                                  f"{schema['obs.rgb'].shape[1]}x{schema['obs.rgb'].shape[0]} (not resized; "
                                  "ingest sizes separately)", path=p.rgb, key=key, field="obs.rgb")
            rgbs.append(rgb)
            depths.append(depth)
        h, w = schema["obs.depth"].shape
        K = K_RGB.copy()
        K[0] *= w / NYU_HW[1]
        K[1] *= h / NYU_HW[0]
        first = pairs[0]
        meta = {"task": "", "scene": first.scene, "split": first.split, "layout": self.layout,
                "source_path": first.rgb if first.index >= 0 else str(Path(first.rgb).parent),
                "samples": [p.name for p in pairs], "depth_registered": self.layout != "raw_kinect",
                "cameras": {"rgb": {"K": K, "T_world_cam": None, "width": w, "height": h,
                                    "source": "NYU toolbox camera_params.m (RGB), scaled to the frame size"}}}
        return Episode(key=key, steps={"obs.rgb": np.stack(rgbs), "obs.depth": np.stack(depths)}, meta=meta)


def ingest_nyu(source: NyuSource, cfg: IngestConfig, *, on_episode=None) -> IngestResult:
    """`run_ingest` (kept for its callers): the official split, where the layout has one, is the source's
    `official_split`, written by the writer with stats on its train scenes."""
    return run_ingest(source, cfg, on_episode=on_episode)
