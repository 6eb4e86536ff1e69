"""Fitted curves redrawn from a trial's stored parameters: the one drawing that the report's figures
and the dashboard's fit figures share.

Nothing is retrained: `sweeps.engine.model.predict_params` evaluates each seed's stored parameters
(`sweeps.study.record.Fit`) on a fine grid over [0, 10]. A panel shows the training points, every
seed faint, the median seed bold, and sin(x) dashed on top (visible even where a fit covers it).
"""

from __future__ import annotations

from typing import Any

import torch

from sweeps.engine import data as datasets
from sweeps.engine.model import predict_params
from sweeps.study.record import Fit

Y_LIMIT = 1.8  # fitted curves are clipped to ±Y_LIMIT: a diverging fit must not flatten the panel
GRID = torch.linspace(datasets.X_LOW, datasets.X_HIGH, 1001, dtype=torch.float64)


def seed_curve(fit: Fit, index: int, x: torch.Tensor = GRID) -> torch.Tensor | None:
    """Seed `index`'s fitted curve at raw inputs x, or None if that seed diverged."""
    params = fit.params[index] if index < len(fit.params) else None
    if params is None:
        return None
    return predict_params(params, fit.hidden, fit.activation, x, fit.shift, fit.scale)


def draw(ax: Any, fit: Fit, training: datasets.Dataset, colour: Any, *, target: bool = True) -> None:
    """Draw a trial's fit on a matplotlib Axes: training points, seeds faint, median bold, sin(x)."""
    x = GRID.numpy()
    ax.scatter(training.x, training.y, s=10, color="0.45", zorder=3, label="training points")
    for i in range(len(fit.params)):
        y = seed_curve(fit, i)
        if y is not None and i != fit.median_seed:
            ax.plot(x, y.clamp(-2 * Y_LIMIT, 2 * Y_LIMIT), color=colour, lw=0.8, alpha=0.3)
    if fit.median_seed is not None:
        y = seed_curve(fit, fit.median_seed)
        if y is not None:
            ax.plot(x, y.clamp(-2 * Y_LIMIT, 2 * Y_LIMIT), color=colour, lw=2.2, label="median seed (others faint)")
    if target:
        ax.plot(x, torch.sin(GRID), color="black", ls="--", lw=1.1, zorder=4, label="sin(x)")
    ax.set_ylim(-Y_LIMIT, Y_LIMIT)
    ax.set_xlim(datasets.X_LOW, datasets.X_HIGH)
    ax.set_xlabel("x (radians)")
    ax.set_ylabel("y (dimensionless)")
