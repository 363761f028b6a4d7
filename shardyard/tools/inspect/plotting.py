"""Figures for the `inspect` views, shared by `summary.py`, `depth.py` and `tokens.py` in `tools/inspect/`.

matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, so the plots work headless and
leave a notebook's inline backend alone. matplotlib is imported when a figure is made, so `summarize` and the
CLI's text-only paths never pay for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["colormap", "figure", "save"]

log = logging.getLogger(__name__)


def figure(**kw: Any):
    """A `matplotlib.figure.Figure` (keyword arguments as its constructor: `figsize` in inches, ...) on an Agg
    canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str):
    """The registered matplotlib colormap `name` (e.g. "viridis"); raises `KeyError` for an unknown one."""
    import matplotlib

    return matplotlib.colormaps[name]


def save(fig, path: Path, written: list[Path], dpi: int = 100) -> None:
    """Lay out `fig` (`tight_layout`, unless it has a layout engine of its own: constrained layout, which
    subfigures need), write it to `path` as PNG at `dpi` and append `path` to `written`."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    written.append(path)
    log.info("wrote %s", path)
