"""The report's figures: seaborn on matplotlib's Agg canvas, one PNG each, colour-blind-safe.

Figures are built as `matplotlib.figure.Figure` objects (no pyplot: no global figure registry, no
GUI backend) and styled inside `seaborn.axes_style` contexts, so nothing leaks into the caller's
matplotlib settings. MSEs span decades, so their axes are logarithmic; a trial whose median is
+inf (half or more of its seeds diverged, or all) is drawn on a labelled "diverged" line above
the finite values rather than dropped. Fitted curves are redrawn from the stored parameters with
`sweeps.model.predict_params`: nothing is retrained.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import fmt
from .importance import Importances
from .load import StudyData
from .stats import order
from .tables import Table, varying_keys

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


def _style() -> Any:
    return sns.axes_style("whitegrid")


def _save(fig: Figure, out: Path, name: str) -> str:
    path = out / "figures" / f"{name}.png"
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot would pick
    fig.savefig(path, dpi=DPI)
    return f"figures/{name}.png"


def colours(values: Sequence[object]) -> dict[object, Any]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


def _with_ceiling(values: pd.Series, threshold: float) -> tuple[pd.Series, float]:
    """Values with +inf replaced by a ceiling a decade above the largest finite one (and the threshold)."""
    finite = values[np.isfinite(values)]
    top = max(float(finite.max()) if len(finite) else threshold, threshold)
    ceiling = 10 ** (math.ceil(math.log10(top)) + 1) if top > 0 else 1.0
    return values.where(np.isfinite(values), ceiling), ceiling


def _mark_limits(ax: Any, threshold: float, ceiling: float | None, horizontal: bool = True) -> None:
    line = ax.axhline if horizontal else ax.axvline
    line(threshold, color="0.35", ls="--", lw=1, label=f"success threshold {fmt.mse(threshold)}")
    if ceiling is not None:
        line(ceiling, color=NEUTRAL, ls=":", lw=1.4, label="diverged (median inf)")


def best_per_group(data: StudyData, key: str, frame: pd.DataFrame | None = None) -> list[tuple[object, pd.Series]]:
    """The best finished trial (of `frame`, default all) for each value of `key`; one group if it does not vary."""
    fin = (data.finished if frame is None else frame)
    fin = fin.sort_values(["value", "success_rate", "number"], ascending=[True, False, True])
    if key in varying_keys(data):
        return [(v, fin[fin[key] == v].iloc[0]) for v in order(key, fin[key].tolist(), data.space)
                if (fin[key] == v).any()]
    return [(fin.iloc[0][key], fin.iloc[0])] if len(fin) else []


def fits(data: StudyData, out: Path, exclude: str | None = None, per_trial: bool = False) -> FigureRef | None:
    """Fitted curves over sin(x) and the training points: the best trial per bias placement.

    With `exclude`, trials of that activation are left out (the `sin` units that fit trivially);
    with `per_trial`, every finished trial gets its own panel (a handful of fixed programs).
    """
    import torch

    from sweeps import data as datasets
    from sweeps.model import predict_params

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
    groups = [(v, r) for v, r in groups if (data.frozen[int(r["number"])].user_attrs.get("fit") or {}).get("params")]
    if not groups:
        return None
    cols = 2 if len(groups) > 1 else 1
    rows = math.ceil(len(groups) / cols)
    x = torch.linspace(0.0, 10.0, 1001, dtype=torch.float64)
    cmap = colours([v for v, _ in groups])
    training: dict[str, Any] = {}
    with _style():
        fig = Figure(figsize=(5.2 * cols if cols > 1 else 8.0, 3.6 * rows + 0.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
        for ax, (key, row) in zip(axes, groups):
            fit = data.frozen[int(row["number"])].user_attrs["fit"]
            name = str(row["data"])
            if name not in training:
                training[name] = datasets.make(name, data.data_seed)
            ds = training[name]
            ax.scatter(ds.x, ds.y, s=10, color="0.45", zorder=3, label="training points")
            median = fit.get("median_seed")
            for i, params in enumerate(fit["params"]):
                if params is None or i == median:
                    continue
                y = predict_params(params, fit["hidden"], fit["activation"], x, fit["shift"], fit["scale"])
                ax.plot(x, y, color=cmap[key], lw=0.8, alpha=0.3)
            if median is not None and fit["params"][median] is not None:
                y = predict_params(fit["params"][median], fit["hidden"], fit["activation"], x, fit["shift"], fit["scale"])
                ax.plot(x, y, color=cmap[key], lw=2.2, label="median seed (others faint)")
            # The target last, dashed on top: visible even where a fit covers it exactly.
            ax.plot(x, torch.sin(x), color="black", ls="--", lw=1.1, zorder=4, label="sin(x)")
            ax.set_ylim(-1.8, 1.8)
            setting = f", {name}, {int(row['steps'])} steps" if per_trial else ""
            ax.set_title(f"bias={row['bias']}: {row['activation']}, H={int(row['hidden'])}, {row['optimizer']}, "
                         f"lr {fmt.lr(row['lr'])}{setting}\nmedian MSE {fmt.mse(row['value'])}, "
                         f"{int(row['n_success'])}/{int(row['n_seeds'])} seeds fit (#{int(row['number'])})", fontsize=9.5)
            ax.set_xlabel("x (radians)")
            ax.set_ylabel("y (dimensionless)")
        for ax in axes[len(groups):]:
            ax.set_visible(False)
        axes[0].legend(loc="lower left", fontsize=8, framealpha=0.9)
        among = f" (activations other than {exclude})" if exclude else ""
        what = "Every trial" if per_trial else f"Best trial per bias placement{among}"
        fig.suptitle(f"{what}:\nfitted curves over sin(x), clipped to ±1.8")
        file = _save(fig, out, "fits_per_trial" if per_trial else f"fits_without_{exclude}" if exclude else "fits")
    title = "Fitted curves of every trial" if per_trial else f"Fitted curves of the best trial per bias placement{among}"
    who = "one trial" if per_trial else "the best finished trial with that bias placement"
    caption = (f"Each panel: {who}, its median seed in bold and its other seeds faint, redrawn from the stored "
               f"parameters; dashed: sin(x); dots: the trial's training points.")
    if exclude:
        caption += f" A {exclude} unit can represent the target exactly, so these panels show the other activations."
    return FigureRef(file, title, caption)


def success_heatmap(data: StudyData, table: Table | None) -> Callable[[Path], FigureRef | None]:
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
        with _style():
            fig = Figure(figsize=(1.25 * len(cols) + 3.0, 0.8 * len(rows) + 2.2), layout="constrained")
            ax = fig.subplots()
            sns.heatmap(rate.astype(float), annot=labels, fmt="", cmap=SEQUENTIAL, vmin=0, vmax=1, mask=rate.isna(),
                        linewidths=0.5, linecolor="white", ax=ax,
                        cbar_kws={"label": "share of seeds that fit (pooled over the cell's trials)"})
            ax.set_title("Share of seeds that fit, by bias placement × activation\n(n = trials; blank: never tried)")
            ax.set_xlabel("activation (hidden units)")
            ax.set_ylabel("bias placement")
            ax.tick_params(axis="y", rotation=0)
            file = _save(fig, out, "success_heatmap")
        return FigureRef(file, "Success rate over bias placement × activation",
                         "Share of all seeds of a cell's trials whose test MSE is under the threshold. Cells with n < 3 "
                         "support no claim.")
    return draw


def mse_vs(data: StudyData, key: str, hue: str, name: str, title: str, xlabel: str) -> Callable[[Path], FigureRef | None]:
    """Trial values against a numeric key, coloured by a categorical one, both axes logarithmic."""
    def draw(out: Path) -> FigureRef | None:
        keys = varying_keys(data)
        if key not in keys:
            return None
        fin = data.finished.copy()
        fin["plotted"], ceiling = _with_ceiling(fin["value"].astype(float), data.threshold)
        fin[key] = fin[key].astype(float)
        has_inf = bool(np.isinf(fin["value"]).any())
        hue_order = order(hue, fin[hue].tolist(), data.space) if hue in keys else None
        with _style():
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
            _mark_limits(ax, data.threshold, ceiling if has_inf else None)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(MSE_AXIS)
            ax.set_title(title)
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = _save(fig, out, name)
        return FigureRef(file, title, "One point per finished trial (its median test MSE over seeds); dashed: the "
                                      "success threshold" + ("; dotted: trials whose median is inf." if has_inf else "."))
    return draw


def by_optimizer(data: StudyData) -> Callable[[Path], FigureRef | None]:
    def draw(out: Path) -> FigureRef | None:
        if "optimizer" not in varying_keys(data):
            return None
        fin = data.finished.copy()
        fin["plotted"], ceiling = _with_ceiling(fin["value"].astype(float), data.threshold)
        # Fastest to read: optimizers ordered by their median trial value.
        opts = fin.groupby("optimizer")["value"].median().sort_values(kind="stable").index.tolist()
        counts = fin.groupby("optimizer").agg(n=("number", "size"), inf=("value", lambda v: int(np.isinf(v).sum())))
        labels = [f"{o}\n{counts.loc[o, 'n']} trials" + (f"\n{counts.loc[o, 'inf']} inf" if counts.loc[o, "inf"] else "")
                  for o in opts]
        pal = colours(order("optimizer", opts, data.space))
        with _style(), warnings.catch_warnings():
            # seaborn 0.13.2 passes boxplot(vert=…), deprecated in matplotlib 3.11; harmless here.
            warnings.filterwarnings("ignore", message="vert: bool", category=matplotlib.MatplotlibDeprecationWarning)
            fig = Figure(figsize=(max(8.0, 1.5 * len(opts) + 2.5), 5.2), layout="constrained")
            ax = fig.subplots()
            sns.boxplot(data=fin, x="optimizer", y="plotted", order=opts, hue="optimizer", hue_order=opts,
                        palette=pal, legend=False, showfliers=False, log_scale=True, ax=ax)
            sns.stripplot(data=fin, x="optimizer", y="plotted", order=opts, color="0.2", size=3, alpha=0.5, ax=ax)
            _mark_limits(ax, data.threshold, ceiling if bool(np.isinf(fin["value"]).any()) else None)
            ax.set_xticks(range(len(opts)), labels)
            ax.set_xlabel("optimizer (ordered by median)")
            ax.set_ylabel(MSE_AXIS)
            ax.set_title("Test MSE per optimizer, over trials (every lr and size tried)")
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = _save(fig, out, "mse_by_optimizer")
        return FigureRef(file, "Test MSE per optimizer",
                         "Box: quartiles of the trials' median test MSE, whiskers to 1.5 IQR; dots: trials (inf drawn on "
                         "the dotted line, counted as the worst values).")
    return draw


def history(data: StudyData) -> Callable[[Path], FigureRef | None]:
    def draw(out: Path) -> FigureRef | None:
        fin = data.finished.sort_values("number")
        plotted, ceiling = _with_ceiling(fin["value"].astype(float), data.threshold)
        inf = np.isinf(fin["value"].astype(float))
        best = fin["value"].astype(float).cummin()
        with _style():
            fig = Figure(figsize=(8.5, 4.8), layout="constrained")
            ax = fig.subplots()
            ax.scatter(fin["number"][~inf], plotted[~inf], s=14, color=PALETTE[0], alpha=0.7, label="trial")
            if inf.any():
                ax.scatter(fin["number"][inf], plotted[inf], s=22, marker="x", color=PALETTE[4], label="median inf")
            ax.step(fin["number"], best.where(np.isfinite(best), ceiling), where="post", color=PALETTE[1], lw=2,
                    label="best so far")
            ax.set_yscale("log")
            _mark_limits(ax, data.threshold, ceiling if inf.any() else None)
            ax.set_xlabel("trial number (order asked)")
            ax.set_ylabel(MSE_AXIS)
            ax.set_title("Optimization history")
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = _save(fig, out, "history")
        return FigureRef(file, "Optimization history", "Every finished trial's median test MSE in the order the sampler "
                                                       "asked for them, and the best so far.")
    return draw


def importances(result: Importances) -> Callable[[Path], FigureRef | None]:
    def draw(out: Path) -> FigureRef | None:
        if result.values is None:
            return None
        items = sorted(result.values.items(), key=lambda kv: kv[1])
        with _style():
            fig = Figure(figsize=(7.0, 0.45 * len(items) + 1.8), layout="constrained")
            ax = fig.subplots()
            ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[0])
            for i, (_, v) in enumerate(items):
                ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
            ax.set_xlim(0, max(v for _, v in items) * 1.18 or 1)
            ax.set_xlabel("importance (share of the total, sums to 1)")
            ax.set_ylabel("searched parameter")
            ax.set_title(f"Parameter importances: PED-ANOVA over {result.trials} complete trials")
            file = _save(fig, out, "importances")
        return FigureRef(file, "Parameter importances", f"{result.evaluator}: how much each parameter separates the "
                                                        f"top 10% of trials from all.")
    return draw


def learning_curves(data: StudyData) -> Callable[[Path], FigureRef | None]:
    def draw(out: Path) -> FigureRef | None:
        groups = best_per_group(data, "bias")
        curves = [(v, r, (data.frozen[int(r["number"])].user_attrs.get("fit") or {}).get("curve") or [])
                  for v, r in groups]
        curves = [(v, r, c) for v, r, c in curves if c]
        if not curves:
            return None
        cmap = colours(order("bias", [v for v, _, _ in curves], data.space))
        with _style():
            fig = Figure(figsize=(8.5, 4.8), layout="constrained")
            ax = fig.subplots()
            for bias, row, curve in curves:
                steps, mse = zip(*curve)
                ax.plot(steps, mse, color=cmap[bias], lw=1.8, marker="o", ms=3,
                        label=f"bias={bias} (#{int(row['number'])}, {row['activation']}, {row['optimizer']})")
            ax.set_xscale("symlog", linthresh=1)
            ax.set_yscale("log")
            ax.set_xlabel("optimizer step (symlog scale)")
            ax.set_ylabel("training MSE (dimensionless, log scale)")
            ax.set_title("Learning curves of the best trial per bias placement (median seed)")
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
            file = _save(fig, out, "learning_curves")
        return FigureRef(file, "Learning curves", "Training MSE of each best trial's median seed at log-spaced steps, "
                                                  "as recorded during training.")
    return draw


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
