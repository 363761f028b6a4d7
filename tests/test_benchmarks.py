"""Every benchmark script runs (`--smoke`: tiny inputs, one trial) and prints well-formed figure lines, so no
benchmark breaks unseen between `make bench` runs (issue 12). The figures of a smoke run mean nothing; the
speed itself is measured only by `make bench`."""

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

from run_all import render_table, scripts, write_table  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("script", [p.name for p in scripts()])
def test_benchmark_smoke_run_prints_figures(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=os.environ | {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in rows if "benchmark" in r]
    assert rows, f"{script} printed no figure"
    for r in rows:
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
