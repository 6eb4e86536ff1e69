"""The text of the notes sweeps writes in optuna-dashboard: a study's and its drawn trials'.

Notes are Markdown; the study note holds the spec, the budget and progress, the current best and a
table of the best trial per bias placement with their fit figures (study artifacts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..study import rdb
from ..study.record import is_done, read, superseded
from ..study.spec import Spec

TABLE_KEYS = ("hidden", "activation", "optimizer", "lr")


def trial_note(study: optuna.Study, trial: FrozenTrial, bias: str, artifact_id: str) -> str:
    """A trial's note: why it was drawn, and its figure."""
    return (f"{trial_note_heading(trial)} = `{bias}` when published\n\n"
            f"Median test MSE {num(trial.value)}, success {pct(read(trial).success_rate)}.\n\n"
            f"![fit of trial {trial.number}]({_artifact_url(study, artifact_id)})\n")


def trial_note_heading(trial: FrozenTrial) -> str:
    """How a note that sweeps wrote on a trial begins (a note that begins otherwise is someone's)."""
    return f"### Trial {trial.number}: best with bias"


def study_note(study: optuna.Study, spec: Spec, trials: Sequence[FrozenTrial], best: dict[str, FrozenTrial],
               figures: dict[str, str], budget: int | None) -> str:
    """The study note: spec, budget and progress, current best, best per bias placement, figures."""
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    retried = superseded(trials)
    done = [t for t in trials if is_done(t, retried)]
    finished = len(done)
    diverged = sum(t.state == TrialState.FAIL for t in done)  # done but failed: every seed diverged
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {study.study_name}: {spec.description or spec.name}",
        "",
        f"*Written by `sweeps` at the end of each run ({when}); edits to this note are overwritten.*",
        "",
        "| | |",
        "|---|---|",
        f"| spec | `{spec.name}` ({spec.path}) |",
        f"| sampler | {spec.sampler} (seed {spec.seed}) |",
        f"| seeds per trial | {spec.seeds}; a seed succeeds at test MSE < {spec.success_threshold:g} |",
        f"| budget | {finished} of {budget if budget is not None else spec.trials} trials finished: "
        f"{counts[TrialState.COMPLETE]} complete, {diverged} diverged; "
        f"{counts[TrialState.RUNNING]} running, {counts[TrialState.FAIL] - diverged} failed (retried) |",
        f"| data | {spec.fixed.get('data', '?')} (data seed {spec.data_seed}) |",
        f"| fixed | {', '.join(f'{k}={md(v)}' for k, v in spec.fixed.items())} |",
        f"| space | {'; '.join(_dimension(d) for _, d in sorted(spec.space.items()))} |",
        "",
    ]
    if not best:
        lines.append("No complete trial yet.")
        return "\n".join(lines) + "\n"
    top = min(best.values(), key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    lines += [
        "### Best so far",
        "",
        f"Trial **{top.number}**: median test MSE **{num(top.value)}**, success "
        f"{pct(read(top).success_rate)}, {read(top).diverged or 0} seeds diverged.",
        "",
        "Configuration: " + ", ".join(f"{k}={md(v)}" for k, v in read(top).config.items()),
        "",
        "### Best trial per bias placement",
        "",
        "| bias | trial | median test MSE | success | " + " | ".join(TABLE_KEYS) + " |",
        "|---|---|---|---|" + "---|" * len(TABLE_KEYS),
    ]
    for bias, t in best.items():
        cfg = read(t).config
        lines.append(f"| {bias} | {t.number} | {num(t.value)} | {pct(read(t).success_rate)} | "
                     + " | ".join(md(cfg.get(k, '-')) for k in TABLE_KEYS) + " |")
    for bias, artifact_id in figures.items():
        lines += ["", f"#### bias = {bias}: trial {best[bias].number}", "",
                  f"![fit of trial {best[bias].number}]({_artifact_url(study, artifact_id)})"]
    return "\n".join(lines) + "\n"


def _artifact_url(study: optuna.Study, artifact_id: str) -> str:
    return f"/artifacts/{rdb.study_id(study)}/{artifact_id}"


def _dimension(d: Any) -> str:
    if d.choices is not None:
        return f"{d.name} in {{{', '.join(map(str, d.choices))}}}"
    return f"{d.name} {md(d.low)}..{md(d.high)}" + (" (log)" if d.log else "")


def config_line(cfg: dict[str, Any]) -> str:
    """The scientific choices and learning rate of a configuration, one line."""
    keys = ("hidden", "bias", "activation", "optimizer", "lr")
    return ", ".join(f"{k}={md(cfg[k])}" for k in keys if k in cfg)


def md(v: Any) -> str:
    """A value as a note shows it (floats to 3 significant figures)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def num(v: float | None) -> str:
    """A trial value, or a dash for none."""
    return "-" if v is None else f"{v:.3g}"


def pct(v: Any) -> str:
    """A share as a whole percentage, or a dash."""
    return f"{v:.0%}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
