"""Estimates that say what they pool: one configuration's seeds, or cells as the units.

- `one_cell(k, n)`: the seeds of one configuration are one binomial sample: the Wilson 95% interval.
- `over_cells(k, n)`: a rate over several cells (say, every cell with a hidden bias) is the mean of
  the cells' own rates, each cell one unit. Its 95% interval is a two-stage bootstrap: resample the
  cells, then each resampled cell's seeds (binomial at its observed rate). Cells that differ widen
  it; it is never narrower than the Wilson interval of the pooled seeds, which is what it would be
  if the cells did not differ, so it also covers the seeds' own sampling when every cell agrees
  (e.g. all at 0%).
- `paired(ka, na, kb, nb)`: the mean difference of matched cells' rates (b minus a), bootstrapped
  the same way over the pairs, never narrower than Newcombe's interval for the difference of the
  pooled proportions.

Bootstraps draw from a fixed seed: a report is the same every time it is built from the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import Z95, wilson

REPS = 4000
SEED = 20261202
ONE_CONFIGURATION = "seeds of one configuration"
CELLS = "cells as units"


@dataclass(frozen=True)
class Estimate:
    """A rate (or a difference of rates) with its 95% interval and what it pools."""

    value: float
    low: float
    high: float
    unit: str  # ONE_CONFIGURATION or CELLS
    cells: int
    seeds: int
    fits: int  # seeds that fit (for a difference: of the second group)

    def percent(self) -> str:
        """'62% [51, 72]' (a difference: '+40 points [31, 49]')."""
        if math.isnan(self.value):
            return "–"
        if self.unit.startswith("difference"):
            return f"{_pts(self.value)} points [{_pts(self.low)}, {_pts(self.high)}]"
        return f"{_pc(self.value)}% [{_pc(self.low)}, {_pc(self.high)}]"

    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (a difference that the data shows)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int | str]:
        return {"value": self.value, "low": self.low, "high": self.high, "unit": self.unit, "cells": self.cells,
                "seeds": self.seeds, "fits": self.fits}


def _pc(x: float) -> str:
    """A share in percent: whole numbers, one decimal between 0 and 1% (0.4% is not 0%)."""
    v = 100 * x
    return f"{v:.1f}" if 0 < v < 1 else f"{v:.0f}"


def _pts(x: float) -> str:
    v = 100 * x
    return f"{v:+.1f}" if 0 < abs(v) < 1 else f"{v:+.0f}"


def one_cell(k: int, n: int) -> Estimate:
    """The success rate of one configuration's seeds, Wilson 95%."""
    low, high = wilson(k, n)
    return Estimate(k / n if n else math.nan, float(low), float(high), ONE_CONFIGURATION, 1, int(n), int(k))


def _boot_rates(k: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[REPS] means of resampled cells' resampled rates."""
    idx = rng.integers(0, len(k), size=(REPS, len(k)))
    draws = rng.binomial(n[idx].astype(np.int64), k[idx] / n[idx])
    return (draws / n[idx]).mean(axis=1)


def over_cells(k: np.ndarray | list[int], n: np.ndarray | list[int]) -> Estimate:
    """The mean success rate over cells (each a unit), with its 95% two-stage bootstrap interval."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    keep = n > 0
    k, n = k[keep], n[keep]
    if len(k) == 0:
        return Estimate(math.nan, math.nan, math.nan, CELLS, 0, 0, 0)
    mean = float((k / n).mean())
    boot = _boot_rates(k, n, np.random.default_rng(SEED))
    w_low, w_high = wilson(k.sum(), n.sum())
    low = min(float(np.quantile(boot, 0.025)), float(w_low))
    high = max(float(np.quantile(boot, 0.975)), float(w_high))
    return Estimate(mean, low, high, CELLS, len(k), int(n.sum()), int(k.sum()))


def _newcombe(k1: float, n1: float, k2: float, n2: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p2 - p1 (two independent proportions)."""
    l1, u1 = (float(v) for v in wilson(k1, n1))
    l2, u2 = (float(v) for v in wilson(k2, n2))
    p1, p2 = k1 / n1, k2 / n2
    d = p2 - p1
    low = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return low, high


def paired(ka: list[int], na: list[int], kb: list[int], nb: list[int]) -> Estimate:
    """The mean difference of matched cells' success rates (b minus a), pairs as the units."""
    ka_, na_, kb_, nb_ = (np.asarray(v, dtype=float) for v in (ka, na, kb, nb))
    keep = (na_ > 0) & (nb_ > 0)
    ka_, na_, kb_, nb_ = ka_[keep], na_[keep], kb_[keep], nb_[keep]
    m = len(ka_)
    if m == 0:
        return Estimate(math.nan, math.nan, math.nan, f"difference, {CELLS}", 0, 0, 0)
    diff = float((kb_ / nb_ - ka_ / na_).mean())
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, m, size=(REPS, m))
    a = rng.binomial(na_[idx].astype(np.int64), ka_[idx] / na_[idx]) / na_[idx]
    b = rng.binomial(nb_[idx].astype(np.int64), kb_[idx] / nb_[idx]) / nb_[idx]
    boot = (b - a).mean(axis=1)
    n_low, n_high = _newcombe(ka_.sum(), na_.sum(), kb_.sum(), nb_.sum())
    low = min(float(np.quantile(boot, 0.025)), n_low)
    high = max(float(np.quantile(boot, 0.975)), n_high)
    return Estimate(diff, max(low, -1.0), min(high, 1.0), f"difference, {CELLS} (matched pairs)", m,
                    int(na_.sum() + nb_.sum()), int(kb_.sum()))


def bonferroni_z(m: int, alpha: float = 0.05) -> float:
    """The z of a two-sided interval at level 1 - alpha/m (the best of m cells must clear it)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha / (2.0 * max(m, 1))) if m > 1 else Z95
