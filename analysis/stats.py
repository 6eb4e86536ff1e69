"""Cell statistics: trials grouped by configuration keys, success pooled over seeds with Wilson intervals.

A *cell* is a group of finished trials sharing the values of some keys (e.g. bias × activation).
Its success rate pools seeds: fitted seeds / all seeds of its trials, with a 95 % Wilson score
interval (sound at 0 % and 100 % and for few seeds, unlike the normal approximation). Numeric keys
are binned so that a TPE study's scattered values still form cells: hidden sizes by powers of two,
learning rates by decades.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from sweeps import config as vocab

Z95 = 1.959963984540054
THIN = 3  # a cell with fewer trials than this supports no claim

HIDDEN_BIN = "hidden size"
LR_BIN = "lr decade"

_KNOWN_ORDERS: dict[str, Sequence[object]] = {
    "bias": vocab.BIASES, "activation": vocab.ACTIVATIONS, "optimizer": vocab.OPTIMIZERS,
    "data": vocab.DATASETS, "loss": vocab.LOSSES, "init": vocab.INITS, "scaling": vocab.SCALINGS,
    "precision": vocab.PRECISIONS,
}


def best_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Trials best first: lowest value (median test MSE), then highest success rate, then number."""
    return frame.sort_values(["value", "success_rate", "number"], ascending=[True, False, True])


def wilson(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval (low, high) for k successes in n trials; NaN where n == 0."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At k = 0 and k = n the bounds are exactly 0 and 1; rounding would leave 1e-17 residues.
    low = np.where(n > 0, np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    high = np.where(n > 0, np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return low, high


def order(key: str, values: Sequence[object], space: dict[str, dict] | None = None) -> list[object]:
    """Values of `key` in reading order: the spec's choices, the vocabulary's, then the rest sorted."""
    present = list(dict.fromkeys(v for v in values if v is not None and not _isnan(v)))
    known = list((space or {}).get(key, {}).get("choices") or []) + list(_KNOWN_ORDERS.get(key, ()))
    ranked = [v for v in dict.fromkeys(known) if v in present]
    rest = [v for v in present if v not in ranked]
    try:
        rest.sort()  # type: ignore[type-var]
    except TypeError:
        rest.sort(key=str)
    return ranked + rest


def _isnan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _hidden_bin_hi(h: float) -> int:
    # Bins (2^(k-1), 2^k]: 1, 2, 3-4, 5-8, 9-16, ...
    return 1 if h <= 1 else 2 ** math.ceil(math.log2(h))


def add_bins(finished: pd.DataFrame) -> pd.DataFrame:
    """A copy with ordered categorical columns for hidden-size bins and learning-rate decades.

    A bin is labelled by the range of values actually seen in it (a grid's 4 is "4", not "3-4").
    """
    out = finished.copy()
    if "hidden" in out and out["hidden"].notna().any():
        out[HIDDEN_BIN] = _binned(out["hidden"].astype(float), _hidden_bin_hi, _int_label)
    if "lr" in out and out["lr"].notna().any():
        out[LR_BIN] = _binned(out["lr"].astype(float), lambda v: math.floor(math.log10(v)) if v > 0 else -99,
                              _lr_label)
    return out


def _int_label(lo: float, hi: float) -> str:
    return f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}"


def _lr_label(lo: float, hi: float) -> str:
    decade = math.floor(math.log10(lo))
    return f"1e{decade}..1e{decade + 1}"


def _binned(values: pd.Series, key: Callable[[float], int], label: Callable[[float, float], str]) -> pd.Series:
    keys = values.map(lambda v: key(v) if pd.notna(v) else None)
    labels: dict[object, str] = {}
    for k, grp in values.groupby(keys):
        labels[k] = label(grp.min(), grp.max())
    ordered = [labels[k] for k in sorted(labels)]
    return pd.Series(pd.Categorical(keys.map(labels), categories=ordered, ordered=True), index=values.index)


def cells(finished: pd.DataFrame, by: list[str], threshold: float,
          space: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per observed combination of `by`, in reading order.

    Columns: trials, fitting_trials (median MSE under the threshold), seeds, successes,
    success_rate, ci_low, ci_high (Wilson 95 %, seeds pooled), diverged_share (of seeds),
    median_mse and best_mse (over trial values), best_trial and its own success rate, thin.
    """
    frame = finished.copy()
    for key in by:
        if not isinstance(frame[key].dtype, pd.CategoricalDtype):
            frame[key] = pd.Categorical(frame[key], categories=order(key, frame[key].tolist(), space), ordered=True)
    frame["_fits"] = frame["value"] < threshold
    grouped = frame.groupby(by, observed=True, sort=True)
    out = grouped.agg(trials=("number", "size"), fitting_trials=("_fits", "sum"), seeds=("n_seeds", "sum"),
                      successes=("n_success", "sum"), diverged=("n_diverged", "sum"),
                      median_mse=("value", "median"), best_mse=("value", "min"))
    # The best trial of each cell: lowest value, then highest success rate.
    best = best_first(frame).groupby(by, observed=True, sort=True).head(1).set_index(by)
    out["best_trial"] = best["number"].reindex(out.index)
    out["best_trial_success"] = best["success_rate"].reindex(out.index)
    out["success_rate"] = out["successes"] / out["seeds"].where(out["seeds"] > 0)
    out["ci_low"], out["ci_high"] = wilson(out["successes"].to_numpy(), out["seeds"].to_numpy())
    out["diverged_share"] = out["diverged"] / out["seeds"].where(out["seeds"] > 0)
    out["thin"] = out["trials"] < THIN
    out = out.reset_index()
    for key in by:
        out[key] = out[key].astype(object)
    cols = [*by, "trials", "fitting_trials", "seeds", "successes", "success_rate", "ci_low", "ci_high",
            "diverged", "diverged_share", "median_mse", "best_mse", "best_trial", "best_trial_success", "thin"]
    return out[cols]


def pooled(finished: pd.DataFrame, mask: pd.Series) -> dict[str, float]:
    """Pooled success over the trials selected by `mask`: trials, seeds, rate, ci_low, ci_high."""
    part = finished[mask]
    k, n = float(part["n_success"].sum()), float(part["n_seeds"].sum())
    low, high = wilson(k, n)
    return {"trials": float(len(part)), "seeds": n, "successes": k,
            "rate": k / n if n else math.nan, "ci_low": float(low), "ci_high": float(high)}
