"""The runner: Optuna asks for configurations, the engine trains them in batches, Optuna is told.

Any number of runners (`sweeps run`, `sweeps worker`, on one host or many) may work on one study.
One round, under the study's lock (`storage.study_lock`): fail the trials of workers that stopped
beating (their retries come back queued), queue grid cells that lost their trial, count the global
budget, claim up to `batch_size // seeds` trials (popping queued ones first) and record their first
heartbeat. Then, lock released: train every trial's seeds with `train.fit` (a thread keeps their
heartbeats going), write all attributes in one transaction and tell Optuna each value.

The budget is global (`recovery.counts`): rerunning a finished study or adding workers does no
duplicate work. Grid cells and `[[enqueue]]` entries are queued in the study and only ever popped,
never sampled, so each cell is COMPLETE exactly once. When nothing is left to claim but other
workers still have trials in flight, a worker waits for them (a dead worker's trials are failed
after the grace period and retried) and exits when the study is done.

SIGINT/SIGTERM: never acted on in the middle of a storage write (the signal is noted and acted on
at the next safe point); during training at once. The trials in flight are failed with
`fail_reason = "interrupted"` and re-queued, finished ones are kept, `Interrupted` is raised. A
second signal stops waiting for a safe point (anything then left RUNNING is retried after the
grace period, like a crash). CUDA out of memory halves the engine's batch size and goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from . import data as datasets
from . import recovery as rec
from . import storage as st
from .recovery import DIVERGED, FAIL_REASON, INTERRUPTED
from .space import Config, suggest
from .spec import Spec
from .summary import host, summarise, versions
from .train import Job, Result, default_batch_size, fit, resolve_device

__all__ = ["DIVERGED", "FAIL_REASON", "Interrupted", "Options", "RunSummary", "StudyMismatch", "run", "storage_url"]

WAIT_POLL_S = 5.0  # how often an idle worker looks at the others' trials in flight


class StudyMismatch(RuntimeError):
    """The spec's search space differs from the one an existing study of that name was made with."""


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


@dataclass
class RunSummary:
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


def model_seed(study_seed: int, trial_number: int, seed_index: int) -> int:
    """The init seed of one model: its own (study seed, trial, seed index), never its batch."""
    digest = hashlib.sha256(f"{study_seed}/{trial_number}/{seed_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.sampler == "tpe":
        # Optuna 5 defaults: multivariate, constant_liar (we ask a whole round before telling).
        return optuna.samplers.TPESampler(seed=seed)
    # Grid specs only pop queued cells; this sampler never draws for them.
    return optuna.samplers.RandomSampler(seed=seed)


def budget_of(spec: Spec, trials: int | None) -> int:
    budget = trials if trials is not None else spec.trials
    if spec.sampler == "grid":
        budget = min(budget, len(spec.grid_cells()) + len(spec.enqueue))
    return budget


def queued_cells(spec: Spec) -> list[dict[str, Any]]:
    """The configurations kept in the study's queue: `[[enqueue]]` entries, then grid cells."""
    return list(spec.enqueue) + (spec.grid_cells() if spec.sampler == "grid" else [])


def open_study(spec: Spec, storage: optuna.storages.BaseStorage, name: str, seed: int) -> optuna.Study:
    """Create the study or load it, checking the space is unchanged. Call under the study's lock.

    The sampler's seed moves on with every opening (trials so far, earlier openings): a sampler
    seeded the same on every run, or in every worker started together, would re-propose the same
    first configurations. The first opening of a study uses `seed` itself.
    """
    try:
        study_id: int | None = storage.get_study_id_from_name(name)
    except KeyError:
        study_id = None
    if study_id is None:
        study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(spec, seed),
                                    direction="minimize")
        study.set_metric_names(["test_mse_median"])
        opens = 0
    else:
        attrs = storage.get_study_user_attrs(study_id)
        stored = attrs.get("space_hash")
        if stored is not None and stored != spec.space_hash():
            raise StudyMismatch(
                f"study {name!r} in this storage was made from a different search space or fixed settings "
                f"than {spec.path}; run it under a new name (--study NEW_NAME) or restore the spec")
        opens = int(attrs.get("opens", 1))
        n_trials = len(storage.get_all_trials(study_id, deepcopy=False))
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(spec, seed + n_trials + 100_003 * opens))
    if "space_hash" not in study.user_attrs:  # new, or its creator died before writing these
        study.set_user_attr("spec", {"name": spec.name, "path": spec.path, "description": spec.description,
                                     "sampler": spec.sampler, "seeds": spec.seeds,
                                     "success_threshold": spec.success_threshold, "data_seed": spec.data_seed,
                                     "fixed": spec.fixed,
                                     "space": {k: {kk: vv for kk, vv in vars(d).items() if vv is not None}
                                               for k, d in spec.space.items()}})
        study.set_user_attr("space_hash", spec.space_hash())
    study.set_user_attr("opens", opens + 1)
    return study


class _Signals:
    """SIGINT/SIGTERM: raise KeyboardInterrupt inside `interruptible()`, else note it for `check()`."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._raise_now = False

    def _handler(self, signum: int, _frame: object) -> None:
        second = self.pending is not None
        self.pending = signum
        if self._raise_now or second:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; an embedding caller handles them
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False

    def check(self) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt


class _Heartbeat:
    """Records heartbeats for the trials in flight, from a thread, while the engine trains."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float, trial_ids: list[int]) -> None:
        self.storage, self.interval, self.trial_ids = storage, interval, trial_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweeps-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            ids = list(self.trial_ids)
            if ids:
                with contextlib.suppress(Exception):  # a missed beat is retried next interval
                    st.record_heartbeats(self.storage, ids)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
    trials: list[optuna.Trial]
    configs: list[Config]


class _Worker:
    """One runner's state across rounds: its trials in flight and the batch size that fits."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, spec: Spec, *, name: str,
                 budget: int, per_round: int, base_seed: int, device: torch.device, batch_size: int,
                 echo: Any, compile: bool = False) -> None:
        self.study, self.spec, self.name, self.budget, self.per_round = study, spec, name, budget, per_round
        self.base_seed, self.device, self.batch_size, self.echo = base_seed, device, batch_size, echo
        self.compile = compile
        self.storage = storage  # the RDBStorage itself (the study holds a caching wrapper of it)
        self.in_flight: list[int] = []  # trial ids claimed and not yet told (the heartbeat reads it)
        self.cells = queued_cells(spec)
        self.warned_given_up = False
        self.run_info = {"device": str(device), **versions(), "host": host(), "spec": spec.name,
                         "spec_hash": spec.space_hash(), "pid": os.getpid()}

    def claim(self) -> tuple[_Claim | None, rec.Counts]:
        """Under the study's lock: recover, count, claim. None when there is nothing to claim."""
        with st.study_lock(self.storage, self.name):
            lost = rec.fail_stale(self.study)
            if lost:
                self.echo(f"trial(s) {', '.join(map(str, lost))} lost their worker (no heartbeat for "
                          f"{self.storage.grace_period} s): failed and re-queued")
            counts = rec.counts(self.study)
            if counts.done < self.budget:
                queueing = rec.ensure_queued(self.study, self.cells, max_attempts=1 + st.MAX_RETRY)
                if queueing.queued:
                    counts = rec.Counts(counts.done, counts.running, counts.waiting + queueing.queued)
                if queueing.given_up and not self.warned_given_up:
                    self.warned_given_up = True
                    self.echo(f"warning: {len(queueing.given_up)} queued configuration(s) failed "
                              f"{1 + st.MAX_RETRY} times and are not retried (last tries: trial(s) "
                              f"{', '.join(map(str, queueing.given_up))})")
            n = min(self.budget - counts.done - counts.running, self.per_round)
            if self.spec.sampler == "grid":
                n = min(n, counts.waiting)
            if n <= 0:
                return None, counts
            trials = self._ask(n)
            if not trials:
                return None, counts
            st.record_heartbeats(self.storage, self.in_flight)  # at once: a trial never beaten is never stale
            # Suggest under the lock too: the next worker's sampler then sees these parameters.
            configs = [suggest(t, self.spec.space, self.spec.fixed) for t in trials]
            return _Claim(trials, configs), counts

    def _ask(self, n: int) -> list[optuna.Trial]:
        trials = []
        for _ in range(n):
            if self.spec.sampler == "grid":
                # Pop only: study.ask() on an empty queue would create a trial outside the grid.
                trial_id = self.study._pop_waiting_trial_id()
                if trial_id is None:
                    break
                trial = optuna.Trial(self.study, trial_id)
            else:
                trial = self.study.ask()
            self.in_flight.append(trial._trial_id)
            trials.append(trial)
        return trials

    def train_and_tell(self, claim: _Claim, signals: _Signals) -> tuple[int, int]:
        """Train the claimed trials, then write and tell them. Returns (models, trials told)."""
        spec, trials, configs = self.spec, claim.trials, claim.configs
        seeds = [[model_seed(self.base_seed, t.number, s) for s in range(spec.seeds)] for t in trials]
        jobs = [Job(c, s) for c, ss in zip(configs, seeds) for s in ss]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        with signals.interruptible():
            results, self.batch_size = fit_halving(jobs, device=self.device, batch_size=self.batch_size,
                                                   data_seed=spec.data_seed, echo=self.echo,
                                                   compile=self.compile)
        wall = time.perf_counter() - t0
        run = {**self.run_info, "batch_size": self.batch_size, "started": started, "round_wall_s": wall,
               "round_trials": len(trials), "wall_time_s": wall / len(trials)}
        outcomes = []
        for i, (trial, config) in enumerate(zip(trials, configs)):
            res = results[i * spec.seeds:(i + 1) * spec.seeds]
            shift, scale = datasets.scaler(datasets.make(config.data, spec.data_seed).x, config.scaling)
            outcome = summarise(config, seeds[i], res, threshold=spec.success_threshold, shift=shift, scale=scale,
                                run=run)
            if outcome.value is None:
                outcome.attrs[FAIL_REASON] = DIVERGED
                outcome.attrs["fail_detail"] = outcome.reason
            outcomes.append(outcome)
        written = set(st.write_user_attrs(self.study, [(t._trial_id, o.attrs) for t, o in zip(trials, outcomes)]))
        told = 0
        for trial, outcome in zip(trials, outcomes):
            # Not written: another worker failed it as stale meanwhile; its retry redoes it.
            if trial._trial_id in written:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if outcome.value is None:
                        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    else:
                        self.study.tell(trial, outcome.value, skip_if_finished=True)
                    told += 1
        self.in_flight.clear()
        return len(jobs), told

    def abandon(self, reason: str) -> int:
        """Fail and re-queue the trials in flight (best effort: the storage may be what failed)."""
        if not self.in_flight:
            return 0
        failed = 0
        with contextlib.suppress(Exception):
            with st.study_lock(self.storage, self.name):
                failed = rec.abandon(self.study, list(self.in_flight), reason)
        self.in_flight.clear()
        return failed


def storage_url(spec: Spec, opts: Options) -> str:
    """--storage, else $SWEEPS_STORAGE (keeps a password out of the process list), else the spec's."""
    return opts.storage or os.environ.get(st.ENV_STORAGE) or spec.storage


def run(spec: Spec, opts: Options, *, echo: Any = print) -> RunSummary:
    """Run (or continue) the study of `spec` until its global budget is reached."""
    url = storage_url(spec, opts)
    device = resolve_device(opts.device)
    batch_size = opts.batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    signals = _Signals()
    worker: _Worker | None = None
    with signals.installed():
        try:
            storage = st.open_storage(url)
            name = opts.study_name or spec.name
            base_seed = spec.seed if opts.seed is None else opts.seed
            with st.study_lock(storage, name):
                study = open_study(spec, storage, name, base_seed)
            budget = budget_of(spec, opts.trials)
            worker = _Worker(study, storage, spec, name=name, budget=budget,
                             per_round=max(1, batch_size // spec.seeds), base_seed=base_seed, device=device,
                             batch_size=batch_size, echo=echo, compile=opts.compile)
            with _Heartbeat(storage, storage.heartbeat_interval, worker.in_flight):
                trials_run, models, wall = _work(worker, signals, opts.progress)
        except KeyboardInterrupt:
            failed = worker.abandon(INTERRUPTED) if worker is not None else 0
            raise Interrupted(f"interrupted: {failed} trial(s) in flight marked failed and re-queued; "
                              f"finished trials are kept") from None
        except BaseException as exc:
            if worker is not None:
                worker.abandon(st.scrub(f"error: {type(exc).__name__}: {exc}", url)[:500])
            raise
    try:  # the dashboard's study note and fit figures; never fails a sweep
        from .publish import artifact_dir_for, publish

        publish(study, spec, artifact_dir_for(url), budget=budget)
    except Exception as exc:
        echo(f"warning: study note and fit figures not updated: {st.describe_error(exc, url)}")
    counts = rec.counts(study)
    try:
        best_value, best_params = study.best_value, study.best_params
    except ValueError:
        best_value, best_params = None, {}
    return RunSummary(name, st.mask(url), str(device), trials_run, models, wall, counts.done, budget,
                      best_value, best_params)


def _work(worker: _Worker, signals: _Signals, progress: bool | None) -> tuple[int, int, float]:
    """Rounds until the study is done. Returns (trials told, models trained, wall seconds)."""
    study, interval = worker.study, worker.storage.heartbeat_interval
    start = time.perf_counter()
    models = trials_run = 0
    bar = _progress(progress, total=worker.budget, initial=min(rec.counts(study).done, worker.budget))
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
            if bar is not None:
                bar.update(told)
                with contextlib.suppress(ValueError):
                    bar.set_postfix(best=f"{study.best_value:.3g}",
                                    models_s=f"{models / (time.perf_counter() - start):.0f}")
    finally:
        if bar is not None:
            bar.close()
    return trials_run, models, time.perf_counter() - start


def _progress(enabled: bool | None, total: int, initial: int) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal.
    return tqdm(total=total, initial=initial, unit="trial", disable=None if enabled is None else not enabled,
                dynamic_ncols=True)
