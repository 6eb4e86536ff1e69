"""Turn one trial's per-seed training results into its Optuna value and user attributes.

A trial's value is the median over seeds of the test MSE (diverged seeds count as +inf, so a trial
where most seeds diverge is worse than any that fit). Its attributes hold what the report and the
dashboard need: per-seed numbers, the fitted parameters (to redraw curves without retraining), the
median seed's learning curve and how, where and with what it ran.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .space import Config
from .train import Result


@dataclass(frozen=True)
class TrialOutcome:
    """value is None when every seed diverged (the trial is then told FAIL with `reason`)."""

    value: float | None
    reason: str | None
    attrs: dict[str, Any]


def versions() -> dict[str, str]:
    import optuna
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__}


def summarise(config: Config, seeds: Sequence[int], results: Sequence[Result], *, threshold: float,
              shift: float, scale: float, run: dict[str, Any]) -> TrialOutcome:
    """The value and attributes of one trial from its models' results (in seed order)."""
    mses = [r.test_mse for r in results]
    n = len(results)
    diverged = sum(r.diverged for r in results)
    successes = sum(m < threshold for m in mses)
    finite = sorted((m, i) for i, m in enumerate(mses) if math.isfinite(m))
    median_seed = finite[(len(finite) - 1) // 2][1] if finite else None
    attrs: dict[str, Any] = {
        "success_rate": successes / n,
        "diverged": diverged,
        "n_params": config.n_params(),
        "config": config.as_dict(),
        "seeds": {
            "seed": list(seeds),
            "test_mse": mses,
            "train_mse": [r.train_mse for r in results],
            "steps": [r.steps for r in results],
            "diverged_at": [r.diverged_at for r in results],
        },
        "fit": {
            "hidden": config.hidden,
            "activation": config.activation,
            "shift": shift,
            "scale": scale,
            "params": [list(r.params) if r.params is not None else None for r in results],
            "median_seed": median_seed,
            "curve": [list(p) for p in results[median_seed].curve] if median_seed is not None else [],
        },
        "run": run,
    }
    if diverged == n:
        return TrialOutcome(None, f"all {n} seeds diverged", attrs)
    return TrialOutcome(statistics.median(mses), None, attrs)


def host() -> str:
    return platform.node() or sys.platform
