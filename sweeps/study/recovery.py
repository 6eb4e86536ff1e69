"""What workers do to a shared study so that no crash loses or duplicates work.

- `counts`: the global budget. Done = COMPLETE, or FAIL with `fail_reason = "diverged"` (a real
  result: every seed blew up), unless a later trial retries it (then only the retry counts).
  Interrupted, crashed or stale trials never count.
- `fail_stale`: RUNNING trials whose worker stopped beating are failed and handed to the storage's
  retry callback (`storage.RetryStale`: a WAITING copy, `retry_of` naming the failed trial). This
  is `optuna.storages.fail_stale_trials` plus one case it misses: a trial whose worker died
  between creating it and its first heartbeat has no heartbeat row at all, and Optuna never
  considers it stale.
- `abandon`: a worker's own in-flight trials on SIGINT/SIGTERM or an error: FAIL with a reason,
  and a retry copy (fail_stale never sees them: they are no longer RUNNING).
- `ensure_queued`: every queued cell (grid cells, `[[enqueue]]` entries) that has no trial
  waiting, running or done gets one, unless it already failed `max_attempts` times for reasons
  other than an interrupt. This queues a new study and repairs a cell whose retry was lost.

Each of these must run under `locks.study_lock`: two workers repairing the same cell at once
would queue it twice.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import rdb
from .plan import FIXED_PARAMS, Queued
from .record import FAIL_REASON, INTERRUPTED, RETRY_OF, is_done, superseded


@dataclass(frozen=True)
class Counts:
    """Trials that count toward the budget, running, and queued."""
    done: int
    running: int
    waiting: int


def counts(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> Counts:
    """The study's trials that count toward the budget, are running, and are queued."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    retried = superseded(trials)
    return Counts(done=sum(is_done(t, retried) for t in trials),
                  running=sum(t.state == TrialState.RUNNING for t in trials),
                  waiting=sum(t.state == TrialState.WAITING for t in trials))


def _retry(study: optuna.Study, trial_id: int) -> None:
    callback = rdb.heartbeat_stale_callback(study)
    if callback is not None:
        callback(study, copy.deepcopy(rdb.storage_of(study).get_trial(trial_id)))


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the trials of workers that stopped beating, queue their retries; their numbers."""
    storage = rdb.storage_of(study)
    if storage.get_heartbeat_interval() is None:
        return []
    candidates = rdb.stale_trial_ids(study) + rdb.orphan_trial_ids(study)
    failed = []
    for trial_id in candidates:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker told it after all, or another worker failed it first
    for trial_id in failed:
        _retry(study, trial_id)
    return [storage.get_trial(tid).number for tid in failed]


def abandon(study: optuna.Study, trial_ids: Sequence[int], reason: str) -> int:
    """Fail this worker's unfinished trials with `fail_reason = reason` and queue a retry of each.

    Trials already finished (told, or failed as stale by another worker) are left alone. Returns
    how many were failed.
    """
    storage = rdb.storage_of(study)
    failed = 0
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _retry(study, trial_id)
        failed += 1
    return failed


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass(frozen=True)
class Queueing:
    """What `ensure_queued` did."""
    queued: int  # cells given a new WAITING trial
    given_up: list[int]  # numbers of the last failed trial of each cell that ran out of attempts


def ensure_queued(study: optuna.Study, cells: Sequence[Queued], max_attempts: int,
                  trials: Sequence[FrozenTrial] | None = None) -> Queueing:
    """Give each cell without a waiting, running or done trial a WAITING one (see module doc).

    `trials` are the study's trials when the caller has just read them."""
    if not cells:
        return Queueing(0, [])
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    retried = superseded(trials)
    covered: set[str] = set()
    attempts: Counter[str] = Counter()
    last_failed: dict[str, int] = {}
    for t in trials:
        fixed = t.system_attrs.get(FIXED_PARAMS)
        if fixed is None:
            continue
        key = _key(fixed)
        if t.state in (TrialState.WAITING, TrialState.RUNNING) or is_done(t, retried):
            covered.add(key)
        elif t.state == TrialState.FAIL:
            if t.user_attrs.get(FAIL_REASON) != INTERRUPTED:
                attempts[key] += 1
            last_failed[key] = max(last_failed.get(key, -1), t.number)
    queued, given_up = 0, []
    for item in cells:
        key = _key(item.params)
        if key in covered:
            continue
        covered.add(key)  # a cell listed twice is queued once
        if attempts[key] >= max_attempts:
            given_up.append(last_failed[key])
            continue
        user_attrs = {**item.user_attrs, **({RETRY_OF: last_failed[key]} if key in last_failed else {})}
        study.enqueue_trial(item.params, user_attrs=user_attrs or None)
        queued += 1
    return Queueing(queued, given_up)
