"""The bulk writes of sweeps.study.rdb against Optuna itself: what they write must read back through
Optuna's public API exactly as Optuna's own calls would have written it, and the private surface
they rely on must still be there.

The reference for every check is Optuna (its enqueue/ask/tell, its retry callback, `get_trials`);
each test runs on SQLite and on PostgreSQL (SWEEPS_TEST_PG_URL; `.ci/run` starts a server).
"""

from __future__ import annotations

import copy
import math
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pg import pg_url  # noqa: F401  (fixture)

from sweeps.study import rdb
from sweeps.study import recovery as rec
from sweeps.study import storage as st
from sweeps.study.record import DIVERGED, FAIL_REASON, INTERRUPTED, RETRY_OF

D = {"hidden": IntDistribution(1, 32), "act": CategoricalDistribution(["tanh", "relu", "sin"]),
     "lr": FloatDistribution(1e-5, 1.0, log=True)}


def cell(i: int) -> dict:
    return {"hidden": 1 + i % 32, "act": ["tanh", "relu", "sin"][i % 3], "lr": 10 ** (-1 - (i % 4))}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def url(request, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv(st.ENV_HEARTBEAT, "1")
    monkeypatch.setenv(st.ENV_GRACE, "2")
    st.quiet_optuna()
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'b.db'}"
    return request.getfixturevalue("pg_url")


def new_study(url: str, name: str = "b") -> tuple[optuna.storages.RDBStorage, optuna.Study]:
    storage = st.open_storage(url)
    return storage, optuna.create_study(study_name=name, storage=storage)


def fresh(url: str, name: str = "b") -> list[optuna.trial.FrozenTrial]:
    """The study as a new reader sees it, through Optuna's public API only."""
    return optuna.load_study(study_name=name, storage=st.open_readonly(url)).get_trials(deepcopy=True)


# -- the private surface ------------------------------------------------------------------------


def test_private_api_is_what_this_module_was_written_for(tmp_path):
    rdb.check_private_api()
    storage, _ = new_study(f"sqlite:///{tmp_path / 'p.db'}")
    rdb.check_private_api(storage)


def test_a_changed_private_api_is_named(tmp_path, monkeypatch):
    storage, _ = new_study(f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setattr(rdb, "KNOWN_REVISIONS", ("v9.9.9",))
    monkeypatch.setitem(rdb.TABLES, "trials", rdb.TABLES["trials"] + ("renamed_column",))
    monkeypatch.delattr(optuna.samplers.TPESampler, "_build_parzen_estimator")
    with pytest.raises(rdb.PrivateApiChanged) as err:
        rdb.check_private_api(storage)
    said = str(err.value)
    assert "v3.2.0.a" in said and "renamed_column" in said and optuna.__version__ in said
    assert "_build_parzen_estimator" in said


# -- writes read back through Optuna ------------------------------------------------------------


def test_enqueued_trials_are_what_optuna_enqueue_and_ask_make(url):
    storage, study = new_study(url)
    ids = rdb.enqueue_many(storage, rdb.study_id(study),
                           [rdb.NewTrial(cell(i), D, {RETRY_OF: 7} if i == 1 else {}) for i in range(5)])
    ours = fresh(url)
    assert [rdb.trial_id(t) for t in ours] == ids and [t.number for t in ours] == list(range(5))
    assert all(t.state == TrialState.WAITING and t.datetime_start is None for t in ours)
    assert [t.system_attrs["fixed_params"] for t in ours] == [cell(i) for i in range(5)]
    assert ours[1].user_attrs == {RETRY_OF: 7} and ours[0].user_attrs == {}

    # Optuna's own queue, for reference: enqueue_trial, then ask + suggest, in another study.
    ref = optuna.create_study(study_name="ref", storage=storage)
    for i in range(5):
        ref.enqueue_trial(cell(i), user_attrs={RETRY_OF: 7} if i == 1 else None)
    for reader in (optuna.load_study(study_name="b", storage=storage), ref):  # Optuna pops ours unchanged
        for _ in range(5):
            trial = reader.ask()
            trial.suggest_int("hidden", 1, 32)
            trial.suggest_categorical("act", ["tanh", "relu", "sin"])
            trial.suggest_float("lr", 1e-5, 1.0, log=True)
            reader.tell(trial, 1.0)
    a, b = fresh(url, "b"), fresh(url, "ref")
    assert [(t.number, t.state, t.params, t.distributions, t.user_attrs, t.system_attrs["fixed_params"]) for t in a] \
        == [(t.number, t.state, t.params, t.distributions, t.user_attrs, t.system_attrs["fixed_params"]) for t in b]


def test_claim_pops_lowest_first_with_start_and_first_heartbeat(url):
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    rdb.enqueue_many(storage, sid, [rdb.NewTrial(cell(i), D) for i in range(6)])
    got = rdb.claim(storage, sid, 3)
    assert [(c.number, c.params) for c in got] == [(i, cell(i)) for i in range(3)]
    ts = fresh(url)
    assert [t.state for t in ts] == [TrialState.RUNNING] * 3 + [TrialState.WAITING] * 3
    assert all(t.datetime_start is not None for t in ts[:3])
    beats = rdb._t()["trial_heartbeats"]
    with storage.engine.connect() as conn:
        beaten = set(conn.execute(sa.select(beats.c.trial_id)).scalars())
    assert beaten == {c.trial_id for c in got}
    assert rdb.lost_trials(storage, sid) == ([], [])  # fresh beats: nothing stale
    # `up_to`: nothing past that trial id, even with room left.
    assert [c.number for c in rdb.claim(storage, sid, 10, up_to=ts[3]._trial_id)] == [3]
    assert [c.number for c in rdb.claim(storage, sid, 10)] == [4, 5]
    assert rdb.claim(storage, sid, 10) == [] and rdb.claim(storage, sid, 0) == []


def test_claim_writes_the_params_of_trials_optuna_enqueued(url):
    storage, study = new_study(url)
    study.enqueue_trial(cell(2))  # Optuna's own: fixed_params only, no params yet
    got = rdb.claim(storage, rdb.study_id(study), 1, D)
    assert got[0].params == cell(2)
    (t,) = fresh(url)
    assert t.params == cell(2) and t.distributions == D and t.state == TrialState.RUNNING


def test_created_trials_are_numbered_like_optuna_numbers_them(url):
    storage, study = new_study(url)
    made = []
    for i in range(3):
        study.ask()  # Optuna's own creation between ours
        made += rdb.create_running(storage, rdb.study_id(study), [rdb.NewTrial(cell(i), D), rdb.NewTrial(cell(i + 1), D)])
    ts = fresh(url)
    assert [t.number for t in ts] == list(range(9))
    assert [c.number for c in made] == [1, 2, 4, 5, 7, 8]
    by_id = {rdb.trial_id(t): t for t in ts}
    for c in made:
        assert by_id[c.trial_id].state == TrialState.RUNNING and by_id[c.trial_id].params == c.params
        assert by_id[c.trial_id].datetime_start is not None


def test_finish_writes_values_and_attrs_and_skips_trials_finished_elsewhere(url):
    storage, study = new_study(url)
    made = rdb.create_running(storage, rdb.study_id(study), [rdb.NewTrial(cell(i), D) for i in range(4)])
    stale = made[2].trial_id
    assert storage.set_trial_state_values(stale, TrialState.FAIL)  # another worker failed it as stale
    written = rdb.finish(storage, [
        rdb.Outcome(made[0].trial_id, TrialState.COMPLETE, 0.25, {"seeds": {"test_mse": [0.2, float("nan")]}}),
        rdb.Outcome(made[1].trial_id, TrialState.FAIL, None, {FAIL_REASON: DIVERGED}),
        rdb.Outcome(stale, TrialState.COMPLETE, 0.5, {"seeds": {}}),
        rdb.Outcome(made[3].trial_id, TrialState.COMPLETE, math.inf, {"seeds_fit": "2/8"}),  # 6 of 8 diverged
    ])
    assert written == {made[0].trial_id, made[1].trial_id, made[3].trial_id}
    ts = {rdb.trial_id(t): t for t in fresh(url)}
    assert ts[made[0].trial_id].state == TrialState.COMPLETE and ts[made[0].trial_id].value == 0.25
    assert ts[made[0].trial_id].user_attrs == {"seeds": {"test_mse": [0.2, None]}}  # NaN is not JSON
    assert ts[made[0].trial_id].datetime_complete is not None
    assert ts[made[1].trial_id].state == TrialState.FAIL and ts[made[1].trial_id].values is None
    assert ts[made[1].trial_id].user_attrs == {FAIL_REASON: DIVERGED}
    assert ts[stale].state == TrialState.FAIL and ts[stale].user_attrs == {} and ts[stale].values is None
    assert ts[made[3].trial_id].state == TrialState.COMPLETE and ts[made[3].trial_id].value == math.inf
    assert optuna.load_study(study_name="b", storage=storage).best_value == 0.25
    assert rdb.finish(storage, [rdb.Outcome(made[0].trial_id, TrialState.COMPLETE, 9.0)]) == set()
    assert fresh(url)[0].value == 0.25  # a finished trial is never changed


def test_fail_running_gives_a_reason_and_the_retry_optunas_callback_would(url):
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    queued = rdb.enqueue_many(storage, sid, [rdb.NewTrial(cell(i), D) for i in range(2)])
    rdb.claim(storage, sid, 2)
    asked = rdb.create_running(storage, sid, [rdb.NewTrial(cell(5), D)])
    done = rdb.create_running(storage, sid, [rdb.NewTrial(cell(6), D)])
    rdb.finish(storage, [rdb.Outcome(done[0].trial_id, TrialState.COMPLETE, 1.0)])
    before = {rdb.trial_id(t): t for t in fresh(url)}

    failed = rdb.fail_running(storage, sid, [queued[0], asked[0].trial_id, done[0].trial_id], rec.STALE,
                              max_retry=st.MAX_RETRY)
    assert failed == [(queued[0], 0), (asked[0].trial_id, 2)]  # the finished one is left alone
    after = fresh(url)
    by_id = {rdb.trial_id(t): t for t in after}
    for tid in (queued[0], asked[0].trial_id):
        assert by_id[tid].state == TrialState.FAIL and by_id[tid].user_attrs == {FAIL_REASON: rec.STALE}
        assert by_id[tid].datetime_complete is not None
    assert by_id[done[0].trial_id].state == TrialState.COMPLETE and by_id[done[0].trial_id].user_attrs == {}
    retries = after[len(before):]
    # The reference: Optuna's own callback (through the project's RetryStale) on the same trials.
    ref = optuna.create_study(study_name="ref", storage=storage)
    for tid in (queued[0], asked[0].trial_id):
        st.RetryStale(max_retry=st.MAX_RETRY)(ref, copy.deepcopy(by_id[tid]))
    expected = fresh(url, "ref")
    assert [(t.state, t.params, t.distributions, t.user_attrs, t.system_attrs) for t in retries] == \
        [(t.state, t.params, t.distributions, t.user_attrs, t.system_attrs) for t in expected]
    assert [t.user_attrs[RETRY_OF] for t in retries] == [0, 2]
    assert retries[0].system_attrs["fixed_params"] == cell(0) and "fixed_params" not in retries[1].system_attrs


def test_retries_stop_after_max_retry(url):
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    rdb.enqueue_many(storage, sid, [rdb.NewTrial(cell(0), D)])
    attempts = 0
    while claimed := rdb.claim(storage, sid, 1):
        attempts += 1
        rdb.fail_running(storage, sid, [claimed[0].trial_id], INTERRUPTED, max_retry=st.MAX_RETRY)
    assert attempts == 1 + st.MAX_RETRY
    ts = fresh(url)
    assert len(ts) == attempts and all(t.state == TrialState.FAIL for t in ts)
    assert ts[-1].system_attrs["retry_history"] == list(range(st.MAX_RETRY))
    assert ts[-1].system_attrs["failed_trial"] == 0


def test_lost_trials_are_stale_or_orphaned(url):
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    beating = rdb.create_running(storage, sid, [rdb.NewTrial(cell(0), D)])[0].trial_id
    orphan = rdb.trial_id(study.ask())  # Optuna's own ask: RUNNING without a heartbeat row
    assert rdb.lost_trials(storage, sid) == ([], [])
    time.sleep(3.5)  # past the 2 s grace period (heartbeats are stored to the second: a second of slack)
    assert rdb.lost_trials(storage, sid) == ([beating], [orphan])
    assert rdb.stale_trial_ids(study) == [beating] and rdb.orphan_trial_ids(study) == [orphan]
    assert rec.fail_stale(study) == [0, 1]
    ts = fresh(url)
    assert [t.user_attrs.get(FAIL_REASON) for t in ts[:2]] == [rec.STALE, rec.STALE]
    assert [t.user_attrs.get(RETRY_OF) for t in ts[2:]] == [0, 1] and ts[2].state == TrialState.WAITING
    assert rdb.lost_trials(storage, sid) == ([], []) and rec.fail_stale(study) == []


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    with pytest.raises(ValueError, match="needs a value"):
        rdb.Outcome(1, TrialState.COMPLETE, float("nan"))
    with pytest.raises(ValueError, match="has no value"):
        rdb.Outcome(1, TrialState.FAIL, 1.0)
    with pytest.raises(ValueError, match="not a finished state"):
        rdb.Outcome(1, TrialState.RUNNING, None)
    rdb.enqueue_many(storage, sid, [rdb.NewTrial(cell(0), D)])
    changed = {**D, "act": CategoricalDistribution(["tanh", "gelu"])}
    with pytest.raises(ValueError):  # Optuna's own rule: one distribution per parameter name
        rdb.enqueue_many(storage, sid, [rdb.NewTrial({**cell(0), "act": "gelu"}, changed)])
    with pytest.raises(ValueError, match="outside"):
        rdb.create_running(storage, sid, [rdb.NewTrial({**cell(0), "hidden": 99}, D)])
    with pytest.raises(ValueError, match="differ"):
        rdb.create_running(storage, sid, [rdb.NewTrial({"hidden": 2}, D)])
    with pytest.raises(KeyError, match="no study"):
        rdb.create_running(storage, sid + 99, [rdb.NewTrial(cell(0), D)])
    assert len(fresh(url)) == 1


def test_counts_and_details_read_what_optuna_reads(url):
    storage, study = new_study(url)
    sid = rdb.study_id(study)
    made = rdb.create_running(storage, sid, [rdb.NewTrial(cell(i), D, {RETRY_OF: 3}) for i in range(3)])
    rdb.finish(storage, [rdb.Outcome(made[0].trial_id, TrialState.COMPLETE, 0.5, {"big": list(range(100))})])
    assert rdb.count_trials(storage, sid) == 3
    assert sorted(rdb.scan(storage, sid)) == [(c.trial_id, c.number, s) for c, s in
                                              zip(made, ("COMPLETE", "RUNNING", "RUNNING"))]
    found = rdb.details(storage, [c.trial_id for c in made], (RETRY_OF,), ())
    for t in fresh(url):
        d = found[rdb.trial_id(t)]
        assert (d.params, d.distributions, d.value) == (t.params, t.distributions, t.value)
        assert d.user_attrs == {RETRY_OF: 3} and d.system_attrs == {}
