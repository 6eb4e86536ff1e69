"""Figures of a study's trials as a whole: success over bias x activation, test MSE against hidden
size, learning rate and optimizer, the optimization history and parameter importances.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from . import fmt
from .importance import Importances
from .load import StudyData
from .plotting import (MSE_AXIS, PALETTE, SEQUENTIAL, FigureRef, colours, finish, mark_limits, save, style,
                       with_ceiling)
from .stats import order
from .tables import Table, varying_keys


def success_heatmap(data: StudyData, table: Table | None) -> Callable[[Path], FigureRef | None]:
    """Share of seeds that fit over bias placement x activation (the bias x activation table)."""
    def draw(out: Path) -> FigureRef | None:
        if table is None:
            return None
        raw = table.data
        rows = order("bias", raw["bias"].tolist(), data.space)
        cols = order("activation", raw["activation"].tolist(), data.space)
        rate = raw.pivot(index="bias", columns="activation", values="success_rate").reindex(index=rows, columns=cols)
        trials = raw.pivot(index="bias", columns="activation", values="trials").reindex(index=rows, columns=cols)
        labels = np.where(trials.isna(), "", [[f"{fmt.pct(r)}\nn={int(n)}" if not pd.isna(n) else ""
                                               for r, n in zip(rr, nn)] for rr, nn in zip(rate.values, trials.values)])
        with style():
            fig = Figure(figsize=(1.25 * len(cols) + 3.0, 0.8 * len(rows) + 2.2), layout="constrained")
            ax = fig.subplots()
            sns.heatmap(rate.astype(float), annot=labels, fmt="", cmap=SEQUENTIAL, vmin=0, vmax=1, mask=rate.isna(),
                        linewidths=0.5, linecolor="white", ax=ax,
                        cbar_kws={"label": "share of seeds that fit (pooled over the cell's trials)"})
            ax.set_title("Share of seeds that fit, by bias placement × activation\n(n = trials; blank: never tried)")
            ax.set_xlabel("activation (hidden units)")
            ax.set_ylabel("bias placement")
            ax.tick_params(axis="y", rotation=0)
            file = save(fig, out, "success_heatmap")
        return FigureRef(file, "Success rate over bias placement × activation",
                         "Share of all seeds of a cell's trials whose test MSE is under the threshold. Cells with n < 3 "
                         "support no claim.")
    return draw


def on_axis(data: StudyData, key: str) -> pd.DataFrame:
    """The finished trials that have a place on an axis of `key`: for `lr`, only those whose optimizer
    uses one (bfgs and lm ignore it; their sampled lr would put them anywhere on the axis)."""
    fin = data.finished.copy()
    if key == "lr" and "optimizer" in fin:
        fin = fin[[fmt.used("lr", o) for o in fin["optimizer"]]]
    return fin


def mse_vs(data: StudyData, key: str, hue: str, name: str, title: str, xlabel: str) -> Callable[[Path], FigureRef | None]:
    """Trial values against a numeric key, coloured by a categorical one, both axes logarithmic."""
    def draw(out: Path) -> FigureRef | None:
        keys = varying_keys(data)
        if key not in keys:
            return None
        fin = on_axis(data, key)
        if fin.empty:
            return None
        fin["plotted"], ceiling = with_ceiling(fin["value"].astype(float), data.threshold)
        fin[key] = fin[key].astype(float)
        has_inf = bool(np.isinf(fin["value"]).any())
        hue_order = order(hue, fin[hue].tolist(), data.space) if hue in keys else None
        with style():
            fig = Figure(figsize=(8.5, 5.2), layout="constrained")
            ax = fig.subplots()
            sns.scatterplot(data=fin, x=key, y="plotted", hue=hue if hue_order else None, hue_order=hue_order,
                            palette=colours(hue_order) if hue_order else None, style=hue if hue_order else None,
                            style_order=hue_order, alpha=0.75, s=36, ax=ax)
            ax.set_yscale("log")
            lo, hi = fin[key].min(), fin[key].max()
            if key == "lr" or (lo > 0 and hi / lo >= 8):
                ax.set_xscale("log", base=2 if key == "hidden" else 10)
                if key == "hidden":
                    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            mark_limits(ax, data.threshold, ceiling if has_inf else None)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(MSE_AXIS)
            ax.set_title(title)
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = save(fig, out, name)
        dropped = len(data.finished) - len(fin)
        return FigureRef(file, title, "One point per finished trial (its median test MSE over seeds); dashed: the "
                                      "success threshold" + ("; dotted: trials whose median is inf" if has_inf else "") +
                         (f"; {dropped} trials of optimizers without a learning rate (bfgs, lm) left out." if dropped
                          else "."))
    return draw


def by_optimizer(data: StudyData) -> Callable[[Path], FigureRef | None]:
    """Box plots of the trials' median test MSE per optimizer, ordered by median."""
    def draw(out: Path) -> FigureRef | None:
        if "optimizer" not in varying_keys(data):
            return None
        fin = data.finished.copy()
        fin["plotted"], ceiling = with_ceiling(fin["value"].astype(float), data.threshold)
        # Fastest to read: optimizers ordered by their median trial value.
        opts = fin.groupby("optimizer")["value"].median().sort_values(kind="stable").index.tolist()
        counts = fin.groupby("optimizer").agg(n=("number", "size"), inf=("value", lambda v: int(np.isinf(v).sum())))
        labels = [f"{o}\n{counts.loc[o, 'n']} trials" + (f"\n{counts.loc[o, 'inf']} inf" if counts.loc[o, "inf"] else "")
                  for o in opts]
        pal = colours(order("optimizer", opts, data.space))
        with style(), warnings.catch_warnings():
            # seaborn 0.13.2 passes boxplot(vert=…), deprecated in matplotlib 3.11; harmless here.
            warnings.filterwarnings("ignore", message="vert: bool", category=matplotlib.MatplotlibDeprecationWarning)
            fig = Figure(figsize=(max(8.0, 1.5 * len(opts) + 2.5), 5.2), layout="constrained")
            ax = fig.subplots()
            sns.boxplot(data=fin, x="optimizer", y="plotted", order=opts, hue="optimizer", hue_order=opts,
                        palette=pal, legend=False, showfliers=False, log_scale=True, ax=ax)
            sns.stripplot(data=fin, x="optimizer", y="plotted", order=opts, color="0.2", size=3, alpha=0.5, ax=ax)
            mark_limits(ax, data.threshold, ceiling if bool(np.isinf(fin["value"]).any()) else None)
            ax.set_xticks(range(len(opts)), labels)
            ax.set_xlabel("optimizer (ordered by median)")
            ax.set_ylabel(MSE_AXIS)
            ax.set_title("Test MSE per optimizer, over trials (every lr and size tried)")
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = save(fig, out, "mse_by_optimizer")
        return FigureRef(file, "Test MSE per optimizer",
                         "Box: quartiles of the trials' median test MSE, whiskers to 1.5 IQR; dots: trials (inf drawn on "
                         "the dotted line, counted as the worst values).")
    return draw


def history(data: StudyData) -> Callable[[Path], FigureRef | None]:
    """Every finished trial's value in the order asked, and the best so far."""
    def draw(out: Path) -> FigureRef | None:
        fin = data.finished.sort_values("number")
        plotted, ceiling = with_ceiling(fin["value"].astype(float), data.threshold)
        inf = np.isinf(fin["value"].astype(float))
        best = fin["value"].astype(float).cummin()
        with style():
            fig = Figure(figsize=(8.5, 4.8), layout="constrained")
            ax = fig.subplots()
            ax.scatter(fin["number"][~inf], plotted[~inf], s=14, color=PALETTE[0], alpha=0.7, label="trial")
            if inf.any():
                ax.scatter(fin["number"][inf], plotted[inf], s=22, marker="x", color=PALETTE[4], label="median inf")
            ax.step(fin["number"], best.where(np.isfinite(best), ceiling), where="post", color=PALETTE[1], lw=2,
                    label="best so far")
            mark_limits(ax, data.threshold, ceiling if inf.any() else None)
            finish(ax, "trial number (order asked)", MSE_AXIS, "Optimization history")
            file = save(fig, out, "history")
        return FigureRef(file, "Optimization history", "Every finished trial's median test MSE in the order the sampler "
                                                       "asked for them, and the best so far.")
    return draw


def importances(result: Importances) -> Callable[[Path], FigureRef | None]:
    """A bar per searched parameter: its PED-ANOVA importance."""
    def draw(out: Path) -> FigureRef | None:
        if result.values is None:
            return None
        items = sorted(result.values.items(), key=lambda kv: kv[1])
        with style():
            fig = Figure(figsize=(7.0, 0.45 * len(items) + 1.8), layout="constrained")
            ax = fig.subplots()
            ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[0])
            for i, (_, v) in enumerate(items):
                ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
            ax.set_xlim(0, max(v for _, v in items) * 1.18 or 1)
            ax.set_xlabel("importance (share of the total, sums to 1)")
            ax.set_ylabel("searched parameter")
            ax.set_title(f"Parameter importances: PED-ANOVA over {result.trials} complete trials")
            file = save(fig, out, "importances")
        return FigureRef(file, "Parameter importances", f"{result.evaluator}: how much each parameter separates the "
                                                        f"top 10% of trials from all.")
    return draw
