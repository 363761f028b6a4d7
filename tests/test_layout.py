"""Habits that keep the code base one house (issue 11): lint clean, no import cycle among the package's modules
(function-level imports included), public modules declare `__all__`, modules and functions stay small."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "shardyard"
MAX_MODULE_LINES = 420       # "about 400"
MAX_FUNCTION_LINES = 80      # in train/, ingest/ and stores/
# Functions kept longer, each with its reason (the closing note lists them too).
LONG_FUNCTIONS: dict[str, str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Package modules `path` imports anywhere in its body (top level or inside functions), resolved to the
    module itself (`from shardyard.stores import wds` is `shardyard.stores.wds`; `from shardyard.stores import
    open_store` is `shardyard.stores`)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif mod in known:
                    out.add(mod)
    out.discard(me)
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    mods = modules()
    graph = {m: imported_modules(p, set(mods)) for m, p in mods.items()}
    assert strongly_connected(graph) == []


def test_cycle_finder_finds_a_cycle():
    # the checker itself: a hand-made cycle and a chain
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_public_modules_declare_all():
    missing = []
    for name, path in modules().items():
        if any(part.startswith("_") for part in name.split(".")[1:]) or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        public = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
        has_all = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
                      for n in tree.body)
        if public and not has_all:
            missing.append(name)
    assert missing == []


def test_modules_stay_small():
    big = {name: len(p.read_text().splitlines()) for name, p in modules().items()}
    assert {k: v for k, v in big.items() if v > MAX_MODULE_LINES} == {}


def test_functions_stay_short_in_train_ingest_stores():
    long = {}
    for name, path in modules().items():
        if name.split(".")[1:2] not in (["train"], ["ingest"], ["stores"]):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                qual = f"{name}:{node.name}"
                if n > MAX_FUNCTION_LINES and qual not in LONG_FUNCTIONS:
                    long[qual] = n
    assert long == {}


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is a dev dependency (make test installs it)")
def test_ruff_is_clean():
    ruff = str(Path(sys.executable).parent / "ruff") if (Path(sys.executable).parent / "ruff").exists() else "ruff"
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
