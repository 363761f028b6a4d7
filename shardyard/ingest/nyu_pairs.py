"""Pairs of NYU Depth V2 image files (`nyu_layouts`): the `Pair` a listing yields, the file patterns of each
public layout, and the listings of the layouts made of separate RGB and depth files (BTS, mmsegmentation,
DenseDepth), where a file without its partner is never dropped silently: it becomes a `Pair` with a `problem`,
which the source turns into an episode of its own whose read is a report row naming the file."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PATTERNS", "Pair", "TEST", "TRAIN", "UNKNOWN", "densedepth_base", "list_bts", "list_densedepth",
           "list_mmseg", "num_key", "orphan", "scene_of_name", "split_of"]

TRAIN, TEST, UNKNOWN = "train", "test", "unknown"
IMG = (".jpg", ".jpeg", ".png")
# What each layout's files are called (the error for an unrecognised folder and the manual list them).
PATTERNS = {
    "eigen_npy": "eigen_test_rgb.npy + eigen_test_depth.npy (DenseDepth nyu_test.zip; depth in metres)",
    "densedepth": "[data/]nyu2_train/<scene>_out/<n>.jpg + <n>.png (8-bit, 255 = 10 m) and nyu2_test/<n>_colors.png "
                  "+ <n>_depth.png (uint16 mm), listed by nyu2_train.csv / nyu2_test.csv when present",
    "bts": "<scene>/rgb_<NNNNN>.jpg + sync_depth_<NNNNN>.png (uint16 mm), e.g. sync/<scene>/ or "
           "official_splits/test/<scenetype>/",
    "mmseg": "images/[<split>/]<scene>_<NNNNN>.jpg + annotations/[<split>/]<scene>_<NNNNN>.png (uint16 mm), or both "
             "in one folder",
    "labeled_mat": "nyu_depth_v2_labeled.mat (v7.3; splits.mat beside it for the official split)",
    "h5": "{train,val}/<scene>/<NNNNN>.h5 with `rgb` (3, 480, 640) and `depth` (480, 640) metres",
    "hf": "a Hugging Face dataset (parquet folder or cached hub id) with `image` and `depth_map` columns",
    "raw_kinect": "<scene>/r-<t>.ppm + d-<t>.pgm raw Kinect dumps (or as many .ppm as .pgm)",
}


@dataclass(frozen=True)
class Pair:
    """One RGB-depth sample: `scene` (None when the layout does not say), `split` (train/test/unknown),
    `name` (stable id), file paths `rgb`/`depth` (or the container), `index` (row in a container), and
    `problem`: why it is not a pair (a file without its partner), empty for a good one."""

    scene: str | None
    split: str
    name: str
    rgb: str
    depth: str = ""
    index: int = -1
    problem: str = ""


def scene_of_name(stem: str) -> str | None:
    """`bookstore_0001d_00001` -> `bookstore_0001d`; None without a trailing `_NNNNN`."""
    m = re.match(r"^(.*?)_\d+$", stem)
    return m.group(1) if m else None


def split_of(parts: tuple[str, ...]) -> str:
    """The split a path's folders name: test (test, val, validation), train (train, sync), else unknown."""
    low = [p.lower() for p in parts]
    if "test" in low or "val" in low or "validation" in low:
        return TEST
    if "train" in low or "sync" in low:
        return TRAIN
    return UNKNOWN


def num_key(p: Path) -> tuple:
    """Sort key with numbers compared as numbers (`2` before `10`)."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", p.as_posix()))


def orphan(scene: str | None, split: str, name: str, have: Path, missing: str, field: str) -> Pair:
    """A file without its partner: `have` exists, `missing` (a pattern) does not. `field` is the field that
    has no file (`obs.rgb` or `obs.depth`), recorded first in the problem for the report row."""
    rgb, depth = (str(have), "") if field == "obs.depth" else ("", str(have))
    return Pair(scene, split, name, rgb, depth,
                problem=f"{field}: {have.name} has no partner file ({missing}) beside it: not a pair")


def list_bts(root: Path) -> list[Pair]:
    """Samples of a BTS-style folder (`<scene>/rgb_XXXXX.jpg` + `sync_depth_XXXXX.png`, uint16 millimetres); files
    under `official_splits/test` are the test split. A depth map without its RGB, or an RGB without its depth
    map, is an `orphan`."""
    out = []
    files = sorted({*root.rglob("sync_depth_*.png"), *(p for p in root.rglob("rgb_*") if p.suffix.lower() in IMG)},
                   key=lambda p: num_key(p.relative_to(root)))
    for f in files:
        rel = f.relative_to(root)
        scene = rel.parent.name if rel.parent.name not in ("", "sync") else None
        split = split_of(rel.parts[:-1])
        if f.name.startswith("sync_depth_"):
            idx = f.stem[len("sync_depth_"):]
            rgb = next((f.with_name(f"rgb_{idx}{e}") for e in IMG if f.with_name(f"rgb_{idx}{e}").exists()), None)
            name = rel.parent.joinpath(idx).as_posix()
            out.append(Pair(scene, split, name, str(rgb), str(f)) if rgb is not None else
                       orphan(scene, split, name, f, f"rgb_{idx}.jpg|png", "obs.rgb"))
        elif not f.with_name(f"sync_depth_{f.stem[len('rgb_'):]}.png").exists():
            idx = f.stem[len("rgb_"):]
            out.append(orphan(scene, split, rel.parent.joinpath(idx).as_posix(), f, f"sync_depth_{idx}.png",
                              "obs.depth"))
    return out


def list_mmseg(root: Path) -> list[Pair]:
    """Samples of mmsegmentation's variant (`images/` + `annotations/`, depth png in millimetres), paired by file
    stem; an image without its annotation, or an annotation without its image, is an `orphan`."""
    split_dirs = (root / "images").is_dir()
    img_dir, ann_dir = (root / "images", root / "annotations") if split_dirs else (root, root)
    out = []
    rgbs = sorted((p for p in img_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")),
                  key=lambda p: num_key(p.relative_to(img_dir)))
    for rgb in rgbs:
        rel = rgb.relative_to(img_dir)
        depth = (ann_dir / rel).with_suffix(".png")
        pair = Pair(scene_of_name(rgb.stem), split_of(rel.parts[:-1]), rel.with_suffix("").as_posix(), str(rgb),
                    str(depth))
        out.append(pair if depth.exists() else orphan(pair.scene, pair.split, pair.name, rgb, depth.name, "obs.depth"))
    stems = {r.relative_to(img_dir).with_suffix("").as_posix() for r in rgbs}
    for ann in sorted(ann_dir.rglob("*.png"), key=lambda p: num_key(p.relative_to(ann_dir))):
        rel = ann.relative_to(ann_dir)
        if rel.with_suffix("").as_posix() not in stems and (split_dirs or scene_of_name(ann.stem)):
            out.append(orphan(scene_of_name(ann.stem), split_of(rel.parts[:-1]), rel.with_suffix("").as_posix(), ann,
                              f"{ann.stem}.jpg", "obs.rgb"))
    return out


def densedepth_base(root: Path) -> Path:
    """The folder holding `nyu2_*`: `root/data` (as in `nyu_data.zip`) or `root`."""
    return root / "data" if (root / "data" / "nyu2_train").is_dir() or (root / "data" / "nyu2_test").is_dir() \
        or any((root / "data").glob("nyu2_*.csv")) else root


def _csv_rows(csv_path: Path, base: Path, root: Path) -> list[tuple[Path, Path]]:
    rows = []
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as fh:
        for line in csv.reader(fh):
            if len(line) < 2:
                continue
            rows.append(tuple(next((c for c in (base / s, base.parent / s, root / s) if c.exists()), base.parent / s)
                              for s in (line[0].strip(), line[1].strip())))
    return rows


def list_densedepth(root: Path) -> list[Pair]:
    """Samples of DenseDepth's `nyu2_train` (8-bit depth, 255 ~ 10 m) and `nyu2_test` (uint16 mm), from its CSV
    lists when present, else from the folders (`<scene>_out/<n>.jpg` + `.png`, `<n>_colors.png` + `_depth.png`).
    A row whose RGB or depth file does not exist is an `orphan`."""
    base = densedepth_base(root)
    out: list[Pair] = []
    for split, name in ((TRAIN, "nyu2_train"), (TEST, "nyu2_test")):
        csv_path = base / f"{name}.csv"
        rows: list[tuple[Path, Path]] = []
        if csv_path.exists():
            rows = _csv_rows(csv_path, base, root)
        elif (base / name).is_dir():
            folder = base / name
            if split == TRAIN:
                rows = [(j, j.with_suffix(".png")) for j in sorted(folder.rglob("*.jpg"), key=num_key)]
            else:
                rows = [(c, c.with_name(c.name.replace("_colors", "_depth")))
                        for c in sorted(folder.glob("*_colors.png"), key=num_key)]
        for rgb, depth in rows:
            scene = rgb.parent.name[:-4] if rgb.parent.name.endswith("_out") else None
            pid = f"{name}/{rgb.parent.name}/{rgb.stem}" if scene else f"{name}/{rgb.stem}"
            if not rgb.exists() or not depth.exists():
                have, gone, fld = (depth, rgb, "obs.rgb") if not rgb.exists() else (rgb, depth, "obs.depth")
                out.append(orphan(scene, split, pid, have, gone.name, fld) if have.exists() else
                           Pair(scene, split, pid, str(rgb), str(depth), problem=f"{fld}: neither {rgb.name} nor "
                                f"{depth.name} (listed in {csv_path.name}) exists"))
                continue
            out.append(Pair(scene, split, pid, str(rgb), str(depth)))
    return out
