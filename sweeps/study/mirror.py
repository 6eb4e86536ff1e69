"""The sampler's view of a study, in memory: a round of asks without reading the database.

Optuna's `ask` on an RDB study reads every trial (big attributes included) for each trial it
proposes. A `Mirror` is an in-memory Optuna study holding what the sampler reads, fed with
`index.Row`s: COMPLETE trials with their params and values, RUNNING ones with their params (the
"in flight" set of TPE's constant liar, every worker's). The study's own sampler asks a round
against it; the runner creates the asked trials in the database (`rdb.create_running`) and `bind`s
them, so that their end, seen by a later `sync`, reaches the same mirror trials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from . import rdb
from .index import Row

DEFAULT_PER_FIT = 8  # TPE: one Parzen fit per this many trials of a round (see `Mirror.ask`)


class Mirror:
    """An in-memory copy of a study for its sampler (see the module docstring)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, direction: str = "minimize") -> None:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory": not news
        try:
            self.study = optuna.create_study(sampler=sampler, direction=direction)
        finally:
            optuna.logging.set_verbosity(verbosity)
        self._of: dict[int, int] = {}  # database trial id -> mirror trial number
        self._running: set[int] = set()  # database ids RUNNING in the mirror
        self._size = 0  # trials in the mirror (numbers are 0, 1, ...)

    def sync(self, rows: Iterable[Row]) -> None:
        """Take in new and changed rows: finished trials with a value, running ones with params."""
        for row in rows:
            number = self._of.get(row.trial_id)
            if number is None:
                if row.state == TrialState.COMPLETE and row.value is not None:
                    self._add(row.params, row.distributions, TrialState.COMPLETE, row.value, row.trial_id)
                elif row.state == TrialState.RUNNING and row.params:
                    self._add(row.params, row.distributions, TrialState.RUNNING, None, row.trial_id)
            elif row.trial_id in self._running and row.state != TrialState.RUNNING:
                self._running.discard(row.trial_id)
                if row.state == TrialState.COMPLETE and row.value is not None:
                    self.study.tell(number, row.value)
                else:  # FAIL (WAITING cannot follow RUNNING): out of the liar's set
                    self.study.tell(number, state=TrialState.FAIL)

    def _add(self, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution], state: TrialState,
             value: float | None, trial_id: int | None) -> int:
        self.study.add_trial(optuna.trial.create_trial(state=state, params=dict(params),
                                                       distributions=dict(distributions), value=value))
        number, self._size = self._size, self._size + 1
        if trial_id is not None:
            self._of[trial_id] = number
            if state == TrialState.RUNNING:
                self._running.add(trial_id)
        return number

    def bind(self, numbers: Sequence[int], trial_ids: Sequence[int]) -> None:
        """The database trials created for these asks (in order)."""
        for number, tid in zip(numbers, trial_ids):
            self._of[tid] = number
            self._running.add(tid)

    def forget(self, numbers: Sequence[int]) -> None:
        """Asked but never created in the database (the creation failed): out of the liar's set."""
        for number in numbers:
            self.study.tell(number, state=TrialState.FAIL)

    def ask(self, n: int, distributions: Mapping[str, BaseDistribution], *, per_fit: int = 1
            ) -> list[tuple[int, dict[str, Any]]]:
        """n configurations from the study's sampler: [(mirror trial number, params)]; each is
        recorded here as RUNNING, so that later asks see it (constant liar).

        per_fit=1: n sequential `ask`s, exactly Optuna's behaviour for n asks before any tell.
        per_fit=k > 1 (TPE past its startup trials): the round is asked k at a time; for each k,
        TPE's Parzen estimators are fitted once on the finished and in-flight trials (the earlier
        ones of this round included) and each of the k is the best of its own `n_ei_candidates`
        draws from them (`rdb.tpe_round`). Same prior, same acquisition, ceil(n/k) fits instead of
        n; what is lost is the liar among the k of one fit (they do not push each other apart).
        """
        out: list[tuple[int, dict[str, Any]]] = []
        while len(out) < n:
            k = min(max(1, per_fit), n - len(out))
            drawn = rdb.tpe_round(self.study, k, distributions) if k > 1 else None
            if drawn is None:
                trial = self.study.ask(dict(distributions))
                self._size += 1
                out.append((trial.number, dict(trial.params)))
                continue
            out += [(self._add(p, distributions, TrialState.RUNNING, None, None), p) for p in drawn]
        return out
