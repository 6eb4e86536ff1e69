"""The runner's light bookkeeping against full reads: the index (light rows) against Optuna's
`get_trials`, the in-memory mirror's asks against Optuna's own asks, the plan's queue and the
budget's counts from rows against the same from FrozenTrials, and the signal handler's cancel."""

from __future__ import annotations

import math
import os
import random
import signal

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from kit import DESIGN, write_spec
from sweeps import engine
from sweeps.study import rdb
from sweeps.study import recovery as rec
from sweeps.study import spec as specs
from sweeps.study import storage as st
from sweeps.study.index import SMALL_SYSTEM_ATTRS, SMALL_USER_ATTRS, Index, Row
from sweeps.study.ledger import Ledger
from sweeps.study.mirror import Mirror
from sweeps.study.plan import FIXED_PARAMS, Plan, Queued, queue_key
from sweeps.study.record import DIVERGED, FAIL_REASON, INTERRUPTED, RETRY_OF, is_done, superseded
from sweeps.study.signals import Signals

D = {"hidden": IntDistribution(1, 32), "act": CategoricalDistribution(["tanh", "relu", "sin"]),
     "lr": FloatDistribution(1e-5, 1.0, log=True)}


def cell(i: int) -> dict:
    return {"hidden": 1 + i % 32, "act": ["tanh", "relu", "sin"][i % 3], "lr": 10 ** (-1 - (i % 4))}


@pytest.fixture
def storage(sqlite_url):
    st.quiet_optuna()
    return st.open_storage(sqlite_url)


# -- the index ----------------------------------------------------------------------------------


def test_index_agrees_with_a_full_read_and_rereads_only_what_changed(storage):
    study = optuna.create_study(study_name="b", storage=storage)
    sid = rdb.study_id(study)
    rdb.enqueue_many(storage, sid, [rdb.NewTrial(cell(i), D) for i in range(6)])
    index = Index(storage, sid)
    assert len(index.refresh()) == 6 and index.refresh() == []
    got = rdb.claim(storage, sid, 4)
    rdb.finish(storage, [rdb.Outcome(got[0].trial_id, TrialState.COMPLETE, 1.5, {"big": list(range(1000)),
                                                                                  "seeds_fit": "3/4"}),
                         rdb.Outcome(got[1].trial_id, TrialState.FAIL, None, {FAIL_REASON: DIVERGED})])
    rdb.fail_running(storage, sid, [got[2].trial_id], INTERRUPTED, max_retry=st.MAX_RETRY)  # and its retry
    changed = index.refresh()
    assert sorted(r.number for r in changed) == [0, 1, 2, 3, 6]  # never the untouched WAITING ones
    full = optuna.load_study(study_name="b", storage=storage).get_trials()
    assert [(r.number, r.state, r.params, r.distributions, r.value) for r in index.trials()] == \
        [(t.number, t.state, t.params, t.distributions, t.value) for t in full]
    for r, t in zip(index.trials(), full):
        assert r.user_attrs == {k: v for k, v in t.user_attrs.items() if k in SMALL_USER_ATTRS}
        assert r.system_attrs == {k: v for k, v in t.system_attrs.items() if k in SMALL_SYSTEM_ATTRS}
    assert rec.tally(index.trials()) == rec.counts(study) == rec.Counts(*index.counts())
    cells = [Queued(cell(i), {}) for i in range(8)]
    assert rec.plan_queue(index.trials(), cells, 3) == rec.plan_queue(full, cells, 3)
    assert index.best().number == 0


def test_a_designs_queue_from_rows_is_its_queue_from_full_trials(tmp_path, storage):
    """A design queues a cell's confirmation once its tuning is done, choosing the lr from the
    tuning trials' seeds that fit: rows give it `seeds_fit`, full trials their per-seed MSEs, and
    rows without `seeds_fit` (older studies) fetch those. All three must agree."""
    spec = specs.load(str(write_spec(tmp_path / "d.toml", DESIGN, confirm=4, steps=10, biases='["none"]')))
    plan = Plan(spec, 0)
    study = optuna.create_study(study_name="d", storage=storage)
    sid = rdb.study_id(study)
    rec.ensure_queued(study, plan.queue([]), 3, plan.distributions)
    waiting = rdb.claim(storage, sid, 1000, plan.distributions)
    rnd = random.Random(0)
    outcomes = []
    for c in waiting:
        if c.params["phase"] != "tune" or rnd.random() < 0.2:  # some cells not tuned yet
            continue
        mses = [rnd.choice([1e-4, 1e-2, None]) for _ in range(spec.seeds)]
        fits = sum(m is not None and m < spec.success_threshold for m in mses)
        value = sorted(float("inf") if m is None else m for m in mses)[spec.seeds // 2]
        outcomes.append(rdb.Outcome(c.trial_id, TrialState.COMPLETE, value,
                                    {"seeds": {"test_mse": mses}, "seeds_fit": f"{fits}/{spec.seeds}"}))
    rdb.finish(storage, outcomes)
    full = optuna.load_study(study_name="d", storage=storage).get_trials()
    index = Index(storage, sid)
    index.refresh()
    from_full = Plan(spec, 0).queue(full)
    assert Plan(spec, 0).queue(index.trials()) == from_full
    bare = [Row(r.trial_id, r.number, r.state, r.params, r.distributions, r.value, {}, r.system_attrs)
            for r in index.trials()]  # no seeds_fit
    fetched = []

    def fetch(rows):
        fetched.extend(rows)
        found = rdb.details(storage, [r.trial_id for r in rows], ("seeds",), ())
        return {r.number: found[r.trial_id].user_attrs for r in rows}

    older = Plan(spec, 0)
    assert older.queue(bare, fetch) == from_full and len(fetched) == len(outcomes)
    assert older.queue(bare, fetch) == from_full and len(fetched) == len(outcomes)  # fetched once
    confirms = [q for q in from_full if q.params["phase"] == "confirm" and "lr" in q.params]
    assert confirms and len(confirms) < len([c for c in spec.cells() if c.tuned])  # some cells still tuning


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_ledgers_kept_a_row_at_a_time_agree_with_a_full_read_every_round(tmp_path, storage, seed):
    """Two workers' ledgers on one design, rounds interleaved: trials finish, diverge, are
    interrupted or go stale (and are retried), and a foreign retry supersedes a finished trial.
    After each top-up what each ledger keeps from the rows that changed (the plan's queue, the
    coverage of queue keys, the WAITING rows, the best, the counts) is what a full read computes
    from scratch, the study lacks nothing and no queue key is covered twice."""
    spec = specs.load(str(write_spec(tmp_path / "d.toml", DESIGN, confirm=3, steps=10,
                                     biases='["none", "both"]')))
    study = optuna.create_study(study_name="d", storage=storage)
    sid = rdb.study_id(study)
    workers = [Ledger(study, storage, Plan(spec, 0)) for _ in range(2)]
    dists = workers[0].dists
    rnd = random.Random(seed)
    running: list[tuple[Ledger, list[rdb.Claimed]]] = []
    for step in range(40):
        w = workers[step % 2]
        w.refresh()
        w.top_up(3)
        w._dirty = True  # a second top-up catches its state up with its own queueing: it queues nothing
        assert w.top_up(3).queued == 0
        full = optuna.load_study(study_name="d", storage=storage).get_trials()
        cells = Plan(spec, 0).queue(full)
        assert w.plan.update([], None, w.index.retried) == cells
        assert w.coverage.queue(cells, 3) == rec.plan_queue(full, cells, 3)
        assert rec.plan_queue(full, cells, 3)[0] == []  # the study lacks nothing
        retried = superseded(full)
        covering = [queue_key(t.system_attrs[FIXED_PARAMS]) for t in full
                    if t.state in (TrialState.WAITING, TrialState.RUNNING) or is_done(t, retried)]
        assert len(covering) == len(set(covering))  # no key twice
        assert [r.number for r in w.index.waiting()] == [t.number for t in full if t.state == TrialState.WAITING]
        complete = [t for t in full if t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
        assert (w.index.best().number if w.index.best() else None) == (best.number if best else None)
        assert rec.Counts(*w.index.counts()) == rec.counts(study)
        # This worker's round: claim, then finish some, leave others running for later.
        claimed = w.claim(rnd.randint(1, 6), 12, [])
        outcomes, left = [], []
        for c in claimed:
            roll = rnd.random()
            if roll < 0.5:
                fits = rnd.randint(0, spec.seeds)
                outcomes.append(rdb.Outcome(c.trial_id, TrialState.COMPLETE, rnd.choice([rnd.random(), math.inf]),
                                            {"seeds_fit": f"{fits}/{spec.seeds}"}))
            elif roll < 0.65:
                outcomes.append(rdb.Outcome(c.trial_id, TrialState.FAIL, None, {FAIL_REASON: DIVERGED}))
            else:
                left.append(c)
        w.finish(outcomes)
        if left:
            running.append((w, left))
        if running and rnd.random() < 0.4:  # an interrupt, or another worker finding them stale
            _, lost = running.pop(0)
            rdb.fail_running(storage, sid, [c.trial_id for c in lost], rnd.choice([INTERRUPTED, rec.STALE]),
                             max_retry=st.MAX_RETRY)
        diverged = [t for t in full if t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON) == DIVERGED
                    and t.number not in retried]
        if diverged and rnd.random() < 0.15:  # a foreign retry of a finished (diverged) trial
            t = rnd.choice(diverged)
            rdb.enqueue_many(storage, sid, [rdb.NewTrial(t.system_attrs[FIXED_PARAMS], {k: dists[k] for k in t.system_attrs[FIXED_PARAMS]},
                                                        {RETRY_OF: t.number})])
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) > 10  # the rounds did real work


# -- the mirror ---------------------------------------------------------------------------------


def _history(n: int, inf_every: int = 0) -> list[optuna.trial.FrozenTrial]:
    rnd = random.Random(1)
    out = []
    for i in range(n):
        value = float("inf") if inf_every and i % inf_every == 0 else rnd.random()
        out.append(optuna.trial.create_trial(params={"hidden": rnd.randint(1, 32), "act": rnd.choice(["tanh", "relu", "sin"]),
                                                     "lr": 10 ** rnd.uniform(-5, 0)}, distributions=D, value=value))
    out.append(optuna.trial.create_trial(state=TrialState.RUNNING, params=cell(5), distributions=D))
    return out


def _rows(trials: list[optuna.trial.FrozenTrial]) -> list[Row]:
    return [Row(i + 1, i, t.state, dict(t.params), dict(t.distributions), t.value) for i, t in enumerate(trials)]


@pytest.mark.parametrize("batch", [False, True], ids=["sequential", "batch"])
@pytest.mark.parametrize("inf_every", [0, 5], ids=["finite", "some-inf"])
def test_a_round_asked_in_memory_is_what_optuna_asks(batch, inf_every):
    """Against the same finished and running trials, with the same seed, the mirror's asks are
    Optuna's own: sequential asks exactly (constant liar included), a batch of one exactly, with
    +inf values (most seeds diverged) among the finished ones or not."""
    history = _history(40, inf_every)
    reference = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    reference.add_trials(history)
    mirror = Mirror(optuna.samplers.TPESampler(seed=3))
    mirror.sync(_rows(history))
    n = 1 if batch else 4
    expected = [reference.ask(D).params for _ in range(n)]
    got = [p for _, p in mirror.ask(n, D, per_fit=n if batch else 1)]
    assert [{k: p[k] for k in D} for p in got] == [{k: e[k] for k in D} for e in expected]
    assert all(isinstance(p["lr"], float) and isinstance(p["hidden"], int) for p in got)


def test_a_batch_round_is_drawn_from_one_fit_and_stays_in_the_space(monkeypatch):
    fits = []
    real = optuna.samplers.TPESampler._build_parzen_estimator
    monkeypatch.setattr(optuna.samplers.TPESampler, "_build_parzen_estimator",
                        lambda self, *a, **k: fits.append(1) or real(self, *a, **k))
    mirror = Mirror(optuna.samplers.TPESampler(seed=0))
    history = _rows(_history(40))
    mirror.sync(history[:5])
    first = mirror.ask(8, D, per_fit=8)  # startup: Optuna's own (random) asks, no fit
    assert fits == []
    mirror.bind([m for m, _ in first], [1000 + i for i in range(8)])
    mirror.sync(history[5:] + [Row(1000 + i, 100 + i, TrialState.COMPLETE, p, dict(D), 0.5)
                               for i, (_, p) in enumerate(first)])
    got = mirror.ask(64, D, per_fit=16)
    assert len(fits) == 2 * 4  # below and above, once per 16 trials
    assert len(got) == 64 and len({m for m, _ in got}) == 64
    for _, params in got:
        assert all(D[k]._contains(D[k].to_internal_repr(v)) for k, v in params.items())
    assert len({round(p["lr"], 12) for _, p in got}) > 32  # not one point repeated
    assert len(mirror.study.get_trials(states=(TrialState.RUNNING,))) == 65  # in flight for the next liar


def test_the_mirror_follows_trials_as_they_finish():
    mirror = Mirror(optuna.samplers.RandomSampler(seed=0))
    asked = mirror.ask(3, D)
    mirror.bind([m for m, _ in asked], [10, 11, 14])
    mirror.forget([asked[2][0]])  # its creation failed
    mirror.sync([Row(10, 0, TrialState.COMPLETE, asked[0][1], dict(D), 0.5),
                 Row(11, 1, TrialState.FAIL, asked[1][1], dict(D)),
                 Row(12, 2, TrialState.COMPLETE, cell(1), dict(D), float("inf")),
                 Row(13, 3, TrialState.WAITING, cell(2), dict(D))])
    states = sorted((t.state.name, t.value) for t in mirror.study.get_trials())
    assert states == [("COMPLETE", 0.5), ("COMPLETE", float("inf")), ("FAIL", None), ("FAIL", None)]


# -- a round's claim ----------------------------------------------------------------------------


def test_a_claim_fills_a_batch_of_models_with_queued_trials_first(tmp_path, storage):
    spec = specs.load(str(write_spec(tmp_path / "d.toml", DESIGN, confirm=6, steps=10, biases='["none"]')))
    plan = Plan(spec, 0)
    study = optuna.create_study(study_name="d", storage=storage)
    ledger = Ledger(study, storage, plan)
    ledger.refresh()
    assert ledger.top_up(3).queued == len(plan.queue([]))
    in_flight: list[int] = []
    # lm cells have no lr: queued as confirmations (6 seeds) from the start, tuning trials have 2.
    claimed = ledger.claim(100, 9, in_flight)
    models = [plan.models_of(c.params) for c in claimed]
    assert sum(models[:-1]) < 9 <= sum(models)  # stops once the batch is full
    assert [c.number for c in claimed] == list(range(len(claimed))) and in_flight == [c.trial_id for c in claimed]
    assert rec.tally(ledger.index.trials()) == rec.counts(study)  # noted without a read-back
    assert ledger.refresh().running == len(claimed)


def test_a_sampled_claim_asks_the_rest_and_the_index_knows_it(tmp_path, storage):
    spec = specs.load(str(write_spec(tmp_path / "t.toml", "[study]\nname = 't'\nsampler = 'tpe'\ntrials = 50\n"
                                     "seeds = 2\n[fixed]\nsteps = 10\n[space.hidden]\nlow = 1\nhigh = 8\n"
                                     "[space.lr]\nlow = 1e-4\nhigh = 1e-1\nlog = true\n")))
    plan = Plan(spec, 0)
    study = optuna.create_study(study_name="t", storage=storage, sampler=optuna.samplers.TPESampler(seed=0))
    ledger = Ledger(study, storage, plan)
    ledger.refresh()
    rdb.enqueue_many(storage, rdb.study_id(study), [rdb.NewTrial({"hidden": 3, "lr": 0.01}, plan.distributions)])
    ledger.refresh()
    in_flight: list[int] = []
    claimed = ledger.claim(5, 8, in_flight)  # 4 trials of 2 seeds: the queued one, then 3 asks
    assert len(claimed) == 4 and claimed[0].params == {"hidden": 3, "lr": 0.01}
    full = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert [(t.number, t.params, t.state) for t in full] == [(c.number, c.params, TrialState.RUNNING) for c in claimed]
    written = ledger.finish([rdb.Outcome(c.trial_id, TrialState.COMPLETE, float(i), {"seeds_fit": "1/2"})
                             for i, c in enumerate(claimed)])
    assert written == set(in_flight)
    assert ledger.best() == (0.0, {"hidden": 3, "lr": 0.01})
    assert rec.tally(ledger.index.trials()) == rec.counts(study) == rec.Counts(4, 0, 0)
    assert len(ledger.mirror.study.get_trials(states=(TrialState.COMPLETE,))) == 4


# -- signals ------------------------------------------------------------------------------------


def test_a_signal_during_training_cancels_the_engine_and_training_can_run_again(monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "cancel", lambda: calls.append("cancel") or engine.native.cancel())
    signals = Signals()
    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            with signals.interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10_000_000):  # the handler runs between bytecodes
                    pass
        assert calls == ["cancel"]
    assert not engine.native.cancelled()  # cleared on the way out

    later = Signals()  # outside training: noted, raised at the next safe point, nothing cancelled
    with later.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            later.check()
    assert calls == ["cancel"]
