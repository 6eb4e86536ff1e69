"""The fit figure a trial's dashboard note shows: every seed's curve redrawn from stored parameters.

Drawn with the report's own panel (`analysis.curves.draw`), titled with the trial's configuration
and result, as a PNG (Agg canvas: no display, no pyplot state).
"""

from __future__ import annotations

import io

from optuna.trial import FrozenTrial

from analysis.curves import draw

from ..engine import data as datasets
from ..study.record import read
from .notes import config_line, num


def render_fit(trial: FrozenTrial, data_seed: int) -> bytes | None:
    """A PNG of every seed's fitted curve of `trial`, redrawn from its stored parameters.

    None when the trial stored no parameters to draw (all seeds diverged, or no `fit` record).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    record = read(trial)
    if record.fit is None or not any(p is not None for p in record.fit.params) or "data" not in record.config:
        return None
    fig = Figure(figsize=(8.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax, record.fit, datasets.make(record.config["data"], data_seed), "C0")
    n_div = sum(p is None for p in record.fit.params)
    n = len(record.seeds.test_mse)
    fits = f"{round((record.success_rate or 0.0) * n)}/{n} seeds fit" if n else "seeds fit: -"
    ax.set_title(f"trial {trial.number}: {config_line(record.config)}\nmedian test MSE {num(trial.value)}, {fits}"
                 + (f", {n_div} of {len(record.fit.params)} seeds diverged" if n_div else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.subplots_adjust(left=0.07, right=0.72, top=0.87, bottom=0.12)  # fixed: tight_layout draws twice
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
