"""What a study shows in optuna-dashboard beyond Optuna's own data: a note and fitted-curve figures.

`publish(study, spec, artifact_dir)` runs at the end of a sweep run. It

- draws, for the best COMPLETE trial of each bias placement, the fitted curves of all its seeds
  from the stored parameters (no retraining) over [0, 10] with sin(x) and the training points,
  and uploads the PNG to Optuna's artifact store under `artifact_dir` (`studies/artifacts/` for
  the default storage) as a *study* artifact named `fit-bias-<bias>-trial-<n>.png`;
- writes that trial's dashboard note showing the figure, so clicking the trial shows its fit (a
  note written by hand is never replaced);
- rewrites the study's dashboard note: the spec, the budget, the current best and a table of the
  best trial per bias placement with their figures.

Optuna refuses system attributes on finished trials (`UpdateFinishedTrialError`), so a figure
cannot be attached to a finished trial itself; the study artifact plus the trial note is the
public-API way to show it on the trial's page. Figures already uploaded (same file name) are
reused, so calling this after every run uploads only the placements whose best trial changed.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from . import recovery as rec
from . import storage as st
from .space import BIASES
from .spec import Spec

CURVE_POINTS = 501
MAX_LEGEND_SEEDS = 12
TABLE_KEYS = ("hidden", "activation", "optimizer", "lr")


def artifact_dir_for(storage_url: str) -> Path:
    """Where a storage's artifacts live: `artifacts/` beside a SQLite file, else `studies/artifacts`."""
    path = st.sqlite_path(storage_url)
    return path.parent / "artifacts" if path is not None else Path("studies") / "artifacts"


def figure_name(trial: FrozenTrial) -> str:
    """The artifact file name of a trial's fit figure (stable, so re-publishing reuses it)."""
    bias = trial.user_attrs.get("config", {}).get("bias", "unknown")
    return f"fit-bias-{bias}-trial-{trial.number}.png"


def best_by_bias(trials: Iterable[FrozenTrial]) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each bias placement present, in the order none/hidden/output/both."""
    best: dict[str, FrozenTrial] = {}
    for t in trials:
        bias = t.user_attrs.get("config", {}).get("bias")
        if t.state != TrialState.COMPLETE or t.value is None or math.isnan(t.value) or bias is None:
            continue
        if bias not in best or t.value < best[bias].value:  # type: ignore[operator]
            best[bias] = t
    order = {b: i for i, b in enumerate(BIASES)}
    return dict(sorted(best.items(), key=lambda kv: order.get(kv[0], len(order))))


def publish(study: optuna.Study, spec: Spec, artifact_dir: Path, *, budget: int | None = None) -> None:
    """Upload missing fit figures and rewrite the study note (see the module docstring).

    `budget` is the run's trial budget when it differs from the spec's (`--trials`).
    """
    from optuna_dashboard import get_note, save_note

    trials = study.get_trials(deepcopy=False)
    best = best_by_bias(trials)
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    have = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)
            if (artifact_dir / m.artifact_id).is_file()}  # a figure whose file was removed is redrawn
    notes = _note_handle(study)
    figures: dict[str, str] = {}
    for bias, trial in best.items():
        name = figure_name(trial)
        artifact_id = have.get(name)
        if artifact_id is None:
            png = render_fit(trial, spec.data_seed)
            if png is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                path.write_bytes(png)
                artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
        figures[bias] = artifact_id
        handle = optuna.Trial(notes, trial._trial_id)
        current = get_note(handle)  # a note someone wrote by hand is left alone
        if not current or (current.startswith(_trial_note_heading(trial)) and artifact_id not in current):
            save_note(handle, trial_note(study, trial, bias, artifact_id))
    save_note(study, study_note(study, spec, trials, best, figures, budget))


def _note_handle(study: optuna.Study) -> optuna.Study:
    """The same study, loaded with a sampler whose before_trial writes nothing.

    The note API wants an `optuna.Trial`; building one runs the sampler's before_trial, which for
    some samplers (grid) writes to the trial, and a finished trial refuses writes.
    """
    return optuna.load_study(study_name=study.study_name, storage=study._storage,
                             sampler=optuna.samplers.RandomSampler())


def render_fit(trial: FrozenTrial, data_seed: int) -> bytes | None:
    """A PNG of every seed's fitted curve of `trial`, redrawn from its stored parameters.

    None when the trial stored no parameters to draw (all seeds diverged, or no `fit` record).
    """
    import io

    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import data as datasets
    from .model import predict_params

    fit = trial.user_attrs.get("fit") or {}
    cfg = trial.user_attrs.get("config") or {}
    params: Sequence[Sequence[float] | None] = fit.get("params") or []
    if not any(p is not None for p in params) or "data" not in cfg:
        return None
    x = torch.linspace(datasets.X_LOW, datasets.X_HIGH, CURVE_POINTS, dtype=torch.float64)
    train = datasets.make(cfg["data"], data_seed)
    mses = (trial.user_attrs.get("seeds") or {}).get("test_mse") or [None] * len(params)

    fig = Figure(figsize=(8.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(x.numpy(), torch.sin(x).numpy(), color="0.75", lw=5.0, label="sin(x)", zorder=1)
    ax.scatter(train.x.numpy(), train.y.numpy(), s=10, color="black", zorder=4,
               label=f"training points ({cfg['data']}, {len(train.x)})")
    median = fit.get("median_seed")
    for i, p in enumerate(params):
        if p is None:
            continue
        y = predict_params(p, fit["hidden"], fit["activation"], x, fit.get("shift", 0.0), fit.get("scale", 1.0))
        mse = mses[i] if i < len(mses) else None
        label = f"seed {i}" + (f" (MSE {mse:.2g})" if isinstance(mse, (int, float)) else "")
        if i == median:
            label += " median"
        elif len(params) > MAX_LEGEND_SEEDS:  # many seeds: name the median only
            label = "_nolegend_"
        ax.plot(x.numpy(), y.clamp(-3.0, 3.0).numpy(), lw=2.2 if i == median else 1.0,
                alpha=1.0 if i == median else 0.6, label=label, zorder=3 if i == median else 2)
    ax.set_ylim(-2.0, 2.0)
    ax.set_xlim(datasets.X_LOW, datasets.X_HIGH)
    ax.set_xlabel("x")
    n_div = sum(p is None for p in params)
    ax.set_title(f"trial {trial.number}: {_config_line(cfg)}\nmedian test MSE {_num(trial.value)}, "
                 f"success {_pct(trial.user_attrs.get('success_rate'))}"
                 + (f", {n_div} of {len(params)} seeds diverged" if n_div else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.subplots_adjust(left=0.07, right=0.72, top=0.87, bottom=0.11)  # fixed: tight_layout draws twice
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def trial_note(study: optuna.Study, trial: FrozenTrial, bias: str, artifact_id: str) -> str:
    """A trial's note: why it was drawn, and its figure."""
    return (f"{_trial_note_heading(trial)} = `{bias}` when published\n\n"
            f"Median test MSE {_num(trial.value)}, success {_pct(trial.user_attrs.get('success_rate'))}.\n\n"
            f"![fit of trial {trial.number}]({_artifact_url(study, artifact_id)})\n")


def _trial_note_heading(trial: FrozenTrial) -> str:
    return f"### Trial {trial.number}: best with bias"


def study_note(study: optuna.Study, spec: Spec, trials: Sequence[FrozenTrial], best: dict[str, FrozenTrial],
               figures: dict[str, str], budget: int | None) -> str:
    """The study note: spec, budget and progress, current best, best per bias placement, figures."""
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    retried = rec.superseded(trials)
    done = [t for t in trials if rec.is_done(t, retried)]
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
        f"| fixed | {', '.join(f'{k}={_md(v)}' for k, v in spec.fixed.items())} |",
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
        f"Trial **{top.number}**: median test MSE **{_num(top.value)}**, success "
        f"{_pct(top.user_attrs.get('success_rate'))}, {top.user_attrs.get('diverged', 0)} seeds diverged.",
        "",
        "Configuration: " + ", ".join(f"{k}={_md(v)}" for k, v in top.user_attrs.get("config", top.params).items()),
        "",
        "### Best trial per bias placement",
        "",
        "| bias | trial | median test MSE | success | " + " | ".join(TABLE_KEYS) + " |",
        "|---|---|---|---|" + "---|" * len(TABLE_KEYS),
    ]
    for bias, t in best.items():
        cfg = t.user_attrs.get("config", {})
        lines.append(f"| {bias} | {t.number} | {_num(t.value)} | {_pct(t.user_attrs.get('success_rate'))} | "
                     + " | ".join(_md(cfg.get(k, '-')) for k in TABLE_KEYS) + " |")
    for bias, artifact_id in figures.items():
        lines += ["", f"#### bias = {bias}: trial {best[bias].number}", "",
                  f"![fit of trial {best[bias].number}]({_artifact_url(study, artifact_id)})"]
    return "\n".join(lines) + "\n"


def _artifact_url(study: optuna.Study, artifact_id: str) -> str:
    return f"/artifacts/{study._study_id}/{artifact_id}"


def _dimension(d: Any) -> str:
    if d.choices is not None:
        return f"{d.name} in {{{', '.join(map(str, d.choices))}}}"
    return f"{d.name} {_md(d.low)}..{_md(d.high)}" + (" (log)" if d.log else "")


def _config_line(cfg: dict[str, Any]) -> str:
    keys = ("hidden", "bias", "activation", "optimizer", "lr")
    return ", ".join(f"{k}={_md(cfg[k])}" for k in keys if k in cfg)


def _md(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _pct(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
