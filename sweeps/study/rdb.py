"""The one home of Optuna's private API: everything here reaches past Optuna's public surface.

Used for speed (one transaction for a round's heartbeats or attributes, where Optuna commits each
call on its own) and for what Optuna does not expose (a study's and a trial's storage ids, popping a
queued trial without creating a new one, stale and orphaned trials). `tests/study/test_rdb.py`
exercises every function here against the installed Optuna, so an upgrade that breaks one fails
loudly there, not in a sweep.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from .record import json_safe


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


def pop_waiting(study: optuna.Study) -> int | None:
    """Take the oldest WAITING trial and mark it RUNNING; its id, or None when the queue is empty.

    `study.ask()` would create a new trial outside the queue when it is empty.
    """
    return study._pop_waiting_trial_id()


def fixed_params(study: optuna.Study, trial_id: int) -> dict[str, Any]:
    """The params a queued trial was enqueued with (Optuna's `fixed_params` system attribute)."""
    return dict(study._storage.get_trial(trial_id).system_attrs.get("fixed_params") or {})


def heartbeat_stale_callback(study: optuna.Study) -> Any:
    """The storage's retry callback for failed stale trials (None if it has none)."""
    return study._storage.get_heartbeat_stale_trial_callback()


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period."""
    return list(study._storage._get_stale_trial_ids(study._study_id))


def orphan_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials without any heartbeat, started more than a grace period ago.

    A worker that died between creating a trial and its first heartbeat leaves one; Optuna never
    considers it stale. `datetime_start` is the writing worker's clock (stored in UTC); machines
    are assumed to agree within the grace period (NTP), which is minutes.
    """
    rdb = backend(study._storage)
    if rdb is None:
        return []
    grace = rdb.grace_period or 2 * rdb.heartbeat_interval  # Optuna's own default
    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace)
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = (session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id,
                        models.TrialModel.state == TrialState.RUNNING,
                        models.TrialModel._datetime_start_utc < cutoff,
                        ~models.TrialModel.heartbeats.any())
                .all())
    return [r[0] for r in rows]


def record_heartbeats(storage: Any, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial, all in one transaction (Optuna commits one per trial)."""
    ids = list(trial_ids)
    rdb = backend(storage)
    if rdb is None or not ids:
        for tid in ids:
            storage.record_heartbeat(tid)
        return
    with _create_scoped_session(rdb.scoped_session, True) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        for tid in ids:
            beat = models.TrialHeartbeatModel.where_trial_id(tid, session, True)
            if beat is None:
                session.add(models.TrialHeartbeatModel(trial_id=tid, heartbeat=now))
            else:
                beat.heartbeat = now


def write_user_attrs(study: optuna.Study, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
    """Set user attributes of many running trials: [(trial_id, {key: value})]. Returns the ids written.

    On an RDBStorage every attribute of the round goes in one transaction (Optuna's public API
    commits each attribute on its own: ~6 commits a trial). A trial that another worker has
    meanwhile failed as stale is skipped (its retry will redo it), not an error.
    """
    rdb = backend(study._storage)
    if rdb is not None:
        try:
            with _create_scoped_session(rdb.scoped_session, True) as session:
                for trial_id, attrs in items:
                    for key, value in attrs.items():
                        rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key,
                                                               json_safe(value))
            return [tid for tid, _ in items]
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # rolled back: fall through to one trial at a time, skipping the finished ones
    written = []
    for trial_id, attrs in items:
        try:
            for key, value in attrs.items():
                study._storage.set_trial_user_attr(trial_id, key, json_safe(value))
            written.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return written
