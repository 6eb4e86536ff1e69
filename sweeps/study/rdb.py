"""The one home of Optuna's private API: everything here reaches past Optuna's public surface.

Over 300 lines on purpose: one file is the one place `tests/test_layers.py` lets touch Optuna's
internals, so an Optuna upgrade is checked here and nowhere else (`check_private_api` names what
changed; `tests/study/test_rdb.py` exercises every function against the installed Optuna).

Why reach past Optuna at all: its RDBStorage commits every call on its own (create, each param,
each attribute, the state) and re-reads every unfinished trial on each `ask` that pops the queue;
a round cost tens of milliseconds a trial. Here each step of a round is one transaction, written
with SQLAlchemy Core against Optuna's own tables, the rows Optuna itself would write, so a study
stays a plain Optuna study (params with distributions, `fixed_params`, states, values, attributes)
that its CLI, optuna-dashboard and samplers read unchanged:

- `enqueue_many`: WAITING trials (params, distributions, `fixed_params`, attributes);
- `claim`: WAITING trials to RUNNING with a first heartbeat, atomically across processes;
- `create_running`: new RUNNING trials with their params (a round of sampler asks);
- `finish`: state, value and user attributes of many trials; trials another worker already
  finished (failed as stale) are skipped, as `tell(skip_if_finished=True)` does;
- `fail_running`: FAIL with a `fail_reason` and the retries (Optuna's own retry rows, as
  `RetryHeartbeatStaleTrialCallback` writes them) in the same transaction;
- `scan` / `details` / `count_trials` / `lost_trials`: the light reads of `index.Index` and
  `recovery`; `tpe_round`: one fit of TPE's Parzen estimators for several asks (`mirror.Mirror`).
Also ids, handles and the one-transaction attribute and heartbeat writes older callers use.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.distributions import (BaseDistribution, CategoricalDistribution, check_distribution_compatibility,
                                  distribution_to_json, json_to_distribution)
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from .record import FAIL_REASON, RETRY_OF, json_safe

# What the bulk code was written against: Optuna's alembic head revision, its schema version, and
# the tables and columns read and written here. A different head means Optuna changed its schema:
# check the rows written here against Optuna's own code before adding it.
KNOWN_REVISIONS = ("v3.2.0.a",)
SCHEMA_VERSION = 12
TABLES: dict[str, tuple[str, ...]] = {
    "studies": ("study_id", "study_name"),
    "trials": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "trial_params": ("param_id", "trial_id", "param_name", "param_value", "distribution_json"),
    "trial_values": ("trial_value_id", "trial_id", "objective", "value", "value_type"),
    "trial_user_attributes": ("trial_user_attribute_id", "trial_id", "key", "value_json"),
    "trial_system_attributes": ("trial_system_attribute_id", "trial_id", "key", "value_json"),
    "trial_heartbeats": ("trial_heartbeat_id", "trial_id", "heartbeat"),
}
FIXED_PARAMS = "fixed_params"  # Optuna's system attribute of an enqueued trial
CHUNK = 500  # ids per IN (...): well under SQLite's and PostgreSQL's bound-parameter limits


class PrivateApiChanged(RuntimeError):
    """The installed Optuna no longer matches what this module writes and reads."""


def _t() -> dict[str, sa.Table]:
    return {"studies": models.StudyModel.__table__, "trials": models.TrialModel.__table__,
            "trial_params": models.TrialParamModel.__table__, "trial_values": models.TrialValueModel.__table__,
            "trial_user_attributes": models.TrialUserAttributeModel.__table__,
            "trial_system_attributes": models.TrialSystemAttributeModel.__table__,
            "trial_heartbeats": models.TrialHeartbeatModel.__table__}


def check_private_api(storage: RDBStorage | None = None) -> None:
    """Raise PrivateApiChanged naming everything that differs from what this module uses: the
    schema revision (of `storage` if given, else the installed Optuna's), a table or column, a
    private function or attribute."""
    problems = []
    if models.SCHEMA_VERSION != SCHEMA_VERSION:
        problems.append(f"models.SCHEMA_VERSION is {models.SCHEMA_VERSION}, expected {SCHEMA_VERSION}")
    tables = _t()
    for name, columns in TABLES.items():
        if tables[name].name != name:
            problems.append(f"table {name} is now called {tables[name].name}")
        missing = [c for c in columns if c not in tables[name].c]
        if missing:
            problems.append(f"table {name} lacks columns {missing}")
    if storage is not None:
        head = storage.get_current_version()
        actual = sa.inspect(storage.engine)
        for name, columns in TABLES.items():
            have = {c["name"] for c in actual.get_columns(name)}
            if not set(columns) <= have:
                problems.append(f"the database's {name} lacks columns {sorted(set(columns) - have)}")
    else:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(os.path.join(os.path.dirname(models.__file__), "alembic")).get_current_head()
    if head not in KNOWN_REVISIONS:
        problems.append(f"schema revision {head!r}, this module knows {KNOWN_REVISIONS}")
    from optuna.samplers._tpe import sampler as tpe

    wanted = [(tpe, "_split_trials"), (tpe, "default_gamma"), (tpe.TPESampler, "_build_parzen_estimator"),
              (tpe.TPESampler, "_compute_acquisition_func"), (tpe.TPESampler, "_is_multivariate"),
              (optuna.Study, "_pop_waiting_trial_id"), (optuna.Study, "_get_trials"),
              (RDBStorage, "_get_stale_trial_ids"), (RDBStorage, "_set_trial_attr_without_commit"),
              (models.TrialValueModel, "value_to_stored_repr"), (models.TrialValueModel, "stored_repr_to_value")]
    problems += [f"{getattr(o, '__name__', o)}.{n} is gone" for o, n in wanted if not callable(getattr(o, n, None))]
    probe = optuna.samplers.TPESampler(seed=0)
    problems += [f"TPESampler().{n} is gone" for n in ("_rng", "_gamma", "_n_ei_candidates", "_n_startup_trials",
                                                        "_constant_liar") if not hasattr(probe, n)]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the probe study's creation is not news
    try:
        study = optuna.create_study()
    finally:
        optuna.logging.set_verbosity(verbosity)
    for name in ("_storage", "_study_id", "_thread_local"):
        if not hasattr(study, name):
            problems.append(f"Study.{name} is gone")
    if not hasattr(getattr(study, "_thread_local", None), "cached_all_trials"):
        problems.append("Study._thread_local.cached_all_trials (the trial cache `ask` resets) is gone")
    if problems:
        raise PrivateApiChanged(f"Optuna {optuna.__version__} differs from what sweeps.study.rdb was written "
                                f"for: " + "; ".join(problems))


# -- ids and handles ----------------------------------------------------------------------------


def backend(storage: Any) -> RDBStorage | None:
    """The RDBStorage behind a storage (Optuna wraps a URL's in a cache), or None."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, RDBStorage) else None


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study object writes through."""
    return study._storage


def study_id(study: optuna.Study | optuna.study.StudySummary) -> int:
    """A study's id in its storage (the dashboard's URLs use it)."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (unique across studies; trial numbers are per study)."""
    return trial._trial_id


def trial_handle(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live `optuna.Trial` for an existing trial (to suggest into it, or to note it)."""
    return optuna.Trial(study, trial_id)


def live_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live trial for a RUNNING trial this process did not create through `study` (its cache
    must know the trial first: one full read of the study, for the rare trial queued by hand)."""
    study._storage.get_all_trials(study._study_id, deepcopy=False)
    return optuna.Trial(study, trial_id)


def pop_waiting(study: optuna.Study) -> int | None:
    """Take the oldest WAITING trial and mark it RUNNING (Optuna's own way); its id, or None."""
    return study._pop_waiting_trial_id()


def fixed_params(study: optuna.Study, trial_id: int) -> dict[str, Any]:
    """The params a queued trial was enqueued with (Optuna's `fixed_params` system attribute)."""
    return dict(study._storage.get_trial(trial_id).system_attrs.get(FIXED_PARAMS) or {})


def heartbeat_stale_callback(study: optuna.Study) -> Any:
    """The storage's retry callback for failed stale trials (None if it has none)."""
    return study._storage.get_heartbeat_stale_trial_callback()


# -- values as Optuna stores them ---------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC


def _json(value: Any) -> str:
    """JSON as Optuna writes it, NaN and inf as null (not JSON: the dashboard's parser rejects them)."""
    try:
        return json.dumps(value, allow_nan=False)  # the common case, at C speed
    except ValueError:
        return json.dumps(json_safe(value))


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


def _is_pg(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _lock_study(conn: sa.Connection, study_id: int) -> None:
    """Serialise trial creation in this study with every other writer, Optuna's own included:
    PostgreSQL locks the study row (Optuna's `create_new_trial` takes the same lock); SQLite takes
    the database's write lock now (a no-op under the workers' `BEGIN IMMEDIATE`)."""
    studies = _t()["studies"]
    if _is_pg(conn):
        found = conn.execute(sa.select(studies.c.study_id).where(studies.c.study_id == study_id)
                             .with_for_update()).first()
    else:
        found = conn.execute(sa.update(studies).where(studies.c.study_id == study_id)
                             .values(study_name=studies.c.study_name).returning(studies.c.study_id)).first()
    if found is None:
        raise KeyError(f"no study with id {study_id}")


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: tuple[str, ...],
            update: tuple[str, ...]) -> None:
    if not rows:
        return
    if conn.dialect.driver == "psycopg2":
        # Handed a list of rows, psycopg2 runs an upsert once per row, and SQLAlchemy's own
        # multi-row VALUES costs as much to compile: psycopg2's `execute_values` sends a page of
        # rows in one statement (measured on explore rounds: 40 ms an upsert -> 9 ms).
        from psycopg2.extras import execute_values

        cols = list(rows[0])
        sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES %s ON CONFLICT ({', '.join(keys)}) "
               f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in update)}")
        with conn.connection.driver_connection.cursor() as cur:  # this transaction's connection
            execute_values(cur, sql, [tuple(_raw(r[c]) for c in cols) for r in rows], page_size=1000)
        return
    if _is_pg(conn):
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"bulk writes support SQLite and PostgreSQL, not {conn.dialect.name}")
    stmt = insert(table)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}),
                 rows)


def _raw(value: Any) -> Any:
    """A value as the driver stores it: an Enum column (Optuna's value types) holds the member's name."""
    return value.name if isinstance(value, enum.Enum) else value


def _beat(conn: sa.Connection, trial_ids: Sequence[int]) -> None:
    """A heartbeat now (the server's clock, as Optuna's `record_heartbeat` uses) for each trial."""
    beats, trials = _t()["trial_heartbeats"], _t()["trials"]
    for chunk in _chunks(trial_ids):
        conn.execute(sa.delete(beats).where(beats.c.trial_id.in_(chunk)))
        conn.execute(sa.insert(beats).from_select(["trial_id", "heartbeat"], sa.select(
            trials.c.trial_id, sa.func.now()).where(trials.c.trial_id.in_(chunk))))


# -- writing trials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewTrial:
    """A trial to create: its params (external values) with their distributions, and attributes."""

    params: Mapping[str, Any]
    distributions: Mapping[str, BaseDistribution]
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    system_attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claimed:
    """A trial this worker now runs: its ids and params (external values)."""

    trial_id: int
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: COMPLETE with a value (+inf allowed: most seeds diverged), or FAIL
    (value None), and its user attributes."""

    trial_id: int
    state: TrialState
    value: float | None
    user_attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state == TrialState.COMPLETE:
            if self.value is None or self.value != self.value:
                raise ValueError(f"trial {self.trial_id}: a COMPLETE trial needs a value, got {self.value}")
        elif self.state in (TrialState.FAIL, TrialState.PRUNED):
            if self.value is not None:
                raise ValueError(f"trial {self.trial_id}: a {self.state.name} trial has no value")
        else:
            raise ValueError(f"trial {self.trial_id}: {self.state.name} is not a finished state")


def _check_distributions(conn: sa.Connection, study_id: int, trials: Sequence[NewTrial]) -> None:
    """What Optuna's `set_trial_param` checks: one distribution per parameter name in a study."""
    params, tr = _t()["trial_params"], _t()["trials"]
    first: dict[str, BaseDistribution] = {}
    checked: set[tuple[str, int]] = set()  # (name, id(distribution)) already compared: rounds share them
    for trial in trials:
        if set(trial.params) != set(trial.distributions):
            raise ValueError(f"params {sorted(trial.params)} and distributions {sorted(trial.distributions)} differ")
        for name, dist in trial.distributions.items():
            if name not in first:
                row = conn.execute(sa.select(params.c.distribution_json).join(tr, tr.c.trial_id == params.c.trial_id)
                                   .where(tr.c.study_id == study_id, params.c.param_name == name).limit(1)).first()
                first[name] = json_to_distribution(row[0]) if row is not None else dist
            if (name, id(dist)) not in checked:
                check_distribution_compatibility(first[name], dist)
                checked.add((name, id(dist)))
            if not dist._contains(dist.to_internal_repr(trial.params[name])):
                raise ValueError(f"{name} = {trial.params[name]!r} is outside {dist}")


def _insert(conn: sa.Connection, study_id: int, trials: Sequence[NewTrial], state: TrialState) -> list[Claimed]:
    t = _t()
    _lock_study(conn, study_id)
    _check_distributions(conn, study_id, trials)
    tr = t["trials"]
    # Numbered as Optuna numbers them (the study's trials before this one); the study lock makes
    # the count and the inserts one step for every writer.
    base = conn.execute(sa.select(sa.func.count()).select_from(tr).where(tr.c.study_id == study_id)).scalar_one()
    start = _utcnow() if state == TrialState.RUNNING else None
    rows = [{"number": base + i, "study_id": study_id, "state": state, "datetime_start": start,
             "datetime_complete": None} for i in range(len(trials))]
    ids = [(r.trial_id, r.number) for r in conn.execute(
        sa.insert(tr).returning(tr.c.trial_id, tr.c.number, sort_by_parameter_order=True), rows)]
    param_rows, user_rows, system_rows = [], [], []
    dist_json: dict[int, str] = {}
    for (tid, _), trial in zip(ids, trials):
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            if id(dist) not in dist_json:
                dist_json[id(dist)] = distribution_to_json(dist)
            param_rows.append({"trial_id": tid, "param_name": name, "param_value": dist.to_internal_repr(value),
                               "distribution_json": dist_json[id(dist)]})
        user_rows += [{"trial_id": tid, "key": k, "value_json": _json(v)} for k, v in trial.user_attrs.items()]
        system_rows += [{"trial_id": tid, "key": k, "value_json": _json(v)} for k, v in trial.system_attrs.items()]
    for table, rows_ in ((t["trial_params"], param_rows), (t["trial_user_attributes"], user_rows),
                         (t["trial_system_attributes"], system_rows)):
        if rows_:
            conn.execute(sa.insert(table), rows_)
    if state == TrialState.RUNNING:
        _beat(conn, [tid for tid, _ in ids])
    return [Claimed(tid, number, dict(trial.params)) for (tid, number), trial in zip(ids, trials)]


def enqueue_many(storage: RDBStorage, study_id: int, trials: Sequence[NewTrial]) -> list[int]:
    """Queue WAITING trials in one transaction; their trial ids in order. Each gets its params and
    distributions (as Optuna's retries have) and, as `enqueue_trial` writes, `fixed_params`, so
    Optuna's own `ask` pops and runs them unchanged."""
    if not trials:
        return []
    trials = [NewTrial(t.params, t.distributions, t.user_attrs, {FIXED_PARAMS: dict(t.params), **t.system_attrs})
              for t in trials]
    with storage.engine.begin() as conn:
        return [c.trial_id for c in _insert(conn, study_id, trials, TrialState.WAITING)]


def create_running(storage: RDBStorage, study_id: int, trials: Sequence[NewTrial]) -> list[Claimed]:
    """Create RUNNING trials (datetime_start now, a first heartbeat) in one transaction."""
    if not trials:
        return []
    with storage.engine.begin() as conn:
        return _insert(conn, study_id, trials, TrialState.RUNNING)


def claim(storage: RDBStorage, study_id: int, limit: int, distributions: Mapping[str, BaseDistribution] | None = None,
          up_to: int | None = None) -> list[Claimed]:
    """Move up to `limit` WAITING trials (lowest ids first; none past trial id `up_to` if given) to
    RUNNING with datetime_start and a first heartbeat, in one transaction; returns them by number.

    One statement moves them, so two workers never claim the same trial: PostgreSQL locks the rows
    it picks and skips rows another transaction holds (`FOR UPDATE SKIP LOCKED`), SQLite holds its
    write lock. A trial queued by Optuna's own `enqueue_trial` has `fixed_params` but no params:
    given `distributions`, its params are written from those.
    """
    if limit <= 0:
        return []
    t = _t()
    tr = t["trials"]
    pick = sa.select(tr.c.trial_id).where(tr.c.study_id == study_id, tr.c.state == TrialState.WAITING)
    if up_to is not None:
        pick = pick.where(tr.c.trial_id <= up_to)
    pick = pick.order_by(tr.c.trial_id).limit(limit)
    with storage.engine.begin() as conn:
        if _is_pg(conn):
            pick = pick.with_for_update(skip_locked=True)
        moved = conn.execute(sa.update(tr).where(tr.c.trial_id.in_(pick.scalar_subquery()),
                                                 tr.c.state == TrialState.WAITING)
                             .values(state=TrialState.RUNNING, datetime_start=_utcnow())
                             .returning(tr.c.trial_id, tr.c.number)).all()
        if not moved:
            return []
        ids = [r.trial_id for r in moved]
        _beat(conn, ids)
        params = _params(conn, ids)
        missing = [tid for tid in ids if not params.get(tid)]
        rows = []
        for tid, attrs in _attrs(conn, t["trial_system_attributes"], missing, (FIXED_PARAMS,)).items():
            for name, value in (attrs.get(FIXED_PARAMS) or {}).items():
                dist = (distributions or {}).get(name)
                if dist is not None:  # else the runner suggests it (Optuna's own path)
                    rows.append({"trial_id": tid, "param_name": name, "param_value": dist.to_internal_repr(value),
                                 "distribution_json": distribution_to_json(dist)})
                    params.setdefault(tid, {})[name] = (value, dist)
        if rows:
            conn.execute(sa.insert(t["trial_params"]), rows)
    return [Claimed(r.trial_id, r.number, {k: v for k, (v, _) in params.get(r.trial_id, {}).items()})
            for r in sorted(moved, key=lambda r: r.number)]


def finish(storage: RDBStorage, outcomes: Sequence[Outcome]) -> set[int]:
    """Finish many RUNNING trials in one transaction: state, datetime_complete, value, user
    attributes. Trials no longer RUNNING (another worker failed them as stale: their retry redoes
    them) are skipped, not an error. Returns the ids written."""
    if not outcomes:
        return set()
    t = _t()
    tr = t["trials"]
    now = _utcnow()
    written: set[int] = set()
    with storage.engine.begin() as conn:
        # The state first: the UPDATE takes the row locks (PostgreSQL) or the write lock (SQLite)
        # and says which trials were still RUNNING; only those get values and attributes.
        for state in {o.state for o in outcomes}:
            for chunk in _chunks([o.trial_id for o in outcomes if o.state == state]):
                written.update(conn.execute(sa.update(tr).where(tr.c.trial_id.in_(chunk), tr.c.state == TrialState.RUNNING)
                                            .values(state=state, datetime_complete=now)
                                            .returning(tr.c.trial_id)).scalars())
        mine = [o for o in outcomes if o.trial_id in written]
        values = []
        for o in mine:
            if o.value is not None:
                stored, kind = models.TrialValueModel.value_to_stored_repr(float(o.value))
                values.append({"trial_id": o.trial_id, "objective": 0, "value": stored, "value_type": kind})
        _upsert(conn, t["trial_values"], values, ("trial_id", "objective"), ("value", "value_type"))
        _upsert(conn, t["trial_user_attributes"], [{"trial_id": o.trial_id, "key": k, "value_json": _json(v)}
                                                    for o in mine for k, v in o.user_attrs.items()],
                ("trial_id", "key"), ("value_json",))
    return written


def fail_running(storage: RDBStorage, study_id: int, trial_ids: Sequence[int], reason: str, *,
                 max_retry: int | None) -> list[tuple[int, int]]:
    """FAIL the trials still RUNNING among `trial_ids`, with `reason` as their `fail_reason` user
    attribute, and queue a retry of each, all in one transaction: a worker that dies in between
    can no longer leave a failed trial without its reason or its retry.

    A retry is the row Optuna's `RetryHeartbeatStaleTrialCallback(max_retry)` adds: WAITING, the
    same params and distributions, the failed trial's system attributes with `failed_trial` and
    `retry_history` extended (none once the history is longer than `max_retry`); its only user
    attribute is `retry_of` = the failed trial's number (`storage.RetryStale`). Returns
    [(trial_id, number)] of the trials failed.
    """
    if not trial_ids:
        return []
    t = _t()
    tr = t["trials"]
    failed: list[tuple[int, int]] = []
    with storage.engine.begin() as conn:
        _lock_study(conn, study_id)
        for chunk in _chunks(list(trial_ids)):
            failed += [(r.trial_id, r.number) for r in conn.execute(
                sa.update(tr).where(tr.c.trial_id.in_(chunk), tr.c.state == TrialState.RUNNING)
                .values(state=TrialState.FAIL, datetime_complete=_utcnow()).returning(tr.c.trial_id, tr.c.number))]
        if not failed:
            return []
        failed.sort(key=lambda r: r[1])
        ids = [tid for tid, _ in failed]
        _upsert(conn, t["trial_user_attributes"], [{"trial_id": tid, "key": FAIL_REASON, "value_json": _json(reason)}
                                                    for tid in ids], ("trial_id", "key"), ("value_json",))
        params = _params(conn, ids)
        systems = _attrs(conn, t["trial_system_attributes"], ids, None)
        retries = []
        for tid, number in failed:
            system = {"failed_trial": number, "retry_history": [], **systems.get(tid, {})}
            system["retry_history"] = [*system["retry_history"], number]
            if max_retry is not None and max_retry < len(system["retry_history"]):
                continue
            p = params.get(tid, {})
            retries.append(NewTrial({k: v for k, (v, _) in p.items()}, {k: d for k, (_, d) in p.items()},
                                    {RETRY_OF: number}, system))
        if retries:
            _insert(conn, study_id, retries, TrialState.WAITING)
    return failed


# -- reading ------------------------------------------------------------------------------------


def _params(conn: sa.Connection, ids: Sequence[int]) -> dict[int, dict[str, tuple[Any, BaseDistribution]]]:
    p = _t()["trial_params"]
    out: dict[int, dict[str, tuple[Any, BaseDistribution]]] = {}
    cache: dict[str, BaseDistribution] = {}
    for chunk in _chunks(ids):
        for tid, name, value, dist_json in conn.execute(sa.select(
                p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
                .where(p.c.trial_id.in_(chunk)).order_by(p.c.param_id)):
            dist = cache.get(dist_json)
            if dist is None:
                dist = cache[dist_json] = json_to_distribution(dist_json)
            out.setdefault(tid, {})[name] = (dist.to_external_repr(value), dist)
    return out


def _attrs(conn: sa.Connection, table: sa.Table, ids: Sequence[int], keys: Sequence[str] | None
           ) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for chunk in _chunks(ids):
        query = sa.select(table.c.trial_id, table.c.key, table.c.value_json).where(table.c.trial_id.in_(chunk))
        if keys is not None:
            query = query.where(table.c.key.in_(list(keys)))
        for tid, key, value in conn.execute(query):
            out.setdefault(tid, {})[key] = json.loads(value)
    return out


def _values(conn: sa.Connection, ids: Sequence[int]) -> dict[int, float]:
    v = _t()["trial_values"]
    out = {}
    for chunk in _chunks(ids):
        for tid, value, kind in conn.execute(sa.select(v.c.trial_id, v.c.value, v.c.value_type)
                                             .where(v.c.trial_id.in_(chunk), v.c.objective == 0)):
            out[tid] = models.TrialValueModel.stored_repr_to_value(value, kind)
    return out


def count_trials(storage: RDBStorage, study_id: int) -> int:
    """How many trials the study has, every state (one COUNT, no trial read)."""
    tr = _t()["trials"]
    with storage.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(tr).where(tr.c.study_id == study_id)).scalar_one()


def scan(storage: RDBStorage, study_id: int, after: int | None = None) -> list[tuple[int, int, str]]:
    """(trial_id, number, state name) of every trial of the study (only those with ids past `after`
    if given): one indexed scan of one table, each round.

    Through the driver's own cursor: SQLAlchemy's row and Enum handling were 3/4 of the time of
    a scan of a few thousand trials. Outside any transaction (SQLite: no write lock taken; each
    statement reads one consistent snapshot), which is all a scan needs.
    """
    tr = _t()["trials"]
    mark = "?" if storage.engine.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT trial_id, number, state FROM {tr.name} WHERE study_id = {mark}"
    args: tuple[int, ...] = (study_id,)
    if after is not None:
        sql, args = sql + f" AND trial_id > {mark}", (study_id, after)
    raw = storage.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(sql, args)
        rows = cur.fetchall()
        cur.close()
        raw.commit()  # PostgreSQL's driver opened a transaction for the SELECT: end it
    finally:
        raw.close()
    return rows


@dataclass(frozen=True)
class Details:
    """What `details` reads of one trial: params with distributions, value, the asked attributes."""

    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    value: float | None
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]


def details(storage: RDBStorage, trial_ids: Sequence[int], user_keys: Sequence[str] | None,
            system_keys: Sequence[str] | None) -> dict[int, Details]:
    """Params, value and the named attributes (None: all) of these trials, in one connection."""
    t = _t()
    with storage.engine.connect() as conn:
        params = _params(conn, trial_ids)
        values = _values(conn, trial_ids)
        users = _attrs(conn, t["trial_user_attributes"], trial_ids, user_keys)
        systems = _attrs(conn, t["trial_system_attributes"], trial_ids, system_keys)
    out = {}
    for tid in trial_ids:
        p = params.get(tid, {})
        out[tid] = Details({k: v for k, (v, _) in p.items()}, {k: d for k, (_, d) in p.items()}, values.get(tid),
                           users.get(tid, {}), systems.get(tid, {}))
    return out


def lost_trials(storage: RDBStorage, study_id: int) -> tuple[list[int], list[int]]:
    """(stale, orphaned) RUNNING trials of the study, in one read.

    Stale: the last heartbeat is older than the grace period by the server's clock (Optuna's own
    rule, `fail_stale_trials`). Orphaned: no heartbeat at all and started more than a grace period
    ago: a worker that died between creating a trial and its first heartbeat leaves one (every
    writer here beats in the transaction that creates or claims, but Optuna's own `ask` does not);
    Optuna never considers it stale. `datetime_start` is the writer's clock (stored in UTC);
    machines are assumed to agree within the grace period (NTP), which is minutes.
    """
    if storage.heartbeat_interval is None:
        return [], []
    grace = timedelta(seconds=storage.grace_period or 2 * storage.heartbeat_interval)  # Optuna's default
    tr, beats = _t()["trials"], _t()["trial_heartbeats"]
    with storage.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
        rows = conn.execute(sa.select(tr.c.trial_id, tr.c.datetime_start, beats.c.heartbeat)
                            .select_from(tr.outerjoin(beats, beats.c.trial_id == tr.c.trial_id))
                            .where(tr.c.study_id == study_id, tr.c.state == TrialState.RUNNING)
                            .order_by(tr.c.trial_id)).all()
    local = _utcnow()
    stale = [tid for tid, _, beat in rows if beat is not None and now - beat > grace]
    orphans = [tid for tid, start, beat in rows if beat is None and start is not None and start < local - grace]
    return stale, orphans


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period."""
    rdb = backend(study._storage)
    return lost_trials(rdb, study._study_id)[0] if rdb is not None else []


def orphan_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials without any heartbeat, started more than a grace period ago (`lost_trials`)."""
    rdb = backend(study._storage)
    return lost_trials(rdb, study._study_id)[1] if rdb is not None else []


def record_heartbeats(storage: Any, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial, all in one transaction (Optuna commits one per trial)."""
    ids = list(trial_ids)
    rdb = backend(storage)
    if rdb is None or not ids:
        for tid in ids:
            storage.record_heartbeat(tid)
        return
    with rdb.engine.begin() as conn:
        _beat(conn, ids)


def write_user_attrs(study: optuna.Study, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
    """Set user attributes of many running trials: [(trial_id, {key: value})]. Returns the ids written.

    On an RDBStorage every attribute goes in one transaction (Optuna's public API commits each
    attribute on its own). A trial that another worker has meanwhile failed as stale is skipped.
    """
    rdb = backend(study._storage)
    if rdb is not None:
        try:
            with _create_scoped_session(rdb.scoped_session, True) as session:
                for tid, attrs in items:
                    for key, value in attrs.items():
                        rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, tid, key,
                                                           json_safe(value))
            return [tid for tid, _ in items]
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # rolled back: fall through to one trial at a time, skipping the finished ones
    written = []
    for tid, attrs in items:
        try:
            for key, value in attrs.items():
                study._storage.set_trial_user_attr(tid, key, json_safe(value))
            written.append(tid)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return written


# -- the sampler: one TPE fit for several asks --------------------------------------------------


def tpe_round(study: optuna.Study, n: int, distributions: Mapping[str, BaseDistribution]
              ) -> list[dict[str, Any]] | None:
    """n configurations from one fit of the study's TPE sampler, or None where TPE would not fit
    (not TPE, not multivariate, still in its random startup, or a space the study does not show).

    TPESampler._sample's own steps, once for n trials: the Parzen estimators of the finished and
    (constant liar) running trials, n x `n_ei_candidates` draws from the "below" one, and for each
    of the n the best of its own candidates by TPE's acquisition. The study is an in-memory
    mirror (`mirror.Mirror`): nothing here writes to a database.
    """
    from optuna.samplers._tpe.sampler import _split_trials, default_gamma

    s = study.sampler
    if not isinstance(s, optuna.samplers.TPESampler) or not s._is_multivariate(study):
        return None
    study._thread_local.cached_all_trials = None  # what `ask` does first: read the trials afresh
    finished = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=False)
    if len(finished) < s._n_startup_trials:
        return None  # random startup: cheap, and sequential asks keep Optuna's own behaviour
    probe = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
                        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
                        intermediate_values={}, trial_id=-1)
    space = s.infer_relative_search_space(study, probe)
    if set(space) != {k for k, d in distributions.items() if not d.single()}:
        return None  # the space changed under the study: leave it to Optuna's own asks
    states = (TrialState.COMPLETE, TrialState.PRUNED) + ((TrialState.RUNNING,) if s._constant_liar else ())
    trials = study._get_trials(deepcopy=False, states=states, use_cache=False)
    gamma = s._gamma or default_gamma
    below, above = _split_trials(study, trials, gamma(sum(t.state != TrialState.RUNNING for t in trials)))
    mpe_below = s._build_parzen_estimator(study, space, below, handle_below=True)
    mpe_above = s._build_parzen_estimator(study, space, above, handle_below=False)
    k = s._n_ei_candidates
    samples = mpe_below.sample(s._rng.rng, n * k)
    acq = np.asarray(s._compute_acquisition_func(samples, mpe_below, mpe_above)).reshape(n, k)
    out = []
    for j in acq.argmax(axis=1) + np.arange(n) * k:
        params = {name: dist.to_external_repr(samples[name][j].item()) for name, dist in space.items()}
        for name, dist in distributions.items():
            if dist.single():  # one value only: TPE leaves these out of its space
                params[name] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
        out.append({name: params[name] for name in distributions})
    return out
