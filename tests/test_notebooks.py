"""The inspection notebook of every store kind, executed top to bottom on stores built from `../shared/data`
(issue 16): depth (NYU), shards (WebVid), features (DINO tokens of YAM frames) and a training run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import YAM_MODEL, notebook_outputs, run_cli, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

pytest.importorskip("nbclient")


def check_clean(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "os.environ.get(" in first.source  # the store's URL, in one variable at the top
    for cell in nb.cells:  # stored without outputs
        if cell.cell_type == "code":
            assert cell.execution_count is None and not cell.outputs


@pytest.mark.slow
def test_depth_notebook_on_nyu(shared_data, tmp_path):
    store = tmp_path / "nyu"
    assert run_cli("ingest", "nyu", shared_data / "nyu_depth_v2" / "mmseg_bts_style", "--out", store).returncode == 0
    path = NOTEBOOKS / "inspect_depth_store.ipynb"
    check_clean(path)
    text, images = notebook_outputs(run_notebook(path, {"SHARDYARD_STORE": str(store)}, tmp_path))
    assert "valid pixels" in text and " m, median " in text
    assert images[-2:] == [1, 1]  # RGB/depth/mask grid, histogram


@pytest.mark.slow
def test_shard_notebook_on_webvid(shared_data, tmp_path):
    store = tmp_path / "shards"
    proc = run_cli("ingest", "webvid", shared_data / "webvid" / "video2dataset_shard", "--out", store)
    assert proc.returncode in (0, 2), proc.stderr
    path = NOTEBOOKS / "inspect_shard_store.ipynb"
    check_clean(path)
    text, images = notebook_outputs(run_notebook(path, {"SHARDYARD_STORE": str(store)}, tmp_path))
    assert "shard(s)" in text and "status counts" in text
    assert "clip(s) streamed" in text and images[-1] == 1


@pytest.mark.slow
def test_feature_and_run_notebooks_on_yam(yam_raw, tmp_path):
    raw = yam_raw(2)
    store, feats, run = tmp_path / "store", tmp_path / "features", tmp_path / "run"
    assert run_cli("ingest", "yam", raw, "--robot-model", YAM_MODEL, "--camera", "top", "--image-size", "112",
                   "--out", store).returncode == 0
    assert run_cli("ingest", "dino", store, "--field", "obs.rgb.top", "--image-size", "112",
                   "--out", feats).returncode == 0
    proc = run_cli("train", "volume-query", "--store", store, "--features", feats, "--out", run, "--steps", "6",
                   "--batch-size", "2", "--log-every", "2", "--plot-every", "3", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    path = NOTEBOOKS / "inspect_feature_store.ipynb"
    check_clean(path)
    text, images = notebook_outputs(run_notebook(path, {"SHARDYARD_FEATURES": str(feats),
                                                        "SHARDYARD_INSPECT_OUT": str(tmp_path / "nb")}, tmp_path))
    assert "source_fingerprint" in text and "PCA explained variance ratio" in text
    assert images[-2] >= 1 and images[-1] == 1, images  # token PCA picture(s), channel stats
    path = NOTEBOOKS / "inspect_training_run.ipynb"
    check_clean(path)
    text, images = notebook_outputs(run_notebook(path, {"SHARDYARD_RUN": str(run)}, tmp_path))
    assert "record(s), last step 6" in text and "picture(s) shown" in text
    assert images[-2] == 1 and images[-1] >= 1, images  # the metrics panels, then trajectory plots
