"""`ingest yam` and `ingest dino` against a real 2-node Ray cluster on this machine (issue 14, item 1).

A head and a worker raylet (`ray.cluster_utils.Cluster`: separate processes, 1 CPU and a temp dir each) take
the CLI's `--ray-address`. The stores must equal the local run bit for bit, the run report must name both
nodes, a worker node SIGKILLed mid-job must still give the identical store (Ray retries its tasks elsewhere;
committed episodes are neither read again nor written twice), and a job whose driver is SIGKILLed resumes on
a fresh cluster from the commit log.

Faults are injected at known points, never by racing the job: it runs with `--pause-file` and waits there
(after its N-th stored episode, or each dino actor after its first token batch) until the test, having seen
that state on disk, has killed what it kills and deleted the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import YAM_EPISODES, YAM_MODEL, run_cli, sigkill_group, start_paused_cli, wait_paused
from test_ingest_yam import assert_stores_equal

from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.yam import YamConfig, YamSource
from shardyard.models.backbones import BackboneConfig
from shardyard.stores.commit_log import committed_episodes
from shardyard.stores.features import open_features

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_EPISODES = 4
YAM_ARGS = ["--robot-model", YAM_MODEL, "--camera", "top", "--image-size", "64x48"]
DINO_ARGS = ["--model", "tiny-random-dinov2", "--field", "obs.rgb.top", "--image-size", "56", "--batch-size", "8"]


class TwoNodes:
    """A head and one worker node, each its own raylet with 1 CPU and its own temp dir."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        # Short temp dirs: Ray's socket paths must stay under the 107-byte limit of AF_UNIX.
        self.dirs = [tempfile.mkdtemp(prefix="sy-ray-", dir="/tmp") for _ in range(2)]
        # Cluster still records the head's address in Ray's default temp dir, and fails where that folder does
        # not exist yet (a machine on which Ray never ran).
        (Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray").mkdir(exist_ok=True)
        # A dead node is declared after 3 missed health checks 0.5 s apart (Ray's default waits ~15 s more).
        fast_failure = {"health_check_initial_delay_ms": 500, "health_check_period_ms": 500,
                        "health_check_failure_threshold": 3}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "temp_dir": self.dirs[0], "_system_config": fast_failure})
        self.worker = self.cluster.add_node(num_cpus=1, temp_dir=self.dirs[1])
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def kill_worker(self) -> str:
        """SIGKILL the worker node's raylet and its processes (no graceful drain); returns its node id."""
        node_id = self.worker.node_id
        self.cluster.remove_node(self.worker, allow_graceful=False)
        return node_id

    def add_worker(self) -> None:
        self.worker = self.cluster.add_node(num_cpus=1, temp_dir=self.dirs[1])
        self.cluster.wait_for_nodes()

    def shutdown(self) -> None:
        self.cluster.shutdown()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    """Raw YAM episodes, and the local (no Ray) yam store and feature store made from them in this process
    (the same library calls as `ingest yam ... YAM_ARGS` and `ingest dino ... DINO_ARGS`)."""
    root = tmp_path_factory.mktemp("cluster")
    raw = root / "raw"
    for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:N_EPISODES]:
        shutil.copytree(ep, raw / ep.relative_to(YAM_EPISODES))
    source = YamSource(YamConfig(root=raw, robot_model=YAM_MODEL, cameras=("top",), image_size=(64, 48)))
    run_ingest(source, IngestConfig(out=root / "local"))
    bb = BackboneConfig(spec="tiny-random-dinov2", image_size=(56, 56))
    ingest_dino(DinoConfig(store=str(root / "local"), out=root / "local_dino", backbone=bb, batch_size=8,
                           field="obs.rgb.top"))
    return root


@pytest.fixture(scope="module")
def nodes():
    """One cluster for the module (a test that needs a fresh one calls `restart`)."""
    holder = {"c": TwoNodes()}
    yield holder
    holder["c"].shutdown()


def _committed(store: Path) -> int:
    try:
        return len(committed_episodes(store))
    except (FileNotFoundError, ValueError):
        return 0


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll `cond()` while the paused job runs; fail if it exits (it cannot finish while paused) or stalls."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"job ended (exit {proc.returncode}) while paused:\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            sigkill_group(proc)
            pytest.fail("job made no progress")
        time.sleep(0.05)


def _resume_and_finish(proc: subprocess.Popen, pause_file: Path) -> None:
    """Delete the pause file and wait for the job to end successfully."""
    pause_file.unlink()
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err.decode()[-4000:]


def _assert_tokens_equal(a: Path, b: Path) -> None:
    fa, fb = open_features(a), open_features(b)
    n = fa.num_samples
    assert n == fb.num_samples
    np.testing.assert_array_equal(fa.patch_tokens(0, n).view(np.uint16), fb.patch_tokens(0, n).view(np.uint16))
    np.testing.assert_array_equal(fa.cls_token(0, n).view(np.uint16), fb.cls_token(0, n).view(np.uint16))
    np.testing.assert_array_equal(fa.missing, fb.missing)


def test_yam_on_two_nodes_equals_local_and_names_both_nodes(work, nodes):
    c = nodes["c"]
    out = work / "yam_2n"
    run_cli("ingest", "yam", work / "raw", *YAM_ARGS, "--ray-address", c.address, "--workers", "2",
            "--commit-every", "1", "--out", out, check=True)
    assert_stores_equal(str(work / "local"), str(out))
    report = json.loads((out / "report.json").read_text())
    assert set(report["ray_nodes"]) == {c.head_id, c.worker.node_id}
    assert sorted(k for ks in report["ray_nodes"].values() for k in ks) == sorted(
        committed_episodes(out)[i]["key"] for i in range(N_EPISODES))


def test_yam_worker_node_killed_mid_job_gives_the_same_store(work, nodes):
    c = nodes["c"]
    out, pause = work / "yam_kill_node", work / "yam_kill_node.pause"
    proc = start_paused_cli("ingest", "yam", work / "raw", *YAM_ARGS, "--ray-address", c.address, "--workers", "2",
                            "--commit-every", "1", "--out", out, pause_file=pause, after=1)
    try:
        wait_paused(proc)  # the driver waits after committing its first episode
        assert _committed(out) == 1 and not (out / "manifest.json").exists()
        dead = c.kill_worker()
        _resume_and_finish(proc, pause)
    finally:
        if proc.poll() is None:
            sigkill_group(proc)
        c.add_worker()
    assert_stores_equal(str(work / "local"), str(out))
    report = json.loads((out / "report.json").read_text())
    # one run: every episode read and written exactly once, none of them twice
    assert report["num_written"] == N_EPISODES and report["num_already_committed"] == 0
    keys = [k for ks in report["ray_nodes"].values() for k in ks]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == N_EPISODES
    assert c.head_id in report["ray_nodes"], report["ray_nodes"]
    assert set(report["ray_nodes"]) <= {c.head_id, dead}


def _dino_nodes(store: Path) -> set[str]:
    """Ray node ids named by the feature store's batch records so far (each actor stamps its own)."""
    out = set()
    for f in (store / "progress").glob("*.json") if (store / "progress").is_dir() else []:
        try:
            out.add(json.loads(f.read_text()).get("node"))
        except (json.JSONDecodeError, FileNotFoundError):  # a record being renamed into place
            continue
    return out - {None}


def test_dino_on_two_nodes_with_the_worker_node_killed_mid_job(work, nodes):
    """Both nodes' actors write token batches (their records name them); then the worker node is SIGKILLed:
    its unit is retried on the head, and the tokens equal the local run's, each shard listed once.

    Each actor pauses after its first batch, and an actor takes one shard unit at a time: the head's actor
    cannot take every unit, so the worker node's actor must write one (a record naming that node) before the
    job can go on, and no unit can finish before the kill."""
    c = nodes["c"]
    out, pause = work / "dino_kill_node", work / "dino_kill_node.pause"
    head, worker = c.head_id, c.worker.node_id
    layout = open_features(work / "local_dino").layout
    assert layout.num_samples > layout.shard_rows  # two units or more: one for each node
    proc = start_paused_cli("ingest", "dino", work / "local", *DINO_ARGS, "--ray-address", c.address,
                            "--workers", "2", "--out", out, pause_file=pause, after=1)
    try:
        _wait_for(lambda: _dino_nodes(out) >= {head, worker}, proc)
        assert len(list((out / "progress").glob("*.json"))) == 2 and not (out / "manifest.json").exists()
        dead = c.kill_worker()
        _resume_and_finish(proc, pause)
    finally:
        if proc.poll() is None:
            sigkill_group(proc)
        c.add_worker()
    _assert_tokens_equal(work / "local_dino", out)
    assert _dino_nodes(out) == {head, dead}  # the work ran on both nodes
    report = json.loads((out / "report.json").read_text())
    starts = sorted(s for v in report["ray_nodes"].values() for s in v)
    assert starts == list(range(0, layout.num_samples, layout.shard_rows))  # each shard once
    assert head in report["ray_nodes"] and set(report["ray_nodes"]) <= {head, dead}


def test_driver_killed_then_resumed_on_a_fresh_cluster(work, nodes):
    """SIGKILL of the `ingest yam` driver after two commits, then the same command on a new cluster: the
    committed episodes are kept (not read again) and the store equals the local one."""
    c = nodes["c"]
    out = work / "yam_kill_driver"
    args = ("ingest", "yam", work / "raw", *YAM_ARGS, "--workers", "2", "--commit-every", "1", "--out", out)
    proc = start_paused_cli(*args, "--ray-address", c.address, pause_file=work / "yam_kill_driver.pause", after=2)
    wait_paused(proc)  # after the 2nd committed episode
    assert sigkill_group(proc) == -signal.SIGKILL
    kept = _committed(out)
    assert kept == 2 and not (out / "manifest.json").exists()
    c.shutdown()
    nodes["c"] = c = TwoNodes()
    run_cli(*args, "--ray-address", c.address, check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["num_already_committed"] == kept and report["num_written"] == N_EPISODES - kept
    assert sorted(k for ks in report["ray_nodes"].values() for k in ks) == sorted(
        e["key"] for e in committed_episodes(out)[kept:])
    assert_stores_equal(str(work / "local"), str(out))
