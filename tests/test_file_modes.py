"""Files readable as the umask says (issue 25, item 6): what the CLI writes (stores of every frame codec,
feature stores, training runs) gets the mode an ordinary `open` gives, 0666 less the umask, never the 0600
of a temp file renamed into place; folders 0777 less the umask. A store written under umask 022 is read by
another user (`nobody`).

The stores live under a 0755 folder of their own (pytest's tmp_path is 0700, which would hide them)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shardyard.testing import SyntheticConfig, write_synthetic_yam

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--model-opt", "d_feat=8", "--model-opt", "d_sin_z=4", "--model-opt", "d_sin_t=4", "--model-opt",
              "d_cond=16", "--model-opt", "n_blocks=2", "--model-opt", "mlp_ratio=2"]
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def cli_under_umask(umask: int, *args: str | os.PathLike) -> None:
    """`shardyard ARGS` in a shell that set `umask` first (the real CLI, as a user runs it)."""
    cmd = f"umask {umask:03o} && exec \"$0\" -m shardyard.cli \"$@\""
    proc = subprocess.run(["sh", "-c", cmd, sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def modes(root: Path) -> dict[str, set[str]]:
    """Each mode found under `root` (itself included) -> the paths that have it ('f' files, 'd' folders)."""
    out: dict[str, set[str]] = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
        out.setdefault(f"{kind} {stat.S_IMODE(st.st_mode):04o}", set()).add(str(p.relative_to(root)))
    return out


def assert_modes(root: Path, umask: int) -> None:
    """Every file under `root` is `0o666 & ~umask`, every folder `0o777 & ~umask`."""
    want = {f"f {0o666 & ~umask:04o}", f"d {0o777 & ~umask:04o}"}
    found = modes(root)
    wrong = {m: sorted(ps)[:5] for m, ps in found.items() if m not in want}
    assert not wrong, f"{root}: modes other than {sorted(want)} (umask {umask:03o}): {wrong}"
    assert f"f {0o666 & ~umask:04o}" in found


@pytest.fixture(scope="module")
def shared_dir():
    """A 0755 folder under the system temp folder, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="shardyard-modes-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def stores(shared_dir):
    """`{codec: store}`: the same synthetic episodes ingested by the CLI under umask 022, as JPEG chunks and
    as MP4 files, with 2 reader workers (their spill files are what gets renamed or copied in)."""
    raw = shared_dir / "raw"
    write_synthetic_yam(raw, SyntheticConfig(num_episodes=3, steps=24, width=64, height=48, video=True))
    out = {}
    for codec in ("jpeg", "video"):
        out[codec] = shared_dir / codec
        cli_under_umask(0o022, "ingest", "yam", raw, "--out", out[codec], "--frame-codec", codec, "--workers", "2",
                        "--commit-seconds", "0")
    return out


def test_stores_written_under_umask_022_are_0644_files_in_0755_folders(stores):
    for codec, store in stores.items():
        assert_modes(store, 0o022)
        names = modes(store)["f 0644"]
        for must in ("manifest.json", "stats.json", "checksums.json", "meta/episodes.parquet", "meta/split.parquet",
                     "meta/stats_parts/000000000000.parquet", "report.json"):
            assert must in names, (codec, must)
    assert any(n.endswith(".mp4") for n in modes(stores["video"])["f 0644"])


def test_another_user_reads_a_frame_of_each_store(stores):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a reader as user nobody")
    probe = subprocess.run([*SETPRIV, sys.executable, "-c", "import numpy, zarr"], capture_output=True, text=True,
                           cwd="/", timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this interpreter: {probe.stderr[-300:]}")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from shardyard import open_store\n"
        "for path in sys.argv[1:]:\n"
        "    s = open_store(path)\n"
        "    frame = s.read_rows('obs.rgb.front', 30, 31)[0]\n"
        "    print(path, s.num_episodes, frame.shape, int(frame.sum()))\n")
    paths = [str(stores["jpeg"]), str(stores["video"])]
    proc = subprocess.run([*SETPRIV, sys.executable, "-c", script, *paths], capture_output=True, text=True,
                          cwd="/", timeout=120, env={**os.environ, "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == paths
    assert all(line.split()[1] == "3" and "(48, 64, 3)" in line and int(line.split()[-1]) > 0 for line in lines)
    # the control: a store made unreadable to others is refused to the same reader
    hidden = stores["jpeg"] / "meta"
    hidden.chmod(0o700)
    try:
        denied = subprocess.run([*SETPRIV, sys.executable, "-c", script, paths[0]], capture_output=True, text=True,
                                cwd="/", timeout=120, env={**os.environ, "HOME": "/nonexistent"})
    finally:
        hidden.chmod(0o755)
    assert denied.returncode != 0


def test_feature_store_shard_store_and_training_run_follow_umask_027(stores, shared_dir):
    """Under umask 027 (group may read, others nothing) the feature store, a webdataset shard store and the
    run folder, checkpoint included, are 0640 files in 0750 folders: the mode follows the umask, not a fixed
    0644."""
    features, run, shards = shared_dir / "features027", shared_dir / "run027", shared_dir / "shards027"
    cli_under_umask(0o027, "ingest", "dino", stores["jpeg"], "--out", features, "--field", "obs.rgb.front",
                    "--image-size", "56", "--batch-size", "16")
    cli_under_umask(0o027, "train", "volume-query", "--store", stores["jpeg"], "--features", features, "--out", run,
                    "--steps", "2", "--window", "4", "--pred-size", "16", "--batch-size", "8", "--log-every", "1",
                    "--ckpt-every", "2", "--plot-every", "0", "--device", "cpu", *TINY_MODEL)
    script = ("import sys; from pathlib import Path; from shardyard.demo import write_clip_shards; "
              "write_clip_shards(Path(sys.argv[1]), Path(sys.argv[2]))")
    proc = subprocess.run(["sh", "-c", 'umask 027 && exec "$0" "$@"', sys.executable, "-c", script,
                           str(shared_dir / "raw"), str(shards)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_modes(features, 0o027)
    assert_modes(run, 0o027)
    assert_modes(shards, 0o027)
    assert {"manifest.json", "shards/train-000000.tar"} <= modes(shards)["f 0640"], modes(shards)
    assert {"latest.pth", "metrics.jsonl"} <= modes(run)["f 0640"]
