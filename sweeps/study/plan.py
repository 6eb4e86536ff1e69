"""What a spec asks of its study: the sampler, the global budget, the queued cells, each trial's
configuration and seeds, and opening (creating or loading) the study with its space checked.

`Plan` is what the runner consults each round: which configurations must be in the study's queue
(grid cells and `[[enqueue]]` entries; for a designed study the tuning trials and, once a cell's
tuning is done, its confirmation), whether trials are only ever popped from the queue, and what a
claimed trial trains (its `Config`, its models' seeds, the attributes it records besides results).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from . import design as designs
from .record import CELL, OPENS, SPACE_HASH, TUNED_FROM, is_done, study_attrs, superseded
from .search import suggest
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


@dataclass(frozen=True)
class Queued:
    """A configuration the study's queue must hold: its params and the attributes it starts with."""

    params: dict[str, Any]
    user_attrs: dict[str, Any]


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
        self.distributions = designs.distributions(self.cells) if self.cells else {}
        self._tuned: dict[str, list[list[Any]]] = {}  # per cell: its tuning trials, as `queue` last saw them
        self._static = [Queued(dict(p), {}) for p in spec.enqueue]
        if spec.sampler == "grid":
            self._static += [Queued(c, {}) for c in spec.grid_cells()]

    @property
    def pops_only(self) -> bool:
        """Trials come from the queue only (a grid, a design), never from the sampler."""
        return self.spec.sampler in ("grid", "design")

    def models_of(self, params: dict[str, Any]) -> int:
        """How many models a queued trial with these params trains."""
        if self.spec.design is not None and params.get(designs.PHASE) == designs.CONFIRM:
            return self.spec.design.confirm_seeds
        return self.spec.seeds

    def queue(self, trials: list[FrozenTrial]) -> list[Queued]:
        """Every configuration the queue must hold now, given the study's trials."""
        if self.spec.design is None:
            return self._static
        tried: dict[str, list[designs.Tried]] = {}
        retried = superseded(trials)
        for t in trials:
            cell = designs.key_of(t.system_attrs.get(FIXED_PARAMS) or t.params, self.by_name)
            if cell is None or t.params.get(designs.PHASE, (t.system_attrs.get(FIXED_PARAMS) or {}).get(
                    designs.PHASE)) != designs.TUNE or not is_done(t, retried):
                continue
            mses = (t.user_attrs.get("seeds") or {}).get("test_mse") or []
            threshold = self.spec.success_threshold
            tried.setdefault(cell.name, []).append(designs.Tried(
                lr=float(t.params["lr"]), successes=sum(m is not None and m < threshold for m in mses),
                value=t.value if t.state == TrialState.COMPLETE and t.value is not None else math.inf,
                number=t.number))
        out = []
        for cell in self.cells:
            if not cell.tuned:
                out.append(Queued(cell.params(designs.CONFIRM, cell.lrs[0] if cell.lrs else None), {}))
                continue
            out += [Queued(cell.params(designs.TUNE, lr), {}) for lr in cell.lrs]
            done = {t.lr: t for t in tried.get(cell.name, [])}
            if all(lr in done for lr in cell.lrs):
                best = designs.choose(done.values())
                summary = [[t.lr, t.successes, t.value if math.isfinite(t.value) else None, t.number]
                           for t in sorted(done.values(), key=lambda t: t.lr)]
                self._tuned[cell.name] = summary
                out.append(Queued(cell.params(designs.CONFIRM, best.lr), {}))
        return out

    def work(self, trial: optuna.Trial, fixed: dict[str, Any]) -> Work:
        """The config, seeds and attributes of a claimed trial (recording its params in Optuna);
        `fixed` are the params it was queued with (empty for a sampled trial)."""
        spec = self.spec
        if spec.design is None:
            config = suggest(trial, spec.space, spec.fixed)
            return Work(config, [model_seed(self.base_seed, trial.number, s) for s in range(spec.seeds)], {})
        for name, value in fixed.items():
            dist = self.distributions[name]
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                trial.suggest_categorical(name, list(dist.choices))
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        cell = designs.key_of(fixed, self.by_name)
        if cell is None:
            raise ValueError(f"trial {trial.number} has params {fixed} that are no cell of this design")
        phase, lr = fixed[designs.PHASE], fixed.get("lr")
        n = spec.design.confirm_seeds if phase == designs.CONFIRM else spec.seeds
        seeds = [designs.seed(self.base_seed, cell, phase, lr, i) for i in range(n)]
        attrs: dict[str, Any] = {CELL: {"label": cell.label, "control": cell.control, "ladder": cell.ladder,
                                        "changes": cell.changes, "tuned": cell.tuned}}
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
        n_trials = len(storage.get_all_trials(study_id, deepcopy=False))
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(spec, seed + n_trials + 100_003 * opens))
    if SPACE_HASH not in study.user_attrs:  # new, or its creator died before writing these
        for key, value in study_attrs(spec).items():
            study.set_user_attr(key, value)
    study.set_user_attr(OPENS, opens + 1)
    return study
