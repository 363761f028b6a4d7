"""Ingest options declared once (issue 20, item 2): every `ingest` command's options and defaults come from
its config dataclasses (`commands/ingest.py` COMMANDS, `ingest/configs.py`), with no literal default in the
command module; the optional source hooks of the `Source` protocol applied by `run_ingest`; and
`run_ingest(..., out="s3://...")` from Python, against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import ast
import dataclasses
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
import typer
from conftest import fsspec_protocol
from typer.testing import CliRunner

from shardyard import open_store
from shardyard.commands.common import ingest_app
from shardyard.commands.ingest import COMMANDS
from shardyard.commands.options import field_hints
from shardyard.ingest.runner import IngestConfig, OfficialSplit, run_ingest
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.testing import SyntheticConfig, write_synthetic_yam

COMMAND_MODULE = Path(__file__).resolve().parents[1] / "shardyard" / "commands" / "ingest.py"


def _shown(value) -> str:
    """A default as `--help` prints it."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_config_field_is_an_option_with_its_dataclass_default(name):
    command = typer.main.get_command(ingest_app).commands[name]
    params = {p.name: p for p in command.params}
    helptext = CliRunner().invoke(ingest_app, [name, "--help"], env={"COLUMNS": "400"}).output
    for section in COMMANDS[name]:
        for f in dataclasses.fields(section.cls):
            if f.name in section.skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else ...
            if f.name not in params:  # a required field may be the positional argument, named for the help
                positional = [p for p in command.params if p.param_type_name == "argument" and p.required]
                assert default is ... and len(positional) == 1, f"ingest {name}: {f.name} is not an option"
                continue
            got = params[f.name].default
            if default is ... or default is None:
                assert got in (None, ...) or params[f.name].required, (name, f.name, got)
                continue
            if isinstance(default, bool):
                assert got is default, (name, f.name)
                continue
            # scaled options (seconds shown as ms) show the field times their factor; others the value itself
            shown = _shown(default)
            assert _shown(got) == shown or got == pytest.approx(default * 1000), (name, f.name, got, default)
            assert f"[default: {_shown(got)}]" in helptext, (name, f.name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_field_types_are_read_without_the_sources(name):
    """Every section's fields resolve to a type the command line converts (the classes live in
    `ingest/configs.py`, so the CLI does not import a source's readers to build its options)."""
    for section in COMMANDS[name]:
        assert section.cls.__module__ in ("shardyard.ingest.configs", "shardyard.models.backbone_config")
        assert field_hints(section.cls, section.skip)


def literal_defaults(text: str) -> list[str]:
    """Literal defaults (numbers and strings, not None/True/False) written in a command module: an option's
    first argument, or a parameter's default. Each is a default declared a second time."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("Option", "Argument"):
            first = node.args[0] if node.args else None
            flag = isinstance(first, ast.Constant) and str(first.value).startswith("-")  # a name, not a default
            if isinstance(first, ast.Constant) and isinstance(first.value, (int, float, str)) \
                    and not isinstance(first.value, bool) and not flag:
                found.append(f"line {node.lineno}: typer.{node.func.attr}({first.value!r}, ...)")
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                if isinstance(d, ast.Constant) and isinstance(d.value, (int, float, str)) \
                        and not isinstance(d.value, bool):
                    found.append(f"line {d.lineno}: parameter default {d.value!r}")
    return found


def test_the_ingest_commands_declare_no_default_of_their_own():
    assert literal_defaults(COMMAND_MODULE.read_text()) == []


def test_a_default_declared_again_in_the_command_module_is_found():
    """The check above fails on the hand-written form this module had (commit_every=32 repeated)."""
    dup = ('def ingest_yam(commit_every: int = typer.Option(32, help="Episodes committed together."),\n'
           '               video_backend: str = typer.Option("pyav"), workers=1) -> None: ...\n')
    assert len(literal_defaults(dup)) == 3


# -- the Source protocol's optional hooks, applied by run_ingest --------------------------------------------------
class Plain:
    """A source with only the required methods: every hook takes its default."""

    name = "plain"

    def schema(self) -> Schema:
        return Schema({"obs.rgb.top": FieldSpec("uint8", (8, 8, 3), kind="image"),
                       "action": FieldSpec("float32", (2,))})

    def keys(self) -> list[str]:
        return [f"ep{i}" for i in range(4)]

    def describe(self) -> dict:
        return {"name": self.name}

    def read(self, key: str) -> Episode:
        rng = np.random.default_rng(int(key[2:]))
        return Episode(key, {"obs.rgb.top": rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
                             "action": rng.normal(size=(3, 2)).astype(np.float32)}, meta={"fps": 10.0})


class WithHooks(Plain):
    """Its own split (ep1, ep3 held out) and a report note."""

    name = "hooks"

    def official_split(self) -> OfficialSplit:
        return OfficialSplit(val=frozenset({"ep1", "ep3"}), note="given by the source")

    def report_notes(self) -> list[str]:
        return ["a note", "a note"]


def test_a_source_without_hooks_gets_the_seeded_split_and_no_notes(tmp_path):
    run_ingest(Plain(), IngestConfig(out=tmp_path / "s", val_fraction=0.25))
    store = open_store(str(tmp_path / "s"))
    assert len(store.split["val"]) == 1 and "notes" not in store.report
    assert "split_source" not in store.manifest["extra"]


def test_the_source_split_and_notes_reach_the_store(tmp_path):
    run_ingest(WithHooks(), IngestConfig(out=tmp_path / "s", val_fraction=0.25))
    store = open_store(str(tmp_path / "s"))
    assert store.split == {"train": [0, 2], "val": [1, 3]} and store.stats["split"] == store.split
    assert store.manifest["extra"]["split_source"] == "given by the source"
    assert store.report["notes"] == ["a note"]


# -- run_ingest to an object store ------------------------------------------------------------------------------
BUCKET = "shardyard-ingest"


class S3Server:
    """moto's S3 app served on 127.0.0.1 (werkzeug, threaded), as in tests/test_object_store.py."""

    def __init__(self) -> None:
        from moto import server as moto_server
        from werkzeug.serving import make_server

        app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=moto_server.MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    server = S3Server()
    conf = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
    env = {"FSSPEC_S3_ENDPOINT_URL": server.endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}
    with fsspec_protocol("s3", conf, env):
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield server
    server.server.shutdown()


def test_run_ingest_writes_to_an_s3_url(s3, tmp_path):
    write_synthetic_yam(tmp_path / "raw", SyntheticConfig(num_episodes=2, steps=8, width=32, height=24))
    from shardyard.ingest.yam import YamConfig, YamSource

    url = f"s3://{BUCKET}/yam"
    result = run_ingest(YamSource(YamConfig(root=tmp_path / "raw")), IngestConfig(out=url, commit_every=1))
    assert result.exit_code == 0 and result.num_written == 2
    local = tmp_path / "local"
    run_ingest(YamSource(YamConfig(root=tmp_path / "raw")), IngestConfig(out=local, commit_every=1))
    remote, same = open_store(url), open_store(str(local))
    assert remote.episode_keys == same.episode_keys and remote.split == same.split
    a, b = remote.read(1), same.read(1)
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])
    again = run_ingest(YamSource(YamConfig(root=tmp_path / "raw")), IngestConfig(out=url))
    assert again.num_written == 0 and again.num_already_committed == 2      # a rerun finds them stored
