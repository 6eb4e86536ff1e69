"""What every report figure shares: the reference a report keeps of a figure, the style, colours,
saving, and the marks of the success threshold and of diverged trials.

Figures are built as `matplotlib.figure.Figure` objects (no pyplot: no global figure registry, no
GUI backend) and styled inside `seaborn.axes_style` contexts, so nothing leaks into the caller's
matplotlib settings. MSEs span decades, so their axes are logarithmic; a trial whose median is
+inf (half or more of its seeds diverged, or all) is drawn on a labelled "diverged" line above
the finite values rather than dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import fmt
from .load import StudyData
from .stats import best_first, order
from .tables import varying_keys

DPI = 110
# seaborn's colour-blind palette, reordered so that neighbours in a legend are never orange and vermillion.
PALETTE = [sns.color_palette("colorblind")[i] for i in (0, 1, 2, 4, 3, 5, 9, 6, 8, 7)]
NEUTRAL = "0.25"
SEQUENTIAL = "viridis"  # perceptually uniform and colour-blind safe
PER_TRIAL_MAX = 8  # studies this small (e.g. seed-replay) also get one fitted-curve panel per trial
MSE_AXIS = "median test MSE over seeds (dimensionless, log scale)"



@dataclass(frozen=True)
class FigureRef:
    """A written figure: its path relative to the report folder, title and caption."""

    file: str
    title: str
    caption: str


def style() -> Any:
    """seaborn's white-grid style, as a context (nothing leaks into matplotlib's global settings)."""
    return sns.axes_style("whitegrid")


def save(fig: Figure, out: Path, name: str) -> str:
    """Write `fig` as figures/<name>.png under `out`; its path relative to the report folder."""
    path = out / "figures" / f"{name}.png"
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot would pick
    fig.savefig(path, dpi=DPI)
    return f"figures/{name}.png"


def colours(values: Sequence[object]) -> dict[object, Any]:
    """One palette colour per value, in order."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


def with_ceiling(values: pd.Series, threshold: float) -> tuple[pd.Series, float]:
    """Values with +inf replaced by a ceiling a decade above the largest finite one (and the threshold)."""
    finite = values[np.isfinite(values)]
    top = max(float(finite.max()) if len(finite) else threshold, threshold)
    ceiling = 10 ** (math.ceil(math.log10(top)) + 1) if top > 0 else 1.0
    return values.where(np.isfinite(values), ceiling), ceiling


def mark_limits(ax: Any, threshold: float, ceiling: float | None, horizontal: bool = True) -> None:
    """The success threshold (dashed) and, when some medians are inf, the 'diverged' ceiling (dotted)."""
    line = ax.axhline if horizontal else ax.axvline
    line(threshold, color="0.35", ls="--", lw=1, label=f"success threshold {fmt.mse(threshold)}")
    if ceiling is not None:
        line(ceiling, color=NEUTRAL, ls=":", lw=1.4, label="diverged (median inf)")


def best_per_group(data: StudyData, key: str, frame: pd.DataFrame | None = None) -> list[tuple[object, pd.Series]]:
    """The best finished trial (of `frame`, default all) for each value of `key`; one group if it does not vary."""
    fin = (data.finished if frame is None else frame)
    fin = best_first(fin)
    if key in varying_keys(data):
        return [(v, fin[fin[key] == v].iloc[0]) for v in order(key, fin[key].tolist(), data.space)
                if (fin[key] == v).any()]
    return [(fin.iloc[0][key], fin.iloc[0])] if len(fin) else []


def finish(ax: Any, xlabel: str, ylabel: str, title: str, *, log_y: bool = True) -> None:
    """Axis labels, title, legend and (by default) a log y axis: how every line figure ends."""
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
