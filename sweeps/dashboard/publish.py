"""What a study shows in optuna-dashboard beyond Optuna's own data: a note and fitted-curve figures.

`publish(study, spec, artifact_dir)` runs at the end of a sweep run (`sweeps run`/`worker`). It

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
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from ..config import BIASES
from ..study import rdb
from ..study.errors import sqlite_path
from ..study.record import read
from ..study.spec import Spec
from .figure import render_fit
from .notes import study_note, trial_note, trial_note_heading


def artifact_dir_for(storage_url: str) -> Path:
    """Where a storage's artifacts live: `artifacts/` beside a SQLite file, else `studies/artifacts`."""
    path = sqlite_path(storage_url)
    return path.parent / "artifacts" if path is not None else Path("studies") / "artifacts"


def figure_name(trial: FrozenTrial) -> str:
    """The artifact file name of a trial's fit figure (stable, so re-publishing reuses it)."""
    return f"fit-bias-{read(trial).bias or 'unknown'}-trial-{trial.number}.png"


def best_by_bias(trials: Iterable[FrozenTrial]) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each bias placement present, in the order none/hidden/output/both."""
    best: dict[str, FrozenTrial] = {}
    for t in trials:
        bias = read(t).bias
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
        handle = rdb.trial_handle(notes, rdb.trial_id(trial))
        current = get_note(handle)  # a note someone wrote by hand is left alone
        if not current or (current.startswith(trial_note_heading(trial)) and artifact_id not in current):
            save_note(handle, trial_note(study, trial, bias, artifact_id))
    save_note(study, study_note(study, spec, trials, best, figures, budget))


def _note_handle(study: optuna.Study) -> optuna.Study:
    """The same study, loaded with a sampler whose before_trial writes nothing.

    The note API wants an `optuna.Trial`; building one runs the sampler's before_trial, which for
    some samplers (grid) writes to the trial, and a finished trial refuses writes.
    """
    return optuna.load_study(study_name=study.study_name, storage=rdb.storage_of(study),
                             sampler=optuna.samplers.RandomSampler())




def publish_run(storage: optuna.storages.BaseStorage, url: str, study_name: str, spec: Spec,
                budget: int | None = None) -> None:
    """`publish` for a study just swept (what `sweeps run`/`worker` call at the end of a run)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    publish(study, spec, artifact_dir_for(url), budget=budget)
