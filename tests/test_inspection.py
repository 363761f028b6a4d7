"""Tests of `shardyard.tools.inspect.summary` and `notebooks/inspect_store.ipynb` over tiny real stores."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(ROOT))

from shardyard import open_store  # noqa: E402
from shardyard.geometry import canonical_hemisphere  # noqa: E402
from shardyard.schema import Episode, FieldSpec, Schema  # noqa: E402
from shardyard.stores.episodic_writer import EpisodicWriter, EpisodicWriterConfig  # noqa: E402
from shardyard.tools.inspect.skipped import skipped_lines  # noqa: E402
from shardyard.tools.inspect.summary import eef_pixels, summarize, write_plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H, W, T = 48, 64, 20
K = np.array([[60.0, 0.0, (W - 1) / 2], [0.0, 60.0, (H - 1) / 2], [0.0, 0.0, 1.0]])


def _looking_down(x: float, y: float, z: float) -> np.ndarray:
    """Camera-to-world pose of an OpenCV camera at (x, y, z) looking straight down (-z world)."""
    T_wc = np.eye(4)
    T_wc[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T_wc[:3, 3] = [x, y, z]
    return T_wc


def _pinhole(p_world: np.ndarray, T_wc: np.ndarray) -> np.ndarray:
    """Independent reference projection of one point (no shardyard code): (u, v) pixels."""
    R, t = T_wc[:3, :3], T_wc[:3, 3]
    pc = R.T @ (p_world - t)
    return np.array([K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]])


def _marker_image(uv: np.ndarray) -> np.ndarray:
    img = np.full((H, W, 3), 20, np.uint8)
    u, v = int(round(uv[0])), int(round(uv[1]))
    img[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2] = 255
    return img


def _eef(ep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.linspace(0, 1, T)
    pos = np.stack([0.15 * np.cos(2 * np.pi * s + ep), 0.1 * np.sin(2 * np.pi * s + ep),
                    0.1 + 0.2 * s], axis=1).astype(np.float32)
    yaw = 0.5 * np.pi * s + 0.3 * ep
    quat = np.stack([np.zeros(T), np.zeros(T), np.sin(yaw / 2), np.cos(yaw / 2)], 1).astype(np.float32)
    quat[::3] *= -1  # same rotations, other hemisphere: inspection must canonicalise
    grip = (0.5 + 0.5 * np.sin(4 * np.pi * s)).astype(np.float32)
    return pos, quat, grip


def _plausible_stats(store_dir: Path, steps: dict[str, list[np.ndarray]]) -> dict:
    fields = {}
    for k, arrs in steps.items():
        x = np.concatenate(arrs).astype(np.float64)
        x = x.reshape(-1, 3) if k.startswith("obs.rgb") else x.reshape(len(x), -1)
        fields[k] = {"count": [len(x)] * x.shape[1], "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                     "min": x.min(0).tolist(), "max": x.max(0).tolist(),
                     "q01": np.quantile(x, 0.01, 0).tolist(), "q99": np.quantile(x, 0.99, 0).tolist()}
    z = np.concatenate(steps["obs.eef_pos"])[:, 2]
    q = canonical_hemisphere(np.concatenate(steps["obs.eef_quat"]))
    mean = q.mean(0)
    _, s, vt = np.linalg.svd(q - mean, full_matrices=False)
    pc1 = (q - mean) @ vt[0]
    return {
        "computed_on": "train", "split": {"train": [0, 1], "val": []}, "num_episodes": 2, "num_steps": 2 * T,
        "config": {"n_height_bins": 8}, "fields": fields,
        "robot": {"obs": {
            "eef_pos_field": "obs.eef_pos", "eef_quat_field": "obs.eef_quat", "gripper_field": "obs.gripper",
            "height_bins": {"edges": np.linspace(z.min() - 0.01, z.max() + 0.01, 9).tolist(),
                            "min": float(z.min() - 0.01), "max": float(z.max() + 0.01), "margin": 0.01},
            "gripper_bins": {"edges": np.linspace(0, 1, 9).tolist()},
            "rotation": {"pca": {"mean": mean.tolist(), "basis": vt[0].tolist(),
                                 "explained_variance_ratio": (s ** 2 / (s ** 2).sum()).tolist(),
                                 "pc1_edges": np.linspace(pc1.min(), pc1.max(), 9).tolist()},
                         "kmeans": {"prototypes": q[:3].tolist()}, "recommended_mode": "1d_pca"}}}}


def make_store(tmp_path: Path, *, moving: bool = False, with_stats: bool = True) -> Path:
    """Two episodes of T steps with `obs.rgb.<cam>` (a bright marker drawn at the EEF's true pixel),
    EEF pose and gripper; a fixed `top` camera, or a moving `wrist` camera with per-step extrinsics."""
    role = "wrist" if moving else "top"
    fields = {f"obs.rgb.{role}": FieldSpec("uint8", (H, W, 3), None, "image"),
              "obs.eef_pos": FieldSpec("float32", (3,), "m", "vector"),
              "obs.eef_quat": FieldSpec("float32", (4,), None, "vector", names=("x", "y", "z", "w")),
              "obs.gripper": FieldSpec("float32", (), "normalised", "scalar")}
    if moving:
        fields[f"obs.T_world_cam.{role}"] = FieldSpec("float64", (4, 4), "m", "pose")
    path = tmp_path / ("store_moving" if moving else "store")
    collected: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    # lz4: the marker pixels are compared exactly (jpeg, the default, would soften them)
    with EpisodicWriter(path, Schema(fields), config=EpisodicWriterConfig(val_fraction=0.0, frame_codec="lz4")) as w:
        for ep in range(2):
            pos, quat, grip = _eef(ep)
            poses = np.stack([_looking_down(0.05 * np.sin(t / 3), 0.02 * t / T, 1.0 + 0.01 * t) if moving
                              else _looking_down(0.0, 0.0, 1.0) for t in range(T)])
            images = np.stack([_marker_image(_pinhole(pos[t].astype(np.float64), poses[t])) for t in range(T)])
            steps = {f"obs.rgb.{role}": images, "obs.eef_pos": pos, "obs.eef_quat": quat, "obs.gripper": grip}
            if moving:
                steps[f"obs.T_world_cam.{role}"] = poses
            for k, v in steps.items():
                collected[k].append(v)
            cam = {"K": K, "T_world_cam": None if moving else poses[0], "moving": moving, "width": W, "height": H}
            w.write(Episode(f"pick_cup/demo_{ep:04d}", steps, {"task": "pick up the cup", "fps": 10.0,
                                                               "cameras": {role: cam}}))
    if with_stats:
        (path / "stats.json").write_text(json.dumps(_plausible_stats(path, collected)))
    (path / "report.json").write_text(json.dumps({"num_ok": 2, "num_skipped": 1, "skipped": [
        {"key": "pick_cup/demo_0009", "path": "/raw/demo_0009", "field": "obs.eef_pos",
         "reason": "EEF trajectory has NaN", "error": "SchemaError"}]}))
    return path


def make_joint_store(tmp_path: Path) -> Path:
    """Joint-space store with an uncalibrated camera and no EEF field."""
    fields = {"obs.rgb.top": FieldSpec("uint8", (H, W, 3), None, "image"),
              "obs.joint_pos": FieldSpec("float32", (7,), "rad", "vector"),
              "action": FieldSpec("float32", (7,), "rad", "vector")}
    path = tmp_path / "joints"
    with EpisodicWriter(path, Schema(fields)) as w:
        for ep in range(3):
            x = np.cumsum(np.random.default_rng(ep).normal(size=(T, 7)), 0).astype(np.float32)
            img = np.random.default_rng(ep).integers(0, 255, (T, H, W, 3), dtype=np.uint8)
            w.write(Episode(f"ep{ep}", {"obs.rgb.top": img, "obs.joint_pos": x, "action": x + 0.1},
                            {"fps": 20.0}))
    return path


def _assert_pngs(paths: list[Path]) -> None:
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE, p
        assert len(data) > 2000, (p, len(data))
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
        assert w >= 200 and h >= 200, (p, w, h)


def test_summarize_lists_counts_fields_stats_robot_and_skips(tmp_path):
    store = open_store(make_store(tmp_path))
    text = summarize(store)
    assert str(store.url) in text
    assert "Episodes: 2" in text and f"Steps: {2 * T}" in text
    assert "train=2" in text
    for field in store.schema.keys():
        assert field in text
    assert "float32" in text and "(48, 64, 3)" in text and "normalised" in text
    assert "q99" in text and "computed on: train" in text
    assert "height bins 8" in text and "gripper bins 8" in text
    assert "rotation mode 1d_pca" in text and "PC1 EV" in text
    assert "pick_cup/demo_0009" in text and "EEF trajectory has NaN" in text and "1 skipped" in text


def test_summarize_groups_skipped_rows_that_share_a_reason(tmp_path):
    path = make_store(tmp_path)
    missing = [{"key": f"episode_{i:06d}", "path": f"/raw/episode_{i:06d}.parquet", "field": "data",
                "reason": "data file listed in meta is missing", "error": "SourceError"} for i in range(2, 100)]
    odd = [{"key": "episode_000100", "path": "/raw/episode_000100.parquet", "field": "action",
            "reason": "25 value(s) per row, 26 expected", "error": "SchemaError"}]
    (path / "report.json").write_text(json.dumps({"num_ok": 2, "num_skipped": 99, "skipped": missing + odd}))
    text = summarize(open_store(path))
    report = text[text.index("Report:"):].splitlines()
    assert report[0] == "Report: 2 ok, 99 skipped", report
    assert report[1].startswith("  - 98 episodes [data]: data file listed in meta is missing (SourceError): "
                                "episode_000002, episode_000003, episode_000004, ..., episode_000099"), report[1]
    assert report[2] == ("  - episode_000100 [action]: 25 value(s) per row, 26 expected (SchemaError) at "
                         "/raw/episode_000100.parquet"), report[2]
    assert "episode_000050" not in text


def test_skipped_lines_caps_distinct_reasons():
    rows = [{"key": f"k{i}", "reason": f"reason {i}"} for i in range(30)]
    lines = skipped_lines(rows, max_lines=5)
    assert lines[:5] == [f"  - k{i}: reason {i}" for i in range(5)], lines
    assert lines[5] == "  ... and 25 more line(s); every row in report.json" and len(lines) == 6
    assert skipped_lines(rows[:3]) == [f"  - k{i}: reason {i}" for i in range(3)]
    same = [{"key": f"k{i}", "reason": "absent"} for i in range(4)]
    assert skipped_lines(same) == ["  - 4 episodes: absent: k0, k1, k2, k3 (each with its path in report.json)"]


def test_summarize_without_stats_or_report(tmp_path):
    path = make_store(tmp_path, with_stats=False)
    (path / "report.json").unlink()
    text = summarize(open_store(path))
    assert "no stats.json" in text and "Episodes: 2" in text and "0 skipped" in text


@pytest.mark.parametrize("with_stats", [True, False])
def test_write_plots_writes_pngs(tmp_path, with_stats):
    store = open_store(make_store(tmp_path, with_stats=with_stats))
    out = tmp_path / "plots"
    paths = write_plots(store, out, max_episodes=2, frames_per_episode=3)
    names = sorted(p.name for p in paths)
    assert names == sorted(["frames_top.png", "eef_height.png", "gripper.png", "rotation_pc1.png",
                            "eef_paths_3d.png"])
    assert all(p.parent == out and p.exists() for p in paths)
    _assert_pngs(paths)


def test_write_plots_joint_only_store_plots_vectors(tmp_path):
    paths = write_plots(open_store(make_joint_store(tmp_path)), tmp_path / "plots")
    assert [p.name for p in paths] == ["frames_top.png", "vectors.png"]
    _assert_pngs(paths)


@pytest.mark.parametrize("moving", [False, True])
def test_eef_pixels_land_on_marker(tmp_path, moving):
    store = open_store(make_store(tmp_path, moving=moving))
    role = "wrist" if moving else "top"
    for ep in range(store.num_episodes):
        pix = eef_pixels(store, ep, role)
        assert pix.shape == (T, 2) and np.all(np.isfinite(pix))
        pos = store.read(ep, ["obs.eef_pos"])["obs.eef_pos"].astype(np.float64)
        images = store.read(ep, [f"obs.rgb.{role}"])[f"obs.rgb.{role}"]
        for t in range(T):
            T_wc = (store.read(ep, [f"obs.T_world_cam.{role}"], start=t, stop=t + 1)[f"obs.T_world_cam.{role}"][0]
                    if moving else store.episode_meta(ep)["cameras"][role]["T_world_cam"])
            np.testing.assert_allclose(pix[t], _pinhole(pos[t], T_wc), atol=1e-6)
            u, v = np.round(pix[t]).astype(int)
            assert 0 <= u < W and 0 <= v < H
            assert images[t, v, u].min() == 255, (ep, t, u, v)


def test_eef_pixels_behind_camera_is_nan_and_missing_camera_raises(tmp_path):
    store = open_store(make_store(tmp_path))
    with pytest.raises(KeyError):
        eef_pixels(store, 0, "nonexistent")
    from shardyard.stores.episode_table import roles_of, write_episode_table

    records = [store.episode_record(e) for e in range(store.num_episodes)]
    records[0]["cameras"]["top"]["T_world_cam"] = _looking_down(0.0, 0.0, 0.2).tolist()  # below most points
    metas = [{k: v for k, v in r.items() if k not in ("key", "length")} for r in records]
    write_episode_table(store.url, ((r["key"], r["length"], m) for r, m in zip(records, metas)), roles_of(metas))
    pix = eef_pixels(open_store(store.url), 0, "top")
    z = store.read(0, ["obs.eef_pos"])["obs.eef_pos"][:, 2]
    assert np.all(np.isnan(pix[z >= 0.2])) and np.all(np.isfinite(pix[z < 0.2 - 1e-6]))


# -- the notebook --------------------------------------------------------------------------------------
def _kernel_for_this_python(tmp_path: Path, monkeypatch) -> None:
    """Make kernel `python3` run this interpreter: keep the resolved kernelspec when its argv[0] is a bare
    `python` (jupyter_client substitutes `sys.executable`) or this executable; else install one in a temp dir
    at the front of JUPYTER_PATH."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = ""
    bare = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    if argv0 in bare or os.path.abspath(argv0) == os.path.abspath(sys.executable):
        return
    kdir = tmp_path / "jupyter" / "kernels" / "python3"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"),
                                                        os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))


def test_notebook_executes_and_writes_pngs(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    nb_path = ROOT / "notebooks" / "inspect_store.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:  # stored clean
        if cell.cell_type == "code":
            assert cell.execution_count is None and not cell.outputs
    assert 'os.environ.get("SHARDYARD_STORE", "")' in next(c for c in nb.cells if c.cell_type == "code").source

    store_path = make_store(tmp_path)
    out = tmp_path / "nb_out"
    monkeypatch.setenv("SHARDYARD_STORE", str(store_path))
    monkeypatch.setenv("SHARDYARD_INSPECT_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    _kernel_for_this_python(tmp_path, monkeypatch)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PREFIX=' + sys.prefix)"))

    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    texts = ["".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
             for c in nb.cells if c.cell_type == "code"]
    assert f"KERNEL_PREFIX={sys.prefix}" in texts[-1]
    assert "Episodes: 2" in "".join(texts)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"frames_top.png", "eef_height.png", "eef_paths_3d.png"}
    _assert_pngs(pngs)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= len(pngs) + 2  # the write_plots PNGs, then the trajectory and overlay figures
