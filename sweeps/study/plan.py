"""What a spec asks of its study: the sampler, the global budget, the queued cells, each trial's
configuration and seeds, and opening (creating or loading) the study with its space checked.

`Plan` is what the runner consults each round: which configurations must be in the study's queue
(grid cells and `[[enqueue]]` entries; for a designed study the tuning trials and, once a cell's
tuning is done, its confirmation), the Optuna distribution of every param its trials carry,
whether trials are only ever popped from the queue, and what a claimed trial trains (its `Config`,
its models' seeds, the attributes it records besides results). `queue` reads trials as FrozenTrials
or as the runner's light `index.Row`s: number, state, params, value and the small attributes
(`fail_reason`, `retry_of`, `seeds_fit`, `fixed_params`); nothing here reads a whole trial.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ..config import KEYS, Config
from . import design as designs
from . import rdb
from .record import CELL, OPENS, SPACE_HASH, TUNED_FROM, design_attrs, is_done, seeds_fit, study_attrs, superseded
from .search import Dimension, suggest
from .spec import Spec

FIXED_PARAMS = "fixed_params"  # Optuna's system attribute of an enqueued trial


class StudyMismatch(RuntimeError):
    """The spec's search space differs from the one an existing study of that name was made with."""


def model_seed(study_seed: int, trial_number: int, seed_index: int) -> int:
    """The init seed of one model: its own (study seed, trial, seed index), never its batch."""
    digest = hashlib.sha256(f"{study_seed}/{trial_number}/{seed_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded (grid specs only pop queued cells, never sample)."""
    if spec.sampler == "tpe":
        # Optuna 5 defaults: multivariate, constant_liar (we ask a whole round before telling).
        return optuna.samplers.TPESampler(seed=seed)
    # Grid specs only pop queued cells; this sampler never draws for them.
    return optuna.samplers.RandomSampler(seed=seed)


def budget_of(spec: Spec, trials: int | None) -> int:
    """The study's global trial budget: --trials, else the spec's (a grid's is at most its cells; a
    design's is its tuning trials plus one confirmation per cell)."""
    if spec.design is not None:
        planned = designs.trials_planned(spec.cells())
        return min(trials, planned) if trials is not None else planned
    budget = trials if trials is not None else spec.trials
    if spec.sampler == "grid":
        budget = min(budget, len(spec.grid_cells()) + len(spec.enqueue))
    return budget


def search_distributions(space: dict[str, Dimension]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched key, exactly as `search.suggest` asks for it."""
    out: dict[str, BaseDistribution] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            out[name] = CategoricalDistribution(list(dim.choices))
        elif KEYS[name].kind is int:
            out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[name] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


class _Given:
    """A `search.TrialLike` whose values are already known (a claimed or asked trial's params)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self.params[name])

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return float(self.params[name])


def queue_key(params: dict[str, Any]) -> str:
    """A queued configuration's identity (its params, as text)."""
    return json.dumps(params, sort_keys=True, default=str)


@dataclass(frozen=True)
class Queued:
    """A configuration the study's queue must hold: its params and the attributes it starts with."""

    params: dict[str, Any]
    user_attrs: dict[str, Any]

    @functools.cached_property
    def key(self) -> str:
        """`queue_key` of the params (computed once: a plan hands out the same items every round)."""
        return queue_key(self.params)


@dataclass(frozen=True)
class Work:
    """What a claimed trial trains: one config on these seeds, and what it records besides results."""

    config: Config
    seeds: list[int]
    attrs: dict[str, Any]


class Plan:
    """A spec's answers to the runner's questions (see the module docstring)."""

    def __init__(self, spec: Spec, base_seed: int) -> None:
        self.spec, self.base_seed = spec, base_seed
        self.cells = spec.cells()
        self.by_name = {c.name: c for c in self.cells}
        self.distributions: dict[str, BaseDistribution] = (
            designs.distributions(self.cells) if spec.design is not None else search_distributions(spec.space))
        self._tuned: dict[str, list[list[Any]]] = {}  # per cell: its tuning trials, as `queue` last saw them
        self._tried: dict[str, dict[int, designs.Tried]] = {}  # per cell: its finished tuning trials by number
        self._cell_of: dict[int, str | None] = {}  # trial number -> its cell's name, None if no tuning trial
        self._fits: dict[int, int] = {}  # trial number -> seeds that fit (finished trials never change)
        self._static = [Queued(dict(p), {}) for p in spec.enqueue]
        if spec.sampler == "grid":
            self._static += [Queued(c, {}) for c in spec.grid_cells()]
        # A design's items, made once (their keys are then computed once): per cell, its tuning
        # trials, and its confirmation at each lr it may choose (or its only one).
        self._named = [(c, c.name) for c in self.cells]  # a cell's name is JSON: made once
        self._tunes = {n: [Queued(c.params(designs.TUNE, lr), {}) for lr in c.lrs] for c, n in self._named if c.tuned}
        self._confirms = {(n, lr): Queued(c.params(designs.CONFIRM, lr), {})
                          for c, n in self._named for lr in (c.lrs or (None,))}
        self._items = {n: self._cell_items(c, n) for c, n in self._named}  # per cell, what `update` gives
        self._listed: list[Queued] | None = None

    @property
    def pops_only(self) -> bool:
        """Trials come from the queue only (a grid, a design), never from the sampler."""
        return self.spec.sampler in ("grid", "design")

    def models_of(self, params: dict[str, Any]) -> int:
        """How many models a queued trial with these params trains."""
        if self.spec.design is not None and params.get(designs.PHASE) == designs.CONFIRM:
            return self.spec.design.confirm_seeds
        return self.spec.seeds

    def queue(self, trials: Sequence[Any], fetch: Callable[[list[Any]], dict[int, dict[str, Any]]] | None = None,
              retried: set[int] | None = None) -> list[Queued]:
        """Every configuration the queue must hold now, given the study's trials (FrozenTrials or
        index rows). `fetch(trials)` gives {number: user attributes} of finished tuning trials that
        carry no seed counts (needed only for studies from before `seeds_fit`); `retried` is
        `record.superseded(trials)` when the caller keeps it."""
        return self.update(trials, fetch, superseded(trials) if retried is None else retried)

    def update(self, changed: Sequence[Any], fetch: Callable[[list[Any]], dict[int, dict[str, Any]]] | None,
               retried: set[int]) -> list[Queued]:
        """`queue`, given only the trials that changed since the last call (and those a new retry
        supersedes; `retried` of the whole study): a design keeps each cell's finished tuning
        trials and redoes only the cells these touch."""
        if self.spec.design is None:
            return self._static
        done, touched = [], set()
        for t in changed:
            if t.number not in self._cell_of:
                fixed = t.system_attrs.get(FIXED_PARAMS) or t.params
                cell = designs.key_of(fixed, self.by_name)
                tune = t.params.get(designs.PHASE, fixed.get(designs.PHASE)) == designs.TUNE
                self._cell_of[t.number] = cell.name if cell is not None and tune else None
            name = self._cell_of[t.number]
            if name is None:
                continue
            if is_done(t, retried):
                done.append(t)
            elif self._tried.setdefault(name, {}).pop(t.number, None) is not None:
                touched.add(name)
        threshold = self.spec.success_threshold
        missing = [t for t in done if t.number not in self._fits and seeds_fit(t.user_attrs, threshold) is None]
        fetched = fetch(missing) if missing and fetch is not None else {}
        for t in done:
            if t.number not in self._fits:
                self._fits[t.number] = seeds_fit(fetched.get(t.number, t.user_attrs), threshold) or 0
            name = self._cell_of[t.number]
            self._tried.setdefault(name, {})[t.number] = designs.Tried(
                lr=float(t.params["lr"]), successes=self._fits[t.number],
                value=t.value if t.state == TrialState.COMPLETE and t.value is not None else math.inf,
                number=t.number)
            touched.add(name)
        for name in touched:
            self._items[name] = self._cell_items(self.by_name[name], name)
        if touched or self._listed is None:
            self._listed = [q for _, name in self._named for q in self._items[name]]
        return self._listed

    def _cell_items(self, cell: designs.Cell, name: str) -> list[Queued]:
        """A cell's queue items: its confirmation if untuned; else its tuning trials, and its
        confirmation at the chosen lr once every lr is tried (the latest trial of each lr counts)."""
        if not cell.tuned:
            return [self._confirms[name, cell.lrs[0] if cell.lrs else None]]
        tried = self._tried.get(name, {})
        finished = {t.lr: t for _, t in sorted(tried.items())}
        if not all(lr in finished for lr in cell.lrs):
            return self._tunes[name]
        best = designs.choose(finished.values())
        self._tuned[name] = [[t.lr, t.successes, t.value if math.isfinite(t.value) else None, t.number]
                             for t in sorted(finished.values(), key=lambda t: t.lr)]
        return self._tunes[name] + [self._confirms.get((name, best.lr)) or Queued(cell.params(designs.CONFIRM, best.lr), {})]

    def work(self, number: int, params: dict[str, Any]) -> Work:
        """The config, seeds and attributes of claimed trial `number` with these params (every
        param of `distributions`: claims and asks write them all)."""
        spec = self.spec
        if spec.design is None:
            config = suggest(_Given(params), spec.space, spec.fixed)
            return Work(config, [model_seed(self.base_seed, number, s) for s in range(spec.seeds)], {})
        cell = designs.key_of(params, self.by_name)
        if cell is None or designs.PHASE not in params:
            raise ValueError(f"trial {number} has params {params} that are no cell of this design")
        phase, lr = params[designs.PHASE], params.get("lr")
        n = spec.design.confirm_seeds if phase == designs.CONFIRM else spec.seeds
        seeds = [designs.seed(self.base_seed, cell, phase, lr, i) for i in range(n)]
        structured = {"label": cell.label, "control": cell.control, "ladder": cell.ladder, "changes": cell.changes,
                      "tuned": cell.tuned}
        attrs: dict[str, Any] = {CELL: structured, **design_attrs(structured, phase)}
        if phase == designs.CONFIRM and cell.name in self._tuned:
            attrs[TUNED_FROM] = self._tuned[cell.name]  # [lr, seeds fit, median MSE, trial] per tuning trial
        return Work(cell.config(lr, spec.fixed.get("lr", 0.01)), seeds, attrs)


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
        stored = attrs.get(SPACE_HASH)
        if stored is not None and stored != spec.space_hash():
            raise StudyMismatch(
                f"study {name!r} in this storage was made from a different search space or fixed settings "
                f"than {spec.path}; run it under a new name (--study NEW_NAME) or restore the spec")
        opens = int(attrs.get(OPENS, 1))
        rdb_storage = rdb.backend(storage)
        n_trials = (rdb.count_trials(rdb_storage, study_id) if rdb_storage is not None
                    else len(storage.get_all_trials(study_id, deepcopy=False)))
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(spec, seed + n_trials + 100_003 * opens))
    if SPACE_HASH not in study.user_attrs:  # new, or its creator died before writing these
        for key, value in study_attrs(spec).items():
            study.set_user_attr(key, value)
    study.set_user_attr(OPENS, opens + 1)
    return study
