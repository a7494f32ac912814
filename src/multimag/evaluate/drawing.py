"""What every figure module shares: the column check of its input table and the
atomic PNG write.

Figures are built with :class:`matplotlib.figure.Figure`, never pyplot:
``savefig(format="png")`` renders with the Agg canvas whatever backend is
configured, so there is no global figure registry, no display and nothing left open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from multimag.atomic import atomic_path
from multimag.errors import PlotError

DPI = 120


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``PlotError`` naming ``what`` when ``df`` lacks one of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PlotError(f"{what}: the prediction table lacks columns {missing}",
                        fix="pass a table in the predictions schema (read_slide_predictions)")


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically, then free its contents."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    return path
