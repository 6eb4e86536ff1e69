"""Figures of fitted functions: curves redrawn from stored parameters (the best trial per bias
placement, or every trial of a small study) and learning curves. Nothing is retrained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sweeps.study.record import Fit, read

from . import fmt
from .load import StudyData
from .plotting import FigureRef, best_per_group, colours, finish, save, style
from .stats import order
from .tables import varying_keys

_NO_FIT = Fit(hidden=0, activation="", shift=0.0, scale=1.0, params=[], median_seed=None, curve=[])


def fits(data: StudyData, out: Path, exclude: str | None = None, per_trial: bool = False) -> FigureRef | None:
    """Fitted curves over sin(x) and the training points: the best trial per bias placement.

    With `exclude`, trials of that activation are left out (the `sin` units that fit trivially);
    with `per_trial`, every finished trial gets its own panel (a handful of fixed programs).
    """
    from sweeps.engine import data as datasets

    from .curves import draw

    frame = None
    if exclude is not None:
        fin = data.finished
        if "activation" not in varying_keys(data) or not (fin["activation"] == exclude).any():
            return None
        frame = fin[fin["activation"] != exclude]
    if per_trial:
        groups = [(int(r["number"]), r) for _, r in data.finished.sort_values("number").iterrows()]
    else:
        groups = best_per_group(data, "bias", frame)
    fitted = {int(r["number"]): read(data.frozen[int(r["number"])]).fit for _, r in groups}
    groups = [(v, r) for v, r in groups if fitted[int(r["number"])] is not None and fitted[int(r["number"])].params]
    if not groups:
        return None
    cols = 2 if len(groups) > 1 else 1
    rows = math.ceil(len(groups) / cols)
    cmap = colours([v for v, _ in groups])
    training: dict[str, Any] = {}
    with style():
        fig = Figure(figsize=(5.2 * cols if cols > 1 else 8.0, 3.6 * rows + 0.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
        for ax, (key, row) in zip(axes, groups):
            name = str(row["data"])
            if name not in training:
                training[name] = datasets.make(name, data.data_seed)
            draw(ax, fitted[int(row["number"])], training[name], cmap[key])
            setting = f", {name}, {int(row['steps'])} steps" if per_trial else ""
            ax.set_title(f"bias={row['bias']}: {row['activation']}, H={int(row['hidden'])}, {row['optimizer']}, "
                         f"lr {fmt.lr(row['lr'])}{setting}\nmedian MSE {fmt.mse(row['value'])}, "
                         f"{int(row['n_success'])}/{int(row['n_seeds'])} seeds fit (#{int(row['number'])})", fontsize=9.5)
        for ax in axes[len(groups):]:
            ax.set_visible(False)
        axes[0].legend(loc="lower left", fontsize=8, framealpha=0.9)
        among = f" (activations other than {exclude})" if exclude else ""
        what = "Every trial" if per_trial else f"Best trial per bias placement{among}"
        fig.suptitle(f"{what}:\nfitted curves over sin(x), clipped to ±1.8")
        file = save(fig, out, "fits_per_trial" if per_trial else f"fits_without_{exclude}" if exclude else "fits")
    title = "Fitted curves of every trial" if per_trial else f"Fitted curves of the best trial per bias placement{among}"
    who = "one trial" if per_trial else "the best finished trial with that bias placement"
    caption = (f"Each panel: {who}, its median seed in bold and its other seeds faint, redrawn from the stored "
               f"parameters; dashed: sin(x); dots: the trial's training points.")
    if exclude:
        caption += f" A {exclude} unit can represent the target exactly, so these panels show the other activations."
    return FigureRef(file, title, caption)


def learning_curves(data: StudyData) -> Callable[[Path], FigureRef | None]:
    """Training MSE against steps of the best trial per bias placement (its median seed)."""
    def draw(out: Path) -> FigureRef | None:
        groups = best_per_group(data, "bias")
        curves = [(v, r, (read(data.frozen[int(r["number"])]).fit or _NO_FIT).curve) for v, r in groups]
        curves = [(v, r, c) for v, r, c in curves if c]
        if not curves:
            return None
        cmap = colours(order("bias", [v for v, _, _ in curves], data.space))
        with style():
            fig = Figure(figsize=(8.5, 4.8), layout="constrained")
            ax = fig.subplots()
            for bias, row, curve in curves:
                steps, mse = [p[0] for p in curve], [p[1] for p in curve]  # (step, train[, test]) points
                ax.plot(steps, mse, color=cmap[bias], lw=1.8, marker="o", ms=3,
                        label=f"bias={bias} (#{int(row['number'])}, {row['activation']}, {row['optimizer']})")
            ax.set_xscale("symlog", linthresh=1)
            finish(ax, "optimizer step (symlog scale)", "training MSE (dimensionless, log scale)",
                   "Learning curves of the best trial per bias placement (median seed)")
            file = save(fig, out, "learning_curves")
        return FigureRef(file, "Learning curves", "Training MSE of each best trial's median seed at log-spaced steps, "
                                                  "as recorded during training.")
    return draw
