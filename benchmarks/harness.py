"""Shared bits of the benchmark scripts: the JSON figure line (DESIGN.md, "Conventions")."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def figure(name: str, value: float, unit: str, baseline: str, baseline_value: float, **extra) -> dict:
    """Print one figure as a JSON line: `{"benchmark", "value", "unit", "baseline", "baseline_value", "ratio"}`."""
    row = {"benchmark": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
           "baseline_value": round(baseline_value, 3), "ratio": round(value / baseline_value, 3), **extra}
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
    return row


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YAM_EPISODES = SHARED / "yam" / "episodes"
YAM_MODEL = SHARED / "yam" / "model" / "station" / "yam_station_linear_4310_d405" / \
    "yam_station_linear_4310_d405_sim_scene.xml"
