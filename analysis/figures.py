"""The report's figures, in report order: seaborn on matplotlib's Agg canvas, one PNG each,
colour-blind-safe (`plotting` holds what they share).

Figures are built as `matplotlib.figure.Figure` objects (no pyplot: no global figure registry, no
GUI backend) and styled inside `seaborn.axes_style` contexts, so nothing leaks into the caller's
matplotlib settings. MSEs span decades, so their axes are logarithmic; a trial whose median is
+inf (half or more of its seeds diverged, or all) is drawn on a labelled "diverged" line above
the finite values rather than dropped. Fitted curves are redrawn from the stored parameters with
`sweeps.model.predict_params`: nothing is retrained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .fit_figures import fits, learning_curves
from .importance import Importances
from .load import StudyData
from .plotting import PER_TRIAL_MAX, FigureRef
from .search_figures import by_optimizer, history, importances, mse_vs, success_heatmap
from .tables import Table

__all__ = ["FigureRef", "draw_all"]


def draw_all(data: StudyData, tables: dict[str, Table], result: Importances, out: Path) -> list[FigureRef]:
    """Every figure that applies to this study, in report order."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    makers: list[Callable[[Path], FigureRef | None]] = [
        # Without `sin` first: a sin unit fits the target trivially; the question is about the others.
        lambda o: fits(data, o, exclude="sin"),
        lambda o: fits(data, o),
        # A handful of fixed programs (the question's, replayed) each deserve their own panel.
        lambda o: fits(data, o, per_trial=True) if len(data.finished) <= PER_TRIAL_MAX else None,
        success_heatmap(data, tables.get("by_bias_activation")),
        mse_vs(data, "hidden", "bias", "mse_vs_hidden", "Test MSE against hidden size, per bias placement",
               "hidden units H (log scale)"),
        by_optimizer(data),
        mse_vs(data, "lr", "optimizer", "mse_vs_lr", "Test MSE against learning rate, per optimizer",
               "learning rate (log scale)"),
        history(data),
        importances(result),
        learning_curves(data),
    ]
    refs = []
    for make in makers:
        ref = make(out)
        if ref is not None:
            refs.append(ref)
    return refs
