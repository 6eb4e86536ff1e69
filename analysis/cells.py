"""A designed study's cells: one row per cell, from its confirmation trial only.

Every comparison of the answer reads this frame. A cell's numbers come from the trial that
confirmed its chosen learning rate on fresh seeds (`sweeps.study.design`), never from its tuning
trials, so the choice of the learning rate does not inflate them. Columns: the cell's keys (the
crossed scientific choices, or an ablation `row`), `control`, the chosen `lr` (NaN where the
optimizer has none), `seeds`, `fits` and the Wilson interval of the rate, the median test MSE,
median gradient evaluations, median seconds per fit, and `fit_by_<s>`: seeds whose test MSE was
under the threshold by step (iteration) s, for every recorded checkpoint. `tuning` says how the
learning rate was chosen (values tried; whether the choice sits at an edge of the grid).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeps.config import ACTIVATIONS, BIASES, OPTIMIZERS
from sweeps.study.record import read

from .load import StudyData
from .stats import wilson

CONFIRM, TUNE = "confirm", "tune"


@dataclass(frozen=True)
class Cells:
    """The confirmed cells of a designed study, and what the design was."""

    frame: pd.DataFrame
    keys: list[str]  # the columns that identify a cell
    checkpoints: list[int]
    pending: int  # cells still without a finished confirmation
    tuned: str | None


def design_of(data: StudyData) -> dict:
    """The stored `[design]` of a study's spec (empty for other studies)."""
    return dict(data.spec.get("design") or {})


def confirmed(data: StudyData) -> Cells:
    """One row per cell with a finished confirmation trial (see the module docstring)."""
    design = design_of(data)
    keys = list(design.get("crossed") or []) or ["row"]
    fin = data.finished
    conf = fin[fin["phase"] == CONFIRM]
    rows = []
    points: list[int] = []
    for _, row in conf.iterrows():
        rec = read(data.frozen[int(row["number"])])
        points = rec.checkpoints or points
        mses = [math.inf if m is None else float(m) for m in rec.seeds.test_mse]
        k, n = sum(m < data.threshold for m in mses), len(mses)
        low, high = wilson(k, n)
        second_order = rec.params.get("lr") is None
        out = {key: rec.params.get(key, row.get(key)) for key in keys}
        out.update({
            "cell": row["cell"], "control": bool(row["control"]), "ladder": row["ladder"], "trial": int(row["number"]),
            "bias": row["bias"], "activation": row["activation"], "optimizer": row["optimizer"],
            "hidden": int(row["hidden"]), "data": row["data"], "steps": int(row["steps"]),
            "lr": math.nan if second_order else float(rec.params["lr"]),
            "seeds": n, "fits": k, "success_rate": k / n if n else math.nan, "ci_low": float(low),
            "ci_high": float(high), "median_mse": float(statistics.median(mses)) if mses else math.nan,
            "median_steps": row["median_steps"], "median_evals": row["median_evals"],
            "seconds_per_fit": row["seconds_per_fit"],
            "n_params": row["n_params"],
        })
        out.update(_by_checkpoint(rec.seeds.test_at, rec.checkpoints, data.threshold))
        out.update(_tuning(rec.tuned_from, data))
        rows.append(out)
    frame = pd.DataFrame(rows)
    labels = [r.get("label") for r in design.get("rows") or []]
    if labels and len(frame):  # an ablation reads in its spec's order, not in the order rows finished
        frame = frame.assign(_order=frame["cell"].map({label: i for i, label in enumerate(labels)}))
        frame = frame.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    planned = len(set(data.trials["cell"].dropna()))  # every cell shows up in tuning or confirmation
    return Cells(frame=frame, keys=keys, checkpoints=points, pending=max(planned - len(frame), 0),
                 tuned=design.get("tuned"))


def _by_checkpoint(test_at: list[list[float | None]], points: list[int], threshold: float) -> dict[str, int]:
    """Seeds whose test MSE was under the threshold by each checkpoint (a stopped seed keeps its value)."""
    out = {}
    for j, step in enumerate(points):
        out[f"fit_by_{step}"] = sum(1 for seed in test_at if j < len(seed) and seed[j] is not None
                                    and seed[j] < threshold)
    return out


def _tuning(tuned_from: list[list], data: StudyData) -> dict[str, object]:
    """How a cell's learning rate was chosen: values tried, and whether the choice is at an edge."""
    if not tuned_from:
        return {"lrs_tried": 0, "lr_at_edge": False}
    lrs = sorted(float(t[0]) for t in tuned_from)
    best = min(tuned_from, key=lambda t: (-int(t[1]), t[2] if t[2] is not None else math.inf, float(t[0])))
    edge = float(best[0]) in (lrs[0], lrs[-1]) and len(lrs) > 2
    return {"lrs_tried": len(lrs), "lr_at_edge": bool(edge), "tuning_fits": int(best[1])}


def grid_axes(cells: Cells) -> tuple[list, list, list, list] | None:
    """The tiles of the every-cell figure: (biases, activations, hidden sizes, optimizers) present,
    in the vocabulary's order; None unless the design crosses all four."""
    frame = cells.frame
    if frame.empty or not {"bias", "activation", "hidden", "optimizer"} <= set(cells.keys):
        return None
    return ([b for b in BIASES if (frame["bias"] == b).any()], [a for a in ACTIVATIONS if (frame["activation"] == a).any()],
            sorted(frame["hidden"].unique()), [o for o in OPTIMIZERS if (frame["optimizer"] == o).any()])


def comparison(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that take part in comparisons: everything but the control arm."""
    return cells[~cells["control"]] if len(cells) else cells


def counts(frame: pd.DataFrame, column: str = "fits") -> tuple[np.ndarray, np.ndarray]:
    """(fits, seeds) arrays of a frame of cells, for `units.over_cells`."""
    return frame[column].to_numpy(dtype=float), frame["seeds"].to_numpy(dtype=float)


def matched(frame: pd.DataFrame, key: str, a: str, b: str, match: list[str]) -> tuple[list, list, list, list]:
    """Matched cells that differ only in `key` (a, then b): their fits and seeds."""
    left = frame[frame[key] == a].set_index(match)
    right = frame[frame[key] == b].set_index(match)
    common = left.index.intersection(right.index)
    return (left.loc[common, "fits"].tolist(), left.loc[common, "seeds"].tolist(),
            right.loc[common, "fits"].tolist(), right.loc[common, "seeds"].tolist())
