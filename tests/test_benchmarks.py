"""Every benchmark script runs (`--smoke`: tiny inputs, one trial) and prints well-formed figure lines, so no
benchmark breaks unseen between `make bench` runs (issue 12). The figures of a smoke run mean nothing; the
speed itself is measured only by `make bench`. The rows a reviewer reads are checked too (issue 26): no two
share a name, each label names its sizes (`harness.names_size`), and the table says what code measured them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from harness import names_size  # noqa: E402
from run_all import render_table, scripts, tree_stamp, write_table  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("script", [p.name for p in scripts()])
def test_benchmark_smoke_run_prints_figures(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=os.environ | {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in rows if "benchmark" in r]
    assert rows, f"{script} printed no figure"
    names = [r["benchmark"] for r in rows]
    # unique within the script; across scripts the `<script stem>.` prefix (asserted below) keeps them apart
    assert len(set(names)) == len(names), f"{script} prints a benchmark name twice: {sorted(names)}"
    for r in rows:
        assert names_size(r["label"]), f"{r['benchmark']}: the label names no size: {r['label']!r}"
        assert r["benchmark"].split(".", 1)[0] == Path(script).stem
        for key in ("value", "baseline_value", "ratio"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (r["benchmark"], key, r[key])
        assert r["unit"] and r["baseline"]


def test_benchmark_table_is_regenerated_from_a_results_file(tmp_path):
    readme = tmp_path / "benchmarks.md"
    readme.write_text("intro\n<!-- bench:begin -->\n| old | row |\n<!-- bench:end -->\noutro\n")
    results = {"date": "2026-12-01", "commit": "abc1234", "machine": "2 cores", "exit_codes": {"a.py": 0},
               "figures": [{"benchmark": "a.speed", "value": 1234.5, "unit": "frames/s", "baseline": "memmap",
                            "baseline_value": 2000.0, "ratio": 0.617, "label": "random frames", "goal": ">= 0.5"}]}
    write_table(results, readme)
    text = readme.read_text()
    assert "| old | row |" not in text
    assert "| `a.speed` | random frames | 1,234 frames/s | memmap: 2,000 | 0.617 | >= 0.5 |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert render_table(results) in text


def test_size_rule_wants_a_count_of_something():
    for label in ("`ingest yam`, 36 episodes, 2 cameras", "1,500 random frames of 2 episodes", "store of 10^4 episodes",
                  "16 clips of 16 frames", "2,048 samples x 2 epochs"):
        assert names_size(label), label
    for label in ("random single 480x640x3 frames, DataLoader 2 workers", "batch 32, 2 workers", "16-step windows",
                  "frames of the G1 set"):
        assert not names_size(label), label


def _results(**head) -> dict:
    row = {"benchmark": "a.speed", "value": 1.0, "unit": "frames/s", "baseline": "memmap", "baseline_value": 2.0,
           "ratio": 0.5, "label": "100 random frames", "goal": "", "commit": "abc1234", "dirty": False, "tree": "t1"}
    return {"date": "2026-12-01", "machine": "2 cores", "exit_codes": {}, "figures": [row], **head}


def test_table_says_whether_the_tree_was_dirty_and_marks_rows_of_other_code():
    clean = render_table(_results(commit="abc1234", dirty=False, changed=[], tree="t1"))
    assert "commit `abc1234`, clean working tree" in clean and "†" not in clean
    later = _results(commit="def5678", dirty=True, changed=[" M shardyard/video.py"], tree="t2")
    later["figures"].append(later["figures"][0] | {"benchmark": "a.other", "commit": "def5678", "dirty": True,
                                                   "tree": "t2"})
    text = render_table(later)
    assert "commit `def5678`, working tree dirty (1 changed paths, digest `t2`)" in text
    stale = [line for line in text.splitlines() if "†" in line and line.startswith("| `")]
    assert len(stale) == 1 and stale[0].startswith("| `a.speed` | 100 random frames † measured at `abc1234` |")


def test_table_refuses_two_rows_of_one_name_and_marks_single_runs():
    results = _results(tree="t1")
    results["figures"].append(results["figures"][0] | {"value": 3.0})
    with pytest.raises(ValueError, match="a.speed"):
        render_table(results)
    single = _results(tree="t1")
    single["figures"][0]["trials"] = 1
    assert "| 100 random frames (single run) |" in render_table(single)


def test_tree_stamp_tells_a_dirty_tree_from_a_clean_one(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    clean = tree_stamp(tmp_path)
    assert clean["dirty"] is False and clean["changed"] == [] and len(clean["commit"]) == 7
    (tmp_path / "a.py").write_text("x = 2\n")
    edited = tree_stamp(tmp_path)
    assert edited["dirty"] is True and edited["changed"] == [" M a.py"] and edited["tree"] != clean["tree"]
    (tmp_path / "b.py").write_text("y = 1\n")
    added = tree_stamp(tmp_path)
    assert "?? b.py" in added["changed"] and added["tree"] != edited["tree"]
    assert tree_stamp(tmp_path)["tree"] == added["tree"]  # the same code, the same digest
    assert tree_stamp(tmp_path / "a.py")["commit"] == "unknown"
