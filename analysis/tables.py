"""The report's tables: raw numbers for CSV, formatted text for HTML and Markdown.

Cell tables (bias × activation, one per varying key), the top-10 trials, the question's programs
(from a `seed-replay` study) and R's nnet reference. Keys that take one value in a study are
reported as fixed settings, not as table columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sweeps.study.record import read

from . import fmt
from .load import StudyData
from .stats import HIDDEN_BIN, LR_BIN, THIN, add_bins, best_first, cells, wilson

# The question's order: bias placement, activation, optimizer, size; then the nuisance learning rate and
# the settings usually fixed per sweep.
KEY_ORDER = ("bias", "activation", "optimizer", "hidden", "lr", "data", "loss", "init", "scaling", "steps",
             "precision", "bias_copies", "abstol", "reltol")
BIN_OF = {"hidden": HIDDEN_BIN, "lr": LR_BIN}
TOP = 10
UNUSED = "unused"  # a row's setting that its optimizer ignores (fmt.UNUSED_BY)
UNUSED_NOTE = ("'unused': the row's optimizer ignores that setting (bfgs and lm have no learning rate and always "
               "compute in float64; first-order optimizers have no stopping tolerances).")


@dataclass
class Table:
    """One table: `data` goes to tables/<name>.csv, `display` into the HTML and Markdown."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame


def varying_keys(data: StudyData) -> list[str]:
    """Configuration keys with more than one value among finished trials, in KEY_ORDER."""
    fin = data.finished
    return [k for k in KEY_ORDER if k in fin and fin[k].nunique(dropna=True) > 1]


def fixed_settings(data: StudyData) -> dict[str, Any]:
    """Keys with a single value among finished trials (the spec's fixed settings, in effect)."""
    fin = data.finished
    out: dict[str, Any] = {}
    for k in KEY_ORDER:
        if k in fin and fin[k].nunique(dropna=True) == 1:
            out[k] = fin[k].dropna().iloc[0]
    return out


def cell_table(data: StudyData, by: list[str], name: str, title: str) -> Table:
    """Trials, fits, pooled success with CI, divergence and MSEs per cell of `by` (bins for hidden/lr)."""
    fin = add_bins(data.finished)
    cols = [BIN_OF.get(k, k) for k in by]
    raw = cells(fin, cols, data.threshold, data.space)
    shown = pd.DataFrame({c: raw[c].map(fmt.value) for c in cols})
    shown["trials"] = [f"{n} (too few)" if n < THIN else str(n) for n in raw["trials"]]
    shown["fitting trials"] = raw["fitting_trials"].map(str)
    shown["seeds fit [95% CI]"] = [fmt.rate_ci(r, lo, hi) for r, lo, hi in
                                   zip(raw["success_rate"], raw["ci_low"], raw["ci_high"])]
    shown["diverged seeds"] = raw["diverged_share"].map(fmt.pct)
    shown["median MSE"] = raw["median_mse"].map(fmt.mse)
    shown["best MSE"] = raw["best_mse"].map(fmt.mse)
    shown["best trial (its seeds fit)"] = [f"#{int(n)} ({fmt.pct(s)})" for n, s in
                                          zip(raw["best_trial"], raw["best_trial_success"])]
    caption = (f"Finished trials per cell. A trial fits when its median test MSE is under {fmt.mse(data.threshold)}; "
               f"'seeds fit' pools every seed of the cell's trials (95% Wilson interval). Median and best MSE are "
               f"over the trials' median-over-seeds values; 'inf' means at least half the seeds diverged. "
               f"Cells with fewer than {THIN} trials support no claim.")
    ignored = sorted({o for o in fin.get("optimizer", pd.Series(dtype=object)).dropna() if not fmt.used("lr", o)})
    if "lr" in by and ignored:
        caption += (f" {'/'.join(ignored)} have no learning rate: their trials sit in the decade of the lr the "
                    f"sampler drew, which they ignore.")
    return Table(name, title, caption, raw, shown)


def _setting(row: pd.Series, key: str) -> str:
    """A row's value of `key` as shown, or 'unused' where its optimizer ignores the setting."""
    if not fmt.used(key, row.get("optimizer")):
        return UNUSED
    return fmt.lr(row[key]) if key == "lr" else fmt.value(row[key])


def top_table(data: StudyData, keys: list[str]) -> Table:
    """The ten best finished trials with the keys that vary."""
    fin = best_first(data.finished).head(TOP)
    raw = fin[["number", "value", "success_rate", "n_success", "n_seeds", "n_params", "wall_time_s", *KEY_ORDER]]
    shown = pd.DataFrame({"trial": fin["number"].map(lambda n: f"#{n}"),
                          "median MSE": fin["value"].map(fmt.mse),
                          "seeds fit": [f"{s}/{n}" for s, n in zip(fin["n_success"], fin["n_seeds"])],
                          "params": fin["n_params"].map(fmt.value)})
    for k in keys:
        shown[k] = [_setting(row, k) for _, row in fin.iterrows()]
    shown["train time"] = fin["wall_time_s"].map(fmt.seconds)
    fixed = fixed_settings(data)
    optimizers = fin["optimizer"].dropna().tolist() if "optimizer" in fin else []
    caption = ("The ten best finished trials by median test MSE over seeds. Train time is the trial's share of "
               "its batch's wall time." + (f" Fixed in this study: {fmt.settings(fixed, optimizers)}." if fixed else "")
               + (f" {UNUSED_NOTE}" if any(UNUSED in shown[k].values for k in keys) else ""))
    return Table("top10", f"Top {TOP} configurations", caption, raw.reset_index(drop=True), shown.reset_index(drop=True))


def study_tables(data: StudyData) -> list[Table]:
    """Bias × activation, one table per varying key, and the top 10, in report order."""
    keys = varying_keys(data)
    tables: list[Table] = []
    if "bias" in keys and "activation" in keys:
        tables.append(cell_table(data, ["bias", "activation"], "by_bias_activation", "Per bias placement × activation"))
    names = {"hidden": "hidden size (bins of powers of two)", "lr": "learning-rate decade",
             "bias": "bias placement"}
    for k in keys:
        tables.append(cell_table(data, [k], f"by_{k}", f"Per {names.get(k, k)}"))
    tables.append(top_table(data, keys))
    return tables


def trials_csv(data: StudyData) -> pd.DataFrame:
    """Every trial as a row (the CSV behind all tables)."""
    return data.trials.drop(columns=["started"]).assign(started=data.trials["started"].astype(str))


def _label_attrs(replay: StudyData) -> list[str]:
    """Short text attributes of the replayed trials (e.g. a program's name), whatever they are called."""
    names: dict[str, None] = {}
    for t in replay.frozen.values():
        names.update(dict.fromkeys(read(t).labels))
    return list(names)


def programs_table(replay: StudyData) -> Table:
    """One row per trial of the `seed-replay` study: its configuration, median MSE and success."""
    trials = replay.trials.sort_values("number")
    labels = _label_attrs(replay)
    raw = trials[["number", "state", "value", "n_success", "n_seeds", "success_rate", "n_params", *KEY_ORDER]].copy()
    for k in labels:
        raw[k] = [read(replay.frozen[n]).labels.get(k) for n in trials["number"]]
    low, high = wilson(raw["n_success"].to_numpy(), raw["n_seeds"].to_numpy())
    raw["ci_low"], raw["ci_high"] = low, high
    shown = pd.DataFrame({"trial": trials["number"].map(lambda n: f"#{n}")})
    for k in labels:
        shown[k] = raw[k].map(fmt.value)
    for k in KEY_ORDER:
        shown[k] = [_setting(row, k) for _, row in raw.iterrows()]
    shown["median MSE"] = [fmt.mse(v) if f else f"({s.lower()})"
                           for v, f, s in zip(raw["value"], trials["finished"], raw["state"])]
    shown["seeds fit [95% CI]"] = [f"{s}/{n}: {fmt.rate_ci(r, lo, hi)}" for s, n, r, lo, hi in
                                   zip(raw["n_success"], raw["n_seeds"], raw["success_rate"], low, high)]
    shown["params"] = raw["n_params"].map(fmt.value)
    caption = (f"Every trial of study `{replay.name}`: the question's programs (and nnet's recipe) run as fixed "
               f"trials. Success: test MSE under {fmt.mse(replay.threshold)} per seed, 95% Wilson interval. {UNUSED_NOTE}")
    return Table("question_programs", "The question's programs side by side", caption,
                 raw.reset_index(drop=True), shown.reset_index(drop=True))


def nnet_table(frame: pd.DataFrame, threshold: float) -> Table:
    """R's own nnet per data set: runs, median and best test MSE, share of runs that fit, time."""
    rows = []
    for data_name, grp in frame.groupby("data", sort=True):
        mses = grp["test_mse"]
        k, n = int((mses < threshold).sum()), len(grp)
        low, high = wilson(k, n)
        rows.append({"data": data_name, "runs": n, "median_mse": mses.median(), "best_mse": mses.min(),
                     "fits": k, "success_rate": k / n if n else math.nan, "ci_low": float(low),
                     "ci_high": float(high),
                     "median_seconds": grp["seconds"].median() if "seconds" in grp else math.nan})
    raw = pd.DataFrame(rows, columns=["data", "runs", "median_mse", "best_mse", "fits", "success_rate", "ci_low",
                                      "ci_high", "median_seconds"])
    shown = pd.DataFrame({"data": raw["data"], "runs": raw["runs"].map(str),
                          "median test MSE": raw["median_mse"].map(fmt.mse),
                          "best test MSE": raw["best_mse"].map(fmt.mse),
                          "runs fit [95% CI]": [f"{k}/{n}: {fmt.rate_ci(r, lo, hi)}" for k, n, r, lo, hi in
                                                zip(raw["fits"], raw["runs"], raw["success_rate"], raw["ci_low"],
                                                    raw["ci_high"])],
                          "median time": raw["median_seconds"].map(fmt.seconds)})
    caption = (f"R's own `nnet` (the question's working program), one row per data set over the runs in "
               f"nnet_reference.csv; a run fits when its test MSE is under {fmt.mse(threshold)} (95% Wilson interval).")
    return Table("nnet_reference", "R's nnet", caption, raw, shown)
