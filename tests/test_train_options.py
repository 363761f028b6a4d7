"""CLI options derived from config dataclasses (`commands/options.py`): types, defaults in `--help`,
`KEY=VALUE` overrides converted by the target field's type, and clear errors; and the runtime pieces every
trainer shares (`train/runtime.py`): autocast dtype on CPU, device placement, batch order."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import run_cli
from typer.testing import CliRunner

from shardyard.commands.options import config_command, convert, key_values
from shardyard.errors import ConfigError
from shardyard.models.volume_query import VolumeQueryConfig
from shardyard.train.loop import BatchOrder, format_table
from shardyard.train.runtime import setup_runtime


@dataclass
class Inner:
    """A nested config."""

    rate: float = 0.5
    on: bool = False


@dataclass
class Demo:
    """A config with one field of each supported kind."""

    out: Path
    lr: float = 1e-3
    steps: int = 10
    name: str | None = None
    flag: bool = True
    sizes: tuple[int, ...] = (1, 2)
    hw: tuple[int, int] = (224, 224)
    inner: Inner = field(default_factory=Inner)
    over: dict = field(default_factory=dict, metadata={"options_of": Inner})


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()
    config_command(app, "go", Demo, lambda cfg, tag=None: seen.append((cfg, tag)), help="Demo command.",
                   option_help={"lr": "Learning rate."}, extra={"tag": (str | None, typer.Option(None))})

    @app.command("other")
    def other() -> None:
        """A second command, so that `go` stays a sub-command."""

    return app


def test_options_parse_by_field_type_and_keep_defaults(tmp_path):
    seen: list = []
    app = _app(seen)
    res = CliRunner().invoke(app, ["go", "-o", str(tmp_path), "--lr", "1e-4", "--no-flag", "--sizes", "3,4,5",
                                   "--hw", "640x480", "--inner", "on=true", "--inner", "rate=2e-3",
                                   "--over", "rate=1e-2", "--tag", "x"])
    assert res.exit_code == 0, res.output
    cfg, tag = seen[0]
    assert cfg == Demo(out=tmp_path, lr=1e-4, flag=False, sizes=(3, 4, 5), hw=(640, 480),
                       inner=Inner(rate=2e-3, on=True), over={"rate": 1e-2}) and tag == "x"
    CliRunner().invoke(app, ["go", "--out", str(tmp_path), "--hw", "96"])
    assert seen[1][0] == Demo(out=tmp_path, hw=(96, 96))                    # everything else: the defaults
    helptext = CliRunner().invoke(app, ["go", "--help"], env={"COLUMNS": "200"}).output
    for shown in ("0.001", "Learning rate.", "--no-flag", "1,2", "224,224", "fields of Inner"):
        assert shown in helptext, shown


def test_bad_values_are_usage_errors_naming_the_field(tmp_path):
    app = _app([])
    res = CliRunner().invoke(app, ["go", "-o", str(tmp_path), "--over", "nope=1"])
    assert res.exit_code == 2 and "no field 'nope'" in res.output and "rate" in res.output
    res = CliRunner().invoke(app, ["go", "-o", str(tmp_path), "--inner", "on=maybe"])
    assert res.exit_code == 2 and "on" in res.output and "boolean" in res.output
    res = CliRunner().invoke(app, ["go", "-o", str(tmp_path), "--hw", "1,2,3"])
    assert res.exit_code == 2 and "--hw" in res.output


def test_model_opt_converts_by_the_model_config_field_type():
    got = key_values(["grip_weight=1e-4", "d_feat=8", "grid=14,14"], VolumeQueryConfig, "--model-opt")
    assert got == {"grip_weight": 1e-4, "d_feat": 8, "grid": (14, 14)}
    assert isinstance(got["grip_weight"], float) and isinstance(got["d_feat"], int)
    with pytest.raises(typer.BadParameter, match="d_feat"):
        key_values(["d_feat=1.5"], VolumeQueryConfig, "--model-opt")
    assert convert("none", int | None, "x") is None and convert("TRUE", bool, "x") is True


def test_train_cli_help_shows_the_dataclass_defaults():
    proc = run_cli("train", "volume-query", "--help", check=True)
    assert "5e-05" in proc.stdout and "--model-opt" in proc.stdout and "--no-resume" in proc.stdout
    proc = run_cli("train", "volume-query", "--store", "s", "--out", "o", "--model-opt", "d_feet=8")
    assert proc.returncode == 2 and "no field 'd_feet'" in proc.stderr


def test_bf16_autocast_runs_on_cpu():
    rt = setup_runtime("cpu", "bf16")
    layer = torch.nn.Linear(8, 4)
    with rt.autocast():
        y = layer(torch.randn(3, 8))
    assert y.dtype == torch.bfloat16
    assert setup_runtime("cpu", "auto").amp_dtype is None and setup_runtime("cpu", "off").amp_dtype is None
    with pytest.raises(ConfigError, match="amp"):
        setup_runtime("cpu", "int8")


def test_to_device_makes_tensors_and_passes_the_rest():
    rt = setup_runtime("cpu")
    batch = rt.to_device({"x": np.arange(6, dtype=np.int64).reshape(2, 3), "t": torch.ones(2), "name": ["a"]})
    assert isinstance(batch["x"], torch.Tensor) and batch["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batch["t"].device.type == "cpu" and batch["name"] == ["a"]


def test_batch_order_splits_ranks_and_reports_its_state():
    a, b = BatchOrder(20, 4, seed=1, rank=0, world_size=2), BatchOrder(20, 4, seed=1, rank=1, world_size=2)
    assert a.per_epoch == 2
    epoch0 = np.concatenate([a.indices(0), a.indices(1), b.indices(0), b.indices(1)])
    assert len(set(epoch0.tolist())) == 16                                  # ranks are disjoint in an epoch
    assert a.state(3) == {"seed": 1, "epoch": 1, "offset": 4, "num_samples": 20, "world_size": 2, "rank": 0,
                          "batch_size": 4}
    assert len(BatchOrder(3, 4).indices(0)) == 4                             # fewer samples than a batch


def test_format_table_marks_missing_values():
    text = format_table([{"step": 1, "loss": 0.123456}, {"step": 2}], ("step", "loss"))
    assert text.splitlines() == ["step    loss", "----  ------", "   1  0.1235", "   2       -"]


def test_cli_starts_without_importing_torch():
    # options are derived from torch-free config dataclasses; the trainers load when a command runs
    code = "import sys, shardyard.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "False"
