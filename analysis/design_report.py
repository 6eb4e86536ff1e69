"""The report of a designed study: "The answer" first, then the design, its figures and tables.

Every number comes from confirmed cells (`cells.confirmed`). For the question's designed study
(`default`) the ablation study of the same storage, when present, adds its ladder and the answer's
sentence on the question's program. Besides the page: `tables/cells.csv` (one row per cell),
`tables/ablation.csv` (one row per ablation row) and `answer.json` (each sentence with the numbers
it states).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.config import ACTIVATIONS, BIASES, OPTIMIZERS

from . import answer as answers
from . import answer_figures as af
from . import fmt
from .cells import Cells, comparison, confirmed, counts, design_of
from .load import StudyData
from .plotting import FigureRef
from .render import Bullets, FigureBlock, Para, Section, TableBlock
from .tables import Table
from .units import over_cells

CELL_COLUMNS = ["cell", "control", "bias", "activation", "optimizer", "hidden", "lr", "seeds", "fits", "success_rate",
                "ci_low", "ci_high", "median_mse", "median_steps", "median_evals", "seconds_per_fit", "n_params",
                "lrs_tried", "lr_at_edge", "trial"]
ABLATION_COLUMNS = ["cell", "ladder", "changes", "bias", "activation", "optimizer", "hidden", "lr", "data", "steps",
                    "seeds", "fits", "success_rate", "ci_low", "ci_high", "median_mse", "median_evals",
                    "seconds_per_fit", "trial"]


def design_text(data: StudyData, cells: Cells) -> list[str]:
    """The design in words: scientific, nuisance, fixed, control, seeds."""
    design = design_of(data)
    space = data.space
    items = []
    crossed = design.get("crossed") or []
    if crossed:
        parts = [f"{k} ({', '.join(map(str, (space.get(k) or {}).get('choices') or []))})" for k in crossed]
        items.append("**Scientific** choices, crossed (every cell visited): " + "; ".join(parts) + ".")
    else:
        items.append(f"**Rows**: {len(cells.frame)} configurations, each naming the one change it makes.")
    tuned = design.get("tuned")
    if tuned:
        grid = (space.get(tuned) or {}).get("grid") or []
        items.append(f"**Nuisance**: `{tuned}`, tuned per cell over {len(grid)} values "
                     f"({', '.join(fmt.lr(v) for v in grid)}) on {data.spec.get('seeds')} seeds each, for first-order "
                     f"optimizers (second-order ones have no learning rate). The value whose seeds fit most often "
                     f"(then with the lowest median MSE) is confirmed.")
    fixed = {k: v for k, v in (data.spec.get("fixed") or {}).items() if k not in crossed and k != tuned}
    if fixed:
        items.append("**Fixed**: " + fmt.settings(fixed, data.finished["optimizer"].unique()) + ".")
    control = design.get("control") or {}
    if control:
        items.append("**Control arm**: " + ", ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in control.items())
                     + " — run like every cell, reported on its own, never pooled into a comparison.")
    items.append(f"**Confirmation**: each cell's chosen setting re-run on {design.get('confirm_seeds')} fresh seeds "
                 f"that took no part in choosing it; every rate below comes from those runs. A seed *fits* when its "
                 f"test MSE on 1001 points over [0, 10] is under {fmt.mse(data.threshold)}.")
    return items


def _by(frame: pd.DataFrame, key: str, order: list[Any], name: str, title: str,
        which: str = "Confirmed cells (the control arm left out)") -> Table:
    rows = []
    for value in order:
        grp = frame[frame[key] == value]
        if grp.empty:
            continue
        est = over_cells(*counts(grp))
        rows.append({key: value, "cells": len(grp), "cells_with_a_fit": int((grp["fits"] > 0).sum()),
                     "success_rate": est.value, "ci_low": est.low, "ci_high": est.high,
                     "median_mse": float(grp["median_mse"].median())})
    raw = pd.DataFrame(rows)
    shown = pd.DataFrame({key: raw[key].map(fmt.value), "cells": raw["cells"].map(str),
                          "cells with a fit": raw["cells_with_a_fit"].map(str),
                          "seeds fit [95%, cells as units]": [fmt.rate_ci(r, lo, hi) for r, lo, hi in
                                                              zip(raw["success_rate"], raw["ci_low"], raw["ci_high"])],
                          "median of cells' median MSE": raw["median_mse"].map(fmt.mse)})
    return Table(name, title, f"{which}; the interval treats cells as the units (two-stage bootstrap), never "
                              "narrower than the pooled seeds' Wilson interval.", raw, shown)


def cell_display(frame: pd.DataFrame, name: str, title: str, caption: str) -> Table:
    """Confirmed cells one per row, as a report table (settings unused by an optimizer left blank)."""
    raw = frame[[c for c in CELL_COLUMNS + ["ladder", "changes"] if c in frame]].reset_index(drop=True)
    shown = pd.DataFrame({
        "cell": raw["cell"],
        "lr (tuned)": [fmt.lr(v) if not (isinstance(v, float) and math.isnan(v)) else "none (second order)"
                       for v in raw["lr"]],
        "seeds fit [Wilson 95%]": [f"{int(k)}/{int(n)}: {fmt.rate_ci(r, lo, hi)}" for k, n, r, lo, hi in
                                   zip(raw["fits"], raw["seeds"], raw["success_rate"], raw["ci_low"], raw["ci_high"])],
        "median test MSE": raw["median_mse"].map(fmt.mse),
        "median evaluations": raw["median_evals"].map(lambda v: fmt.value(float(v))),
        "seconds a fit": raw["seconds_per_fit"].map(fmt.seconds),
    })
    return Table(name, title, caption, raw, shown)


def sections(data: StudyData, ablation: StudyData | None, out: Path) -> tuple[list[Section], list[Table], dict]:
    """The designed study's sections, the tables to save, and the answer (for answer.json)."""
    cells = confirmed(data)
    abl = confirmed(ablation) if ablation is not None else None
    if data.name == "ablation" or (design_of(data).get("rows") and not design_of(data).get("crossed")):
        abl, main = cells, None
    else:
        main = cells
    sentences = answers.answer(main, abl) if main is not None else [answers.ablation_sentence(abl)]
    figs: list[FigureRef] = []
    makers = []
    if main is not None:
        makers += [af.b1_kinks(data, main), af.success_vs_budget(main), af.success_bias_activation(main),
                   af.success_hidden_optimizer(main), af.success_all_cells(main)]
    if abl is not None:
        source = ablation if ablation is not None else data
        makers += [af.ablation_ladder(abl), af.ablation_fits(source, abl)]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for make in makers:
        ref = make(out)
        if ref is not None:
            figs.append(ref)
    tables: list[Table] = []
    if main is not None and len(main.frame):
        comp = comparison(main.frame)
        for key, order in (("bias", list(BIASES)), ("activation", list(ACTIVATIONS)), ("optimizer", list(OPTIMIZERS)),
                           ("hidden", sorted(comp["hidden"].unique()))):
            if comp[key].nunique() > 1:
                tables.append(_by(comp, key, order, f"by_{key}", f"Per {key}"))
        four = comp[(comp["hidden"] == 4) & (comp["bias"] == "both")]
        if len(four):
            tables.append(cell_display(four.sort_values(["optimizer", "activation"]), "four_units",
                                       "Four hidden units, both biases: every cell",
                                       "Each cell on its own confirmation seeds (Wilson interval: seeds of one "
                                       "configuration)."))
        ctrl = main.frame[main.frame["control"]]
        if len(ctrl):
            tables.append(_by(ctrl, "activation", list(ACTIVATIONS), "control", "The control arm",
                              which="The control arm's confirmed cells only"))
        tables.append(Table("cells", "Every cell", "One row per cell (also the control arm), from its confirmation "
                            "trial.", main.frame[[c for c in CELL_COLUMNS if c in main.frame]], pd.DataFrame()))
    if abl is not None and len(abl.frame):
        frame = abl.frame.assign(changes=[json.dumps(c, default=str) for c in
                                          [_changes(data if ablation is None else ablation, t) for t in abl.frame["trial"]]])
        tables.append(cell_display(frame, "ablation", "The ablation, row by row",
                                   "Each row names its one change; confirmation seeds (Wilson interval)."))
        tables[-1].data = frame[[c for c in ABLATION_COLUMNS if c in frame]]
    if main is not None:
        tables.append(design_checks(data, main))
    intro = [Bullets([s.text for s in sentences])]
    body = [Section("The answer", intro),
            Section("The design", [Bullets(design_text(data, cells))]),
            Section("Figures", [FigureBlock(f) for f in figs] or [Para("No confirmed cell yet.")]),
            Section("Tables", [TableBlock(t) for t in tables if not t.display.empty] +
                    [Para("Machine-readable: [cells.csv](tables/cells.csv), "
                          + ("[ablation.csv](tables/ablation.csv), " if abl is not None else "")
                          + "[answer.json](answer.json), every trial in [trials.csv](tables/trials.csv).")])]
    return body, tables, {"study": data.name, "sentences": [s.as_dict() for s in sentences]}


def design_checks(data: StudyData, cells: Cells) -> Table:
    """What could mislead a reader of a designed study: unconfirmed cells, learning rates at an end
    of the tuning grid (a better one may lie outside it), diverged seeds, mixed provenance."""
    frame, rows = cells.frame, []
    rows.append(("unconfirmed cells", "warning" if cells.pending else "ok",
                 f"{cells.pending} cells have no confirmation yet" if cells.pending else
                 f"all {len(frame)} cells confirmed"))
    if len(frame) and "lr_at_edge" in frame:
        tuned = frame[frame["lrs_tried"] > 0]
        edge = tuned[tuned["lr_at_edge"]]
        per = ", ".join(f"{o} {int((edge['optimizer'] == o).sum())}/{int((tuned['optimizer'] == o).sum())}"
                        for o in OPTIMIZERS if (tuned["optimizer"] == o).any())
        rows.append(("learning rate at an end of the grid", "warning" if len(edge) else "ok",
                     f"{len(edge)} of {len(tuned)} tuned cells chose the smallest or largest lr tried ({per}); "
                     f"a value outside the grid might do better there, so their rates are lower bounds of what "
                     f"tuning could reach"))
    fin = data.finished
    for phase, what in (("tune", "tuning"), ("confirm", "confirmation")):
        part = fin[fin["phase"] == phase]
        seeds, div = int(part["n_seeds"].sum()), int(part["n_diverged"].sum())
        if seeds:
            rows.append((f"diverged seeds ({what})", "note" if phase == "tune" or div / seeds < 0.2 else "warning",
                         f"{div} of {seeds} {what} seeds diverged ({fmt.pct(div / seeds)})"))
    for col, what in (("device", "devices"), ("torch", "torch versions"), ("spec_hash", "spec hashes")):
        values = fin[col].dropna().unique()
        if len(values) > 1:
            rows.append((f"provenance: {col}", "warning" if col == "spec_hash" else "note",
                         f"trials ran with several {what}: {', '.join(map(str, values))}"))
    raw = pd.DataFrame(rows, columns=["check", "status", "finding"])
    return Table("checks", "What could mislead", "Checks of the design's data.", raw, raw)


def _changes(data: StudyData, trial: int) -> dict:
    from sweeps.study.record import read

    return read(data.frozen[int(trial)]).cell.get("changes") or {}
