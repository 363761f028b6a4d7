"""Nothing is unpickled or evaluated (issue 25, item 2): a scan of the package source for the calls that
would, and crafted pickle payloads in every kind of file the tools read (a run's `latest.pth` for `inspect`
and for a training resume, an object `.npy` in a YAM episode and in an NYU Eigen-npy folder), each refused
with an error naming the file while the payload's marker file never appears. A first test proves each
payload does create its marker when unpickled, so the refusals are not vacuous."""

from __future__ import annotations

import ast
import io
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from vq_fixtures import TINY_MODEL, vq_data  # noqa: F401  (fixture)

from shardyard.errors import ConfigError
from shardyard.train.checkpoint import read_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "shardyard"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}

# ---- the static scan ----------------------------------------------------------------------------------------
# Matched on the code with comments and string literals blanked, so prose about pickles does not count.
FORBIDDEN = {
    "unpickling call": re.compile(r"\b(?:c?[Pp]ickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\s*\.\s*"
                                  r"(?:loads?|Unpickler|open)\b"),
    "weights_only=False": re.compile(r"\bweights_only\s*=\s*False\b"),
    "allow_pickle=True": re.compile(r"\ballow_pickle\s*=\s*True\b"),
    "eval/exec": re.compile(r"(?:^|[^\w.\s])\s*(?:eval|exec)\s*\(", re.MULTILINE),
    "builtins eval/exec": re.compile(r"\b(?:builtins|__builtins__)\s*\.\s*(?:eval|exec)\b"),
    "yaml.load": re.compile(r"\byaml\s*\.\s*(?:load|load_all|unsafe_load|full_load)\s*\("),
    "read_pickle": re.compile(r"\bread_pickle\b"),
    "pickle-based library import": re.compile(r"^\s*(?:import|from)\s+(?:dill|cloudpickle|joblib|shelve)\b",
                                              re.MULTILINE),
    "unpickler import": re.compile(r"^\s*from\s+(?:c?pickle|_pickle|marshal)\s+import\s+.*\b(?:loads?|Unpickler)\b",
                                   re.MULTILINE),
}


def _blank_comments_and_strings(source: str) -> str:
    """`source` with every comment and string literal replaced by spaces (line and column positions kept)."""
    lines = source.splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            line = lines[r - 1]
            a, b = (c0 if r == r0 else 0), (c1 if r == r1 else len(line.rstrip("\n")))
            lines[r - 1] = line[:a] + " " * (b - a) + line[b:]
    return "".join(lines)


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """`torch.load(...)` without `weights_only=True` and `np.load(...)` / `numpy.load(...)` without
    `allow_pickle=False`, by line."""
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)):
            continue
        owner = node.func.value.id
        if owner == "torch" and not _keyword_is(node, "weights_only", True):
            hits.append((node.lineno, "torch.load without weights_only=True"))
        if owner in ("np", "numpy") and not _keyword_is(node, "allow_pickle", False):
            hits.append((node.lineno, f"{owner}.load without allow_pickle=False"))
    return hits


def scan(source: str, name: str = "<source>") -> list[str]:
    """Every line of `source` that unpickles or evaluates: `name:line: what: code`."""
    code = _blank_comments_and_strings(source)
    raw = source.splitlines()
    hits = []
    for what, pattern in FORBIDDEN.items():
        for m in pattern.finditer(code):
            line = code.count("\n", 0, m.end() - 1) + 1
            hits.append((line, what))
    hits += _unsafe_loads(ast.parse(source))
    return [f"{name}:{line}: {what}: {raw[line - 1].strip()}" for line, what in sorted(set(hits))]


def test_scanner_flags_each_pattern_and_not_method_calls():
    bad = {
        "import pickle\nx = pickle.loads(b)\n": "unpickling call",
        "import pickle\nwith open(p, 'rb') as f:\n    x = pickle.load(f)\n": "unpickling call",
        "u = pickle.Unpickler(f)\n": "unpickling call",
        "s = torch.load(p, map_location='cpu', weights_only=False)\n": "weights_only=False",
        "s = torch.load(p)\n": "torch.load without weights_only=True",
        "s = torch.load(\n    p,\n    map_location='cpu',\n)\n": "torch.load without weights_only=True",
        "a = np.load(p, allow_pickle=True)\n": "allow_pickle=True",
        "a = np.load(p, mmap_mode='r')\n": "np.load without allow_pickle=False",
        "y = eval(text)\n": "eval/exec",
        "exec(code, {})\n": "eval/exec",
        "f = [eval (t) for t in ts]\n": "eval/exec",
        "import builtins\nbuiltins.eval(t)\n": "builtins eval/exec",
        "d = yaml.load(f, Loader=yaml.Loader)\n": "yaml.load",
        "df = pd.read_pickle(p)\n": "read_pickle",
        "import dill\n": "pickle-based library import",
        "from pickle import loads\n": "unpickler import",
    }
    for source, what in bad.items():
        hits = scan(source)
        assert any(what in h for h in hits), (source, hits)
    good = ("model.eval()\n", "self.model.eval()\nnet.train(was)\n", "s = torch.load(p, weights_only=True)\n",
            "a = np.load(p, allow_pickle=False, mmap_mode='r')\n", "b = pickle.dumps(x)\n",
            "# never pickle.loads here, nor eval(\nx = 'weights_only=False'\n", "d = yaml.safe_load(f)\n",
            "r = evaluate(x)\nretrieval(y)\n", '"""torch.load(p) in a docstring"""\n')
    for source in good:
        assert scan(source) == [], source


def test_the_package_neither_unpickles_nor_evaluates():
    """Every .py under shardyard/: no unpickling call, no weights_only=False / allow_pickle=True, no eval / exec,
    every torch.load with weights_only=True and every np.load with allow_pickle=False."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    hits = [h for p in files for h in scan(p.read_text(), str(p.relative_to(PACKAGE.parent)))]
    assert not hits, "unpickling or evaluating code in the package:\n" + "\n".join(hits)


# ---- crafted payloads --------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs `Path.touch(marker)`: evidence that a file's contents were executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def payload_checkpoint(path: Path, marker: Path, config: dict | None = None) -> Path:
    """A `latest.pth` in the layout `train.loop` writes, with the payload in place of the RNG state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "optimizer": {}, "step": 1, "sampler": {}, "config": config or {}, "extra": {},
                "rng": Payload(marker)}, path)
    return path


def payload_npy(path: Path, marker: Path) -> Path:
    """An object `.npy` holding the payload (what `np.save(allow_pickle=True)` writes)."""
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = Payload(marker), 1.0
    np.save(path, arr, allow_pickle=True)
    return path


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardyard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_payloads_run_when_unpickled(tmp_path):
    """The crafted files are live: unpickled by hand, each creates its marker (the refusals below are real)."""
    ckpt = payload_checkpoint(tmp_path / "run" / "latest.pth", tmp_path / "ckpt_marker")
    torch.load(ckpt, weights_only=False)  # what the trainers did before
    assert (tmp_path / "ckpt_marker").exists()
    np.load(payload_npy(tmp_path / "a.npy", tmp_path / "npy_marker"), allow_pickle=True)
    assert (tmp_path / "npy_marker").exists()


FOVEATED_CONFIG = {"mode_weights": {"caption": 1.0}, "model_config": {}, "shards": "x", "frames": 2}


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-5"])
def test_inspect_refuses_a_crafted_checkpoint(tmp_path, writer):
    run, marker = tmp_path / "run", tmp_path / "marker"
    ckpt = run / "latest.pth"
    if writer == "torch.save":
        payload_checkpoint(ckpt, marker, FOVEATED_CONFIG)
    else:  # torch.load also reads plain (legacy) pickle files: the same refusal
        run.mkdir()
        state = {"model": {}, "config": FOVEATED_CONFIG, "rng": Payload(marker)}
        ckpt.write_bytes(pickle.dumps(state, protocol=int(writer.split("-")[1])))
    proc = cli("inspect", str(run))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and str(ckpt) in proc.stderr, proc.stderr
    assert "refused" in proc.stderr and "retrain" in proc.stderr, proc.stderr
    assert not marker.exists()
    assert not (run / "attention").exists()


def test_training_resume_refuses_a_crafted_checkpoint(vq_data, tmp_path):  # noqa: F811  (fixture)
    store, features = vq_data
    run, marker = tmp_path / "run", tmp_path / "marker"
    opts = sum((["--model-opt", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])
    args = ["train", "volume-query", "--store", str(store), "--features", str(features), "--window", "4",
            "--pred-size", "16", "--batch-size", "8", "--steps", "2", "--log-every", "1", "--ckpt-every", "2",
            "--plot-every", "0", "--device", "cpu", *opts]
    ckpt = payload_checkpoint(run / "latest.pth", marker)
    before = ckpt.read_bytes()
    proc = cli(*args, "--out", str(run))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and str(ckpt) in proc.stderr and "retrain" in proc.stderr, proc.stderr
    assert not marker.exists()
    assert ckpt.read_bytes() == before                         # refused before any step: nothing overwritten
    # what the trainer writes itself loads with weights_only=True (the resume tests of each trainer read it so)
    from shardyard.train.volume_query import TrainConfig, train

    res = train(TrainConfig(store=str(store), features=str(features), out=str(tmp_path / "fresh"), window=4,
                            pred_size=16, model=TINY_MODEL, batch_size=8, steps=2, ckpt_every=2, plot_every=0))
    state = torch.load(res.checkpoint, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
    assert state["config"]["out"] == str(tmp_path / "fresh") and state["config"]["model_config"]["grid"] == (4, 4)


def test_a_checkpoint_with_pickled_numpy_state_names_the_file_and_says_retrain(tmp_path):
    """What this package wrote before: numpy's RNG state as a pickled array. Refused with a clear error."""
    path = tmp_path / "latest.pth"
    torch.save({"model": {}, "optimizer": {}, "step": 3, "config": {}, "extra": {}, "sampler": {},
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}, path)
    with pytest.raises(ConfigError, match="retrain") as e:
        read_checkpoint(path)
    assert e.value.path == str(path) and "weights_only=False" not in str(e.value)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a checkpoint of tensors"):
        read_checkpoint(path)
    torch.save({"model": {}, "step": 1}, path)
    with pytest.raises(ConfigError, match=r"missing \['optimizer', 'config', 'rng'\]"):
        read_checkpoint(path)


def test_yam_ingest_refuses_an_object_npy(tiny_yam_dir, tmp_path):
    raw, marker = tiny_yam_dir(num_episodes=2), tmp_path / "marker"
    bad = payload_npy(sorted(raw.rglob("eef_pos.npy"))[0], marker)
    store = tmp_path / "store"
    proc = cli("ingest", "yam", str(raw), "--out", str(store))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]   # one episode skipped, one written
    assert not marker.exists()
    rows = json.loads((store / "report.json").read_text())["skipped"]
    assert [(r["path"], r["field"]) for r in rows] == [(str(bad), "obs.eef_pos")], rows
    assert "never unpickled" in rows[0]["reason"]


def _eigen_npy(root: Path, frames: int = 3) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "eigen_test_rgb.npy", rng.integers(0, 255, (frames, 24, 32, 3), dtype=np.uint8))
    np.save(root / "eigen_test_depth.npy", rng.uniform(0.5, 5.0, (frames, 24, 32)).astype(np.float32))
    np.save(root / "eigen_test_crop.npy", np.array([20, 459, 24, 615]))
    return root


@pytest.mark.parametrize("name", ["eigen_test_rgb.npy", "eigen_test_depth.npy", "eigen_test_crop.npy"])
def test_nyu_ingest_refuses_an_object_npy(tmp_path, name):
    root, marker = _eigen_npy(tmp_path / "nyu"), tmp_path / "marker"
    bad = payload_npy(root / name, marker)
    proc = cli("ingest", "nyu", str(root), "--layout", "eigen_npy", "--out", str(tmp_path / "store"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = tmp_path / "store" / "report.json"
    named = str(bad) in proc.stderr or (report.exists() and str(bad) in report.read_text())
    assert named and "never unpickled" in proc.stderr + (report.read_text() if report.exists() else "")
    assert not marker.exists()


def _pickle_coded_array(folder: Path, marker: Path) -> None:
    """Replace the zarr array in `folder` by a zarr v2 object array whose chunk is the payload, pickle-coded
    (what numcodecs' Pickle filter writes)."""
    import shutil

    shutil.rmtree(folder)
    folder.mkdir()
    (folder / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None, "fill_value": None,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}))
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = Payload(marker), 1
    (folder / "0").write_bytes(pickle.dumps(arr, protocol=5))


def test_a_store_with_a_pickle_coded_array_is_refused(vq_data, tmp_path):  # noqa: F811  (fixture)
    """zarr-python 3 has no pickle codec: a store whose arrays were swapped for pickle-coded ones is an error
    for `inspect` and `verify`, and the payload never runs."""
    import shutil

    import zarr

    store, marker = tmp_path / "store", tmp_path / "marker"
    shutil.copytree(vq_data[0], store)
    for name in ("meta/episode_ends", "data/obs.eef_pos"):
        _pickle_coded_array(store / name, marker)
    with pytest.raises(Exception, match="(?i)pickle|data type"):
        zarr.open_array(str(store / "data" / "obs.eef_pos"), mode="r")[:]
    for command in ("inspect", "verify"):
        proc = cli(command, str(store))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (command, proc.stdout + proc.stderr)
    assert not marker.exists()
