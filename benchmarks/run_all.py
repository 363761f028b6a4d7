"""`make bench`: run every benchmark script once, write their figures to one results file, and regenerate the
benchmark table of the manual (`docs/benchmarks.md`) from that file (so no row outlives the code that measured it).

    python benchmarks/run_all.py [--out bench_out/results.json] [--only read_episodic,ingest_yam] [--smoke]
    python benchmarks/run_all.py --render bench_out/results.json      # only rewrite the table in docs/benchmarks.md

Each script prints its figures as JSON lines on stdout (`harness.figure`); anything else it prints is kept in
`bench_out/<script>.log`. The results file holds the run's date, commit, machine and every figure. The table
sits between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers of `docs/benchmarks.md`; it is replaced
whole. Only a run without `--only` or `--smoke` rewrites it (a table from one complete run, as the guide asks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NOT_BENCHMARKS = {"harness", "run_all"}


def scripts() -> list[Path]:
    """Every benchmark script under `benchmarks/` (the shared harness and this driver excluded), sorted."""
    return sorted(p for p in HERE.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def run_script(path: Path, smoke: bool, log_dir: Path, timeout: float) -> tuple[list[dict], int, float]:
    """Run one script; returns its figure rows, its exit status and its wall time in seconds."""
    cmd = [sys.executable, str(path)] + (["--smoke"] if smoke else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=os.environ | {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, err, code = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            f"timed out after {timeout} s", 124
    seconds = time.perf_counter() - t0
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{path.stem}.log").write_text(out + "\n--- stderr ---\n" + err)
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "benchmark" in row:
                rows.append(row | {"script": path.name})
    return rows, code, seconds


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def render_table(results: dict) -> str:
    """The benchmark table (markdown) of a results file's figures, one row per figure, in script order."""
    lines = [f"Figures of one `make bench` run ({results['date']}, commit `{results['commit']}`, "
             f"{results['machine']}); each a median of alternated trials against a baseline measured in the "
             "same run (method: `benchmarks/harness.py`).", "",
             "| benchmark | figure | value | baseline (same run) | ratio | goal |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results["figures"]:
        label = r.get("label") or r["benchmark"].split(".", 1)[-1]
        lines.append(f"| `{r['benchmark']}` | {label} | {_fmt(r['value'])} {r['unit']} | {r['baseline']}: "
                     f"{_fmt(r['baseline_value'])} | {_fmt(r['ratio'])} | {r.get('goal') or ''} |")
    failed = [s for s, code in results.get("exit_codes", {}).items() if code != 0]
    if failed:
        lines += ["", "Scripts that failed in this run (no figures): " + ", ".join(f"`{s}`" for s in failed)]
    return "\n".join(lines)


def write_table(results: dict, page: Path = TABLE_PAGE) -> None:
    """Replace the text between the bench markers of `page` (the manual's benchmarks page) with the table of
    `results`. Raises `ValueError` when the markers are missing."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{page} lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{render_table(results)}\n{END}{tail}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or only render a results file); returns 1 when a script failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "results.json")
    ap.add_argument("--only", default="", help="comma-separated script stems")
    ap.add_argument("--smoke", action="store_true", help="tiny inputs (checks only; the table is left alone)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the table in docs/benchmarks.md from this file")
    args = ap.parse_args(argv)
    if args.render is not None:
        write_table(json.loads(args.render.read_text()))
        return 0
    only = {s for s in args.only.split(",") if s}
    chosen = [p for p in scripts() if not only or p.stem in only]
    results = {"date": dt.date.today().isoformat(), "commit": _commit(),
               "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
               "smoke": args.smoke, "figures": [], "exit_codes": {}, "seconds": {}}
    for path in chosen:
        rows, code, seconds = run_script(path, args.smoke, args.out.parent / "logs", args.timeout)
        results["figures"] += rows
        results["exit_codes"][path.name] = code
        results["seconds"][path.name] = round(seconds, 1)
        print(f"{path.name}: {len(rows)} figure(s), exit {code}, {seconds:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # after each script: a stopped run keeps what it has
    if not only and not args.smoke:
        write_table(results)
    return 1 if any(results["exit_codes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
