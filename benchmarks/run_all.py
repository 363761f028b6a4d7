"""`make bench`: run every benchmark script once, write their figures to one results file, and regenerate the
benchmark table of the manual (`docs/benchmarks.md`) from that file (so no row outlives the code that measured it).

    python benchmarks/run_all.py [--out bench_out/results.json] [--only read_episodic,ingest_yam] [--smoke]
    python benchmarks/run_all.py --render bench_out/results.json      # only rewrite the table in docs/benchmarks.md

Each script prints its figures as JSON lines on stdout (`harness.figure`); anything else it prints is kept in
`bench_out/<script>.log`. The results file holds the run's date, machine, the code it ran (`tree_stamp`: commit,
whether the working tree was dirty per `git status --porcelain`, and a digest of the uncommitted changes) and
every figure, each row with the stamp of the code it was measured at (taken as its script starts). A row whose
stamp differs from the run's final one (the code changed during the run, or the row was kept by `--merge` from
an earlier run) is marked in the table with the commit it was measured at. The table sits between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers of `docs/benchmarks.md`; it is replaced whole. Only a
run without `--only` or `--smoke` rewrites it (a table from one complete run, as the guide asks); two rows may
not share a benchmark name.

    python benchmarks/run_all.py --only stream_clips --merge   # rerun one script, keep the other rows
                                                              # (in script order; --render redraws the table)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=True).stdout


def tree_stamp(root: Path = ROOT) -> dict:
    """The code in `root`'s working tree: `commit` (short HEAD), `dirty` (whether `git status --porcelain`
    lists anything), `changed` (its lines), and `tree`: a digest of HEAD, `git diff HEAD` and the bytes of the
    untracked files git does not ignore, so two stamps with the same `tree` ran the same code. Outside a git
    checkout: commit "unknown", dirty and tree None."""
    try:
        head = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=all").splitlines()
        digest = hashlib.sha256(head.encode())
        digest.update(_git(root, "diff", "HEAD", "--binary").encode())
        for name in sorted(_git(root, "ls-files", "--others", "--exclude-standard", "-z").split("\0")):
            if name and (root / name).is_file():
                digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None, "changed": [], "tree": None}
    return {"commit": head[:7], "dirty": bool(status), "changed": status, "tree": digest.hexdigest()[:12]}


def run_script(path: Path, smoke: bool, log_dir: Path, timeout: float) -> tuple[list[dict], int, float]:
    """Run one script; returns its figure rows (each with the `tree_stamp` of the code it ran: `commit`,
    `dirty`, `tree`), its exit status and its wall time in seconds."""
    stamp = tree_stamp()
    measured_at = {"commit": stamp["commit"], "dirty": stamp["dirty"], "tree": stamp["tree"]}
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
                rows.append(row | {"script": path.name} | measured_at)
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


def _code(stamp: dict) -> str:
    dirty = stamp.get("dirty")
    state = "" if dirty is None else ", clean working tree" if not dirty else \
        f", working tree dirty ({len(stamp.get('changed') or [])} changed paths, digest `{stamp.get('tree')}`)"
    return f"commit `{stamp.get('commit', 'unknown')}`{state}"


def render_table(results: dict) -> str:
    """The benchmark table (markdown) of a results file's figures, one row per figure, in script order.

    A row measured at other code than the run's final stamp (`tree`) is marked † with its commit; a row with
    `trials: 1` is marked as a single run. Raises `ValueError` when two rows share a benchmark name."""
    names = [r["benchmark"] for r in results["figures"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"benchmark names measured twice in one results file: {twice}")
    lines = [f"Figures of one `make bench` run ({results['date']}, {_code(results)}, {results['machine']}); each a "
             "median of alternated trials (unless marked a single run) against a baseline measured in the same run "
             "(method: `benchmarks/harness.py`).", "",
             "| benchmark | figure | value | baseline (same run) | ratio | goal |",
             "| --- | --- | --- | --- | --- | --- |"]
    stale = 0
    for r in results["figures"]:
        label = r.get("label") or r["benchmark"].split(".", 1)[-1]
        if r.get("trials") == 1 and "single run" not in label:
            label += " (single run)"
        if r.get("tree") and results.get("tree") and r["tree"] != results["tree"]:
            label += f" † measured at `{r.get('commit', 'unknown')}`" + (f" + uncommitted changes `{r['tree']}`"
                                                                         if r.get("dirty") else "")
            stale += 1
        lines.append(f"| `{r['benchmark']}` | {label} | {_fmt(r['value'])} {r['unit']} | {r['baseline']}: "
                     f"{_fmt(r['baseline_value'])} | {_fmt(r['ratio'])} | {r.get('goal') or ''} |")
    if stale:
        lines += ["", f"† {stale} row(s) measured at other code than the rest (before later changes): their "
                  "figures may not hold for the code named above."]
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or only render a results file); returns 1 when a script failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "results.json")
    ap.add_argument("--only", default="", help="comma-separated script stems")
    ap.add_argument("--smoke", action="store_true", help="tiny inputs (checks only; the table is left alone)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    ap.add_argument("--render", type=Path, default=None,
                    help="only rewrite the table in docs/benchmarks.md from this file")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the scripts not run now from the existing --out file (marked when stale)")
    args = ap.parse_args(argv)
    if args.render is not None:
        write_table(json.loads(args.render.read_text()))
        return 0
    only = {s for s in args.only.split(",") if s}
    chosen = [p for p in scripts() if not only or p.stem in only]
    results = {"date": dt.date.today().isoformat(), **tree_stamp(),
               "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
               "smoke": args.smoke, "figures": [], "exit_codes": {}, "seconds": {}}
    if args.merge and args.out.exists():
        kept = json.loads(args.out.read_text())
        rerun = {p.name for p in chosen}
        results["figures"] = [r for r in kept["figures"] if r.get("script") not in rerun]
        for key in ("exit_codes", "seconds"):
            results[key] = {k: v for k, v in kept.get(key, {}).items() if k not in rerun}
    for path in chosen:
        rows, code, seconds = run_script(path, args.smoke, args.out.parent / "logs", args.timeout)
        results["figures"] += rows
        results["exit_codes"][path.name] = code
        results["seconds"][path.name] = round(seconds, 1)
        print(f"{path.name}: {len(rows)} figure(s), exit {code}, {seconds:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # after each script: a stopped run keeps what it has
    results |= tree_stamp()  # the code at the end: rows measured before a change made during the run differ
    order = {p.name: i for i, p in enumerate(scripts())}  # merged rows back in script order (a stable sort)
    results["figures"].sort(key=lambda r: order.get(r.get("script", ""), len(order)))
    args.out.write_text(json.dumps(results, indent=2))
    if not only and not args.smoke:
        write_table(results)
    return 1 if any(results["exit_codes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
