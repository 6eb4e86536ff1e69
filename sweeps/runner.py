"""The runner: Optuna asks for configurations, the engine trains them in batches, Optuna is told.

One round: fail stale trials of dead workers (their retries come back as queued trials), ask for
up to `batch_size // seeds` trials, expand each into its seeds, train all of them with
`train.fit`, write every trial's attributes in one transaction and tell Optuna each value. The
budget is global: trials finished by any worker count, so rerunning a finished study, or starting
more workers on it, does no duplicate work. Grid specs and `[[enqueue]]` entries are queued in the
study once, when it is created, and popped atomically by `study.ask()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import TrialState

from . import data as datasets
from . import storage as st
from .spec import Spec
from .space import suggest
from .summary import host, summarise, versions
from .train import Job, default_batch_size, fit, resolve_device

FAIL_REASON = "fail_reason"
DIVERGED = "diverged"


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
    # Grid cells are queued in the study (exactly once across workers); the random sampler only
    # ever draws if a queued cell was taken by another worker between our check and our ask.
    return optuna.samplers.RandomSampler(seed=seed)


def budget_of(spec: Spec, trials: int | None) -> int:
    budget = trials if trials is not None else spec.trials
    if spec.sampler == "grid":
        budget = min(budget, len(spec.grid_cells()) + len(spec.enqueue))
    return budget


def open_study(spec: Spec, storage: optuna.storages.BaseStorage, name: str, seed: int) -> optuna.Study:
    """Create the study (queueing its fixed trials) or load it, checking the space is unchanged."""
    sampler = make_sampler(spec, seed)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize")
        study.set_metric_names(["test_mse_median"])
        study.set_user_attr("spec", {"name": spec.name, "path": spec.path, "description": spec.description,
                                     "sampler": spec.sampler, "seeds": spec.seeds,
                                     "success_threshold": spec.success_threshold, "data_seed": spec.data_seed,
                                     "fixed": spec.fixed,
                                     "space": {k: {kk: vv for kk, vv in vars(d).items() if vv is not None}
                                               for k, d in spec.space.items()}})
        study.set_user_attr("space_hash", spec.space_hash())
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        stored = study.user_attrs.get("space_hash")
        if stored is not None and stored != spec.space_hash():
            raise StudyMismatch(
                f"study {name!r} in this storage was made from a different search space or fixed settings "
                f"than {spec.path}; run it under a new name (--study NEW_NAME) or restore the spec") from None
    if not study.user_attrs.get("queued"):
        # Idempotent: a worker that died while queueing is completed by the next one.
        for params in list(spec.enqueue) + (spec.grid_cells() if spec.sampler == "grid" else []):
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("queued", True)
    return study


def _counts(study: optuna.Study) -> dict[str, int]:
    done = running = waiting = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON) == DIVERGED):
            done += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
    return {"done": done, "running": running, "waiting": waiting}


class _Heartbeat:
    """Records heartbeats for the trials in flight, from a thread, while the engine trains."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for tid in list(self.trial_ids):
                with contextlib.suppress(Exception):  # a missed beat is retried next interval
                    self.storage.record_heartbeat(tid)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration (SIGINT already is one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(spec: Spec, opts: Options, *, echo: Any = print) -> RunSummary:
    """Run (or continue) the study of `spec` until its global budget is reached."""
    url = opts.storage or spec.storage
    device = resolve_device(opts.device)
    batch_size = opts.batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    storage = st.open_storage(url)
    name = opts.study_name or spec.name
    base_seed = spec.seed if opts.seed is None else opts.seed
    probe = optuna.load_study(study_name=name, storage=storage) if name in _study_names(storage) else None
    # A sampler seeded the same on every run would re-propose the same first configurations.
    sampler_seed = base_seed + (len(probe.trials) if probe is not None else 0)
    study = open_study(spec, storage, name, sampler_seed)
    budget = budget_of(spec, opts.trials)
    per_round = max(1, batch_size // spec.seeds)
    run_info = {"device": str(device), **versions(), "host": host(), "spec": spec.name,
                "spec_hash": spec.space_hash(), "batch_size": batch_size}

    start = time.perf_counter()
    models = trials_run = 0
    counts = _counts(study)
    bar = _progress(opts.progress, total=budget, initial=min(counts["done"], budget))
    try:
        with _signals_raise(), _Heartbeat(storage, st.HEARTBEAT_INTERVAL_S) as beat:
            while True:
                optuna.storages.fail_stale_trials(study)
                counts = _counts(study)
                remaining = budget - counts["done"] - counts["running"]
                queue_only = spec.sampler == "grid"
                n = min(remaining, per_round, counts["waiting"] if queue_only else remaining)
                if n <= 0:
                    break
                round_models, told = _round(study, spec, n, base_seed, device, batch_size, run_info, beat)
                models += round_models
                trials_run += told
                if bar is not None:
                    bar.update(told)
                    with contextlib.suppress(ValueError):
                        bar.set_postfix(best=f"{study.best_value:.3g}", models_s=f"{models / (time.perf_counter() - start):.0f}")
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    counts = _counts(study)
    try:
        best_value, best_params = study.best_value, study.best_params
    except ValueError:
        best_value, best_params = None, {}
    return RunSummary(name, st.mask(url), str(device), trials_run, models, wall, counts["done"], budget,
                      best_value, best_params)


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def _round(study: optuna.Study, spec: Spec, n: int, base_seed: int, device: Any, batch_size: int,
           run_info: dict[str, Any], beat: _Heartbeat) -> tuple[int, int]:
    """Ask n trials, train them, write and tell. Returns (models trained, trials told)."""
    trials: list[optuna.Trial] = []
    try:
        for _ in range(n):
            trial = study.ask()
            trials.append(trial)
            beat.trial_ids.append(trial._trial_id)
        configs = [suggest(t, spec.space, spec.fixed) for t in trials]
        seeds = [[model_seed(base_seed, t.number, s) for s in range(spec.seeds)] for t in trials]
        jobs = [Job(c, s) for c, ss in zip(configs, seeds) for s in ss]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        results = fit(jobs, device=device, batch_size=batch_size, data_seed=spec.data_seed)
        wall = time.perf_counter() - t0
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {type(exc).__name__}: {exc}"
        _fail_all(study, trials, reason)
        beat.trial_ids.clear()
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: {len(trials)} trial(s) in flight marked failed; finished trials are kept") from None
        raise

    run = {**run_info, "started": started, "round_wall_s": wall, "round_trials": len(trials),
           "wall_time_s": wall / len(trials)}
    outcomes = []
    for i, (trial, config) in enumerate(zip(trials, configs)):
        res = results[i * spec.seeds:(i + 1) * spec.seeds]
        shift, scale = datasets.scaler(datasets.make(config.data, spec.data_seed).x, config.scaling)
        outcome = summarise(config, seeds[i], res, threshold=spec.success_threshold, shift=shift, scale=scale, run=run)
        if outcome.value is None:
            outcome.attrs[FAIL_REASON] = DIVERGED
            outcome.attrs["fail_detail"] = outcome.reason
        outcomes.append(outcome)
    st.write_user_attrs(study, [(t._trial_id, o.attrs) for t, o in zip(trials, outcomes)])
    for trial, outcome in zip(trials, outcomes):
        if outcome.value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, outcome.value)
    beat.trial_ids.clear()
    return len(jobs), len(trials)


def _fail_all(study: optuna.Study, trials: list[optuna.Trial], reason: str) -> None:
    for trial in trials:
        with contextlib.suppress(Exception):
            study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
            study.tell(trial, state=TrialState.FAIL)


def _progress(enabled: bool | None, total: int, initial: int) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal.
    return tqdm(total=total, initial=initial, unit="trial", disable=None if enabled is None else not enabled,
                dynamic_ncols=True)

