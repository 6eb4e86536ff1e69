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
- `plan_queue` / `ensure_queued`: every queued cell (grid cells, `[[enqueue]]` entries, a design's
  trials) that has no trial waiting, running or done gets one, unless it already failed
  `max_attempts` times for reasons other than an interrupt. This queues a new study and repairs a
  cell whose retry was lost.

Each of these must run under `locks.study_lock`: two workers repairing the same cell at once
would queue it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
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


def plan_queue(trials: Sequence[Any], cells: Sequence[Queued], max_attempts: int,
               keys: dict[int, str | None] | None = None, retried: set[int] | None = None
               ) -> tuple[list[Queued], list[int]]:
    """What `ensure_queued` queues, from FrozenTrials or index rows: ([Queued, with `retry_of` where a
    cell failed before], numbers of the last failed trial of each cell that ran out of attempts).

    `keys` caches each trial's queue key by number across calls on one study (a trial's
    `fixed_params` never change): a designed study has thousands of queued trials a round;
    `retried` is `record.superseded(trials)` when the caller keeps it."""
    if not cells:
        return [], []
    retried = superseded(trials) if retried is None else retried
    covered: set[str] = set()
    attempts: Counter[str] = Counter()
    last_failed: dict[str, int] = {}
    keys = {} if keys is None else keys
    for t in trials:
        if t.number in keys:
            key = keys[t.number]
        else:
            fixed = t.system_attrs.get(FIXED_PARAMS)
            key = keys[t.number] = None if fixed is None else _key(fixed)
        if key is None:
            continue
        if t.state in (TrialState.WAITING, TrialState.RUNNING) or is_done(t, retried):
            covered.add(key)
        elif t.state == TrialState.FAIL:
            if t.user_attrs.get(FAIL_REASON) != INTERRUPTED:
                attempts[key] += 1
            last_failed[key] = max(last_failed.get(key, -1), t.number)
    queue, given_up = [], []
    for item in cells:
        key = item.key
        if key in covered:
            continue
        covered.add(key)  # a cell listed twice is queued once
        if attempts[key] >= max_attempts:
            given_up.append(last_failed[key])
            continue
        queue.append(Queued(item.params, {**item.user_attrs,
                                          **({RETRY_OF: last_failed[key]} if key in last_failed else {})}))
    return queue, given_up


def ensure_queued(study: optuna.Study, cells: Sequence[Queued], max_attempts: int,
                  distributions: Mapping[str, BaseDistribution], trials: Sequence[Any] | None = None,
                  keys: dict[int, str | None] | None = None, retried: set[int] | None = None) -> Queueing:
    """Give each cell without a waiting, running or done trial a WAITING one (see module doc), all
    in one transaction. `trials` are the study's trials (or index rows) when the caller has them;
    `keys` and `retried` as for `plan_queue`."""
    if not cells:
        return Queueing(0, [])
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    queue, given_up = plan_queue(trials, cells, max_attempts, keys, retried)
    rdb.enqueue_many(_rdb(study), rdb.study_id(study), [
        rdb.NewTrial(item.params, {k: distributions[k] for k in item.params}, item.user_attrs) for item in queue])
    return Queueing(len(queue), given_up)
