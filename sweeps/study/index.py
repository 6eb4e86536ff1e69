"""A worker's light copy of its study: every trial's number, state, params, value and the few small
attributes that counting, queueing and retrying read, never the big ones (results, curves, fits).

`Index.refresh` reads (trial_id, number, state) of the whole study, one indexed scan of one small
table, and the details only of trials that are new or changed state since the last refresh: a
round costs O(round) reads, not O(study). That is sound because finished trials never change
(Optuna refuses updates to them), WAITING ones are written whole, and every writer of this project
writes a trial's params together with its RUNNING state (a foreign Optuna `ask` that suggests
later shows its params when it finishes). What this worker wrote itself it `note`s without
reading it back. Rows stand in for FrozenTrials wherever `record.is_done`, `record.superseded`,
`recovery` and `plan.Plan.queue` read one. The budget's counts (`counts`), the numbers of retried
trials (`retried`), the WAITING rows in number order (`waiting`) and the best trial (`best`) are
kept as rows come and go, by `record`'s own rules applied a row at a time, and `take_changed`
hands the rows noted since it was last called to whoever keeps its own state of them a row at a
time (`recovery.Coverage`, `plan.Plan.update`): a round never walks the whole study.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from . import rdb
from .record import FAIL_REASON, RETRY_OF, SEEDS_FIT, is_done, superseded

# The small attributes kept; every other attribute stays in the database.
SMALL_USER_ATTRS = (FAIL_REASON, RETRY_OF, SEEDS_FIT)
SMALL_SYSTEM_ATTRS = (rdb.FIXED_PARAMS, "failed_trial", "retry_history")


@dataclass
class Row:
    """One trial as the Index keeps it (the FrozenTrial fields the runner's bookkeeping reads)."""

    trial_id: int
    number: int
    state: TrialState
    params: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    value: float | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)  # SMALL_USER_ATTRS only
    system_attrs: dict[str, Any] = field(default_factory=dict)  # SMALL_SYSTEM_ATTRS only


class Index:
    """What the runner needs of every trial of one study, kept up to date cheaply (module doc)."""

    def __init__(self, storage: RDBStorage, study_id: int) -> None:
        self.storage, self.study_id = storage, study_id
        self.rows: dict[int, Row] = {}
        self._state: dict[int, str] = {}  # trial id -> state name, as the scan reads it
        self._by_number: list[Row | None] = []  # trial numbers are 0, 1, ... in a study
        self._listed: list[Row] | None = None
        self.retried: set[int] = set()  # numbers of trials some other trial retries (`record.superseded`)
        self._states: Counter[TrialState] = Counter()
        self._counted: set[int] = set()  # numbers of rows that count unless retried (`record.is_done`)
        self._waiting: list[int] = []  # numbers of the WAITING rows, sorted
        self._best: Row | None = None  # finished trials never change: the best only gets better
        self._changed: set[int] = set()  # numbers noted (or newly retried) since `take_changed`

    def refresh(self, new_only: bool = False) -> list[Row]:
        """Bring the rows up to date; returns the rows that are new or changed state. `new_only`:
        read only trials created since the last refresh (after this worker queued some)."""
        after = max(self.rows, default=0) if new_only else None
        changed = [(tid, number, TrialState[state]) for tid, number, state in rdb.scan(self.storage, self.study_id, after)
                   if self._state.get(tid) != state]
        if not changed:
            return []
        found = rdb.details(self.storage, [tid for tid, _, _ in changed], SMALL_USER_ATTRS, SMALL_SYSTEM_ATTRS)
        out = []
        for tid, number, state in changed:
            d = found[tid]
            out.append(Row(tid, number, state, d.params, d.distributions, d.value, d.user_attrs, d.system_attrs))
        self.note(out)
        return out

    def note(self, rows: Iterable[Row]) -> None:
        """Rows this worker wrote itself (known without reading them back)."""
        for row in rows:
            old = self.rows.get(row.trial_id)
            was_waiting = old is not None and old.state == TrialState.WAITING
            if old is not None:
                self._states[old.state] -= 1
                self._counted.discard(old.number)
            self._states[row.state] += 1
            if is_done(row, set()):
                self._counted.add(row.number)
            if was_waiting and row.state != TrialState.WAITING:
                del self._waiting[bisect.bisect_left(self._waiting, row.number)]
            elif row.state == TrialState.WAITING and not was_waiting:
                bisect.insort(self._waiting, row.number)
            if row.state == TrialState.COMPLETE and row.value is not None and (
                    self._best is None or (row.value, row.number) < (self._best.value, self._best.number)):
                self._best = row
            # A trial never loses what it retries; a newly retried trial stops counting.
            retries = superseded([row])
            self._changed |= retries - self.retried
            self.retried |= retries
            self._changed.add(row.number)
            self.rows[row.trial_id] = row
            self._state[row.trial_id] = row.state.name
            if row.number >= len(self._by_number):
                self._by_number.extend([None] * (row.number + 1 - len(self._by_number)))
            self._by_number[row.number] = row
        self._listed = None

    def take_changed(self) -> list[Row]:
        """The rows noted since the last call, and those a trial noted since retries, by number."""
        numbers, self._changed = sorted(self._changed), set()
        found = (self._by_number[n] if n < len(self._by_number) else None for n in numbers)
        return [r for r in found if r is not None]

    def waiting(self) -> Iterator[Row]:
        """The WAITING rows, lowest number first."""
        for number in list(self._waiting):
            row = self._by_number[number]
            if row is not None:
                yield row

    def trials(self) -> list[Row]:
        """Every row, by trial number."""
        if self._listed is None:
            self._listed = [r for r in self._by_number if r is not None]
        return self._listed

    def counts(self) -> tuple[int, int, int]:
        """(done, running, waiting) by `record.is_done`'s rule: `recovery.tally` of `trials()`."""
        done = len(self._counted) - len(self._counted & self.retried)
        return done, self._states[TrialState.RUNNING], self._states[TrialState.WAITING]

    def best(self) -> Row | None:
        """The COMPLETE trial with the lowest value (the lowest number among equals), or None."""
        return self._best
