"""What a spec asks of its study: the sampler, the global budget, the queued cells, each model's
seed, and opening (creating or loading) the study with its space checked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from .record import OPENS, SPACE_HASH, study_attrs
from .spec import Spec


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
    """The study's global trial budget: --trials, else the spec's (a grid's is at most its cells)."""
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
