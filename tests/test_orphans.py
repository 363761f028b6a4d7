"""No orphans (issue 25, item 7): a SIGKILLed `ingest` or `train` takes its reader and DataLoader workers
with it, and the spill files a killed job leaves are removed by `verify --repair` (and by the next run).

Each kill comes at a known point, never after a guessed delay: the ingest's two readers are each blocked on
a named pipe standing in for an episode's `metadata.json` (the test sees a reader waiting on each pipe: both
workers are past their start-up), and the training run has logged two steps (batches from both DataLoader
workers, so both ran their `worker_init_fn`)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
from conftest import run_cli
from vq_fixtures import TINY_MODEL, vq_data  # noqa: F401  (fixture)

# Starts a thread before the CLI runs: `run_ingest` then spawns its readers (it forks only a single thread).
WITH_A_THREAD = ("import runpy, sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
                 "sys.argv[0] = 'shardyard'; runpy.run_module('shardyard.cli', run_name='__main__')")


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})


def wait_for(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
    """Poll `ready()` until it holds; fail (with the job's output) if the job exits first or it never does."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"job exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def kill_and_find_survivors(proc: subprocess.Popen, within: float = 5.0) -> tuple[list[str], list[str]]:
    """SIGKILL `proc`; returns the command lines of its descendants (taken just before) still alive `within`
    seconds later, and of all of them. A zombie (dead, not yet reaped by its new parent) counts as gone."""
    children = psutil.Process(proc.pid).children(recursive=True)
    cmdlines = [" ".join(c.cmdline()) for c in children]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + within

    def alive() -> list[psutil.Process]:
        out = []
        for c in children:
            try:
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
            except psutil.NoSuchProcess:
                pass
        return out

    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = alive()
    for c in survivors:  # leave nothing behind for the next test
        c.kill()
    return [cmdlines[children.index(c)] for c in survivors], cmdlines


def reader_waiting(fifo: Path, held: list[int]) -> bool:
    """True once a process has `fifo` open for reading (then a writer end is held open in `held`, so the
    reader stays blocked on it rather than seeing the end of the file)."""
    try:
        held.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as e:
        if e.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    return True


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_killed_ingest_leaves_no_reader_and_repair_removes_its_spill(start_method, yam_raw, tmp_path):
    raw = yam_raw(3)
    keys = sorted(p.parent.relative_to(raw).as_posix() for p in raw.rglob("metadata.json"))
    fifos = []
    for key in keys[1:]:  # the first episode stays whole: the schema is taken from it
        (raw / key / "metadata.json").unlink()
        os.mkfifo(raw / key / "metadata.json")
        fifos.append(raw / key / "metadata.json")
    out, log = tmp_path / "store", tmp_path / "ingest.log"
    args = ["ingest", "yam", str(raw), "--out", str(out), "--workers", "2", "--camera", "top", "--image-size",
            "64x48", "--commit-every", "1", "--commit-seconds", "0"]
    head = [sys.executable, "-m", "shardyard.cli"] if start_method == "fork" else [sys.executable, "-c", WITH_A_THREAD]
    proc = start(head + args, log)
    held: list[int] = []
    try:
        waiting: set[Path] = set()

        def both_readers_blocked() -> bool:
            waiting.update(f for f in fifos if f not in waiting and reader_waiting(f, held))
            return len(waiting) == len(fifos)

        wait_for(proc, log, both_readers_blocked, "a reader worker waiting on each episode")
        survivors, cmdlines = kill_and_find_survivors(proc)
    finally:
        for fd in held:
            os.close(fd)
    spawned = sum("spawn_main" in c for c in cmdlines)
    assert spawned >= 2 if start_method == "spawn" else spawned == 0, cmdlines
    assert len(cmdlines) >= 2, cmdlines
    assert not survivors, survivors

    # the killed writer's spill folder: removed by `verify --repair`, which names what it removed
    (out / ".spill").mkdir(exist_ok=True)
    (out / ".spill" / "tmp1234.mp4").write_bytes(b"\0" * 10)
    (out / ".progress.json.abc.tmp").write_bytes(b"{")
    proc = run_cli("verify", out, "--repair")
    assert "removed .spill/" in proc.stdout and "removed .progress.json.abc.tmp" in proc.stdout, proc.stdout
    assert not (out / ".spill").exists() and not (out / ".progress.json.abc.tmp").exists()
    # a folder that holds no store is refused, and nothing in it is deleted
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".x.tmp").write_text("mine")
    refused = run_cli("verify", tmp_path / "other", "--repair")
    assert refused.returncode == 1 and "not a store" in refused.stderr and (tmp_path / "other" / ".x.tmp").exists()


def test_killed_training_leaves_no_dataloader_worker(vq_data, tmp_path):
    store, features = vq_data
    run, log = tmp_path / "run", tmp_path / "train.log"
    opts = sum((["--model-opt", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])
    proc = start([sys.executable, "-m", "shardyard.cli", "train", "volume-query", "--store", str(store), "--features",
                  str(features), "--out", str(run), "--steps", "1000000", "--window", "4", "--pred-size", "16",
                  "--batch-size", "8", "--log-every", "1", "--ckpt-every", "1000000", "--plot-every", "0",
                  "--eval-every", "0", "--device", "cpu", "--num-workers", "2", *opts], log)

    def two_steps_logged() -> bool:  # batch 0 came from worker 0, batch 1 from worker 1
        metrics = run / "metrics.jsonl"
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # whole lines only
        return sum(1 for line in lines if line.strip() and json.loads(line).get("step", 0) >= 1) >= 2

    wait_for(proc, log, two_steps_logged, "two training steps")
    survivors, cmdlines = kill_and_find_survivors(proc)
    assert len(cmdlines) >= 2, cmdlines
    assert not survivors, survivors
