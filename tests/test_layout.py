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


# ---- layering and constants declared once (issue 20, "Declared once") -----------------------------------------
# (importer package, imported package): imports that run against the layers. `tools/` acts on finished stores and
# is driven by the CLI, so nothing below the CLI may reach up into it.
FORBIDDEN_IMPORTS = (
    ("shardyard.stores", "shardyard.tools"),
    ("shardyard.stores", "shardyard.commands"),
    ("shardyard.ingest", "shardyard.tools"),
)
# The only packages that may import `shardyard.tools`: the CLI groups, and the tools themselves.
TOOLS_IMPORTERS = ("shardyard.commands", "shardyard.tools")
# Module-level UPPER_CASE names that several modules assign on purpose, each with its reason.
SHARED_CONSTANT_NAMES: dict[str, str] = {
    "FORMAT": "each store format module names its own format (stores.FORMATS maps the names to readers)",
    "FORMAT_VERSION": "each store format module versions its own format",
    "NAME": "each frame codec module names its own codec (stores.frames maps the names to the codec classes)",
    "RESUME_IGNORES": "each flat trainer lists the config fields its own resume ignores",
    "SUMS": "each flat trainer lists the metrics its own log sums",
    "TABLE_COLUMNS": "each trainer's (or its metrics module's) printed table has its own columns",
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges of the import graph that run against the layers (`FORBIDDEN_IMPORTS`, `TOOLS_IMPORTERS`)."""
    bad = []
    for mod, deps in graph.items():
        for dep in sorted(deps):
            if any(within(mod, a) and within(dep, b) for a, b in FORBIDDEN_IMPORTS):
                bad.append(f"{mod} -> {dep}")
            elif within(dep, "shardyard.tools") and not any(within(mod, p) for p in TOOLS_IMPORTERS):
                bad.append(f"{mod} -> {dep} (only commands/ imports tools/)")
    return sorted(set(bad))


def test_layers_hold():
    mods = modules()
    graph = {m: imported_modules(p, set(mods)) for m, p in mods.items()}
    assert layer_violations(graph) == []


def test_layer_checker_finds_violations():
    graph = {"shardyard.stores.wds": {"shardyard.tools.verify"},
             "shardyard.stores.episodic": {"shardyard.commands.store"},
             "shardyard.ingest.dino": {"shardyard.tools.edit_features"},
             "shardyard.loaders.episodes": {"shardyard.tools.inspect.summary"},
             "shardyard.commands.store": {"shardyard.tools.verify", "shardyard.stores.wds"},
             "shardyard.tools.verify": {"shardyard.tools.edit_copy", "shardyard.stores.wds"},
             "shardyard.toolsmith": {"shardyard.stores.wds"}}
    assert layer_violations(graph) == [
        "shardyard.ingest.dino -> shardyard.tools.edit_features",
        "shardyard.loaders.episodes -> shardyard.tools.inspect.summary (only commands/ imports tools/)",
        "shardyard.stores.episodic -> shardyard.commands.store",
        "shardyard.stores.wds -> shardyard.tools.verify",
    ]


def module_constants(source: str) -> set[str]:
    """Public UPPER_CASE names a module assigns at its top level (plain or annotated assignments)."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if (
            isinstance(node, ast.AnnAssign) and node.value is not None) else []
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id.isupper() and not n.id.startswith("_"):
                    names.add(n.id)
    return names


def duplicate_constants(sources: dict[str, str]) -> dict[str, list[str]]:
    """Constant name -> the modules that each assign it, for names assigned in more than one module and not in
    `SHARED_CONSTANT_NAMES` (a constant is declared once and imported everywhere else)."""
    where: dict[str, list[str]] = {}
    for mod, text in sorted(sources.items()):
        for name in module_constants(text):
            where.setdefault(name, []).append(mod)
    return {k: v for k, v in sorted(where.items()) if len(v) > 1 and k not in SHARED_CONSTANT_NAMES}


def test_each_constant_declared_once():
    assert duplicate_constants({m: p.read_text() for m, p in modules().items()}) == {}


def test_duplicate_constant_checker_finds_copies():
    sources = {"a": "FRAME_KINDS = ('image', 'depth')\nFORMAT = 'x'\n_PRIVATE = 1\nN: int = 3\n",
               "b": "from a import FRAME_KINDS\nFORMAT = 'y'\n_PRIVATE = 2\n",
               "c": "FRAME_KINDS = ('image', 'depth')\nX, N = 1, 2\n\ndef f():\n    FRAME_KINDS = ()\n"}
    assert duplicate_constants(sources) == {"FRAME_KINDS": ["a", "c"], "N": ["a", "c"]}
    assert SHARED_CONSTANT_NAMES and all(reason for reason in SHARED_CONSTANT_NAMES.values())


def format_name_literals(sources: dict[str, str], names: set[str], allowed: set[str]) -> list[str]:
    """`module:line` of every string constant (docstrings aside) equal to a store format name outside the
    `allowed` modules: the format names are declared once (`stores.FORMATS` and each format's `FORMAT`)."""
    found = []
    for mod, text in sorted(sources.items()):
        if mod in allowed:
            continue
        tree = ast.parse(text)
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and ast.get_docstring(n, clean=False) is not None}
        found += [f"{mod}:{n.lineno}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in names and id(n) not in docs]
    return found


def test_store_formats_declared_once():
    import importlib

    from shardyard.stores import FORMATS

    homes = {"shardyard.stores"}
    for name, fmt in FORMATS.items():
        module = fmt.reader.partition(":")[0]
        assert importlib.import_module(module).FORMAT == name
        assert fmt.reader_class().__name__ == fmt.reader.partition(":")[2]
        homes.add(module)
    sources = {m: p.read_text() for m, p in modules().items()}
    assert format_name_literals(sources, set(FORMATS), homes) == []
    # the checker itself: a comparison with a format name is found, its docstring mention is not
    bad = {"shardyard.tools.x": '"""Reads episodic-zarr3 stores."""\nif fmt == "episodic-zarr3":\n    pass\n'}
    assert format_name_literals(bad, set(FORMATS), homes) == ["shardyard.tools.x:2"]


def codec_dispatch(sources: dict[str, str], names: set[str]) -> list[str]:
    """`module:line` of each place in `sources` (module -> text) that maps a frame codec name in `names` to
    behaviour: a comparison or `in` test of a codec name against something named like `*codec*`
    (`codec.name == "jpeg"`; `spec.kind == "video"` compares a field kind, not a codec), a `startswith`/`endswith`
    test with a codec name (`token.startswith("video")`), a dict keyed by codec names assigned to a `*codec*`
    name, or a `*codec*` container subscripted with one (`FRAME_CODECS["png"]`)."""

    def named(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in names or \
            isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(named(e) for e in node.elts)

    def codecish(node: ast.AST) -> bool:
        return "codec" in ast.unparse(node).lower()

    found = []
    for mod, text in sorted(sources.items()):
        for n in sorted(ast.walk(ast.parse(text)), key=lambda n: getattr(n, "lineno", 0)):
            hit = False
            if isinstance(n, ast.Compare):
                sides = [n.left, *n.comparators]
                hit = any(named(s) for s in sides) and any(codecish(s) for s in sides if not named(s))
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                hit = n.func.attr in ("startswith", "endswith") and any(named(a) for a in n.args)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, ast.Dict):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                hit = any(named(k) for k in n.value.keys if k is not None) and any(codecish(t) for t in targets)
            elif isinstance(n, ast.Subscript):
                hit = named(n.slice) and codecish(n.value)
            if hit:
                found.append(f"{mod}:{n.lineno}")
    return found


def test_codec_registry_is_the_only_codec_dispatch():
    """Only `shardyard.stores.frames` maps a frame codec name to behaviour; everything else asks the registry
    (`stores.frames.registry`: `FRAME_CODECS`, `frame_codec`, `codec_of`) or the codec object itself. "none"
    is left out of the names: it is a word too common to tell apart."""
    from shardyard.stores.frames.registry import FRAME_CODECS

    names = set(FRAME_CODECS) - {"none"}
    sources = {m: p.read_text() for m, p in modules().items() if not m.startswith("shardyard.stores.frames")}
    assert codec_dispatch(sources, names) == []
    # the checker itself, on the shapes the registry replaced (issue 20) and on a field-kind test it must pass
    bad = {"shardyard.tools.x": 'if codec.name == "jpeg":\n    pass\nok = token.startswith("video")\n'
                                '_CODEC_TOKENS = {"blosc": "lz4", "zstd": "zstd"}\nc = FRAME_CODECS["png"]\n'
                                'if spec.kind == "video" or kind in ("image", "video"):\n    pass\n'}
    assert codec_dispatch(bad, names) == ["shardyard.tools.x:1", "shardyard.tools.x:3", "shardyard.tools.x:4",
                                          "shardyard.tools.x:5"]
