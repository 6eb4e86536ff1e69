"""Every function of sweeps.study.rdb, the one home of Optuna's private API, against the installed
Optuna: an upgrade that renames or changes one of them fails here, loudly, not in a sweep."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from sweeps.study import rdb
from sweeps.study import storage as st
from sweeps.study.storage import RetryStale


@pytest.fixture
def storage(sqlite_url, monkeypatch):
    monkeypatch.setenv(st.ENV_HEARTBEAT, "1")
    monkeypatch.setenv(st.ENV_GRACE, "2")
    return st.open_storage(sqlite_url)


@pytest.fixture
def study(storage):
    st.quiet_optuna()
    return optuna.create_study(study_name="s", storage=storage)


def test_the_schema_is_the_one_this_code_was_written_for(storage):
    # Optuna 5.0's schema; a new one may move the tables and columns rdb.py writes to.
    assert storage.get_current_version() == storage.get_head_version()
    from optuna.storages._rdb import models

    assert {"trial_id", "study_id", "state", "datetime_start"} <= set(models.TrialModel.__table__.columns.keys())
    assert {"trial_id", "heartbeat"} <= set(models.TrialHeartbeatModel.__table__.columns.keys())


def test_ids_handles_and_the_backend_behind_a_cached_storage(study, sqlite_url, storage):
    loaded = optuna.load_study(study_name="s", storage=sqlite_url)  # a URL gets Optuna's cache wrapper
    assert rdb.backend(rdb.storage_of(loaded)) is not None
    assert rdb.backend(storage) is storage
    assert rdb.backend(optuna.storages.InMemoryStorage()) is None
    assert rdb.study_id(study) == storage.get_study_id_from_name("s")
    (summary,) = optuna.get_all_study_summaries(storage)
    assert rdb.study_id(summary) == rdb.study_id(study)
    trial = study.ask()
    assert rdb.trial_id(trial) == rdb.trial_id(study.trials[0])
    handle = rdb.trial_handle(study, rdb.trial_id(trial))
    assert handle.suggest_float("x", 0.0, 1.0) >= 0.0
    assert "x" in study.trials[0].params
    assert isinstance(rdb.heartbeat_stale_callback(study), RetryStale)


def test_pop_waiting_takes_the_queue_in_order_then_says_empty(study):
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75})
    first, second = rdb.pop_waiting(study), rdb.pop_waiting(study)
    assert rdb.pop_waiting(study) is None
    trials = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    assert trials[first].number == 0 and trials[second].number == 1
    assert {trials[first].state, trials[second].state} == {TrialState.RUNNING}


def test_heartbeats_stale_trials_and_orphans(study, storage):
    beating = rdb.trial_id(study.ask())
    rdb.record_heartbeats(storage, [beating])
    rdb.record_heartbeats(storage, [beating])  # an update, not a second row
    assert rdb.stale_trial_ids(study) == []
    old = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=60)
    orphan = storage.create_new_trial(rdb.study_id(study), template_trial=FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=old, datetime_complete=None, params={},
        distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1))
    assert rdb.orphan_trial_ids(study) == [orphan]  # the beating one has a heartbeat row
    time.sleep(3.5)  # past the 2 s grace period (heartbeats are stored to the second: a full second of slack)
    assert rdb.stale_trial_ids(study) == [beating]


def test_write_user_attrs_in_one_go_skips_finished_trials(study, storage):
    live, done = study.ask(), study.ask()
    study.tell(done, 1.0)
    written = rdb.write_user_attrs(study, [(rdb.trial_id(live), {"a": 1, "b": [1.0, float("inf")]}),
                                           (rdb.trial_id(done), {"a": 2})])
    assert written == [rdb.trial_id(live)]
    by_id = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    assert by_id[rdb.trial_id(live)].user_attrs == {"a": 1, "b": [1.0, None]}  # inf is not JSON
    assert by_id[rdb.trial_id(done)].user_attrs == {}


def test_write_user_attrs_on_a_storage_without_rdb():
    study = optuna.create_study()
    trial = study.ask({"x": FloatDistribution(0, 1)})
    assert rdb.write_user_attrs(study, [(rdb.trial_id(trial), {"a": 1})]) == [rdb.trial_id(trial)]
    assert study.trials[0].user_attrs == {"a": 1}
