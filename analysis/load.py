"""Read studies out of an Optuna storage, read-only, into one tidy row per trial.

The storage is opened so that it *cannot* be written: SQLite through a `mode=ro` URI, PostgreSQL
with read-only transactions, and Optuna's table creation skipped. A study's trials come from one
`study.get_trials()` call (one query per table, not one per trial). Each row carries the trial's
configuration (fixed settings included), its value (median test MSE over seeds; +inf for a trial
whose seeds all diverged), seed counts for pooled success rates, and provenance.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweeps.recovery import is_done, superseded
from sweeps.space import CONFIG_KEYS
from sweeps.storage import driver_url, mask, root_cause, sqlite_path

DEFAULT_THRESHOLD = 1e-3
DIVERGED = "diverged"
NNET_CSV = "nnet_reference.csv"
SEED_REPLAY = "seed-replay"


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
        return float(self.spec.get("success_threshold", DEFAULT_THRESHOLD))

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


def open_readonly(url: str) -> RDBStorage:
    """An RDBStorage on `url` that refuses writes; ReportError with one line if it cannot be read."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise ReportError(f"not a storage URL: {url!r} (try sqlite:///studies/studies.db)") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    target = url
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise ReportError(f"{mask(url)}: an in-memory SQLite storage holds no studies to report")
        if not path.is_file():
            raise ReportError(f"no such database: {path}")
        # mode=ro: SQLite itself refuses every write, whatever Optuna would try.
        target = f"sqlite:///file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&uri=true"
        engine_kwargs["connect_args"] = {"timeout": 30}
    elif backend.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        target = driver_url(parsed)  # the project's PostgreSQL driver, as the sweeps use it
    try:
        return RDBStorage(target, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as exc:
        raise ReportError(f"cannot read storage {mask(url)}: {root_cause(exc)}") from None


def study_names(storage: RDBStorage, url: str) -> list[str]:
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
    spec = dict(study.user_attrs.get("spec") or {})
    trials = study.get_trials(deepcopy=False)
    threshold = float(spec.get("success_threshold", DEFAULT_THRESHOLD))
    retried = superseded(trials)
    rows = [_row(t, spec, threshold, is_done(t, retried)) for t in trials]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    return StudyData(name=name, storage_url=url, spec=spec, trials=frame, frozen={t.number: t for t in trials})


_COLUMNS = ["number", "state", "finished", "fail_reason", "value", *CONFIG_KEYS, "n_seeds", "n_success",
            "n_diverged", "success_rate", "best_seed_mse", "n_params", "wall_time_s", "device", "torch",
            "spec_hash", "started"]


def _row(t: FrozenTrial, spec: dict[str, Any], threshold: float, finished: bool) -> dict[str, Any]:
    """One trial as a table row; `finished`: it counts as the sweeps count it (recovery.is_done)."""
    ua = t.user_attrs
    fail_reason = ua.get("fail_reason")
    if t.state == TrialState.COMPLETE:
        value = float(t.values[0]) if t.values else math.nan
    else:
        value = math.inf if finished else math.nan
    # The full configuration: stored config, else the searched params over the spec's fixed values.
    config: dict[str, Any] = {**(spec.get("fixed") or {}), **t.params, **(ua.get("config") or {})}
    seeds = ua.get("seeds") or {}
    mses = seeds.get("test_mse") or []
    n_seeds = len(mses) or int(spec.get("seeds", 0)) or 0
    if mses:
        # None marks a diverged seed (stored JSON has no inf); it never counts as a fit.
        n_success = sum(m is not None and m < threshold for m in mses)
        n_diverged = int(ua.get("diverged", sum(m is None for m in mses)))
    else:
        n_success = round(float(ua.get("success_rate", 0.0)) * n_seeds)
        n_diverged = int(ua.get("diverged", 0))
    finite = [m for m in mses if m is not None and math.isfinite(m)]
    run = ua.get("run") or {}
    return {
        "number": t.number,
        "state": t.state.name,
        "finished": finished,
        "fail_reason": fail_reason,
        "value": value,
        **{k: config.get(k) for k in CONFIG_KEYS},
        "n_seeds": n_seeds,
        "n_success": n_success,
        "n_diverged": n_diverged,
        "success_rate": n_success / n_seeds if n_seeds else math.nan,
        "best_seed_mse": min(finite) if finite else math.inf,
        "n_params": ua.get("n_params"),
        "wall_time_s": run.get("wall_time_s"),
        "device": run.get("device"),
        "torch": run.get("torch"),
        "spec_hash": run.get("spec_hash"),
        "started": t.datetime_start,
    }


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
