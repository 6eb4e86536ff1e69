"""The summary in words, computed from the data: the best configuration, one sentence per key.

Every number in a sentence comes from the tables (pooled success with its Wilson interval, best
median MSE per value); a value whose cell has fewer than THIN trials is reported as "too few
trials" instead of a rate. Inline `code` and **bold** are the only markup (rendered by `render`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from . import fmt
from .checks import Check
from .importance import Importances, sentence as importance_sentence
from .load import StudyData
from .stats import HIDDEN_BIN, LR_BIN, THIN, best_first, order, pooled
from .tables import Table, fixed_settings, varying_keys

LABELS = {"hidden": "Hidden size", "bias": "Bias placement", "activation": "Activation", "optimizer": "Optimizer",
          "lr": "Learning rate (by decade)", "data": "Training data", "loss": "Loss reduction", "init": "Init",
          "scaling": "Input scaling", "steps": "Steps", "precision": "Precision",
          "bias_copies": "Bias copies (the answer's duplicated bias)", "abstol": "abstol (second order)",
          "reltol": "reltol (second order)"}
CONFIG_SHOWN = ["hidden", "bias", "activation", "optimizer", "lr"]
# A `sin` hidden unit represents the target exactly (w1 = 1, w2 = 1, no bias at all), so its successes say
# nothing about the activations the question is about; contrasts are also given without it.
EXACT = "sin"


def without_exact(data: StudyData) -> pd.DataFrame | None:
    """Finished trials of other activations, when the study has both `sin` and others; else None."""
    fin = data.finished
    if "activation" not in varying_keys(data) or not (fin["activation"] == EXACT).any():
        return None
    return fin[fin["activation"] != EXACT]


def _rate(r: dict[str, Any] | pd.Series) -> str:
    return f"{fmt.rate_ci(r['success_rate'], r['ci_low'], r['ci_high'])} of seeds over {int(r['trials'])} trials"


def _lr_range(lrs: pd.Series) -> str:
    lo, hi = fmt.lr(lrs.min()), fmt.lr(lrs.max())
    return lo if lo == hi else f"{lo}..{hi}"


def headline(data: StudyData) -> str:
    """The study in one sentence: trials, seeds, the success threshold, how many fit, time."""
    fin = data.finished
    p = pooled(fin, pd.Series(True, index=fin.index))
    fits = int((fin["value"] < data.threshold).sum())
    seeds = data.spec.get("seeds") or (int(fin["n_seeds"].max()) if len(fin) else 0)
    sampler = f"{data.spec['sampler']} sampler, " if data.spec.get("sampler") else ""
    total = fin["wall_time_s"].astype(float).sum()
    return (f"{len(fin)} finished trials ({sampler}{seeds} seeds each); a seed *fits* when its test MSE on "
            f"1001 points over [0, 10] is under {fmt.mse(data.threshold)}. {fits} trials ({fmt.pct(fits / len(fin))}) "
            f"fit with their median seed; {fmt.rate_ci(p['rate'], p['ci_low'], p['ci_high'])} of all seeds fit "
            f"(95% Wilson interval). Training took {fmt.seconds(total)} in all.")


def best_sentence(data: StudyData, frame: pd.DataFrame | None = None, label: str = "Best configuration") -> str:
    """The best trial of `frame` (default: every finished trial), with its numbers."""
    fin = data.finished if frame is None else frame
    row = best_first(fin).iloc[0]
    number = int(row["number"])
    cfg = fmt.config(row.to_dict(), [k for k in CONFIG_SHOWN if k in varying_keys(data)] or CONFIG_SHOWN)
    size = "" if pd.isna(row["n_params"]) else f", {fmt.value(row['n_params'])} parameters"
    where = f" (its share of a batched round on {row['device']})" if isinstance(row.get("device"), str) else ""
    return (f"**{label}**: trial #{number}, {cfg}: median test MSE {fmt.mse(row['value'])} over "
            f"{int(row['n_seeds'])} seeds, {int(row['n_success'])}/{int(row['n_seeds'])} seeds fit "
            f"({fmt.pct(row['success_rate'])}){size}, {fmt.seconds(row['wall_time_s'])} of training{where}.")


def smallest_sentence(data: StudyData) -> str | None:
    """The fitting trial with the fewest parameters (or that none fits)."""
    fin = data.finished
    fitting = fin[fin["value"] < data.threshold]
    if fitting.empty:
        return f"**No trial fits**: no median test MSE is under {fmt.mse(data.threshold)}."
    fitting = fitting[fitting["n_params"].notna()]
    if fitting.empty:
        return None
    row = fitting.sort_values(["n_params", "value"]).iloc[0]
    cfg = fmt.config(row.to_dict(), CONFIG_SHOWN)
    return (f"**Smallest network that fits**: trial #{int(row['number'])} with {fmt.value(row['n_params'])} parameters "
            f"({cfg}): median test MSE {fmt.mse(row['value'])}, {int(row['n_success'])}/{int(row['n_seeds'])} seeds fit.")


def key_sentence(key: str, table: Table) -> str:
    """Which values fit best and worst, with the rest in between; thin cells say so."""
    raw = table.data
    col = {"hidden": HIDDEN_BIN, "lr": LR_BIN}.get(key, key)
    name = LABELS.get(key, key)
    solid = raw[~raw["thin"]]
    thin = raw[raw["thin"]]
    thin_text = "; ".join(f"`{fmt.value(r[col])}`: too few trials ({int(r['trials'])})" for _, r in thin.iterrows())
    if solid.empty:
        return f"**{name}**: too few trials in every cell ({thin_text})."
    if key in ("hidden", "lr"):
        # Ordered keys read best in their own order: the trend is the point.
        parts = [f"`{fmt.value(r[col])}` {fmt.pct(r['success_rate'])} ({int(r['trials'])} trials, best "
                 f"{fmt.mse(r['best_mse'])})" for _, r in solid.iterrows()]
        text = f"**{name}**: seeds fit " + ", ".join(parts)
    else:
        ranked = solid.sort_values(["success_rate", "best_mse"], ascending=[False, True])
        top, bottom = ranked.iloc[0], ranked.iloc[-1]
        text = (f"**{name}**: `{fmt.value(top[col])}` fits most often ({_rate(top)}; best median MSE "
                f"{fmt.mse(top['best_mse'])})")
        if len(ranked) > 1:
            text += (f", `{fmt.value(bottom[col])}` least ({_rate(bottom)}; best {fmt.mse(bottom['best_mse'])})")
        middle = ranked.iloc[1:-1]
        if len(middle):
            text += "; in between " + ", ".join(
                f"`{fmt.value(r[col])}` {fmt.pct(r['success_rate'])} (best {fmt.mse(r['best_mse'])})" for _, r in middle.iterrows())
    return text + (f"; {thin_text}" if thin_text else "") + "."


def _pooled_text(p: dict[str, float]) -> str:
    if p["trials"] < THIN:
        return f"too few trials ({int(p['trials'])})"
    return f"{fmt.rate_ci(p['rate'], p['ci_low'], p['ci_high'])} of seeds over {int(p['trials'])} trials"


def bias_sentences(data: StudyData) -> list[str]:
    """The question's own contrasts: with and without each bias (also without `sin` units), ReLU without b1."""
    fin = data.finished
    others = without_exact(data)
    out = []
    for what, values in (("a hidden bias (b1: `hidden`, `both`)", ("hidden", "both")),
                         ("an output bias (b2: `output`, `both`)", ("output", "both"))):
        has = fin["bias"].isin(values)
        text = f"With {what}: {_pooled_text(pooled(fin, has))}; without: {_pooled_text(pooled(fin, ~has))}"
        if others is not None and len(others):
            has_o = others["bias"].isin(values)
            text += (f". Leaving out `{EXACT}` units: with {_pooled_text(pooled(others, has_o))}; "
                     f"without {_pooled_text(pooled(others, ~has_o))}")
        out.append(text + ".")
    if "activation" in fin and (fin["activation"] == "relu").any():
        relu = (fin["activation"] == "relu") & fin["bias"].isin(("none", "output"))
        p = pooled(fin, relu)
        best = fin.loc[relu, "value"].min() if relu.any() else math.nan
        out.append(f"ReLU without a hidden bias (the question's low-level program; on x > 0 such a net is a straight "
                   f"line, so it cannot bend into a sine): {_pooled_text(p)}"
                   + (f", best median MSE {fmt.mse(best)}." if p["trials"] >= THIN else "."))
    return out


def lr_sentence(data: StudyData) -> str | None:
    """The learning rates of the fitting trials, per optimizer (None when lr is not searched)."""
    fin = data.finished
    if "lr" not in varying_keys(data):
        return None
    fitting = fin[fin["value"] < data.threshold]
    if fitting.empty:
        return "**Learning rate** (tuned per configuration): no trial fits at any learning rate tried."
    text = (f"**Learning rate** (tuned per configuration, a nuisance): the {len(fitting)} fitting trials used lr "
            f"{_lr_range(fitting['lr'])}")
    if "optimizer" in varying_keys(data):
        parts = []
        for opt in order("optimizer", fin["optimizer"].tolist(), data.space):
            grp = fin[fin["optimizer"] == opt]
            fits = grp[grp["value"] < data.threshold]
            if len(grp) < THIN:
                parts.append(f"`{opt}` too few trials ({len(grp)})")
            elif fits.empty:
                parts.append(f"`{opt}` none of {len(grp)} trials fit")
            else:
                parts.append(f"`{opt}` {_lr_range(fits['lr'])} ({len(fits)} of {len(grp)} trials fit)")
        text += "; by optimizer: " + ", ".join(parts)
    return text + "."


def caveat(data: StudyData) -> str:
    """What the sampler does to pooled rates."""
    if data.spec.get("sampler") == "tpe":
        return ("TPE spends more trials where it has found good values, so pooled rates compare each choice over the "
                "learning rates and sizes the search happened to try; the best MSE compares choices at their best "
                "settings found.")
    return "Pooled rates average each choice over every learning rate and size of the search."


def sentences(data: StudyData, tables: dict[str, Table], importances: Importances,
              checks: list[Check]) -> list[tuple[str, list[str]]]:
    """The summary in three groups, in reading order: the answer, each choice, how far to trust it."""
    short = [headline(data), best_sentence(data)]
    others = without_exact(data)
    if others is not None and len(others):
        short.append(best_sentence(data, others, f"Best without `{EXACT}` units")[:-1]
                     + f"; a `{EXACT}` unit can represent the target exactly, so the question's activations are "
                       f"judged by this one.")
    smallest = smallest_sentence(data)
    if smallest:
        short.append(smallest)
    choices: list[str] = []
    for key in varying_keys(data):
        table = tables.get(f"by_{key}")
        if table is not None:
            choices.append(key_sentence(key, table))
        if key == "bias":
            choices.extend(bias_sentences(data))
    lr = lr_sentence(data)
    if lr:
        choices.append(lr)
    fixed = fixed_settings(data)
    for key in ("bias", "activation", "optimizer", "hidden"):
        if key in fixed:
            choices.append(f"**{LABELS[key]}** is fixed at `{fmt.value(fixed[key])}` in this study: it says nothing "
                           f"about it.")
    trust = [caveat(data), importance_sentence(importances)]
    warned = [c for c in checks if c.status == "warning"]
    if warned:
        trust.append(f"**Checks**: {len(warned)} warning(s): " + "; ".join(c.name for c in warned)
                     + " (see Checks and importances).")
    else:
        trust.append("**Checks**: no warnings (best values inside the space, few divergences, no thin cells).")
    return [("In short", short), ("What each choice does", choices), ("How far to trust it", trust)]
