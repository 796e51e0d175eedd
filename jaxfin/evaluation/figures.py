"""Report figures: matplotlib on the Agg canvas (no pyplot global state, no display), saved atomically."""

from __future__ import annotations

import os
from typing import Any

from jaxfin.io.files import atomic_write


def figure(**kwargs: Any) -> Any:
    """A matplotlib Figure attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str) -> None:
    """The figure as a PNG at `path`, written atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def save_in(fig: Any, out_dir: str, name: str) -> None:
    save(fig, os.path.join(out_dir, name))
