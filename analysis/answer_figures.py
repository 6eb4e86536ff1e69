"""The figures behind the answer: each drawn from confirmed cells (or ablation rows) only.

- `b1_kinks`: the hidden units of a fitted net without b1 and of one with it, drawn one by one:
  without b1 every kink or centre sits at x = 0; with it the centres -b1/w1 spread over [0, 10].
- `success_vs_budget`: at four units with both biases, the share of seeds that have fit against
  gradient (or Jacobian) evaluations and against seconds, per optimizer (cells as units).
- `success_bias_activation`, `success_hidden_optimizer`: success over bias x activation and over
  hidden size x optimizer (both biases), each tile the mean of its cells at their tuned learning rate.
- `success_all_cells`: every cell, one tile each.
- `ablation_ladder`, `ablation_fits`: one row per ablation change, its success (Wilson interval)
  and median MSE; and each row's fitted curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from sweeps.config import ACTIVATIONS, BIASES, OPTIMIZERS
from sweeps.engine import data as datasets
from sweeps.engine.model import ACTIVATIONS as ACTIVATION_FNS
from sweeps.study.record import read

from . import fmt
from .cells import Cells, comparison, grid_axes
from .curves import draw
from .load import StudyData
from .plotting import PALETTE, SEQUENTIAL, FigureRef, colours, save, style

Maker = Callable[[Path], "FigureRef | None"]
FOUR = 4


def _fit_of(data: StudyData, trial: int):
    return read(data.frozen[int(trial)]).fit


def b1_kinks(data: StudyData, cells: Cells) -> Maker:
    """Unit by unit: a fitted net without b1 (kinks/centres at 0) beside one with b1."""
    def draw_it(out: Path) -> FigureRef | None:
        comp = comparison(cells.frame)
        # The best cell with both biases at four units, and the same cell without b1 (bias = output).
        four = comp[(comp["hidden"] == FOUR) & (comp["bias"] == "both")]
        if four.empty:
            return None
        best = four.sort_values(["fits", "median_mse"], ascending=[False, True]).iloc[0]
        same = comp[(comp["hidden"] == FOUR) & comp["bias"].isin(("output", "none"))
                    & (comp["activation"] == best["activation"]) & (comp["optimizer"] == best["optimizer"])]
        if same.empty:
            return None
        pick = [same.sort_values("bias", key=lambda b: b != "output").iloc[0], best]  # b2 kept where it can be
        x = torch.linspace(-2.0, 10.0, 601, dtype=torch.float64)
        with style():
            fig = Figure(figsize=(11.0, 4.2), layout="constrained")
            axes = fig.subplots(1, 2, sharey=True)
            for ax, row, title in zip(axes, pick, ("without b1", "with b1")):
                fit = _fit_of(data, row["trial"])
                if fit is None or fit.median_seed is None or fit.params[fit.median_seed] is None:
                    ax.set_visible(False)
                    continue
                p = torch.tensor(fit.params[fit.median_seed], dtype=torch.float64)
                h = fit.hidden
                w1, b1, w2, b2 = p[:h], p[h:2 * h], p[2 * h:3 * h], p[3 * h]
                act = ACTIVATION_FNS[fit.activation][0]
                xs = (x - fit.shift) / fit.scale
                total = torch.zeros_like(x) + b2
                for u in range(h):
                    unit = w2[u] * act(w1[u] * xs + b1[u])
                    total = total + unit
                    ax.plot(x, unit, color=PALETTE[u % len(PALETTE)], lw=1.2, label=f"unit {u + 1}")
                    if float(w1[u]) != 0.0:
                        centre = fit.shift - fit.scale * float(b1[u]) / float(w1[u])
                        if -2.0 <= centre <= 10.0:
                            ax.plot([centre], [0.0], "o", color=PALETTE[u % len(PALETTE)], ms=6)
                ax.plot(x, total, color="black", lw=2.0, label="network output")
                ax.plot(x, torch.sin(x), color="black", ls="--", lw=1.0, label="sin(x)")
                ax.axvline(0.0, color="0.5", lw=0.8)
                ax.axvspan(0.0, 10.0, color="0.93", zorder=0)
                ax.set_ylim(-3, 3)
                ax.set_title(f"{title}: {row['activation']}, H={FOUR}, {row['optimizer']}, bias={row['bias']}\n"
                             f"{int(row['fits'])}/{int(row['seeds'])} seeds fit (median seed drawn)", fontsize=9.5)
                ax.set_xlabel("x (shaded: the data's range [0, 10])")
            axes[0].set_ylabel("each unit's contribution w2·act(w1·x + b1)")
            axes[0].legend(fontsize=7, loc="lower left")
            file = save(fig, out, "b1_kinks")
        return FigureRef(file, "Why b1: where each unit bends",
                         "Each hidden unit's contribution of a fitted network (its median seed), the dots at each unit's "
                         "kink or centre x = -b1/w1. Without b1 every centre is at x = 0, at the edge of the data: the units "
                         "cannot bend inside [0, 10]; with b1 they spread over it.")
    return draw_it


def success_vs_budget(cells: Cells) -> Maker:
    """Share of seeds fit against evaluations and seconds, per optimizer, four units, both biases."""
    def draw_it(out: Path) -> FigureRef | None:
        comp = comparison(cells.frame)
        four = comp[(comp["hidden"] == FOUR) & (comp["bias"] == "both")]
        points = [s for s in cells.checkpoints if s > 0 and f"fit_by_{s}" in four]
        if four.empty or not points:
            return None
        opts = [o for o in OPTIMIZERS if (four["optimizer"] == o).any()]
        cmap = colours(opts)
        with style():
            fig = Figure(figsize=(11.5, 4.4), layout="constrained")
            ax_e, ax_s = fig.subplots(1, 2, sharey=True)
            for opt in opts:
                grp = four[four["optimizer"] == opt]
                rate = [float((grp[f"fit_by_{s}"] / grp["seeds"]).mean()) for s in points]
                per_step = float((grp["median_evals"] / grp["median_steps"].clip(lower=1)).median())
                per_eval = float((grp["seconds_per_fit"] / grp["median_evals"].clip(lower=1)).median())
                evals = [s * per_step for s in points]
                ax_e.plot(evals, rate, marker="o", ms=3, color=cmap[opt], label=opt)
                ax_s.plot([e * per_eval for e in evals], rate, marker="o", ms=3, color=cmap[opt], label=opt)
            for ax, label in ((ax_e, "gradient evaluations (LM: Jacobian evaluations), log scale"),
                              (ax_s, "seconds per fit on this machine, log scale")):
                ax.set_xscale("log")
                ax.set_xlabel(label)
            ax_e.axvline(1000, color="0.6", ls=":", lw=1)
            ax_e.set_ylabel("share of seeds fit so far (mean over activations)")
            ax_e.set_ylim(-0.02, 1.02)
            ax_e.legend(fontsize=8, loc="upper left")
            fig.suptitle(f"Four hidden units, both biases: which optimizers fit, and within which budget "
                         f"({four['activation'].nunique()} activations' cells, confirmation seeds)", fontsize=10.5)
            file = save(fig, out, "success_vs_budget")
        return FigureRef(file, "Success against budget at four units",
                         "For each optimizer (both biases, four units), the share of confirmation seeds whose test MSE was "
                         "under the threshold by each checkpoint, averaged over the activations' cells; x is the "
                         "gradient evaluations so far (dotted: the question's 1000 steps), or seconds (each seed's share "
                         "of its batch's time, spread evenly over its evaluations).")
    return draw_it


def _heat(ax, frame: pd.DataFrame, rows: str, cols: str, row_order: list, col_order: list, title: str) -> None:
    rate = frame.groupby([rows, cols])["success_rate"].mean().unstack(cols)
    n = frame.groupby([rows, cols]).size().unstack(cols)
    rate = rate.reindex(index=row_order, columns=col_order)
    n = n.reindex(index=row_order, columns=col_order)
    labels = np.where(n.isna(), "", [[f"{fmt.pct(r)}\n{int(k)} cells" if not pd.isna(k) else ""
                                      for r, k in zip(rr, kk)] for rr, kk in zip(rate.values, n.values)])
    sns.heatmap(rate.astype(float), annot=labels, fmt="", cmap=SEQUENTIAL, vmin=0, vmax=1, mask=rate.isna(),
                linewidths=0.5, linecolor="white", ax=ax, cbar_kws={"label": "share of seeds that fit"})
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", rotation=0)


def success_bias_activation(cells: Cells) -> Maker:
    """Mean confirmed success over bias placement x activation."""
    def draw_it(out: Path) -> FigureRef | None:
        comp = comparison(cells.frame)
        if comp.empty or comp["bias"].nunique() < 2 or comp["activation"].nunique() < 2:
            return None
        rows = [b for b in BIASES if (comp["bias"] == b).any()]
        cols = [a for a in ACTIVATIONS if (comp["activation"] == a).any()]
        with style():
            fig = Figure(figsize=(1.4 * len(cols) + 3.2, 0.9 * len(rows) + 2.0), layout="constrained")
            _heat(fig.subplots(), comp, "bias", "activation", rows, cols,
                  "Share of seeds that fit, bias placement × activation\n(mean over each tile's optimizer × size cells)")
            file = save(fig, out, "success_bias_activation")
        return FigureRef(file, "Success over bias placement × activation",
                         "Each tile: the mean of its cells' confirmed success rates (every optimizer and hidden size, "
                         "each at its tuned learning rate); the control arm is left out.")
    return draw_it


def success_hidden_optimizer(cells: Cells) -> Maker:
    """Mean confirmed success over hidden size x optimizer, both biases."""
    def draw_it(out: Path) -> FigureRef | None:
        comp = comparison(cells.frame)
        both = comp[comp["bias"] == "both"]
        if both.empty or both["hidden"].nunique() < 2:
            return None
        rows = sorted(both["hidden"].unique())
        cols = [o for o in OPTIMIZERS if (both["optimizer"] == o).any()]
        with style():
            fig = Figure(figsize=(1.3 * len(cols) + 3.2, 0.65 * len(rows) + 2.0), layout="constrained")
            _heat(fig.subplots(), both, "hidden", "optimizer", rows, cols,
                  "Share of seeds that fit, hidden units × optimizer, both biases\n(mean over activations)")
            file = save(fig, out, "success_hidden_optimizer")
        return FigureRef(file, "Success over hidden size × optimizer",
                         "Both biases; each tile the mean of its activations' cells' confirmed success rates, each at "
                         "its tuned learning rate.")
    return draw_it


def success_all_cells(cells: Cells) -> Maker:
    """Every cell of the design: bias rows x activation columns of hidden x optimizer tiles."""
    def draw_it(out: Path) -> FigureRef | None:
        frame, axes = cells.frame, grid_axes(cells)
        if axes is None:
            return None
        biases, acts, hidden, opts = axes
        with style():
            fig = Figure(figsize=(2.3 * len(acts) + 1.5, 2.0 * len(biases) + 1.0), layout="constrained")
            axes = np.atleast_2d(fig.subplots(len(biases), len(acts), sharex=True, sharey=True, squeeze=False))
            for i, b in enumerate(biases):
                for j, a in enumerate(acts):
                    ax = axes[i, j]
                    sub = frame[(frame["bias"] == b) & (frame["activation"] == a)]
                    grid = sub.pivot_table(index="hidden", columns="optimizer", values="success_rate")
                    grid = grid.reindex(index=hidden, columns=opts)
                    ax.imshow(grid.to_numpy(float), vmin=0, vmax=1, cmap=SEQUENTIAL, aspect="auto")
                    ax.set_xticks(range(len(opts)), opts, rotation=90, fontsize=7)
                    ax.set_yticks(range(len(hidden)), hidden, fontsize=7)
                    ax.grid(False)
                    ctrl = " (control)" if bool(sub["control"].any()) else ""
                    if i == 0:
                        ax.set_title(f"{a}{ctrl}", fontsize=9)
                    if j == 0:
                        ax.set_ylabel(f"bias={b}\nhidden units", fontsize=8)
            fig.suptitle("Every cell: share of its confirmation seeds that fit (dark 0%, yellow 100%)", fontsize=10)
            file = save(fig, out, "success_all_cells")
        return FigureRef(file, "Every cell", "One tile per cell (rows: hidden units; columns: optimizer), at its tuned "
                                             "learning rate, on its confirmation seeds.")
    return draw_it


def ablation_ladder(ablation: Cells) -> Maker:
    """One row per ablation change: success with its Wilson interval, and the median MSE."""
    def draw_it(out: Path) -> FigureRef | None:
        frame = ablation.frame
        if frame.empty:
            return None
        rows = frame.reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        with style():
            fig = Figure(figsize=(11.0, 0.32 * len(rows) + 1.8), layout="constrained")
            ax, ax_m = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
            ladders = list(dict.fromkeys(rows["ladder"]))
            cmap = colours(ladders)
            for k, row in rows.iterrows():
                colour = cmap[row["ladder"]]
                ax.errorbar(row["success_rate"], y[k], xerr=[[row["success_rate"] - row["ci_low"]],
                                                             [row["ci_high"] - row["success_rate"]]],
                            fmt="o", color=colour, capsize=2)
                mse = row["median_mse"] if math.isfinite(row["median_mse"]) else np.nan
                ax_m.plot(mse, y[k], "s", color=colour)
            ax.set_yticks(y, [f"{r['cell']}" for _, r in rows.iterrows()], fontsize=8)
            ax.set_xlim(-0.02, 1.02)
            ax.set_xlabel("share of confirmation seeds that fit (95% Wilson interval)")
            ax_m.set_xscale("log")
            ax_m.set_xlabel("median test MSE over seeds (log scale)")
            for lad in ladders:
                ax.plot([], [], "o", color=cmap[lad], label=lad or "row")
            ax.legend(fontsize=8, loc="lower right")
            fig.suptitle("The ablation: one change at a time from the question's program; the path to nnet's call; "
                         "one removal at a time from it", fontsize=10)
            file = save(fig, out, "ablation_ladder")
        return FigureRef(file, "The ablation ladder", "Each row names its one change; its confirmation seeds (fresh, at "
                                                      "its tuned learning rate where it has one).")
    return draw_it


def ablation_fits(data: StudyData, ablation: Cells) -> Maker:
    """Each ablation row's fitted curves (median seed bold)."""
    def draw_it(out: Path) -> FigureRef | None:
        frame = ablation.frame
        if frame.empty:
            return None
        cols = 4
        rows_n = math.ceil(len(frame) / cols)
        training: dict[str, datasets.Dataset] = {}
        cmap = colours(list(dict.fromkeys(frame["ladder"])))
        with style():
            fig = Figure(figsize=(4.0 * cols, 2.6 * rows_n + 0.6), layout="constrained")
            axes = np.atleast_1d(fig.subplots(rows_n, cols, sharex=True, sharey=True, squeeze=False)).ravel()
            for ax, (_, row) in zip(axes, frame.iterrows()):
                fit = _fit_of(data, row["trial"])
                name = str(row["data"])
                training.setdefault(name, datasets.make(name, data.data_seed))
                if fit is not None:
                    draw(ax, fit, training[name], cmap[row["ladder"]])
                ax.set_title(f"{row['cell']}\n{int(row['fits'])}/{int(row['seeds'])} fit, MSE "
                             f"{fmt.mse(row['median_mse'])}", fontsize=8)
                ax.set_xlabel("")
                ax.set_ylabel("")
            for ax in axes[len(frame):]:
                ax.set_visible(False)
            file = save(fig, out, "ablation_fits")
        return FigureRef(file, "The ablation's fitted curves", "Every row's fitted curves over sin(x) (dashed) and its "
                                                               "training points, median seed bold.")
    return draw_it
