"""The runner: Optuna asks for configurations, the engine trains them in batches, Optuna is told.

Any number of runners (`sweeps run`, `sweeps worker`, on one host or many) may work on one study.
One round, under the study's lock (`locks.study_lock`): fail the trials of workers that stopped
beating (`fail_reason = "stale"`; their retries come back queued, in the same transaction), bring
the light index of the study up to date (`ledger.Ledger`: states, params, values, small
attributes; O(round) reads), count the global budget, queue what the plan needs and the study
lacks (grid cells, `[[enqueue]]` entries, a design's tuning trials and confirmations), and claim
trials until a batch of models is full: queued ones first, then for a sampled study the sampler's
asks, made against an in-memory mirror of the study and created in one transaction; each claim
records the trials' first heartbeat. Then, lock released: train every trial's seeds with
`engine.fit` (a thread keeps their heartbeats going) and finish the round, values, states and
attributes, in one transaction. A trial whose seeds mostly diverged is COMPLETE with value +inf;
one whose seeds all diverged is FAIL with `fail_reason = "diverged"` (both count toward the budget).

The budget is global (`recovery.counts`): rerunning a finished study or adding workers does no
duplicate work. Grid cells, `[[enqueue]]` entries and a design's trials are queued in the study and
only ever popped, never sampled, so each cell is done exactly once. When nothing is left to claim
but other workers still have trials in flight, a worker waits for them (a dead worker's trials are
failed after the grace period and retried) and exits when the study is done.

SIGINT/SIGTERM: never acted on in the middle of a storage write (the signal is noted and acted on
at the next safe point); during training at once (the engine's kernels are cancelled). The trials
in flight are failed with `fail_reason = "interrupted"` and re-queued, finished ones are kept,
`Interrupted` is raised. A second signal stops waiting for a safe point (anything then left
RUNNING is retried after the grace period, like a crash). CUDA out of memory halves the engine's
batch size and goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
import torch

from ..engine import Job, Result, default_batch_size, fit, resolve_device
from . import rdb
from . import recovery as rec
from . import storage as st
from .errors import mask, scrub
from .heartbeat import Heartbeat
from .ledger import Ledger, outcome
from .locks import study_lock
from .mirror import DEFAULT_PER_FIT
from .plan import Plan, StudyMismatch, Work, budget_of, model_seed, open_study
from .progress import Progress
from .record import INTERRUPTED, host, summarise, versions
from .signals import Signals
from .spec import Spec

__all__ = ["Interrupted", "Options", "RunSummary", "StudyMismatch", "model_seed", "open_study", "run", "storage_url"]

WAIT_POLL_S = 5.0  # how often an idle worker looks at the others' trials in flight


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived: the round in flight was failed (and will be retried), the rest kept."""


@dataclass
class Options:
    """How to run a spec (CLI flags); None means the spec's or the device's default."""

    storage: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    trials: int | None = None
    study_name: str | None = None
    seed: int | None = None
    progress: bool | None = None  # None: a bar only on a terminal
    compile: bool = False  # fuse the first-order step with torch.compile (see `make bench`)
    # TPE: fit the Parzen estimators once per this many trials of a round (1: once per trial, as
    # Optuna's own asks). See `mirror.Mirror.ask`; measured by `sweeps.tools.bench_storage`.
    trials_per_fit: int = DEFAULT_PER_FIT


@dataclass
class RunSummary:
    """What a run did, for the command line to print."""
    study_name: str
    storage: str
    device: str
    trials_run: int
    models: int
    wall_s: float
    finished: int
    budget: int
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)

    @property
    def models_per_s(self) -> float:
        return self.models / self.wall_s if self.wall_s > 0 else 0.0


def fit_halving(jobs: list[Job], *, device: torch.device, batch_size: int, data_seed: int,
                echo: Any = print, compile: bool = False) -> tuple[list[Result], int]:
    """`train.fit`, halving the batch size on CUDA out-of-memory until it fits (or 1 does not).

    Returns the results and the batch size that worked, which the caller keeps for later rounds.
    """
    while True:
        try:
            return fit(jobs, device=device, batch_size=batch_size, data_seed=data_seed, compile=compile), batch_size
        except torch.cuda.OutOfMemoryError as exc:
            if batch_size <= 1:
                raise RuntimeError(f"out of memory on {device} even one model at a time") from exc
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            echo(f"out of memory on {device}: batch size halved to {batch_size}, retrying the round")


@dataclass
class _Claim:
    trials: list[rdb.Claimed]
    work: list[Work]


class _Worker:
    """One runner's state across rounds: its trials in flight and the batch size that fits."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, spec: Spec, *, name: str,
                 budget: int, base_seed: int, device: torch.device, batch_size: int,
                 echo: Any, compile: bool = False, trials_per_fit: int = DEFAULT_PER_FIT) -> None:
        self.study, self.spec, self.name, self.budget = study, spec, name, budget
        self.base_seed, self.device, self.batch_size, self.echo = base_seed, device, batch_size, echo
        self.compile = compile
        self.storage = storage  # the RDBStorage itself (the study holds a caching wrapper of it)
        self.in_flight: list[int] = []  # trial ids claimed and not yet told (the heartbeat reads it)
        self.plan = Plan(spec, base_seed)
        self.ledger = Ledger(study, storage, self.plan, per_fit=trials_per_fit)
        self.warned_given_up = False
        self.run_info = {"device": str(device), **versions(), "host": host(), "spec": spec.name,
                         "spec_hash": spec.space_hash(), "pid": os.getpid()}

    def claim(self) -> tuple[_Claim | None, rec.Counts]:
        """Under the study's lock: recover, count, queue, claim. None when there is nothing to claim."""
        with study_lock(self.storage, self.name):
            lost = rec.fail_stale(self.study)
            if lost:
                self.echo(f"trial(s) {', '.join(map(str, lost))} lost their worker (no heartbeat for "
                          f"{self.storage.grace_period} s): failed and re-queued")
            counts = self.ledger.refresh()
            if counts.done < self.budget:
                queueing = self.ledger.top_up(max_attempts=1 + st.MAX_RETRY)
                if queueing.queued:
                    counts = self.ledger.counts()
                if queueing.given_up and not self.warned_given_up:
                    self.warned_given_up = True
                    self.echo(f"warning: {len(queueing.given_up)} queued configuration(s) failed "
                              f"{1 + st.MAX_RETRY} times and are not retried (last tries: trial(s) "
                              f"{', '.join(map(str, queueing.given_up))})")
            n = self.budget - counts.done - counts.running
            if self.plan.pops_only:
                n = min(n, counts.waiting)
            if n <= 0:
                return None, counts
            claimed = self.ledger.claim(n, self.batch_size, self.in_flight)
            if not claimed:
                return None, counts
            return _Claim(claimed, [self.plan.work(c.number, c.params) for c in claimed]), counts

    def train_and_tell(self, claim: _Claim, signals: Signals) -> tuple[int, int]:
        """Train the claimed trials, then finish them in one transaction. Returns (models, trials told)."""
        spec, trials = self.spec, claim.trials
        jobs = [Job(w.config, s) for w in claim.work for s in w.seeds]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        with signals.interruptible():
            results, self.batch_size = fit_halving(jobs, device=self.device, batch_size=self.batch_size,
                                                   data_seed=spec.data_seed, echo=self.echo,
                                                   compile=self.compile)
        wall = time.perf_counter() - t0
        run = {**self.run_info, "batch_size": self.batch_size, "started": started, "round_wall_s": wall,
               "round_trials": len(trials), "wall_time_s": wall / len(trials)}
        outcomes, start = [], 0
        for trial, w in zip(trials, claim.work):
            summary = summarise(w.config, w.seeds, results[start:start + len(w.seeds)],
                                threshold=spec.success_threshold, run=run)
            summary.attrs.update(w.attrs)
            outcomes.append(outcome(trial.trial_id, summary.value, summary.attrs))
            start += len(w.seeds)
        # Not written: another worker failed it as stale meanwhile; its retry redoes it.
        written = self.ledger.finish(outcomes)
        self.in_flight.clear()
        return len(jobs), len(written)

    def abandon(self, reason: str) -> int:
        """Fail and re-queue the trials in flight (best effort: the storage may be what failed)."""
        if not self.in_flight:
            return 0
        failed = 0
        with contextlib.suppress(Exception):
            with study_lock(self.storage, self.name):
                failed = rec.abandon(self.study, list(self.in_flight), reason)
        self.in_flight.clear()
        return failed


def storage_url(spec: Spec, opts: Options) -> str:
    """--storage, else $SWEEPS_STORAGE (keeps a password out of the process list), else the spec's."""
    return st.resolve_url(opts.storage, spec.storage)


def run(spec: Spec, opts: Options, *, echo: Any = print) -> RunSummary:
    """Run (or continue) the study of `spec` until its global budget is reached."""
    url = storage_url(spec, opts)
    device = resolve_device(opts.device)
    batch_size = opts.batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    signals = Signals()
    worker: _Worker | None = None
    with signals.installed():
        try:
            storage = st.open_storage(url)
            name = opts.study_name or spec.name
            base_seed = spec.seed if opts.seed is None else opts.seed
            with study_lock(storage, name):
                study = open_study(spec, storage, name, base_seed)
            budget = budget_of(spec, opts.trials)
            worker = _Worker(study, storage, spec, name=name, budget=budget, base_seed=base_seed, device=device,
                             batch_size=batch_size, echo=echo, compile=opts.compile,
                             trials_per_fit=opts.trials_per_fit)
            with Heartbeat(storage, storage.heartbeat_interval, worker.in_flight):
                trials_run, models, wall = _work(worker, signals, opts.progress)
        except KeyboardInterrupt:
            failed = worker.abandon(INTERRUPTED) if worker is not None else 0
            raise Interrupted(f"interrupted: {failed} trial(s) in flight marked failed and re-queued; "
                              f"finished trials are kept") from None
        except BaseException as exc:
            if worker is not None:
                worker.abandon(scrub(f"error: {type(exc).__name__}: {exc}", url)[:500])
            raise
    assert worker is not None  # set before any round ran
    counts = worker.ledger.refresh()
    best_value, best_params = worker.ledger.best()
    return RunSummary(name, mask(url), str(device), trials_run, models, wall, counts.done, budget,
                      best_value, best_params)


def _work(worker: _Worker, signals: Signals, progress: bool | None) -> tuple[int, int, float]:
    """Rounds until the study is done. Returns (trials told, models trained, wall seconds)."""
    interval = worker.storage.heartbeat_interval
    start = time.perf_counter()
    models = trials_run = 0
    bar = Progress(progress, total=worker.budget, initial=min(worker.ledger.refresh().done, worker.budget),
                   label=worker.name, echo=worker.echo)
    try:
        while True:
            signals.check()
            claim, counts = worker.claim()
            if claim is None:
                if counts.running == 0:
                    break
                # Others' trials are in flight: wait for them to finish, or to go stale and come
                # back to the queue, before calling the study done.
                with signals.interruptible():
                    time.sleep(min(WAIT_POLL_S, interval))
                continue
            round_models, told = worker.train_and_tell(claim, signals)
            models += round_models
            trials_run += told
            bar.update(told, lambda: worker.ledger.best()[0], models / (time.perf_counter() - start))
    finally:
        bar.close()
    return trials_run, models, time.perf_counter() - start
