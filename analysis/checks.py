"""Checks that keep the report honest (the tuning playbook's): is the answer an artefact of the search?

- the best trial's numeric values sitting at the edge of the search space (outer 5 % of a range,
  on the log scale for log ranges, or the first/last value of a numeric grid): the optimum may
  lie outside what was searched;
- the share of trials and seeds that diverged, and trials that failed or are still running;
- cells with fewer than THIN trials, and bias × activation combinations never tried;
- trials that ran from different spec hashes, devices or torch versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from . import fmt
from .load import StudyData
from .stats import THIN, best_first
from .tables import Table

EDGE = 0.05
DIVERGED_WARN = 0.2


@dataclass(frozen=True)
class Check:
    """One finding about the study: its name, `ok`/`warning`/`note`, and what was found."""
    name: str
    status: str  # "ok", "warning" or "note"
    finding: str


def best_number(data: StudyData) -> int | None:
    """The number of the study's best finished trial (None when none finished)."""
    fin = data.finished
    if fin.empty:
        return None
    return int(best_first(fin).iloc[0]["number"])


def _position(value: float, low: float, high: float, log: bool) -> float:
    if log:
        value, low, high = math.log10(value), math.log10(low), math.log10(high)
    return (value - low) / (high - low)


def edge_checks(data: StudyData) -> list[Check]:
    """One check per numeric searched key of the best trial."""
    number = best_number(data)
    if number is None:
        return []
    best = data.frozen[number]
    top = best_first(data.finished).head(10)
    out = []
    for key, dist in best.distributions.items():
        value = best.params[key]
        grid = (data.space.get(key) or {}).get("grid")
        if isinstance(dist, CategoricalDistribution) or grid:
            choices = list(grid or dist.choices)  # type: ignore[union-attr]
            if len(choices) <= 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
                continue
            lo, hi = min(choices), max(choices)
            side = "lowest" if value == lo else "highest" if value == hi else None
            at_edge = (top[key] == value).sum() if key in top else 0
            where = f"the {side} of its grid values {fmt.value(lo)}..{fmt.value(hi)}" if side else \
                f"inside its grid values {fmt.value(lo)}..{fmt.value(hi)}"
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            if dist.high <= dist.low:
                continue
            pos = _position(float(value), float(dist.low), float(dist.high), dist.log)
            side = "lowest" if pos <= EDGE else "highest" if pos >= 1 - EDGE else None
            scale = "log " if dist.log else ""
            show = fmt.lr if key == "lr" else fmt.value
            if key in top:
                top_pos = top[key].astype(float).map(lambda v: _position(v, float(dist.low), float(dist.high), dist.log))
                at_edge = int(((top_pos <= EDGE) if side == "lowest" else (top_pos >= 1 - EDGE)).sum()) if side else 0
            else:
                at_edge = 0
            bounds = f"[{show(dist.low)}, {show(dist.high)}]"
            where = (f"in the {side} 5% of its {scale}range {bounds}" if side else
                     f"at {pos:.0%} of its {scale}range {bounds}")
        else:
            continue
        shown = fmt.lr(value) if key == "lr" else fmt.value(value)
        if side:
            out.append(Check(f"edge: {key}", "warning",
                             f"best trial #{number} has {key}={shown}, {where} ({at_edge} of the top {len(top)} "
                             f"too): the optimum may lie outside the searched space; widen it."))
        else:
            out.append(Check(f"edge: {key}", "ok", f"best trial #{number} has {key}={shown}, {where}."))
    return out


def failure_checks(data: StudyData) -> list[Check]:
    """Diverged, failed and unfinished trials: how many, and whether that is a warning."""
    trials, fin = data.trials, data.finished
    n_fin = len(fin)
    all_div = int((fin["state"] == "FAIL").sum())
    inf_med = int(((fin["state"] == "COMPLETE") & fin["value"].map(math.isinf)).sum())
    seeds = int(fin["n_seeds"].sum())
    div_seeds = int(fin["n_diverged"].sum())
    share = all_div / n_fin if n_fin else 0.0
    seed_share = div_seeds / seeds if seeds else 0.0
    status = "warning" if max(share, seed_share) > DIVERGED_WARN else "ok"
    out = [Check("diverged", status,
                 f"{all_div} of {n_fin} finished trials ({fmt.pct(share)}) had every seed diverge and are FAIL "
                 f"(counted with MSE inf); {inf_med} more have a median of inf (half or more of their seeds diverged); "
                 f"{div_seeds} of {seeds} seeds ({fmt.pct(seed_share)}) diverged in all.")]
    other = trials[(trials["state"] == "FAIL") & ~trials["finished"]]
    if len(other):
        reasons = other["fail_reason"].fillna("unknown").map(lambda r: str(r).split(":")[0]).value_counts()
        text = ", ".join(f"{n} {r}" for r, n in reasons.items())
        out.append(Check("failed", "note", f"{len(other)} trial(s) failed for other reasons ({text}) and are "
                                           f"left out; a later run redoes them."))
    pending = trials[trials["state"].isin(["RUNNING", "WAITING"])]
    if len(pending):
        out.append(Check("unfinished", "warning",
                         f"{len(pending)} trial(s) are RUNNING or WAITING: the study is still in progress "
                         f"(or a worker died); the report covers finished trials only."))
    return out


def thin_checks(data: StudyData, tables: list[Table]) -> list[Check]:
    """Cells of each table with fewer than THIN trials, and combinations never tried."""
    out = []
    for table in tables:
        raw = table.data
        if "thin" not in raw:
            continue
        keys = [c for c in raw.columns if c not in _CELL_COLUMNS]
        thin = raw[raw["thin"]]
        label = " × ".join(keys)
        if thin.empty:
            out.append(Check(f"thin cells: {label}", "ok", f"every one of {len(raw)} cells has at least {THIN} trials."))
        else:
            names = [f"{'/'.join(fmt.value(r[k]) for k in keys)} ({r['trials']})" for _, r in thin.iterrows()]
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            out.append(Check(f"thin cells: {label}", "warning",
                             f"{len(thin)} of {len(raw)} cells have fewer than {THIN} trials: {shown}."))
        if len(keys) == 2:
            seen = set(zip(raw[keys[0]], raw[keys[1]]))
            missing = [f"{a}/{b}" for a in dict.fromkeys(raw[keys[0]]) for b in dict.fromkeys(raw[keys[1]])
                       if (a, b) not in seen]
            if missing:
                out.append(Check(f"empty cells: {label}", "warning",
                                 f"{len(missing)} combination(s) never tried: {', '.join(missing[:12])}"
                                 + (" …" if len(missing) > 12 else "") + "."))
    return out


_CELL_COLUMNS = {"trials", "fitting_trials", "seeds", "successes", "success_rate", "ci_low", "ci_high", "diverged",
                 "diverged_share", "median_mse", "best_mse", "best_trial", "best_trial_success", "thin"}


def provenance_checks(data: StudyData) -> list[Check]:
    """Whether the finished trials ran from one spec hash, device and torch version."""
    fin = data.finished
    out = []
    for col, what in (("spec_hash", "spec hashes"), ("device", "devices"), ("torch", "torch versions")):
        counts = fin[col].dropna().value_counts()
        if len(counts) > 1:
            text = ", ".join(f"{k} ({v})" for k, v in counts.items())
            status = "warning" if col == "spec_hash" else "note"
            out.append(Check(f"provenance: {col}", status, f"trials ran with several {what}: {text}."))
        elif len(counts) == 1:
            out.append(Check(f"provenance: {col}", "ok", f"all finished trials: {counts.index[0]}."))
    return out


def run_checks(data: StudyData, tables: list[Table]) -> list[Check]:
    """Every check, in report order."""
    return edge_checks(data) + failure_checks(data) + thin_checks(data, tables) + provenance_checks(data)


def checks_table(checks: list[Check]) -> Table:
    """The checks as a report table."""
    raw = pd.DataFrame([vars(c) for c in checks], columns=["name", "status", "finding"])
    shown = raw.rename(columns={"name": "check", "status": "status", "finding": "finding"})
    caption = (f"Edge: the best trial's numeric values against the searched range (outer {EDGE:.0%}, log scale for "
               f"log ranges). Thin: cells with fewer than {THIN} trials. Diverged: a warning above "
               f"{DIVERGED_WARN:.0%} of trials or seeds.")
    return Table("checks", "What could mislead", caption, raw, shown)
