"""What a study shows in optuna-dashboard beyond Optuna's own data: a note and fitted-curve figures.

`publish(study, spec, artifact_dir)` runs at the end of a sweep run (`sweeps run`/`worker`). It

- finds the trials that answer the question (`cited`): for a designed study the confirmation
  trials behind the answer's sentences, otherwise the best trial of each bias placement among
  non-control units and the control's best apart;
- draws, for each, the fitted curves of all its seeds from the stored parameters (no retraining)
  over [0, 10] with sin(x) and the training points, and uploads the PNG to Optuna's artifact store
  under `artifact_dir` (`studies/artifacts/` for the default storage) as a *study* artifact named
  `fit-bias-<bias>-trial-<n>.png`;
- writes that trial's dashboard note: why it is cited, its numbers and its figure (a note written
  by hand is never replaced); a trial cited earlier but no more gets its note headed so;
- rewrites the study's dashboard note (`notes`): the spec (a table and its TOML text), the budget,
  where the report is, and the answer's sentences or the best per bias placement, with links to
  the cited trials and their figures.

Optuna refuses system attributes on finished trials (`UpdateFinishedTrialError`), so a figure
cannot be attached to a finished trial itself; the study artifact plus the trial note is the
public-API way to show it on the trial's page. Figures already uploaded (same file name) are
reused, so calling this after every run draws only the trials newly cited.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import FrozenTrial

from ..study import rdb
from ..study.errors import sqlite_path
from ..study.record import read
from ..study.spec import Spec
from . import cited as citing
from .figure import render_fit
from .notes import design_note, is_ours, retired_heading, study_note, trial_note

best_by_bias = citing.best_by_bias  # where tests and tools have always found it


def artifact_dir_for(storage_url: str) -> Path:
    """Where a storage's artifacts live: `artifacts/` beside a SQLite file, else `studies/artifacts`."""
    path = sqlite_path(storage_url)
    return path.parent / "artifacts" if path is not None else Path("studies") / "artifacts"


def figure_name(trial: FrozenTrial) -> str:
    """The artifact file name of a trial's fit figure (stable, so re-publishing reuses it)."""
    return f"fit-bias-{read(trial).bias or 'unknown'}-trial-{trial.number}.png"


def publish(study: optuna.Study, spec: Spec, artifact_dir: Path, *, budget: int | None = None) -> None:
    """Upload missing fit figures, write the cited trials' notes and the study note (see the module
    docstring). `budget` is the run's trial budget when it differs from the spec's (`--trials`)."""
    from optuna_dashboard import get_note, save_note

    trials = study.get_trials(deepcopy=False)
    found = citing.designed(study) if spec.sampler == "design" else None
    cited = found.cited if found is not None else citing.searched(trials)
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    have = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)
            if (artifact_dir / m.artifact_id).is_file()}  # a figure whose file was removed is redrawn
    notes = _note_handle(study)
    figures: dict[int, str] = {}
    for c in cited:
        trial = c.trial
        artifact_id = have.get(figure_name(trial)) or _upload(store, study, trial, spec.data_seed)
        if artifact_id is not None:
            figures[trial.number] = artifact_id
        handle = rdb.trial_handle(notes, rdb.trial_id(trial))
        current = get_note(handle)
        text = trial_note(study, c, artifact_id)
        if not current or (is_ours(current, trial) and current != text):  # a note written by hand is left alone
            save_note(handle, text)
    _retire(study, notes, trials, have, {c.trial.number for c in cited})
    if found is not None:
        save_note(study, design_note(study, spec, trials, found, figures, budget))
    else:
        save_note(study, study_note(study, spec, trials, cited, figures, budget))


def _retire(study: optuna.Study, notes: optuna.Study, trials: list[FrozenTrial], have: dict[str, str],
            cited: set[int]) -> None:
    """Trials drawn earlier (their figure is in the store) but cited no more: their notes say so."""
    from optuna_dashboard import get_note, save_note

    by_number = {t.number: t for t in trials}
    for name in have:
        m = re.fullmatch(r"fit-bias-.+-trial-(\d+)\.png", name)
        trial = by_number.get(int(m.group(1))) if m else None
        if trial is None or trial.number in cited:
            continue
        handle = rdb.trial_handle(notes, rdb.trial_id(trial))
        current = get_note(handle)
        if current and is_ours(current, trial) and not current.startswith(retired_heading(trial)):
            save_note(handle, retired_heading(trial) + "\n" + current.partition("\n")[2])


def _upload(store: FileSystemArtifactStore, study: optuna.Study, trial: FrozenTrial, data_seed: int) -> str | None:
    """Draw a trial's fit figure and upload it as a study artifact; its id (None: nothing to draw)."""
    png = render_fit(trial, data_seed)
    if png is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / figure_name(trial)
        path.write_bytes(png)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)


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
