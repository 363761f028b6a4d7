"""Factories that write tiny real inputs (DESIGN.md style example 9) and paths to the shared sample data."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardyard.testing import SyntheticConfig, write_synthetic_yam

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YAM_EPISODES = SHARED / "yam" / "episodes"
YAM_MODEL = SHARED / "yam" / "model" / "station" / "yam_station_linear_4310_d405" / \
    "yam_station_linear_4310_d405_sim_scene.xml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED} (CI clones it beside the repo)")
    return SHARED


@pytest.fixture
def yam_raw(tmp_path, shared_data):
    """Copy `n` real i2rt-layout episodes (sorted) into a temp folder; returns the folder."""

    def make(n: int = 6, dest: str = "raw") -> Path:
        out = tmp_path / dest
        eps = sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:n]
        for ep in eps:
            shutil.copytree(ep, out / ep.relative_to(YAM_EPISODES))
        return out

    return make


@pytest.fixture
def tiny_yam_dir(tmp_path):
    """Synthetic per-demo episodes (see shardyard.testing); kwargs go to SyntheticConfig."""

    def make(dest: str = "synthetic", **kwargs) -> Path:
        root = tmp_path / dest
        write_synthetic_yam(root, SyntheticConfig(**{"num_episodes": 3, "steps": 24, "width": 64, "height": 48,
                                                     **kwargs}))
        return root

    return make


def loader_batches(ds, **kw) -> list[dict]:
    """Every batch of `ds` through a DataLoader with 2 forked workers, batch 4 (each worker opens its own
    filesystem handle: what the object-store tests check)."""
    from torch.utils.data import DataLoader

    return list(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork", **kw))


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    """Same number of batches (at least one), same keys, equal tensors and values."""
    import torch

    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@contextlib.contextmanager
def fsspec_protocol(protocol: str, conf: dict, env: dict[str, str]):
    """Point fsspec's configuration for `protocol` at `conf` in this process, and set `env` (its FSSPEC_*
    form, for CLI subprocesses); both are restored on exit."""
    import fsspec

    saved = fsspec.config.conf.get(protocol)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        fsspec.config.conf[protocol] = conf
        try:
            yield
        finally:
            if saved is None:
                fsspec.config.conf.pop(protocol, None)
            else:
                fsspec.config.conf[protocol] = saved


def run_cli(*args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `shardyard ARGS` as a subprocess with this interpreter."""
    proc = subprocess.run([sys.executable, "-m", "shardyard.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_paused_cli(*args, pause_file: Path, after: int) -> subprocess.Popen:
    """Start `shardyard ARGS --pause-file PAUSE_FILE --pause-after AFTER` in its own process group, the file
    created first: the job stops after its AFTER-th stored episode (`ingest dino`: batch, per worker) and cannot
    get past that point until the file is deleted, so a fault injected then (`wait_paused`, then a kill) lands
    there however busy the machine is. stderr is piped for `wait_paused`; stdout is dropped."""
    pause_file.touch()
    return subprocess.Popen([sys.executable, "-m", "shardyard.cli", *map(str, args), "--pause-file", str(pause_file),
                             "--pause-after", str(after)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})


def wait_paused(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Read `proc`'s stderr until the job logs that it paused (`shardyard.pause`); returns what it read. Fails the
    test, with that stderr, when the job exits or the timeout passes first."""
    import select
    import time

    fd, seen, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while b"paused after" not in seen:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            exited = proc.poll() is not None or bool(ready)
            rc = sigkill_group(proc)
            why = f"exited ({rc})" if exited else "made no progress"
            pytest.fail(f"the job {why} before it paused:\n{seen.decode(errors='replace')[-3000:]}")
        seen += chunk
    return seen.decode(errors="replace")


def sigkill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the process group `proc` leads (its reader processes too) and reap it; returns its exit status."""
    import signal

    with contextlib.suppress(ProcessLookupError):  # the whole group already gone
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


class RangeHTTPRequestHandler(__import__("http.server").server.SimpleHTTPRequestHandler):
    """Static file server on loopback that honours `Range: bytes=a-b` and `bytes=-n` (as S3/nginx do)."""

    def log_message(self, *args):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        spec = rng.split("=", 1)[1].split(",")[0].strip()
        a, b = spec.split("-")
        if a == "":
            start, end = max(size - int(b), 0), size - 1
        else:
            start, end = int(a), min(int(b) if b else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        import io

        data = f.read(end - start + 1)
        f.close()
        return io.BytesIO(data)


def serve_directory(directory, ranges: bool = True):
    """Start a threaded HTTP server on 127.0.0.1 for `directory`; returns (server, base_url)."""
    import functools
    import http.server
    import threading

    handler_cls = RangeHTTPRequestHandler if ranges else http.server.SimpleHTTPRequestHandler
    if not ranges:
        handler_cls = type("Quiet", (handler_cls,), {"log_message": lambda *a, **k: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler_cls, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run_notebook(path: Path, env: dict[str, str], tmp_path: Path, timeout: int = 180):
    """Execute the notebook at `path` top to bottom in a kernel running this interpreter, with `env` set (the
    notebooks read their store URL from an environment variable); returns the executed notebook. A cell that
    raises fails the call (nbclient's CellExecutionError)."""
    import json

    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    kdir = tmp_path / "jupyter" / "kernels" / "python3"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python",
        "env": env | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
                      "MPLBACKEND": "module://matplotlib_inline.backend_inline"}}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb


def notebook_outputs(nb) -> tuple[str, list[int]]:
    """(all stream text, number of PNG images displayed by each code cell) of an executed notebook."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    images = [sum(1 for o in c.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")
                  and "image/png" in o.get("data", {})) for c in cells]
    return text, images
