"""NYU Depth V2 public layouts: list the RGB-depth pairs of each, and read one pair in metres.

Every reader returns `rgb (H, W, 3) uint8` and `depth (H, W) float32` metres with 0 for invalid, at the
pair's true size (never resized). Units and conventions (`../shared/data/SOURCES.md`, section 3):

- "labeled_mat": `nyu_depth_v2_labeled.mat` (v7.3 = HDF5). `images (N, 3, 640, 480) uint8` and
  `depths (N, 640, 480) float32` metres are MATLAB column-major: transposed to `(480, 640, 3)`/`(480, 640)`.
  `scenes` holds references to char arrays. The official split comes from `splits.mat` beside it
  (`trainNdxs`/`testNdxs`, 1-based), when present.
- "h5": sparse-to-dense / FastDepth `{train,val}/<scene>/<NNNNN>.h5`, `rgb (3, 480, 640) uint8`,
  `depth (480, 640) float32` metres; `val/official` is the labeled test split (654 frames).
- "bts": `sync/<scene>/rgb_XXXXX.jpg` + `sync_depth_XXXXX.png` (train) and
  `official_splits/{train,test}/<scenetype>/...`; depth png uint16 millimetres (/1000).
- "mmseg": `images/[split/]NAME.jpg` + `annotations/[split/]NAME.png` (uint16 mm, `depth_scale=1000`), or both
  in one folder; the scene is NAME without its trailing `_NNNNN`.
- "densedepth": `nyu2_train/<scene>_out/<n>.jpg|png` (8-bit depth, 255 = 10 m, as DenseDepth's loader
  `png / 255 * 1000` cm) and `nyu2_test/<n>_colors.png` + `<n>_depth.png` (uint16 mm), listed by
  `nyu2_train.csv` / `nyu2_test.csv` when present. An 8-bit depth png anywhere else (bts, mmseg, nyu2_test)
  is refused with a report row: scaling it as 255 = 10 m would store wrong metres.

Listings (`nyu_pairs`) never drop a file silently: a depth map without its RGB (or the reverse) is a `Pair`
with a `problem`, which the source makes an episode of its own whose read is a report row.
- "eigen_npy": DenseDepth's `nyu_test.zip`: `eigen_test_rgb.npy (654, 480, 640, 3)`,
  `eigen_test_depth.npy (654, 480, 640)` metres, `eigen_test_crop.npy`.
- "hf": a Hugging Face dataset (`datasets.load_dataset` on a local parquet folder or a cached hub id such as
  `sayakpaul/nyu_depth_v2`): `image` RGB and `depth_map` (float image in metres, or uint16 mm).
- "raw_kinect": raw dumps, `*.ppm` RGB + `*.pgm` 11-bit disparity (payload little-endian despite the PGM spec;
  detected per file), `depth = 351.3 / (1092.5 - raw)` m, raw 2047 invalid, clamped to `max_depth` as the NYU
  toolbox's `depth_rel2depth_abs`. NOT registered to the RGB camera: pixels do not correspond.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.ingest.inside import hdf5_member_problem, hdf5_problem
from shardyard.ingest.nyu_files import kinect_depth, png_depth, read_pgm_disparity, rgb_image
from shardyard.ingest.nyu_pairs import (
    PATTERNS,
    TEST,
    TRAIN,
    UNKNOWN,
    Pair,
    list_bts,
    list_densedepth,
    list_mmseg,
    num_key,
    split_of,
)
from shardyard.ingest.readers import open_npy

__all__ = ["LAYOUTS", "Layout", "LayoutOptions", "Pair", "TEST", "TRAIN", "UNKNOWN", "detect_layout", "list_bts",
           "list_densedepth", "list_eigen_npy", "list_h5", "list_hf", "list_labeled_mat", "list_mmseg", "list_pairs",
           "list_raw_kinect", "load_hf", "read_pair"]

log = logging.getLogger(__name__)

# -- listing ----------------------------------------------------------------------------------------------
def list_labeled_mat(path: Path) -> list[Pair]:
    """Samples of the labeled `.mat` (v7.3 HDF5): one `Pair` per row of `images`/`depths`, scenes from `scenes`,
    the official split from a `splits.mat` beside it (else "unknown"). Raises `ConfigError` when the file lacks
    `images`/`depths` (not the v7.3 labeled file)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "images" not in f or "depths" not in f:
            raise ConfigError("labeled .mat lacks `images`/`depths` (need the v7.3 labeled file)", path=str(path))
        n = f["images"].shape[0]
        scenes: list[str | None] = [None] * n
        if "scenes" in f:
            refs = np.asarray(f["scenes"]).reshape(-1)
            scenes = ["".join(chr(int(c)) for c in np.asarray(f[r]).reshape(-1)) for r in refs]
    splits = [UNKNOWN] * n
    sp = path.parent / "splits.mat"
    if sp.exists():
        from scipy.io import loadmat

        m = loadmat(sp)
        for name, split in (("trainNdxs", TRAIN), ("testNdxs", TEST)):
            for i in np.asarray(m[name]).reshape(-1).astype(int):
                splits[i - 1] = split
    return [Pair(scenes[i], splits[i], f"{i + 1:04d}", str(path), index=i) for i in range(n)]


def list_h5(root: Path) -> list[Pair]:
    """Samples of a sparse-to-dense / FastDepth folder (`{train,val}/<scene>/<n>.h5` with `rgb (3, 480, 640)` and
    `depth` metres); `val` is the official test split."""
    files = sorted(root.rglob("*.h5"), key=lambda p: num_key(p.relative_to(root)))
    out = []
    for p in files:
        rel = p.relative_to(root)
        scene = rel.parent.name if rel.parent.name not in ("", "official", "train", "val") else None
        out.append(Pair(scene, split_of(rel.parts[:-1]), rel.as_posix(), str(p), str(p)))
    return out


def list_eigen_npy(root: Path) -> list[Pair]:
    """Samples of `eigen_test_rgb.npy` / `eigen_test_depth.npy` (654 test frames, depth in metres), one per row."""
    rgb = open_npy(root / "eigen_test_rgb.npy", field="obs.rgb", mmap=True)
    return [Pair(None, TEST, f"eigen_test/{i:04d}", str(root / "eigen_test_rgb.npy"),
                 str(root / "eigen_test_depth.npy"), index=i) for i in range(rgb.shape[0])]


def list_raw_kinect(root: Path) -> list[Pair]:
    """Raw Kinect dumps: each `d-<t>.pgm` disparity frame paired with the `r-<t>.ppm` RGB nearest in time (as the
    toolbox's get_synched_frames; without timestamps, by sorted order when the counts match). The depth is not
    registered to the RGB camera; `depth = 351.3 / (1092.5 - raw)` m, 2047 invalid."""
    out = []
    for folder in sorted({p.parent for p in root.rglob("*.pgm")}):
        ppm, pgm = sorted(folder.glob("*.ppm")), sorted(folder.glob("*.pgm"))
        rel = folder.relative_to(root).as_posix()
        scene = folder.name if rel != "." else root.name
        stamped = [p for p in pgm if p.name.startswith("d-")]
        if stamped and any(p.name.startswith("r-") for p in ppm):
            rgbs = [p for p in ppm if p.name.startswith("r-")]
            t_rgb = np.array([float(p.name.split("-")[1]) for p in rgbs])
            for d in stamped:  # as the toolbox's get_synched_frames: nearest RGB in time for each depth frame
                r = rgbs[int(np.argmin(np.abs(t_rgb - float(d.name.split("-")[1]))))]
                out.append(Pair(scene, UNKNOWN, f"{rel}/{d.stem}", str(r), str(d)))
        elif len(ppm) == len(pgm):
            out += [Pair(scene, UNKNOWN, f"{rel}/{d.stem}", str(r), str(d)) for r, d in zip(ppm, pgm)]
        else:  # one report row for the folder: without timestamps its frames cannot be paired
            out.append(Pair(scene, UNKNOWN, f"{rel}/unpaired", str(folder), str(folder), problem=(
                f"obs.depth: {len(ppm)} .ppm and {len(pgm)} .pgm without r-/d- timestamps: cannot pair")))
    return out


def load_hf(root: str, cache_dir: str | None = None):
    """`datasets.load_dataset` on a local folder (parquet) or a cached hub id; a DatasetDict."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("reading a Hugging Face dataset needs `pip install datasets`", path=root) from None
    try:
        ds = datasets.load_dataset(root, cache_dir=cache_dir)
    except Exception as e:
        raise ConfigError(f"datasets.load_dataset failed: {e}", path=root) from e
    return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})


def list_hf(ds) -> list[Pair]:
    """Samples of a Hugging Face dataset with `image` and `depth_map` (metres) columns, one per row."""
    out = []
    for name in ds:
        cols = ds[name].column_names
        if "image" not in cols or "depth_map" not in cols:
            raise ConfigError(f"HF split {name!r} has columns {cols}; expected `image` and `depth_map`")
        split = TRAIN if name == "train" else TEST if name in ("validation", "val", "test") else UNKNOWN
        scene_col = "scene" if "scene" in cols else None
        scenes = ds[name][scene_col] if scene_col else [None] * ds[name].num_rows
        out += [Pair(scenes[i], split, f"{name}/{i:06d}", name, name, index=i) for i in range(ds[name].num_rows)]
    return out


# -- reading ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutOptions:
    """What listing and reading need besides the pair: `max_depth` (m, raw Kinect clamp), `mat_depth`
    ("depths" or "rawDepths" of the labeled .mat), `hf` (the loaded `DatasetDict`, HF layout only),
    `follow_links` (read HDF5 datasets stored in other files: refused by default, `ingest.inside`)."""

    max_depth: float = 10.0
    mat_depth: str = "depths"
    hf: Any = None
    follow_links: bool = False


def _check_h5(f, names: tuple[str, ...], path: str, key: str, opts: LayoutOptions) -> None:
    """Refuse the pair when one of `names` (top-level datasets of h5py File `f`) is stored in another file."""
    if opts.follow_links:
        return
    why = next(filter(None, (hdf5_member_problem(f, n) for n in names)), None) \
        or hdf5_problem(f, [n for n in names if n in f])
    if why:
        raise SourceError(why, path=path, key=key, field="obs.rgb")


def _hf_depth(value: Any, key: str) -> np.ndarray:
    arr = np.asarray(value)
    mode = getattr(value, "mode", None)
    if arr.dtype.kind in "iu":                    # PIL "I;16"/"I" png: millimetres
        return arr.astype(np.float32) / np.float32(1000.0)
    if arr.dtype.kind != "f":
        raise SourceError(f"depth_map of dtype {arr.dtype} (mode {mode}): expected float metres or uint16 mm",
                          key=key, field="obs.depth")
    return arr.astype(np.float32)


def _read_labeled_mat(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(pair.rgb, "r") as f:
        _check_h5(f, ("images", opts.mat_depth), pair.rgb, key, opts)
        rgb = np.asarray(f["images"][pair.index]).transpose(2, 1, 0)               # (3, W, H) -> (H, W, 3)
        depth = np.asarray(f[opts.mat_depth][pair.index], dtype=np.float32).T      # (W, H) -> (H, W)
    return rgb, depth


def _read_h5(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(pair.rgb, "r") as f:
            _check_h5(f, ("rgb", "depth"), pair.rgb, key, opts)
            return np.asarray(f["rgb"]).transpose(1, 2, 0), np.asarray(f["depth"], dtype=np.float32)  # (3, H, W)
    except (OSError, KeyError) as e:
        raise SourceError(f"cannot read h5 pair: {e}", path=pair.rgb, key=key, field="obs.rgb") from e


def _read_mm_pair(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    """BTS and mmseg pairs: the depth png must be 16-bit millimetres (an 8-bit one is refused, never scaled)."""
    return rgb_image(pair.rgb, key), png_depth(pair.depth, key, scale8=None)


def _read_densedepth_pair(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    """DenseDepth: 8-bit depth (255 = 10 m) only in nyu2_train; nyu2_test depth is 16-bit millimetres."""
    return rgb_image(pair.rgb, key), png_depth(pair.depth, key, scale8=10.0 / 255.0 if pair.split == TRAIN else None)


def _read_eigen_npy(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(open_npy(pair.rgb, key, "obs.rgb", mmap=True)[pair.index])
    return rgb, np.asarray(open_npy(pair.depth, key, "obs.depth", mmap=True)[pair.index], dtype=np.float32)


def _read_raw_kinect(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    return rgb_image(pair.rgb, key), kinect_depth(read_pgm_disparity(pair.depth, key), opts.max_depth)


def _read_hf(pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    row = opts.hf[pair.rgb][pair.index]
    img = row["image"]
    rgb = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
    return rgb, _hf_depth(row["depth_map"], key)


# -- the registry -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One public layout: `list(root, opts) -> [Pair]`, `read(pair, key, opts) -> (rgb, depth)` (raw, checked
    by `read_pair`), and how `detect_layout` recognises a folder: `marker(folder, names)` on the names at its
    top level (decisive), else `content(folder, names)`, a look deeper (several hits are ambiguous, unless the
    first has `claims_others`: BTS folders hold jpg+png pairs that the mmseg check would match too)."""

    list: Callable[[Path, LayoutOptions], list[Pair]]
    read: Callable[[Pair, str, LayoutOptions], tuple[np.ndarray, np.ndarray]]
    marker: Callable[[Path, set[str]], bool] | None = None
    content: Callable[[Path, set[str]], bool] | None = None
    claims_others: bool = False


def _labeled_file(root: Path) -> Path:
    return root if root.is_file() else root / "nyu_depth_v2_labeled.mat"


# Order matters: markers are tried in this order, then content checks in this order.
LAYOUTS: dict[str, Layout] = {
    "eigen_npy": Layout(lambda root, o: list_eigen_npy(root), _read_eigen_npy,
                        marker=lambda p, names: "eigen_test_rgb.npy" in names),
    "densedepth": Layout(lambda root, o: list_densedepth(root), _read_densedepth_pair,
                         marker=lambda p, names: any(n.startswith("nyu2_") for n in names)
                         or any((p / "data").glob("nyu2_*"))),
    "bts": Layout(lambda root, o: list_bts(root), _read_mm_pair,
                  content=lambda p, names: any(p.rglob("sync_depth_*.png")), claims_others=True),
    "mmseg": Layout(lambda root, o: list_mmseg(root), _read_mm_pair,
                    marker=lambda p, names: "images" in names and "annotations" in names,
                    content=lambda p, names: any(j.with_suffix(".png").exists() for j in p.rglob("*.jpg"))),
    "labeled_mat": Layout(lambda root, o: list_labeled_mat(_labeled_file(root)), _read_labeled_mat,
                          marker=lambda p, names: "nyu_depth_v2_labeled.mat" in names),
    "h5": Layout(lambda root, o: list_h5(root), _read_h5, content=lambda p, names: any(p.rglob("*.h5"))),
    "hf": Layout(lambda root, o: list_hf(o.hf), _read_hf,
                 content=lambda p, names: any(p.rglob("*.parquet")) or "dataset_dict.json" in names
                 or "dataset_info.json" in names),
    "raw_kinect": Layout(lambda root, o: list_raw_kinect(root), _read_raw_kinect,
                         content=lambda p, names: any(p.rglob("*.pgm"))),
}


def detect_layout(root: Path | str) -> str:
    """The layout of `root` (a `LAYOUTS` name): a hub id is "hf", a `.mat` file "labeled_mat", a folder the
    first layout whose marker matches, else the one whose content check does. Raises `ConfigError` for a
    missing path, another single file, a folder matching several layouts, or none."""
    p = Path(root)
    if not p.exists():
        if isinstance(root, str) and root.count("/") == 1 and not root.startswith((".", "/")):
            return "hf"  # a hub id, read from the local cache
        raise ConfigError("path not found", path=str(p))
    if p.is_file():
        if p.suffix == ".mat":
            return "labeled_mat"
        raise ConfigError("a single file must be the labeled .mat (v7.3)", path=str(p))
    names = {c.name for c in p.iterdir()}
    for name, layout in LAYOUTS.items():
        if layout.marker is not None and layout.marker(p, names):
            return name
    found = [name for name, layout in LAYOUTS.items() if layout.content is not None and layout.content(p, names)]
    if len(found) > 1 and not LAYOUTS[found[0]].claims_others:
        raise ConfigError(f"several layouts under one folder ({', '.join(found)}); their frame sizes and units "
                          "differ, so ingest each subfolder into its own store", path=str(p))
    if found:
        return found[0]
    images = sorted(q.name for q in p.rglob("*") if q.suffix.lower() in (".png", ".jpg", ".ppm"))[:5]
    raise ConfigError(f"no NYU RGB+depth layout recognised (found e.g. {images or 'nothing'}; an RGB-only "
                      "folder has no depth to ingest); the layouts and their file patterns: "
                      + "; ".join(f"{name}: {PATTERNS[name]}" for name in LAYOUTS)
                      + " (rename a plain rgb.jpg + depth.png pair to the mmseg pattern, e.g. <scene>_00001.jpg + "
                      "<scene>_00001.png in one folder, depth as uint16 millimetres)", path=str(p))


def list_pairs(layout: str, root: Path, opts: LayoutOptions) -> list[Pair]:
    """Every pair of `root` in `layout`; raises `ConfigError` for an unknown layout."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown NYU layout {layout!r}")
    return LAYOUTS[layout].list(root, opts)


def read_pair(layout: str, pair: Pair, key: str, opts: LayoutOptions) -> tuple[np.ndarray, np.ndarray]:
    """`(rgb (H, W, 3) uint8, depth (H, W) float32 metres, 0 = invalid)` of one pair; raises `SourceError`
    when it does not read or rgb and depth do not form a pair, `ConfigError` for an unknown layout."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown NYU layout {layout!r}")
    rgb, depth = LAYOUTS[layout].read(pair, key, opts)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or depth.shape != rgb.shape[:2]:
        raise SourceError(f"rgb {rgb.shape} and depth {depth.shape} do not form a pair", path=pair.depth or pair.rgb,
                          key=key, field="obs.depth")
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        depth = np.where(bad, np.float32(0), depth)
    return rgb, depth
