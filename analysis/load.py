"""Read studies out of an Optuna storage, read-only, into one tidy row per trial.

The storage is opened so that it *cannot* be written: SQLite through a `mode=ro` URI, PostgreSQL
with read-only transactions, and Optuna's table creation skipped. A study's trials come from one
`study.get_trials()` call (one query per table, not one per trial). Each row carries the trial's
configuration (fixed settings included), its value (median test MSE over seeds; +inf for a trial
whose seeds all diverged), seed counts for pooled success rates, and provenance.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweeps.config import CONFIG_KEYS, SUCCESS_THRESHOLD
from sweeps.study import storage
from sweeps.study.errors import StorageError, mask, root_cause, sqlite_path
from sweeps.study.record import is_done, read, read_spec, superseded

DIVERGED = "diverged"
NNET_CSV = "nnet_reference.csv"
SEED_REPLAY = "seed-replay"
ABLATION = "ablation"  # the question's ablation, read beside the designed study


class ReportError(RuntimeError):
    """Input the report cannot use (storage, study); the message is one line."""


@dataclass
class StudyData:
    """One study as the report sees it: its spec (as stored), every trial as a row, the raw trials."""

    name: str
    storage_url: str
    spec: dict[str, Any]
    trials: pd.DataFrame
    frozen: dict[int, FrozenTrial] = field(repr=False)

    @property
    def threshold(self) -> float:
        return float(self.spec.get("success_threshold", SUCCESS_THRESHOLD))

    @property
    def data_seed(self) -> int:
        return int(self.spec.get("data_seed", 0))

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        return dict(self.spec.get("space") or {})

    @property
    def finished(self) -> pd.DataFrame:
        """Trials that count: COMPLETE, and FAIL because every seed diverged (value +inf)."""
        return self.trials[self.trials["finished"]]

    @property
    def designed(self) -> bool:
        """A designed study (cells tuned, then confirmed on fresh seeds): `sweeps.study.design`."""
        return self.spec.get("sampler") == "design"


def open_readonly(url: str) -> RDBStorage:
    """The storage, opened so that it cannot be written; ReportError with one line if unreadable."""
    try:
        return storage.open_readonly(url)
    except StorageError as exc:
        raise ReportError(str(exc)) from None


def study_names(storage: RDBStorage, url: str) -> list[str]:
    """The names of every study in the storage; ReportError if it cannot be read."""
    try:
        return [s.study_name for s in storage.get_all_studies()]
    except Exception as exc:
        raise ReportError(f"cannot read storage {mask(url)}: {root_cause(exc)}") from None


def load_study(storage: RDBStorage, url: str, name: str, names: list[str] | None = None) -> StudyData:
    """Every trial of study `name`; ReportError if there is no such study."""
    names = study_names(storage, url) if names is None else names
    if name not in names:
        have = ", ".join(names) or "none"
        raise ReportError(f"no study {name!r} in {mask(url)} (have: {have})")
    study = optuna.load_study(study_name=name, storage=storage)
    spec = read_spec(study.user_attrs)
    trials = study.get_trials(deepcopy=False)
    threshold = float(spec.get("success_threshold", SUCCESS_THRESHOLD))
    retried = superseded(trials)
    rows = [_row(t, spec, threshold, is_done(t, retried)) for t in trials]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    return StudyData(name=name, storage_url=url, spec=spec, trials=frame, frozen={t.number: t for t in trials})


_COLUMNS = ["number", "state", "finished", "fail_reason", "value", *CONFIG_KEYS, "n_seeds", "n_success",
            "n_diverged", "success_rate", "best_seed_mse", "n_params", "wall_time_s", "device", "torch",
            "spec_hash", "started", "phase", "cell", "control", "ladder", "median_steps", "median_evals", "seconds_per_fit"]


def _row(t: FrozenTrial, spec: dict[str, Any], threshold: float, finished: bool) -> dict[str, Any]:
    """One trial as a table row; `finished`: it counts as the sweeps count it (record.is_done)."""
    rec = read(t)
    if t.state == TrialState.COMPLETE:
        value = float(rec.value) if rec.value is not None else math.nan
    else:
        value = math.inf if finished else math.nan
    # The full configuration: stored config, else the searched params over the spec's fixed values.
    config: dict[str, Any] = {**(spec.get("fixed") or {}), **rec.config}
    mses = rec.seeds.test_mse
    n_seeds = len(mses) or int(spec.get("seeds", 0)) or 0
    if mses:
        # None marks a diverged seed (stored JSON has no inf); it never counts as a fit.
        n_success = sum(m is not None and m < threshold for m in mses)
        n_diverged = int(rec.diverged if rec.diverged is not None else sum(m is None for m in mses))
    else:
        n_success = round(float(rec.success_rate or 0.0) * n_seeds)
        n_diverged = int(rec.diverged or 0)
    finite = [m for m in mses if m is not None and math.isfinite(m)]
    return {
        "number": t.number,
        "state": t.state.name,
        "finished": finished,
        "fail_reason": rec.fail_reason,
        "value": value,
        **{k: config.get(k) for k in CONFIG_KEYS},
        "n_seeds": n_seeds,
        "n_success": n_success,
        "n_diverged": n_diverged,
        "success_rate": n_success / n_seeds if n_seeds else math.nan,
        "best_seed_mse": min(finite) if finite else math.inf,
        "n_params": rec.n_params,
        "wall_time_s": rec.run.get("wall_time_s"),
        "device": rec.run.get("device"),
        "torch": rec.run.get("torch"),
        "spec_hash": rec.run.get("spec_hash"),
        "started": t.datetime_start,
        # A designed study's trials: tuning or confirmation, the cell, its arm and ablation ladder.
        "phase": t.params.get("phase"),
        "cell": rec.cell.get("label"),
        "control": bool(rec.cell.get("control", False)),
        "ladder": rec.cell.get("ladder"),
        "median_steps": _median([e for e in rec.seeds.steps if e is not None]),
        "median_evals": _median([e for e in rec.seeds.evals if e is not None]),
        "seconds_per_fit": _median([x for x in rec.seeds.seconds if x is not None]),
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def nnet_csv_path(url: str) -> Path:
    """Where R's nnet reference results live: beside the SQLite file, else ./studies/."""
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("studies")) / NNET_CSV


def load_nnet(path: Path) -> pd.DataFrame | str | None:
    """R nnet's results (data, seed, test_mse, seconds); None if absent, a one-line reason if unusable."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        return f"{path}: {root_cause(exc)}"
    missing = {"data", "test_mse"} - set(frame.columns)
    if missing:
        return f"{path}: missing column(s) {', '.join(sorted(missing))}"
    frame["test_mse"] = pd.to_numeric(frame["test_mse"], errors="coerce")
    if "seconds" in frame.columns:
        frame["seconds"] = pd.to_numeric(frame["seconds"], errors="coerce")
    return frame
