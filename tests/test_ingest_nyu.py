"""`ingest nyu`: a tiny fixture written in each public layout, and the real pairs in ../shared/data/nyu_depth_v2."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from shardyard import open_store
from shardyard.errors import ConfigError
from shardyard.ingest.nyu_depth_v2 import NyuConfig, NyuSource, detect_layout, ingest_nyu
from shardyard.ingest.runner import IngestConfig

H, W = 24, 32


def _frame(i: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8 and depth (H, W) metres in [0.5, 9], 0 at one corner (invalid)."""
    y, x = np.mgrid[0:H, 0:W]
    depth = (0.5 + 8.5 * (x + y + i) / (W + H + 8)).astype(np.float32)
    depth[0, 0] = 0.0
    rgb = np.stack([x * 7 % 256, y * 9 % 256, np.full_like(x, 40 * i % 256)], -1).astype(np.uint8)
    return rgb, depth


def _mm(depth: np.ndarray) -> np.ndarray:
    return np.round(depth * 1000).astype(np.uint16)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# -- writers, one per layout: each returns (root, {(split, scene): n_frames}, checks) ------------------------
# checks: list of (split, scene, frame, row, col, expected metres)
def write_labeled_mat(d: Path):
    import scipy.io

    n, scenes = 4, ["kitchen_0001", "kitchen_0001", "office_0002", "office_0002"]
    with h5py.File(d / "nyu_depth_v2_labeled.mat", "w") as f:
        frames = [_frame(i) for i in range(n)]
        f["images"] = np.stack([r.transpose(2, 1, 0) for r, _ in frames])        # (N, 3, W, H): MATLAB order
        f["depths"] = np.stack([dep.T for _, dep in frames])                      # (N, W, H)
        refs = f.create_group("#refs#")
        ds = f.create_dataset("scenes", (1, n), dtype=h5py.ref_dtype)
        for i, s in enumerate(scenes):
            refs[f"s{i}"] = np.array([[ord(c)] for c in s], dtype=np.uint16)
            ds[0, i] = refs[f"s{i}"].ref
    scipy.io.savemat(d / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3], [4]])})
    return d / "nyu_depth_v2_labeled.mat", {("train", "kitchen_0001"): 2, ("test", "office_0002"): 2}, \
        [("test", "office_0002", 1, 5, 7, _frame(3)[1][5, 7])]


def write_h5(d: Path):
    for split, scene, idx in (("train", "bedroom_0001", [1, 2]), ("train", "study_0003", [1]),
                              ("val", "official", [1, 2])):
        for i in idx:
            (d / split / scene).mkdir(parents=True, exist_ok=True)
            rgb, dep = _frame(i)
            with h5py.File(d / split / scene / f"{i:05d}.h5", "w") as f:
                f["rgb"] = rgb.transpose(2, 0, 1)
                f["depth"] = dep
    return d, {("train", "bedroom_0001"): 2, ("train", "study_0003"): 1, ("test", None): 2}, \
        [("train", "bedroom_0001", 1, 3, 4, _frame(2)[1][3, 4])]


def write_bts(d: Path):
    for sub, idx in (("sync/living_room_0001", [0, 5]), ("official_splits/test/bathroom", [45])):
        for i in idx:
            rgb, dep = _frame(i)
            _png(d / sub / f"rgb_{i:05d}.jpg", rgb)
            _png(d / sub / f"sync_depth_{i:05d}.png", _mm(dep))
    return d, {("train", "living_room_0001"): 2, ("test", "bathroom"): 1}, \
        [("test", "bathroom", 0, 10, 11, _mm(_frame(45)[1])[10, 11] / 1000)]


def write_mmseg(d: Path):
    for split, name, i in (("train", "bookstore_0001d_00001", 1), ("train", "bookstore_0001d_00002", 2),
                           ("test", "cafe_0001a_00007", 7)):
        rgb, dep = _frame(i)
        _png(d / "images" / split / f"{name}.jpg", rgb)
        _png(d / "annotations" / split / f"{name}.png", _mm(dep))
    return d, {("train", "bookstore_0001d"): 2, ("test", "cafe_0001a"): 1}, \
        [("train", "bookstore_0001d", 1, 2, 3, _mm(_frame(2)[1])[2, 3] / 1000)]


def write_densedepth(d: Path):
    data = d / "data"
    train_rows, test_rows = [], []
    for i in (1, 2):
        rgb, dep = _frame(i)
        _png(data / "nyu2_train/dining_room_0004_out" / f"{i}.jpg", rgb)
        _png(data / "nyu2_train/dining_room_0004_out" / f"{i}.png", np.round(dep / 10 * 255).astype(np.uint8))
        train_rows.append(f"data/nyu2_train/dining_room_0004_out/{i}.jpg,data/nyu2_train/dining_room_0004_out/{i}.png")
    rgb, dep = _frame(9)
    _png(data / "nyu2_test/00000_colors.png", rgb)
    _png(data / "nyu2_test/00000_depth.png", _mm(dep))
    test_rows.append("data/nyu2_test/00000_colors.png,data/nyu2_test/00000_depth.png")
    (data / "nyu2_train.csv").write_text("\n".join(train_rows) + "\n")
    (data / "nyu2_test.csv").write_text("\n".join(test_rows) + "\n")
    eight = np.round(_frame(2)[1] / 10 * 255).astype(np.uint8)
    return d, {("train", "dining_room_0004"): 2, ("test", None): 1}, \
        [("train", "dining_room_0004", 1, 6, 6, float(eight[6, 6]) * 10 / 255),
         ("test", None, 0, 6, 6, _mm(dep)[6, 6] / 1000)]


def write_eigen_npy(d: Path):
    frames = [_frame(i) for i in range(3)]
    np.save(d / "eigen_test_rgb.npy", np.stack([r for r, _ in frames]))
    np.save(d / "eigen_test_depth.npy", np.stack([x for _, x in frames]))
    np.save(d / "eigen_test_crop.npy", np.array([20, 459, 24, 615]))
    return d, {("test", None): 3}, [("test", None, 2, 4, 9, frames[2][1][4, 9])]


def write_hf(d: Path):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "depth_map": datasets.Image()})
    for split, idx in (("train", [0, 1]), ("validation", [5])):
        frames = [_frame(i) for i in idx]
        ds = datasets.Dataset.from_dict({"image": [Image.fromarray(r) for r, _ in frames],
                                         "depth_map": [Image.fromarray(x, mode="F") for _, x in frames]},
                                        features=feats)
        (d / "data").mkdir(exist_ok=True)
        ds.to_parquet(str(d / "data" / f"{split}-00000-of-00001.parquet"))
    return d, {("train", None): 2, ("test", None): 1}, [("test", None, 0, 7, 8, _frame(5)[1][7, 8])]


def _kinect_raw(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    raw = (840 + (x * 5 + y * 3 + i) % 200).astype(np.uint16)
    raw[:2, :] = 2047
    return raw


def write_raw_kinect(d: Path):
    for i, ts in enumerate((1294439283.377657, 1294439283.410000)):
        folder = d / "bedroom_0042"
        rgb, _ = _frame(i)
        _png(folder / f"r-{ts + 0.004:.6f}-{100 + i}.ppm", rgb)
        raw = _kinect_raw(i)
        header = f"P5\n{W} {H}\n65535\n".encode()
        (folder / f"d-{ts:.6f}-{200 + i}.pgm").write_bytes(header + raw.astype("<u2").tobytes())
    raw = _kinect_raw(1).astype(np.float64)
    return d, {("unknown", "bedroom_0042"): 2}, \
        [("unknown", "bedroom_0042", 1, 5, 9, 351.3 / (1092.5 - raw[5, 9])), ("unknown", "bedroom_0042", 1, 0, 3, 0.0)]


WRITERS = {"labeled_mat": write_labeled_mat, "h5": write_h5, "bts": write_bts, "mmseg": write_mmseg,
           "densedepth": write_densedepth, "eigen_npy": write_eigen_npy, "hf": write_hf,
           "raw_kinect": write_raw_kinect}


def _episode_of(store, split: str, scene: str | None) -> int:
    for e in range(store.num_episodes):
        m = store.episode_meta(e)
        if m["split"] == split and m["scene"] == scene:
            return e
    raise AssertionError(f"no episode for {(split, scene)} in {store.episode_keys}")


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_ingests(layout, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    root, expected, checks = WRITERS[layout](raw)
    assert detect_layout(root) == layout
    cfg = NyuConfig(root=root, hf_cache_dir=str(tmp_path / "hf_cache"))
    source = NyuSource(cfg)
    result = ingest_nyu(source, IngestConfig(out=tmp_path / "store"))
    assert result.exit_code == 0, result.skipped
    store = open_store(str(tmp_path / "store"))
    assert store.schema["obs.rgb"].shape == (H, W, 3) and store.schema["obs.rgb"].dtype == "uint8"
    assert store.schema["obs.depth"].shape == (H, W) and store.schema["obs.depth"].unit == "m"
    assert "true source size 32x24" in store.schema["obs.depth"].description
    # scenes are the episodes, with per-sample split and scene
    got = {(store.episode_meta(e)["split"], store.episode_meta(e)["scene"]): store.episode_length(e)
           for e in range(store.num_episodes)}
    assert got == expected
    for split, scene, t, r, c, metres in checks:
        d = store.read(_episode_of(store, split, scene), ["obs.depth"], t, t + 1)["obs.depth"][0]
        assert d[r, c] == pytest.approx(metres, abs=1e-5), (split, scene, t, r, c)
    assert store.read(0, ["obs.depth"], 0, 1)["obs.depth"].dtype == np.float32
    # official split in the manifest where the layout has one; Eigen crop as store metadata
    splits = {store.episode_meta(e)["split"] for e in range(store.num_episodes)}
    if "test" in splits:
        val = {store.episode_keys[i] for i in store.split["val"]}
        assert val == {k for k in store.episode_keys if k.startswith("test/")}
        assert store.stats["split"]["val"] == store.split["val"]
        assert store.manifest["provenance"]["config"]["stats"]["image_frame_stride"] == 10
    ev = store.manifest["source"]["eval"]
    assert ev["eigen_crop_480x640"] == [45, 471, 41, 601] and ev["range_m"] == [0.001, 10.0]
    assert ev["eigen_crop"] == [2, 24, 2, 30] and ev["crop_scaled"]
    # depth extras in stats.json
    dstats = store.stats["depth"]["obs.depth"]
    assert 0 < dstats["valid_fraction"] <= 1 and dstats["min"] > 0
    assert dstats["min"] <= dstats["median"] <= dstats["max"]
    assert "obs.rgb" in store.stats["fields"] and len(store.stats["fields"]["obs.rgb"]["mean"]) == 3
    assert store.manifest["source"]["depth_registered"] == (layout != "raw_kinect")


def test_labeled_mat_transposes_rgb(tmp_path):
    root, _, _ = write_labeled_mat(tmp_path)
    source = NyuSource(NyuConfig(root=root))
    ep = source.read("train/kitchen_0001")
    np.testing.assert_array_equal(ep.steps["obs.rgb"][1], _frame(1)[0])
    np.testing.assert_array_equal(ep.steps["obs.depth"][0], _frame(0)[1])


def test_long_scene_is_cut_and_sizes_never_stretched(tmp_path):
    (tmp_path / "raw").mkdir()
    root, _, _ = write_h5(tmp_path / "raw")
    odd = tmp_path / "raw" / "train" / "bedroom_0001" / "00009.h5"
    with h5py.File(odd, "w") as f:
        f["rgb"] = np.zeros((3, 12, 16), np.uint8)
        f["depth"] = np.ones((12, 16), np.float32)
    source = NyuSource(NyuConfig(root=root, max_episode_frames=2))
    assert "train/bedroom_0001/part00" in source.keys() and "train/bedroom_0001/part01" in source.keys()
    result = ingest_nyu(source, IngestConfig(out=tmp_path / "store"))
    assert result.exit_code == 2
    (row,) = result.skipped
    assert row["key"] == "train/bedroom_0001/part01" and "not resized" in row["reason"]
    assert open_store(str(tmp_path / "store")).schema["obs.depth"].shape == (H, W)


# -- the real pairs -------------------------------------------------------------------------------------------
def test_real_raw_kinect_pair_in_metres(shared_data, tmp_path):
    folder = shared_data / "nyu_depth_v2" / "open3d_raw_kinect"
    proc = run_cli("ingest", "nyu", folder, "--out", tmp_path / "kinect", "--frame-codec", "lz4")
    assert proc.returncode == 0, proc.stderr
    assert "raw_kinect" in proc.stdout
    store = open_store(str(tmp_path / "kinect"))
    assert store.schema["obs.depth"].shape == (480, 640)
    assert "NOT registered" in store.schema["obs.depth"].description
    depth = store.read(0)["obs.depth"][0]
    rgb = store.read(0)["obs.rgb"][0]
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(folder / "NYU_color.ppm").convert("RGB")))
    # the documented conversion, from the file's bytes (little-endian payload after the 3-line header)
    data = (folder / "NYU_depth.pgm").read_bytes()
    raw = np.frombuffer(data[len(data) - 480 * 640 * 2:], dtype="<u2").reshape(480, 640)
    assert raw.min() >= 839 and raw.max() == 2047
    for r, c in ((240, 320), (100, 500), (400, 60), (10, 10)):
        want = 0.0 if raw[r, c] == 2047 else min(351.3 / (1092.5 - float(raw[r, c])), 10.0)
        assert depth[r, c] == pytest.approx(want, rel=1e-6), (r, c, raw[r, c])
    assert (depth[raw == 2047] == 0).all() and depth.max() < 10
    assert 1.38 < depth[depth > 0].min() < 1.39                # raw 839 -> 351.3 / 253.5 = 1.386 m


def test_real_mmseg_pair_keeps_true_size(shared_data, tmp_path):
    folder = shared_data / "nyu_depth_v2" / "mmseg_bts_style"
    source = NyuSource(NyuConfig(root=folder))
    assert source.layout == "mmseg" and source.keys() == ["unknown/bookstore_0001d"]
    assert ingest_nyu(source, IngestConfig(out=tmp_path / "mm")).exit_code == 0
    store = open_store(str(tmp_path / "mm"))
    assert store.schema["obs.rgb"].shape == (120, 160, 3)
    assert "true source size 160x120" in store.schema["obs.rgb"].description
    depth = store.read(0)["obs.depth"][0]
    mm = np.asarray(Image.open(folder / "bookstore_0001d_00001.png"))
    assert mm.dtype == np.uint16 and mm.max() == 10000
    for r, c in ((60, 80), (0, 0), (119, 159), (30, 120)):
        assert depth[r, c] == pytest.approx(mm[r, c] / 1000.0)
    assert depth.max() == pytest.approx(10.0)
    assert store.manifest["source"]["eval"]["eigen_crop"] == [11, 118, 10, 150]


def test_real_folder_roots_are_refused_clearly(shared_data):
    with pytest.raises(ConfigError, match="several layouts"):
        detect_layout(shared_data / "nyu_depth_v2")
    with pytest.raises(ConfigError, match="RGB-only"):
        NyuSource(NyuConfig(root=shared_data / "nyu_depth_v2" / "densedepth_test_rgb"))


def test_inspect_draws_rgb_depth_and_histogram(shared_data, tmp_path):
    source = NyuSource(NyuConfig(root=shared_data / "nyu_depth_v2" / "mmseg_bts_style"))
    ingest_nyu(source, IngestConfig(out=tmp_path / "mm"))
    proc = run_cli("inspect", tmp_path / "mm", "--out", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plots" / "depth_frames.png").stat().st_size > 5000
    assert (tmp_path / "plots" / "depth_histogram.png").stat().st_size > 5000
    assert "valid fraction" in proc.stdout
    stats = json.loads((tmp_path / "mm" / "stats.json").read_text())
    mm = np.asarray(Image.open(shared_data / "nyu_depth_v2/mmseg_bts_style/bookstore_0001d_00001.png"))[::4, ::4]
    assert stats["depth"]["obs.depth"]["median"] == pytest.approx(float(np.median(mm[mm > 0])) / 1000, abs=1e-3)
    assert stats["depth"]["obs.depth"]["valid_fraction"] == pytest.approx(float((mm > 0).mean()))
