"""Parameter importances with an explicit Optuna evaluator: PED-ANOVA (Optuna 5's default).

PED-ANOVA asks which parameters set the top 10 % of trials apart from all trials. It ranks by
value, so the heavy-tailed MSEs (and +inf medians) need no transform, and it needs neither
scikit-learn (f-ANOVA, MDI) nor many trials. It is computed on an in-memory copy of the
finished trials' params and values: the stored study is never touched and its large user
attributes are not copied. Too few trials, or any failure, yields a reason instead of numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
import pandas as pd
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState, create_trial

from .load import StudyData
from .tables import Table

MIN_TRIALS = 10
EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, top 10% of trials vs all)"


@dataclass(frozen=True)
class Importances:
    """Parameter importances of a study, or the reason they could not be computed."""
    evaluator: str
    values: dict[str, float] | None  # None when they could not be computed
    reason: str | None
    trials: int


def compute(data: StudyData) -> Importances:
    """Importances over the COMPLETE trials with a value (diverged-all FAIL trials carry none)."""
    done = [t for t in data.frozen.values() if t.state == TrialState.COMPLETE and t.values and t.params]
    if len(done) < MIN_TRIALS:
        return Importances(EVALUATOR, None, f"too few trials ({len(done)} complete; at least {MIN_TRIALS} needed)", len(done))
    seen: dict[str, set[str]] = {}
    for t in done:
        for k, v in t.params.items():
            seen.setdefault(k, set()).add(repr(v))
    varying = {k for k, values in seen.items() if len(values) > 1}
    if not varying:
        return Importances(EVALUATOR, None, "no searched parameter varies across trials", len(done))
    copy = optuna.create_study(direction="minimize")  # in memory: nothing reaches the storage
    copy.add_trials([create_trial(params=t.params, distributions=t.distributions, value=t.values[0]) for t in done])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = get_param_importances(copy, evaluator=PedAnovaImportanceEvaluator(), params=sorted(varying))
    except Exception as exc:  # the evaluator's own limits (degenerate values, …): report, do not fail the report
        return Importances(EVALUATOR, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", len(done))
    notes = [str(w.message) for w in caught if "importance" in str(w.message).lower()]
    if notes:
        return Importances(EVALUATOR, None, notes[0].splitlines()[0], len(done))
    return Importances(EVALUATOR, {k: float(v) for k, v in values.items()}, None, len(done))


def importance_table(result: Importances) -> Table | None:
    """The importances as a report table (None when there are none)."""
    if result.values is None:
        return None
    raw = pd.DataFrame({"parameter": list(result.values), "importance": list(result.values.values())})
    shown = pd.DataFrame({"parameter": raw["parameter"], "importance": raw["importance"].map(lambda v: f"{v:.2f}")})
    caption = (f"{result.evaluator}, over {result.trials} complete trials; importances sum to 1. "
               f"They say which parameters separate the best trials from the rest, not in which direction.")
    return Table("importances", "Parameter importances", caption, raw, shown)


def sentence(result: Importances) -> str:
    """One sentence naming the importances, or why there are none."""
    if result.values is None:
        return f"Parameter importances ({result.evaluator.split(' (')[0]}) not computed: {result.reason}."
    ranked = sorted(result.values.items(), key=lambda kv: -kv[1])
    parts = ", ".join(f"`{k}` {v:.2f}" for k, v in ranked)
    return (f"Parameter importances by {result.evaluator.split(' (')[0]} over {result.trials} complete trials "
            f"(which parameters separate the top 10% from the rest): {parts}.")

