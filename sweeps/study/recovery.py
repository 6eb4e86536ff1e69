"""What workers do to a shared study so that no crash loses or duplicates work.

- `tally` / `counts`: the global budget. Done = COMPLETE, or FAIL with `fail_reason = "diverged"`
  (a real result: every seed blew up), unless a later trial retries it (then only the retry
  counts). Interrupted, crashed or stale trials never count. `tally` counts FrozenTrials or the
  runner's light `index.Row`s alike.
- `fail_stale`: RUNNING trials whose worker stopped beating are failed with `fail_reason =
  "stale"` and retried (a WAITING copy, `retry_of` naming the failed trial), in one transaction
  (`rdb.fail_running`). This is `optuna.storages.fail_stale_trials` plus two things it misses: a
  trial whose worker died between creating it and its first heartbeat has no heartbeat row and
  Optuna never considers it stale; and Optuna's fail and retry are separate commits, so a worker
  dying between them lost the retry (and the failed trial said nothing of why it failed).
- `abandon`: a worker's own in-flight trials on SIGINT/SIGTERM or an error: FAIL with a reason,
  and a retry copy, the same way.
- `plan_queue` / `ensure_queued` / `Coverage`: every queued cell (grid cells, `[[enqueue]]` entries, a design's
  trials) that has no trial waiting, running or done gets one, unless it already failed
  `max_attempts` times for reasons other than an interrupt. This queues a new study and repairs a
  cell whose retry was lost.

Each of these must run under `locks.study_lock`: two workers repairing the same cell at once
would queue it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from . import rdb
from .plan import FIXED_PARAMS, Queued, queue_key as _key
from .record import FAIL_REASON, INTERRUPTED, RETRY_OF, is_done, superseded
from .storage import MAX_RETRY

STALE = "stale"  # fail_reason of a trial whose worker stopped beating


@dataclass(frozen=True)
class Counts:
    """Trials that count toward the budget, running, and queued."""
    done: int
    running: int
    waiting: int


def tally(trials: Sequence[Any]) -> Counts:
    """The counts of these trials (FrozenTrials or `index.Row`s)."""
    retried = superseded(trials)
    return Counts(done=sum(is_done(t, retried) for t in trials),
                  running=sum(t.state == TrialState.RUNNING for t in trials),
                  waiting=sum(t.state == TrialState.WAITING for t in trials))


def counts(study: optuna.Study, trials: Sequence[Any] | None = None) -> Counts:
    """The study's trials that count toward the budget, are running, and are queued."""
    return tally(study.get_trials(deepcopy=False) if trials is None else trials)


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage:
    storage = rdb.backend(rdb.storage_of(study))
    if storage is None:
        raise TypeError("recovery works on RDB storages (SQLite, PostgreSQL)")
    return storage


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the trials of workers that stopped beating, queue their retries; their numbers."""
    storage = _rdb(study)
    stale, orphans = rdb.lost_trials(storage, rdb.study_id(study))
    failed = rdb.fail_running(storage, rdb.study_id(study), stale + orphans, STALE, max_retry=MAX_RETRY)
    return [number for _, number in failed]


def abandon(study: optuna.Study, trial_ids: Sequence[int], reason: str) -> int:
    """Fail this worker's unfinished trials with `fail_reason = reason` and queue a retry of each.

    Trials already finished (told, or failed as stale by another worker) are left alone. Returns
    how many were failed.
    """
    return len(rdb.fail_running(_rdb(study), rdb.study_id(study), list(trial_ids), reason, max_retry=MAX_RETRY))


@dataclass(frozen=True)
class Queueing:
    """What `ensure_queued` did."""
    queued: int  # cells given a new WAITING trial
    given_up: list[int]  # numbers of the last failed trial of each cell that ran out of attempts


class Coverage:
    """`plan_queue`'s reading of a study's trials, kept a trial at a time: which queue keys have a
    trial waiting, running or done, how often each failed for reasons other than an interrupt, and
    its last failed trial. A worker `note`s the rows that changed each round (and those a new
    retry supersedes) instead of reading every trial again; `plan_queue` is one Coverage of all."""

    def __init__(self) -> None:
        self._keys: dict[int, str | None] = {}  # trial number -> its queue key (fixed params never change)
        self._seen: dict[int, tuple[str, bool, bool]] = {}  # number -> (key, covers, counts as an attempt)
        self._covered: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._last_failed: dict[str, int] = {}

    def note(self, trials: Iterable[Any], retried: set[int]) -> None:
        """Take these trials' current states (FrozenTrials or index rows; `retried` as
        `record.superseded` of the whole study) in place of what was known of them."""
        for t in trials:
            if t.number not in self._keys:
                fixed = t.system_attrs.get(FIXED_PARAMS)
                self._keys[t.number] = None if fixed is None else _key(fixed)
            key = self._keys[t.number]
            if key is None:
                continue
            old = self._seen.get(t.number)
            if old is not None:
                self._covered[key] -= old[1]
                self._attempts[key] -= old[2]
            covers = t.state in (TrialState.WAITING, TrialState.RUNNING) or is_done(t, retried)
            failed = t.state == TrialState.FAIL
            attempt = failed and t.user_attrs.get(FAIL_REASON) != INTERRUPTED
            if failed:
                self._last_failed[key] = max(self._last_failed.get(key, -1), t.number)
            self._seen[t.number] = (key, covers, attempt)
            self._covered[key] += covers
            self._attempts[key] += attempt

    def queue(self, cells: Sequence[Queued], max_attempts: int) -> tuple[list[Queued], list[int]]:
        """What `ensure_queued` queues of these cells now (see `plan_queue`)."""
        queue, given_up = [], []
        listed: set[str] = set()  # a cell listed twice is queued once
        for item in cells:
            key = item.key
            if self._covered[key] > 0 or key in listed:
                continue
            listed.add(key)
            if self._attempts[key] >= max_attempts:
                given_up.append(self._last_failed[key])
                continue
            queue.append(Queued(item.params, {**item.user_attrs, **(
                {RETRY_OF: self._last_failed[key]} if key in self._last_failed else {})}))
        return queue, given_up


def plan_queue(trials: Sequence[Any], cells: Sequence[Queued], max_attempts: int,
               retried: set[int] | None = None) -> tuple[list[Queued], list[int]]:
    """What `ensure_queued` queues, from FrozenTrials or index rows: ([Queued, with `retry_of` where a
    cell failed before], numbers of the last failed trial of each cell that ran out of attempts).
    `retried` is `record.superseded(trials)` when the caller keeps it."""
    if not cells:
        return [], []
    coverage = Coverage()
    coverage.note(trials, superseded(trials) if retried is None else retried)
    return coverage.queue(cells, max_attempts)


def ensure_queued(study: optuna.Study, cells: Sequence[Queued], max_attempts: int,
                  distributions: Mapping[str, BaseDistribution], trials: Sequence[Any] | None = None,
                  retried: set[int] | None = None, coverage: Coverage | None = None) -> Queueing:
    """Give each cell without a waiting, running or done trial a WAITING one (see module doc), all
    in one transaction. `trials` are the study's trials (or index rows) when the caller has them,
    `retried` as for `plan_queue`; `coverage`: the caller's up-to-date `Coverage` of the study
    (then no trial is read)."""
    if not cells:
        return Queueing(0, [])
    if coverage is not None:
        queue, given_up = coverage.queue(cells, max_attempts)
    else:
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        queue, given_up = plan_queue(trials, cells, max_attempts, retried)
    rdb.enqueue_many(_rdb(study), rdb.study_id(study), [
        rdb.NewTrial(item.params, {k: distributions[k] for k in item.params}, item.user_attrs) for item in queue])
    return Queueing(len(queue), given_up)
