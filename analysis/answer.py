"""The answer to the question, in at most eight sentences, each computed from the data it cites.

Inputs: the confirmed cells of the designed study (`cells.confirmed`: every comparison reads the
confirmation runs only) and, when it was run, the ablation's rows. Each sentence carries its
numbers, a 95% interval that says what it pools (`units`: seeds of one configuration, or cells as
the units), and links to the table or figure behind it. A sentence whose evidence is missing says
so instead of stating a finding; the `sin` control arm never enters a comparison and has a sentence
of its own. The wording follows the data: an effect whose interval includes 0 is reported as not
detected, never as a finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import fmt
from .cells import Cells, comparison, counts, matched
from .stats import wilson
from .units import Estimate, bonferroni_z, one_cell, over_cells, paired

HIDDEN_BIAS = ("hidden", "both")
OUTPUT_BIAS = ("output", "both")
FIRST_ORDER = ("sgd", "momentum", "adam", "rmsprop")
QUESTION_SIZE = 4
RELIABLE = 0.5  # a cell fits reliably when its Wilson lower bound clears this share of seeds
CELLS_CSV = "tables/cells.csv"
ABLATION_CSV = "tables/ablation.csv"


@dataclass
class Sentence:
    """One sentence of the answer: its text (inline markup), its numbers and its sources."""

    id: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "numbers": self.numbers, "sources": self.sources}


def _link(text: str, href: str) -> str:
    return f"[{text}]({href})"


def _fig(name: str) -> str:
    return f"#figure-{name}"


def _est(e: Estimate) -> str:
    """An estimate as the answer writes it: the rate, its interval and what it pools."""
    return f"{e.percent()} ({e.unit}, {e.cells} cells)" if e.cells != 1 else f"{e.percent()}"


def b1_sentence(cells: Cells) -> Sentence | None:
    """Whether the hidden bias b1 is needed, and why (the units' kinks and centres sit at x = 0)."""
    comp = comparison(cells.frame)
    if comp.empty or comp["bias"].nunique() < 2:
        return None
    has = comp["bias"].isin(HIDDEN_BIAS)
    with_b1, without = over_cells(*counts(comp[has])), over_cells(*counts(comp[~has]))
    match = ["activation", "optimizer", "hidden"]
    ka, na, kb, nb = [], [], [], []
    for a, b in (("none", "hidden"), ("output", "both")):
        p = matched(comp, "bias", a, b, match)
        ka += p[0]; na += p[1]; kb += p[2]; nb += p[3]  # noqa: E702
    diff = paired(ka, na, kb, nb)
    any_without = int((comp[~has]["fits"] > 0).sum())
    n_without = int((~has).sum())
    why = (f"Without b1 each unit's kink (ReLU) or centre (tanh, sigmoid, gelu, softplus) sits at x = 0: a ReLU "
           f"net is then exactly a straight line on (0, 10], and smooth units can bend only near 0, at a scale set "
           f"by their weights, not at the turns of sin(x) ({_link('figure', _fig('b1_kinks'))})")
    if without.high < 0.05 and diff.excludes_zero():
        head = (f"**A hidden bias b1 is needed.** Without it {any_without} of {n_without} cells fit any seed and "
                f"{_est(without)} of seeds fit; with it {_est(with_b1)} ({diff.percent()} over {diff.cells} "
                f"matched cells)")
    elif diff.excludes_zero() and diff.value > 0:
        head = (f"**The hidden bias b1 helps**: with it {_est(with_b1)} of seeds fit, without it {_est(without)} "
                f"({diff.percent()} over {diff.cells} matched cells)")
    elif diff.excludes_zero():
        head = (f"**The hidden bias b1 lowers success here**: with it {_est(with_b1)}, without it {_est(without)} "
                f"({diff.percent()} over {diff.cells} matched cells)")
        why = "This contradicts the usual argument; check the cells table"
    else:
        head = (f"**No detectable effect of the hidden bias b1**: with it {_est(with_b1)}, without it "
                f"{_est(without)} ({diff.percent()} over {diff.cells} matched cells)")
        why = "The data cannot say whether b1 is needed"
    return Sentence("b1", f"{head}. {why} ({_link('cells', CELLS_CSV)}).",
                    {"with_b1": with_b1.as_dict(), "without_b1": without.as_dict(), "difference": diff.as_dict(),
                     "cells_without_b1_with_any_fit": any_without, "cells_without_b1": n_without},
                    [CELLS_CSV, _fig("b1_kinks")])


def b2_sentence(cells: Cells) -> Sentence | None:
    """Whether the output bias b2 matters once b1 is there."""
    comp = comparison(cells.frame)
    if not {"hidden", "both"} <= set(comp["bias"]):
        return None
    ka, na, kb, nb = matched(comp, "bias", "hidden", "both", ["activation", "optimizer", "hidden"])
    diff = paired(ka, na, kb, nb)
    both = over_cells(*counts(comp[comp["bias"] == "both"]))
    only_b1 = over_cells(*counts(comp[comp["bias"] == "hidden"]))
    if diff.excludes_zero():
        verb = ("slightly " if abs(diff.value) < 0.1 else "") + ("raises" if diff.value > 0 else "lowers")
        head = (f"**The output bias b2 {verb} success** once b1 is there: {_est(both)} with both biases against "
                f"{_est(only_b1)} with b1 alone ({diff.percent()} over {diff.cells} matched cells)")
    else:
        head = (f"**The output bias b2 makes no detectable difference** once b1 is there: {_est(both)} with both "
                f"biases, {_est(only_b1)} with b1 alone ({diff.percent()} over {diff.cells} matched cells; sin(x) "
                f"on [0, 10] averages only 0.18, a level a unit's offset can supply)")
    return Sentence("b2", f"{head} ({_link('cells', CELLS_CSV)}, {_link('figure', _fig('success_bias_activation'))}).",
                    {"both": both.as_dict(), "b1_only": only_b1.as_dict(), "difference": diff.as_dict()},
                    [CELLS_CSV, _fig("success_bias_activation")])


def optimizer_sentence(cells: Cells) -> Sentence | None:
    """Which optimizers fit at the question's four units (both biases), and within which budget."""
    comp = comparison(cells.frame)
    four = comp[(comp["hidden"] == QUESTION_SIZE) & (comp["bias"] == "both")]
    if four.empty:
        return None
    budgets = [s for s in (1000, max(cells.checkpoints or [0])) if f"fit_by_{s}" in four]
    parts, numbers = [], {}
    ranked = sorted(four["optimizer"].unique(), key=lambda o: -four[four["optimizer"] == o]["success_rate"].mean())
    for opt in ranked:
        grp = four[four["optimizer"] == opt]
        final = over_cells(*counts(grp))
        numbers[opt] = {"final": final.as_dict(), "median_evals": float(grp["median_evals"].median()),
                        "seconds_per_fit": float(grp["seconds_per_fit"].median())}
        if opt in FIRST_ORDER and len(budgets) == 2 and budgets[0] < budgets[1]:
            early = over_cells(*counts(grp, f"fit_by_{budgets[0]}"))
            numbers[opt]["by_1000"] = early.as_dict()
            edge = int(grp["lr_at_edge"].sum()) if "lr_at_edge" in grp else 0
            caveat = f"; its tuned lr is at an end of the grid in {edge} of {len(grp)} cells" if edge else ""
            numbers[opt]["lr_at_edge"] = edge
            parts.append(f"`{opt}` {final.percent()} by {budgets[1]:,} steps ({early.percent()} by "
                         f"{budgets[0]:,}{caveat})")
        else:
            what = "Jacobian" if opt == "lm" else "gradient"
            parts.append(f"`{opt}` {final.percent()} (median {int(round(float(grp['median_evals'].median()))):,} "
                         f"{what} evaluations, {fmt.seconds(float(grp['seconds_per_fit'].median()))} a fit)")
    n_act = four["activation"].nunique()
    text = (f"**At four hidden units with both biases** (nnet's network; {n_act} activations' cells as units, 95% "
            f"intervals): " + "; ".join(parts) + f" ({_link('figure', _fig('success_vs_budget'))}, "
            f"{_link('cells', CELLS_CSV)}).")
    return Sentence("optimizers", text, numbers, [_fig("success_vs_budget"), CELLS_CSV])


def smallest_sentence(cells: Cells) -> Sentence | None:
    """The smallest hidden size at which some cell of each activation fits reliably."""
    comp = comparison(cells.frame)
    if comp.empty or comp["hidden"].nunique() < 2:
        return None
    parts, numbers = [], {}
    for act in comp["activation"].unique():
        grp = comp[comp["activation"] == act]
        found = None
        for h in sorted(grp["hidden"].unique()):
            at = grp[grp["hidden"] == h]
            z = bonferroni_z(len(at))
            low, _ = wilson(at["fits"].to_numpy(float), at["seeds"].to_numpy(float), z=z)
            ok = at.assign(low=low)[low > RELIABLE]
            if len(ok):
                found = (h, ok.sort_values(["low", "median_mse"], ascending=[False, True]).iloc[0], len(at))
                break
        if found is None:
            best = grp.sort_values(["median_mse", "fits"], ascending=[True, False]).iloc[0]
            parts.append(f"{act} at no size tried (up to {int(grp['hidden'].max())}; its best cell, `{best['optimizer']}` "
                         f"at {int(best['hidden'])} units, bias {best['bias']}, reaches a median MSE of "
                         f"{fmt.mse(best['median_mse'])} with {int(best['fits'])}/{int(best['seeds'])} seeds fit)")
            numbers[act] = None
        else:
            h, best, m = found
            parts.append(f"{act} {int(h)} (`{best['optimizer']}`, bias {best['bias']}: "
                         f"{int(best['fits'])}/{int(best['seeds'])})")
            numbers[act] = {"hidden": int(h), "optimizer": best["optimizer"], "bias": best["bias"],
                            "fits": int(best["fits"]), "seeds": int(best["seeds"]), "cells_at_size": m}
    text = (f"**Smallest network that fits reliably** (a cell whose Wilson lower bound over its seeds is above "
            f"{RELIABLE:.0%}, Bonferroni-adjusted over the bias × optimizer cells of each size): "
            + "; ".join(parts) + f" ({_link('figure', _fig('success_hidden_optimizer'))}, {_link('cells', CELLS_CSV)}).")
    return Sentence("smallest", text, numbers, [_fig("success_hidden_optimizer"), CELLS_CSV])


def tanh_sigmoid_sentence(cells: Cells) -> Sentence | None:
    """tanh and sigmoid nets with both biases are the same functions: any gap is optimization."""
    comp = comparison(cells.frame)
    both = comp[comp["bias"] == "both"]
    if not {"tanh", "sigmoid"} <= set(both["activation"]):
        return None
    ka, na, kb, nb = matched(both, "activation", "sigmoid", "tanh", ["optimizer", "hidden"])
    diff = paired(ka, na, kb, nb)
    identity = ("**With both biases, tanh and sigmoid nets represent the same functions** (tanh(z) = "
                "2·sigmoid(2z) − 1: weights doubled, b2 shifted), so any gap between them is optimization, not "
                "expressiveness")
    if diff.excludes_zero():
        who = "tanh" if diff.value > 0 else "sigmoid"
        size = "slightly " if abs(diff.value) < 0.1 else ""
        gap = f"here {who} fits {size}more often ({diff.percent()} tanh minus sigmoid over {diff.cells} matched cells)"
    else:
        gap = f"here no gap is detected ({diff.percent()} tanh minus sigmoid over {diff.cells} matched cells)"
    return Sentence("tanh_sigmoid", f"{identity}; {gap} ({_link('cells', CELLS_CSV)}).",
                    {"difference": diff.as_dict()}, [CELLS_CSV])


def _reliable(frame: pd.DataFrame, z: float | None = None) -> pd.Series:
    """Rows whose Wilson lower bound clears RELIABLE (z: the interval's, Bonferroni-adjusted by callers)."""
    low, _ = wilson(frame["fits"].to_numpy(float), frame["seeds"].to_numpy(float),
                    **({"z": z} if z is not None else {}))
    return pd.Series(low > RELIABLE, index=frame.index)


def ablation_sentence(ablation: Cells | None) -> Sentence:
    """Why the question's program fails and which single change helps most (from the ablation)."""
    if ablation is None or ablation.frame.empty:
        return Sentence("question", "**Why the question's program fails** is answered by the ablation study, which "
                                    "has not been run in this storage (`make sweep` runs it).", {}, [])
    frame = ablation.frame
    start, single = frame[frame["ladder"] == "start"], frame[frame["ladder"] == "one change"]
    if start.empty or single.empty:
        return Sentence("question", "**Why the question's program fails**: the ablation has no start row or no "
                                    "single-change rows yet.", {}, [ABLATION_CSV])
    base = start.iloc[0]
    text = (f"**The question's program fails**: it fits {int(base['fits'])}/{int(base['seeds'])} seeds (median test "
            f"MSE {fmt.mse(base['median_mse'])})")
    if base["activation"] == "relu" and base["bias"] in ("none", "output"):
        text += " — without b1 a ReLU net is exactly a line c·x on x > 0, and no line is a sine"
    best = single.sort_values(["fits", "median_mse"], ascending=[False, True]).iloc[0]
    best_est = one_cell(int(best["fits"]), int(best["seeds"]))
    reliable = single[_reliable(single, bonferroni_z(len(single)))]
    if int(best["fits"]) == 0:
        text += (f"; no single change of the {len(single)} tried makes any seed fit (closest: '{best['cell']}', "
                 f"median MSE {fmt.mse(best['median_mse'])})")
    else:
        text += (f"; the single change that helps most is '{best['cell']}' ({int(best['fits'])}/{int(best['seeds'])} "
                 f"seeds, {best_est.percent()}), and {len(reliable)} of the {len(single)} single changes make it fit "
                 f"reliably")
    numbers: dict[str, Any] = {"start": {"fits": int(base["fits"]), "seeds": int(base["seeds"]),
                                         "median_mse": float(base["median_mse"])},
                               "best_single": {"row": best["cell"], **best_est.as_dict()},
                               "reliable_single_changes": reliable["cell"].tolist()}
    path = frame[frame["ladder"] == "cumulative"].reset_index(drop=True)
    if len(path):
        ok = path[_reliable(path)]
        if len(ok):
            first = ok.index[0]
            text += (f"; walking to nnet's call one change at a time, it first fits reliably after {first + 1} "
                     f"change(s), at '{path.loc[first, 'cell']}' ({int(path.loc[first, 'fits'])}/"
                     f"{int(path.loc[first, 'seeds'])})")
            numbers["path_first_reliable"] = path.loc[first, "cell"]
        else:
            text += "; even the path to nnet's call never fits reliably"
    back = frame[frame["ladder"] == "remove from nnet"]
    if len(back):
        broken = back[back["fits"] == 0]["cell"].tolist()
        kept = back[_reliable(back)]["cell"].tolist()
        numbers.update({"removals_that_break_nnet": broken, "removals_nnet_survives": kept})
        if broken:
            text += f". From nnet's call, these changes leave no seed fitting: {', '.join(repr(b) for b in broken)}"
        if kept:
            text += f"; it still fits reliably with: {', '.join(repr(k) for k in kept)}"
    text += f" ({_link('figure', _fig('ablation_ladder'))}, {_link('ablation', ABLATION_CSV)})."
    return Sentence("question", text, numbers, [_fig("ablation_ladder"), ABLATION_CSV])


def control_sentence(cells: Cells) -> Sentence | None:
    """The control arm on its own: units that represent the target exactly show the harness works."""
    ctrl = cells.frame[cells.frame["control"]] if len(cells.frame) else cells.frame
    if ctrl.empty:
        return None
    est = over_cells(*counts(ctrl))
    acts = ", ".join(sorted(ctrl["activation"].unique()))
    return Sentence("control", f"*Control*: `{acts}` units, which can represent sin(x) exactly, fit {_est(est)} of "
                               f"seeds; they are reported apart and enter no comparison above.",
                    {"control": est.as_dict()}, [CELLS_CSV])


def coverage_sentence(cells: Cells) -> Sentence | None:
    """What the answer cannot support yet: cells still unconfirmed."""
    if cells.pending == 0:
        return None
    done = len(cells.frame)
    return Sentence("coverage", f"*Incomplete*: {cells.pending} of {done + cells.pending} cells have no confirmation "
                                f"yet; every number above covers the {done} confirmed cells only (run the sweep "
                                f"again to finish).", {"pending": cells.pending, "confirmed": done}, [])


def answer(cells: Cells, ablation: Cells | None) -> list[Sentence]:
    """The answer's sentences, in reading order (at most eight)."""
    makers = [lambda: b1_sentence(cells), lambda: b2_sentence(cells), lambda: optimizer_sentence(cells),
              lambda: smallest_sentence(cells), lambda: tanh_sigmoid_sentence(cells),
              lambda: ablation_sentence(ablation), lambda: control_sentence(cells), lambda: coverage_sentence(cells)]
    out = [s for s in (m() for m in makers) if s is not None]
    return out[:8]
