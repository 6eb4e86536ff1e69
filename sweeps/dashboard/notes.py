"""The text of the notes sweeps writes in optuna-dashboard: a study's and its cited trials'.

Notes are Markdown. A study note holds the spec (a table and its TOML text), the budget and
progress, where the study's report is, and what the study found: for a designed study the
answer's sentences and the confirmation trials they rest on (`cited.designed`); for any other the
best trial per bias placement among non-control units, with the control's best apart
(`cited.searched`). Each cited trial is linked and its fit figure (a study artifact) shown. A
trial's note says why it is cited and shows its figure.

Links in the answer's sentences point into the report folder (tables, figures); in the dashboard
they would lead nowhere, so they are dropped and the note says where the report is instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from analysis import fmt
from analysis.render import markdown_safe
from analysis.report import slug

from ..study import rdb
from ..study.record import is_done, read, read_spec_toml, superseded
from ..study.spec import Spec
from .cited import Answer, Cited

TABLE_KEYS = ("hidden", "activation", "optimizer", "lr")
MARK = "*Written by `sweeps`"  # how a note sweeps wrote says so (a note without it is someone's)
REPORTS = Path("studies") / "reports"  # `sweeps report`'s default --out (analysis.cli)
_LINK_GROUP = re.compile(r"\s*\((?:\[[^\]]+\]\([^)\s]+\)(?:,\s*)?)+\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def trial_url(study_id: int, number: int) -> str:
    """A trial's page in the dashboard (a path on the dashboard's own server)."""
    return f"/dashboard/studies/{study_id}/trials?numbers={number}"


def is_ours(note: str, trial: FrozenTrial) -> bool:
    """Whether a trial's note was written by sweeps (and may be rewritten)."""
    return note.startswith(f"### Trial {trial.number}:") and (
        MARK in note or note.startswith((trial_note_heading(trial), retired_heading(trial))))


def retired_heading(trial: FrozenTrial) -> str:
    """The first line of the note of a trial that an earlier study note cited and the current one does not."""
    return f"### Trial {trial.number}: cited earlier, no longer (a better trial took its place)"


def trial_note_heading(trial: FrozenTrial) -> str:
    """How notes that earlier versions of sweeps wrote on a trial began."""
    return f"### Trial {trial.number}: best with bias"


def trial_note(study: optuna.Study, cited: Cited, artifact_id: str | None) -> str:
    """A cited trial's note: why it is cited, its numbers and its figure."""
    t = cited.trial
    rec = read(t)
    lines = [f"### Trial {t.number}: cited in the study note", "",
             f"{MARK} when the study note was last published; edits to this note are overwritten.*", ""]
    lines += [f"- {why}" for why in cited.why]
    lr = f", lr={_setting(rec.config, 'lr')}" if fmt.used("lr", rec.config.get("optimizer")) else ""
    lines += ["", f"Cell: {md_text(cited.cell)}{lr}." if cited.cell else f"Configuration: {config_line(rec.config)}.", "",
              f"Median test MSE {num(t.value)}; seeds fit {_seeds_fit(t)} (test MSE under "
              f"{fmt.mse(_threshold(study))}); {rec.diverged or 0} diverged.", ""]
    if artifact_id is not None:
        lines += [f"![fit of trial {t.number}]({artifact_url(study, artifact_id)})", ""]
    lines.append(report_line(study.study_name))
    return "\n".join(lines) + "\n"


def study_note(study: optuna.Study, spec: Spec, trials: Sequence[FrozenTrial], cited: list[Cited],
               figures: dict[int, str], budget: int | None) -> str:
    """A searched study's note: spec, budget, report, best per bias placement (control apart), figures."""
    lines = _head(study, spec, trials, budget)
    main = [c for c in cited if not c.control]
    control = [c for c in cited if c.control]
    if not cited:
        return "\n".join(lines + ["No complete trial yet.", "", *_spec_text(study)]) + "\n"
    sid = rdb.study_id(study)
    if main:
        top = min((c.trial for c in main), key=lambda t: t.value)  # type: ignore[arg-type, return-value]
        lines += ["### Best so far (non-control units)", "",
                  f"Trial [**{top.number}**]({trial_url(sid, top.number)}): median test MSE **{num(top.value)}**, "
                  f"seeds fit {_seeds_fit(top)}, {read(top).diverged or 0} seeds diverged.", "",
                  "Configuration: " + ", ".join(f"{k}={md(v)}" for k, v in read(top).config.items()
                                                if fmt.used(k, read(top).config.get("optimizer"))), ""]
    lines += ["### Best trial per bias placement", "",
              "Units other than `sin` (the control, which can represent sin(x) exactly, is shown apart).", ""]
    lines += table(["bias", "trial", "median test MSE", "seeds fit", *TABLE_KEYS],
                   [[md(read(c.trial).config.get("bias")), f"[{c.trial.number}]({trial_url(sid, c.trial.number)})",
                     num(c.trial.value), _seeds_fit(c.trial), *(_setting(read(c.trial).config, k) for k in TABLE_KEYS)]
                    for c in main])
    for c in control:
        t = c.trial
        lines += ["", f"**Control** (`sin` units): trial [{t.number}]({trial_url(sid, t.number)}), median test MSE "
                      f"{num(t.value)}, seeds fit {_seeds_fit(t)}: a check that the harness fits what it can "
                      f"represent, not a finding."]
    lines += _figures(study, cited, figures)
    return "\n".join(lines + ["", *_spec_text(study)]) + "\n"


def design_note(study: optuna.Study, spec: Spec, trials: Sequence[FrozenTrial], found: Answer,
                figures: dict[int, str], budget: int | None) -> str:
    """A designed study's note: spec, budget, report, the answer's sentences, the trials cited, figures."""
    lines = _head(study, spec, trials, budget)
    sid = rdb.study_id(study)
    lines += ["### The answer", "",
              "As the report states it, from the confirmation trials only (tables and figures: in the report).", ""]
    lines += [f"- {plain_sentence(s.text)}" for s in found.sentences] or ["No confirmed cell yet."]
    if found.ablation_id is not None:
        lines += ["", f"The question's program is answered by the ablation study: "
                      f"[its dashboard page](/dashboard/studies/{found.ablation_id})."]
    if found.cited:
        lines += ["", "### The trials the answer rests on", ""]
        lines += table(["trial", "why", "cell", "seeds fit", "median test MSE", "lr"],
                       [[f"[{c.trial.number}]({trial_url(sid, c.trial.number)})", "; ".join(c.why), md_text(c.cell or ""),
                         _seeds_fit(c.trial), num(c.trial.value), _setting(read(c.trial).config, "lr")]
                        for c in found.cited])
    if len(found.rows):
        lines += ["", "### Every row", ""]
        lines += table(["row", "ladder", "trial", "seeds fit", "median test MSE"],
                       [[md_text(str(r["cell"])), str(r["ladder"]), f"[{int(r['trial'])}]({trial_url(sid, int(r['trial']))})",
                         f"{int(r['fits'])}/{int(r['seeds'])}", fmt.mse(r["median_mse"])] for _, r in found.rows.iterrows()])
    lines += _figures(study, found.cited, figures)
    return "\n".join(lines + ["", *_spec_text(study)]) + "\n"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, each column in one number format (as the report's tables)."""
    columns = [fmt.column([row[j] for row in rows]) for j in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(col[i] for col in columns) + " |" for i in range(len(rows)))]


def _head(study: optuna.Study, spec: Spec, trials: Sequence[FrozenTrial], budget: int | None) -> list[str]:
    """Title, provenance, the spec as a table, the budget, and where the report is."""
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    retried = superseded(trials)
    done = [t for t in trials if is_done(t, retried)]
    diverged = sum(t.state == TrialState.FAIL for t in done)  # done but failed: every seed diverged
    planned = budget if budget is not None else spec.trials
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    optimizers = _optimizers(spec)
    return [
        f"## {md_text(study.study_name)}: {md_text(spec.description or spec.name)}", "",
        f"{MARK} at the end of each run ({when}); edits to this note are overwritten.*", "",
        "| | |", "|---|---|",
        f"| spec | `{spec.name}` ({md_text(spec.path)}); its text is at the end of this note |",
        f"| sampler | {spec.sampler} (seed {spec.seed}) |",
        f"| seeds per trial | {spec.seeds}; a seed succeeds at test MSE < {spec.success_threshold:g} |",
        f"| budget | {len(done)} of {planned if spec.sampler != 'design' else len(trials)} trials finished: "
        f"{counts[TrialState.COMPLETE]} complete, {diverged} diverged; "
        f"{counts[TrialState.RUNNING]} running, {counts[TrialState.FAIL] - diverged} failed (retried) |",
        f"| data | {spec.fixed.get('data', '?')} (data seed {spec.data_seed}) |",
        f"| fixed | {fmt.settings({k: v for k, v in spec.fixed.items() if k not in spec.space}, optimizers)} |",
        f"| space | {'; '.join(_dimension(d) for _, d in sorted(spec.space.items()))} |", "",
        report_line(study.study_name), "",
        "Values are median test MSEs, which span many decades: in the History and Slice plots switch on "
        "*Log scale*, or pick the user attribute `log10_median_test_mse` as the History plot's y axis.", ""]


def report_line(study_name: str) -> str:
    """Where the study's report is and how to build it: a file path relative to the folder `sweeps
    report` runs in, by default the project's (the dashboard cannot serve the file itself). Not
    whether it exists: the note is written at the end of a run, and `make sweep` builds the
    report right after, so any such state would be stale at once."""
    path = REPORTS / slug(study_name) / "index.html"
    return (f"**Report**: `{path}` (a file: open it in a browser; `make sweep` writes it after its runs, "
            f"`sweeps report --study {study_name}` brings it up to date); it links back here.")


def _figures(study: optuna.Study, cited: list[Cited], figures: dict[int, str]) -> list[str]:
    out = []
    for c in cited:
        artifact_id = figures.get(c.trial.number)
        if artifact_id is not None:
            out += ["", f"#### Trial {c.trial.number}: {'; '.join(c.why)}", "",
                    f"![fit of trial {c.trial.number}]({artifact_url(study, artifact_id)})"]
    return out


def _spec_text(study: optuna.Study) -> list[str]:
    text = read_spec_toml(study.user_attrs)
    if text is None:
        return ["### The spec", "", "This study was made before sweeps stored its spec's text; the `spec` study "
                "attribute holds its settings."]
    fence = "````" if "```" in text else "```"
    return ["### The spec", "", f"{fence}toml", text.rstrip("\n"), fence]


def plain_sentence(text: str) -> str:
    """A sentence of the answer for the dashboard: its links into the report folder left out."""
    text = _LINK_GROUP.sub("", text)
    return markdown_safe(_LINK.sub(lambda m: m.group(0) if m.group(2).startswith(("http:", "https:"))
                                   else m.group(1), text))


def _optimizers(spec: Spec) -> list[str]:
    dim = spec.space.get("optimizer")
    if dim is not None and dim.choices:
        return [str(c) for c in dim.choices]
    if spec.design is not None:
        return list(dict.fromkeys(str(c.settings.get("optimizer")) for c in spec.cells()))
    return [str(spec.fixed.get("optimizer", "adam"))]


def _threshold(study: optuna.Study) -> float:
    spec = study.user_attrs.get("spec") or {}
    return float(spec.get("success_threshold", 1e-3))


def _seeds_fit(t: FrozenTrial) -> str:
    rec = read(t)
    n = len(rec.seeds.test_mse)
    if not n:
        return pct(rec.success_rate)
    return f"{round((rec.success_rate or 0.0) * n)}/{n}"


def _setting(cfg: dict[str, Any], key: str) -> str:
    return md(cfg.get(key, "-")) if fmt.used(key, cfg.get("optimizer")) else "unused"


def artifact_url(study: optuna.Study, artifact_id: str) -> str:
    """A study artifact's address on the dashboard's server."""
    return f"/artifacts/{rdb.study_id(study)}/{artifact_id}"


def _dimension(d: Any) -> str:
    if d.choices is not None:
        return f"{d.name} in {{{', '.join(map(str, d.choices))}}}"
    return f"{d.name} {md(d.low)}..{md(d.high)}" + (" (log)" if d.log else "")


def config_line(cfg: dict[str, Any]) -> str:
    """The scientific choices and learning rate of a configuration, one line (lr only where used)."""
    keys = ("hidden", "bias", "activation", "optimizer", "lr")
    return ", ".join(f"{k}={md(cfg[k])}" for k in keys if k in cfg and fmt.used(k, cfg.get("optimizer")))


def md_text(text: Any) -> str:
    """Text from a spec or a storage (names, descriptions) for a note: unsafe links defused, pipes escaped."""
    return markdown_safe(str(text)).replace("|", "\\|").replace("\n", " ")


def md(v: Any) -> str:
    """A value as a note shows it (floats to 3 significant figures)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def num(v: float | None) -> str:
    """A trial value, or a dash for none."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def pct(v: Any) -> str:
    """A share as a whole percentage, or a dash."""
    return f"{v:.0%}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
