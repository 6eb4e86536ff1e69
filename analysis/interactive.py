"""Interactive versions of the report's figures: standalone plotly pages beside the PNGs.

A page is `interactive/<figure>.html`, named after the PNG it goes with (`figures/<figure>.png`),
and the report links it under that figure. plotly.js is written once per report folder beside the
pages (`interactive/plotly.min.js`, plotly's `include_plotlyjs="directory"`), so every page opens
offline and the folder can be moved or copied whole. Hovering shows a point's or a tile's numbers
(trial, cell, seeds fit, median test MSE, learning rate); dragging zooms.

Pages drawn, where their PNG is in the report:
- a searched study: `success_heatmap` (bias x activation), `mse_vs_hidden`, `mse_vs_lr`, `history`;
- a designed study: `success_all_cells` (every cell), `success_bias_activation`,
  `success_hidden_optimizer` and `ablation_ladder`, all from the confirmed cells (`cells.confirmed`).

The numbers come from the same frames the PNGs are drawn from; these pages add no result of
their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeps.config import ACTIVATIONS, BIASES, OPTIMIZERS

from . import fmt
from .cells import Cells, comparison, confirmed, design_of, grid_axes
from .load import StudyData
from .plotting import MSE_AXIS, PALETTE, with_ceiling
from .search_figures import on_axis
from .stats import order
from .tables import cell_table, varying_keys

FOLDER = "interactive"
COLOURSCALE = "Viridis"  # the PNGs' sequential map (plotting.SEQUENTIAL)
Page = Callable[[], Any]  # returns a plotly Figure, or None when the page does not apply


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


COLOURS = [_hex(c) for c in PALETTE]


def write_all(data: StudyData, ablation: StudyData | None, out: Path, wanted: set[str]) -> dict[str, str]:
    """Write the interactive page of every figure in `wanted` that has one; {figure name: its path
    relative to the report folder}."""
    pages = _designed_pages(data, ablation) if data.designed else _searched_pages(data)
    todo = [name for name in pages if name in wanted]
    written: dict[str, str] = {}
    if not todo:
        return written
    (out / FOLDER).mkdir(exist_ok=True)
    for name in todo:
        fig = pages[name]()
        if fig is None:
            continue
        fig.update_layout(template="plotly_white", font={"size": 13}, margin={"t": 90})
        fig.write_html(out / FOLDER / f"{name}.html", include_plotlyjs="directory", full_html=True,
                       config={"displaylogo": False, "responsive": True})
        written[name] = f"{FOLDER}/{name}.html"
    return written


# -- searched studies (TPE, random, grid) -----------------------------------------------------------


def _searched_pages(data: StudyData) -> dict[str, Page]:
    return {"success_heatmap": lambda: _success_heatmap(data),
            "mse_vs_hidden": lambda: _mse_vs(data, "hidden", "bias", "Test MSE against hidden size, per bias placement",
                                             "hidden units H (log scale)"),
            "mse_vs_lr": lambda: _mse_vs(data, "lr", "optimizer", "Test MSE against learning rate, per optimizer",
                                         "learning rate (log scale)"),
            "history": lambda: _history(data)}


def _trial_hover(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """customdata and a hovertemplate naming a trial, its configuration and its seeds."""
    keys = [k for k in ("bias", "activation", "optimizer", "hidden", "lr") if k in frame]
    config = [fmt.config(row, keys) for row in frame.to_dict("records")]
    custom = np.column_stack([frame["number"].astype(int), config,
                              [f"{s}/{n}" for s, n in zip(frame["n_success"], frame["n_seeds"])],
                              frame["value"].map(fmt.mse)])
    template = ("trial #%{customdata[0]}<br>%{customdata[1]}<br>median test MSE %{customdata[3]}"
                "<br>seeds fit %{customdata[2]}<extra></extra>")
    return custom, template


def _success_heatmap(data: StudyData) -> Any:
    import plotly.graph_objects as go

    if not {"bias", "activation"} <= set(varying_keys(data)):
        return None
    raw = cell_table(data, ["bias", "activation"], "by_bias_activation", "").data
    rows = order("bias", raw["bias"].tolist(), data.space)
    cols = order("activation", raw["activation"].tolist(), data.space)
    grid = raw.set_index(["bias", "activation"])
    z, text = [], []
    for b in rows:
        z.append([float(grid.loc[(b, a), "success_rate"]) if (b, a) in grid.index else None for a in cols])
        text.append([(f"{int(grid.loc[(b, a), 'successes'])}/{int(grid.loc[(b, a), 'seeds'])} seeds fit over "
                      f"{int(grid.loc[(b, a), 'trials'])} trials; best trial #{int(grid.loc[(b, a), 'best_trial'])}, "
                      f"MSE {fmt.mse(grid.loc[(b, a), 'best_mse'])}") if (b, a) in grid.index else "never tried"
                     for a in cols])
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, text=text, zmin=0, zmax=1, colorscale=COLOURSCALE,
                               colorbar={"title": "seeds<br>that fit"},
                               hovertemplate="bias %{y}, %{x}<br>%{z:.0%} of seeds fit<br>%{text}<extra></extra>"))
    fig.update_layout(title="Share of seeds that fit, by bias placement × activation<br>"
                            "<sup>pooled over each cell's trials; blank: never tried</sup>",
                      xaxis_title="activation (hidden units)", yaxis_title="bias placement", yaxis_autorange="reversed")
    return fig


def _mse_vs(data: StudyData, key: str, hue: str, title: str, xlabel: str) -> Any:
    import plotly.graph_objects as go

    keys = varying_keys(data)
    if key not in keys:
        return None
    fin = on_axis(data, key)
    if fin.empty:
        return None
    fin["plotted"], ceiling = with_ceiling(fin["value"].astype(float), data.threshold)
    groups = order(hue, fin[hue].tolist(), data.space) if hue in keys else [None]
    fig = go.Figure()
    for i, value in enumerate(groups):
        part = fin if value is None else fin[fin[hue] == value]
        part = part.iloc[np.argsort(np.isinf(part["value"].to_numpy(float)), kind="stable")]  # legend: a finite point's mark
        custom, template = _trial_hover(part)
        fig.add_trace(go.Scatter(x=part[key].astype(float), y=part["plotted"], mode="markers",
                                 name=str(value) if value is not None else "trials",
                                 marker={"color": COLOURS[i % len(COLOURS)], "size": 9, "opacity": 0.8,
                                         "symbol": ["x" if math.isinf(v) else "circle" for v in part["value"]]},
                                 customdata=custom, hovertemplate=template))
    xs = fin[key].astype(float)
    _threshold(fig, (float(xs.min()), float(xs.max())), data.threshold,
               ceiling if bool(np.isinf(fin["value"]).any()) else None)
    fig.update_xaxes(type="log", title=xlabel)
    fig.update_yaxes(type="log", title=MSE_AXIS)
    fig.update_layout(title=title + "<br><sup>one point per finished trial; x: its median is inf (at least half its "
                                    "seeds diverged), drawn on the dotted line</sup>", legend_title=hue)
    return fig


def _history(data: StudyData) -> Any:
    import plotly.graph_objects as go

    fin = data.finished.sort_values("number")
    if fin.empty:
        return None
    plotted, ceiling = with_ceiling(fin["value"].astype(float), data.threshold)
    best = fin["value"].astype(float).cummin()
    custom, template = _trial_hover(fin)
    fig = go.Figure([go.Scatter(x=fin["number"], y=plotted, mode="markers", name="trial", customdata=custom,
                                hovertemplate=template, marker={"color": COLOURS[0], "size": 7}),
                     go.Scatter(x=fin["number"], y=best.where(np.isfinite(best), ceiling), mode="lines",
                                line={"shape": "hv", "color": COLOURS[1], "width": 3}, name="best so far",
                                hovertemplate="best so far %{y:.3g}<extra></extra>")])
    _threshold(fig, (float(fin["number"].min()), float(fin["number"].max())), data.threshold,
               ceiling if bool(np.isinf(fin["value"]).any()) else None)
    fig.update_yaxes(type="log", title=MSE_AXIS)
    fig.update_layout(title="Optimization history", xaxis_title="trial number (order asked)")
    return fig


def _threshold(fig: Any, x: tuple[float, float], threshold: float, ceiling: float | None) -> None:
    """The success threshold (dashed) and the 'diverged' ceiling (dotted) as legend entries: lines
    drawn as traces, since plotly's hline annotations misplace themselves on log axes."""
    import plotly.graph_objects as go

    lines = [(threshold, "dash", f"success threshold {fmt.mse(threshold)}")]
    if ceiling is not None:
        lines.append((ceiling, "dot", "diverged (median inf)"))
    for y, dash, name in lines:
        fig.add_trace(go.Scatter(x=list(x), y=[y, y], mode="lines", name=name, hoverinfo="skip",
                                 line={"dash": dash, "color": "#505050", "width": 1.5}))


# -- designed studies -------------------------------------------------------------------------------


def _designed_pages(data: StudyData, ablation: StudyData | None) -> dict[str, Page]:
    cells = confirmed(data)
    design = design_of(data)
    if data.name == "ablation" or (design.get("rows") and not design.get("crossed")):
        main, abl = None, cells  # as design_report.sections reads it
    else:
        main = cells
        abl = confirmed(ablation) if ablation is not None and ablation.name != data.name else None
    pages: dict[str, Page] = {}
    if main is not None:
        pages["success_all_cells"] = lambda: _all_cells(main)
        pages["success_bias_activation"] = lambda: _mean_heat(
            comparison(main.frame), "bias", "activation", list(BIASES), list(ACTIVATIONS),
            "Share of seeds that fit, bias placement × activation<br><sup>mean over each tile's optimizer × size "
            "cells, the control arm left out</sup>")
        pages["success_hidden_optimizer"] = lambda: _mean_heat(
            comparison(main.frame).query("bias == 'both'"), "hidden", "optimizer", None, list(OPTIMIZERS),
            "Share of seeds that fit, hidden units × optimizer, both biases<br><sup>mean over activations</sup>")
    if abl is not None:
        pages["ablation_ladder"] = lambda: _ladder(abl)
    return pages


def _cell_hover(frame: pd.DataFrame) -> list[str]:
    return [f"{r['cell']}<br>{int(r['fits'])}/{int(r['seeds'])} seeds fit ({fmt.pct(r['success_rate'])}, Wilson 95% "
            f"[{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}])<br>median test MSE {fmt.mse(r['median_mse'])}<br>"
            f"lr {fmt.lr(r['lr']) if not pd.isna(r['lr']) else 'none (second order)'}; confirmation trial #{int(r['trial'])}"
            + (" (control arm)" if r.get("control") else "") for _, r in frame.iterrows()]


def _all_cells(cells: Cells) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame, axes = cells.frame, grid_axes(cells)
    if axes is None:
        return None
    biases, acts, hidden, opts = axes
    control = set(frame[frame["control"]]["activation"])
    fig = make_subplots(rows=len(biases), cols=len(acts), shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.02, vertical_spacing=0.04,
                        column_titles=[f"{a} (control)" if a in control else a for a in acts],
                        row_titles=[f"bias={b}" for b in biases])
    for i, b in enumerate(biases):
        for j, a in enumerate(acts):
            sub = frame[(frame["bias"] == b) & (frame["activation"] == a)].set_index(["hidden", "optimizer"])
            hover = dict(zip(sub.index, _cell_hover(sub.reset_index())))
            z = [[float(sub.loc[(h, o), "success_rate"]) if (h, o) in sub.index else None for o in opts] for h in hidden]
            text = [[hover.get((h, o), "not run") for o in opts] for h in hidden]
            fig.add_trace(go.Heatmap(z=z, x=opts, y=[str(h) for h in hidden], text=text, coloraxis="coloraxis",
                                     hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1), row=i + 1, col=j + 1)
    fig.update_layout(coloraxis={"colorscale": COLOURSCALE, "cmin": 0, "cmax": 1,
                                 "colorbar": {"title": "seeds<br>that fit"}},
                      height=max(420, 190 * len(biases) + 140), width=max(700, 170 * len(acts) + 220),
                      title="Every cell: share of its confirmation seeds that fit<br><sup>rows of each panel: hidden "
                            "units; columns: optimizer; hover a tile for its cell, seeds, MSE, lr and trial</sup>")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(type="category", tickangle=-90)
    return fig


def _mean_heat(frame: pd.DataFrame, rows: str, cols: str, row_order: list | None, col_order: list, title: str) -> Any:
    import plotly.graph_objects as go

    if frame.empty or frame[rows].nunique() < 2 or frame[cols].nunique() < 1:
        return None
    row_values = [r for r in (row_order or sorted(frame[rows].unique())) if (frame[rows] == r).any()]
    col_values = [c for c in col_order if (frame[cols] == c).any()]
    z, text = [], []
    for r in row_values:
        zr, tr = [], []
        for c in col_values:
            grp = frame[(frame[rows] == r) & (frame[cols] == c)]
            zr.append(float(grp["success_rate"].mean()) if len(grp) else None)
            tr.append(f"{len(grp)} cells; {int(grp['fits'].sum())}/{int(grp['seeds'].sum())} seeds fit in all"
                      if len(grp) else "no cell")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in col_values], y=[str(r) for r in row_values], text=text, zmin=0,
                               zmax=1, colorscale=COLOURSCALE, colorbar={"title": "seeds<br>that fit"},
                               hovertemplate=f"{rows} %{{y}}, {cols} %{{x}}<br>mean of the cells' rates %{{z:.0%}}"
                                             f"<br>%{{text}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=cols, yaxis_title=rows)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(type="category")
    return fig


def _ladder(ablation: Cells) -> Any:
    import plotly.graph_objects as go

    frame = ablation.frame.reset_index(drop=True)
    if frame.empty:
        return None
    fig = go.Figure()
    ladders = list(dict.fromkeys(frame["ladder"]))
    for i, ladder in enumerate(ladders):
        part = frame[frame["ladder"] == ladder]
        fig.add_trace(go.Scatter(
            x=part["success_rate"], y=part["cell"], mode="markers", name=ladder or "row",
            marker={"color": COLOURS[i % len(COLOURS)], "size": 10},
            error_x={"type": "data", "symmetric": False, "array": part["ci_high"] - part["success_rate"],
                     "arrayminus": part["success_rate"] - part["ci_low"]},
            text=_cell_hover(part), hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title="The ablation, row by row<br><sup>share of confirmation seeds that fit, 95% Wilson "
                            "interval; hover a row for its MSE, lr and trial</sup>",
                      xaxis={"title": "share of confirmation seeds that fit", "range": [-0.02, 1.02], "tickformat": ".0%"},
                      yaxis={"categoryorder": "array", "categoryarray": list(frame["cell"])[::-1], "type": "category"},
                      height=max(420, 26 * len(frame) + 200))
    return fig
