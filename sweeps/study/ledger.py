"""A worker's book of its study: the light index, the sampler's mirror, and a round's bulk writes.

The runner asks it, under the study's lock, to count (`refresh`), to top up the queue
(`top_up`: `Plan.update` and `recovery.Coverage` fed the index rows that changed since the last
top-up, the missing items written with `rdb.enqueue_many`) and to claim a
round (`claim`: queued trials first, lowest numbers first, until a batch of models is full, in
one transaction; then, for a sampled study, the sampler's asks against the in-memory mirror,
created in one more); after training, to finish it (`finish`: values, states and attributes in
one transaction). What it writes it notes in the index and the mirror without reading it back, so
a round reads O(round) rows, not O(study).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from . import rdb
from . import recovery as rec
from .index import SMALL_USER_ATTRS, Index, Row
from .mirror import DEFAULT_PER_FIT, Mirror
from .plan import FIXED_PARAMS, Plan
from .record import FAIL_REASON
from .search import suggest


class Ledger:
    """One worker's view of its study across rounds (see the module docstring)."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, plan: Plan, *,
                 per_fit: int = DEFAULT_PER_FIT) -> None:
        self.study, self.storage, self.plan, self.per_fit = study, storage, plan, per_fit
        self.study_id = rdb.study_id(study)
        self.index = Index(storage, self.study_id)
        self.mirror = None if plan.pops_only else Mirror(study.sampler)
        self.dists = plan.distributions
        self.coverage = rec.Coverage()  # which queue keys the study covers, kept from changed rows
        self._dirty = True  # the queue may lack something: top it up at the next claim
        self._given_up: list[int] = []

    def _note(self, rows: list[Row]) -> None:
        self.index.note(rows)
        if self.mirror is not None:
            self.mirror.sync(rows)

    def refresh(self) -> rec.Counts:
        """Read what changed in the study since the last refresh; the budget's counts."""
        changed = self.index.refresh()
        if self.mirror is not None:
            self.mirror.sync(changed)
        self._dirty |= any(self._matters(r) for r in changed)
        return self.counts()

    def counts(self) -> rec.Counts:
        """The budget's counts as the index knows them (`recovery.tally` of its rows)."""
        return rec.Counts(*self.index.counts())

    def _matters(self, row: Row) -> bool:
        """Whether a new or changed row can change what the queue must hold: a failed trial (its
        cell may have lost its retry); for a design, a finished trial (a cell may be tuned now)."""
        return row.state == TrialState.FAIL or (self.plan.spec.design is not None and row.state.is_finished())

    def _fetch(self, rows: list[Any]) -> dict[int, dict[str, Any]]:
        """The per-seed results of finished trials that carry no `seeds_fit` (older studies)."""
        found = rdb.details(self.storage, [r.trial_id for r in rows], ("seeds",), ())
        return {r.number: found[r.trial_id].user_attrs for r in rows}

    def top_up(self, max_attempts: int) -> rec.Queueing:
        """Queue what the plan needs and the study lacks (`recovery.ensure_queued`), then read it.
        Only when something that matters changed since the last time (`_matters`; at first)."""
        if not self._dirty:
            return rec.Queueing(0, self._given_up)
        self._dirty = False
        changed, retried = self.index.take_changed(), self.index.retried
        self.coverage.note(changed, retried)
        queueing = rec.ensure_queued(self.study, self.plan.update(changed, self._fetch, retried), max_attempts,
                                     self.dists, coverage=self.coverage)
        self._given_up = queueing.given_up
        if queueing.queued:
            self.index.refresh(new_only=True)  # read what was just queued: WAITING rows (no sampler news)
        return queueing

    def claim(self, n: int, batch_size: int, in_flight: list[int]) -> list[rdb.Claimed]:
        """Up to n trials whose models fill one batch: queued ones first, then (a sampled study) the
        sampler's asks. Each trial id joins `in_flight` as soon as it is RUNNING in the database."""
        pick, models = [], 0
        for row in self.index.waiting():
            if len(pick) >= n or models >= batch_size:
                break
            pick.append(row)
            models += self.plan.models_of(row.system_attrs.get(FIXED_PARAMS) or row.params)
        claimed = rdb.claim(self.storage, self.study_id, len(pick), self.dists,
                            up_to=pick[-1].trial_id if pick else None) if pick else []
        in_flight.extend(c.trial_id for c in claimed)
        models = sum(self.plan.models_of(c.params) for c in claimed)
        created: list[rdb.Claimed] = []
        if self.mirror is not None and len(claimed) < n and models < batch_size:
            k = min(n - len(claimed), math.ceil((batch_size - models) / self.plan.spec.seeds))
            asked = self.mirror.ask(k, self.dists, per_fit=self.per_fit)
            try:
                created = rdb.create_running(self.storage, self.study_id,
                                             [rdb.NewTrial(p, self.dists) for _, p in asked])
            except BaseException:
                self.mirror.forget([m for m, _ in asked])
                raise
            self.mirror.bind([m for m, _ in asked], [c.trial_id for c in created])
            in_flight.extend(c.trial_id for c in created)
        rows = []
        for c in claimed + created:
            old = self.index.rows.get(c.trial_id)
            if set(c.params) != set(self.dists) and self.plan.spec.design is None:
                # Queued without every key (a foreign `enqueue_trial`): Optuna's own path suggests
                # the rest into the stored trial. Rare, so its full read does not matter.
                trial = rdb.live_trial(self.study, c.trial_id)
                suggest(trial, self.plan.spec.space, self.plan.spec.fixed)
                c.params.update(trial.params)
            rows.append(Row(c.trial_id, c.number, TrialState.RUNNING, dict(c.params),
                            {k: self.dists[k] for k in c.params if k in self.dists},
                            user_attrs=dict(old.user_attrs) if old else {},
                            system_attrs=dict(old.system_attrs) if old else {}))
        self._note(rows)
        return claimed + created

    def finish(self, outcomes: list[rdb.Outcome]) -> set[int]:
        """Write the round's outcomes in one transaction; the ids written (others were failed as
        stale by another worker meanwhile: their retries redo them)."""
        written = rdb.finish(self.storage, outcomes)
        self._dirty |= any(o.state == TrialState.FAIL or self.plan.spec.design is not None
                           for o in outcomes if o.trial_id in written)
        rows = []
        for o in outcomes:
            old = self.index.rows.get(o.trial_id)
            if o.trial_id in written and old is not None:
                small = {k: v for k, v in o.user_attrs.items() if k in SMALL_USER_ATTRS}
                rows.append(Row(o.trial_id, old.number, o.state, old.params, old.distributions, o.value,
                                {**old.user_attrs, **small}, old.system_attrs))
        self._note(rows)
        return written

    def best(self) -> tuple[float | None, dict[str, Any]]:
        """The best value and its params, as the index knows them."""
        row = self.index.best()
        return (row.value, dict(row.params)) if row is not None else (None, {})


def outcome(trial_id: int, value: float | None, attrs: dict[str, Any]) -> rdb.Outcome:
    """A trial's outcome: COMPLETE with its value (+inf when most seeds diverged), FAIL when it has
    none (every seed diverged: `summarise` gave the reason). A NaN value, which no seed should
    give, fails the trial as Optuna's `tell` would, saying so."""
    if value is not None and math.isnan(value):
        return rdb.Outcome(trial_id, TrialState.FAIL, None, {**attrs, FAIL_REASON: "error: median test MSE is NaN"})
    return rdb.Outcome(trial_id, TrialState.FAIL if value is None else TrialState.COMPLETE, value, attrs)

