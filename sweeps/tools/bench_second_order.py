"""Second-order benchmark: accuracy and time per successful fit against R's nnet, side by side.

The issue's targets, on H = 4 with both biases and the 1000 uniform points: the best second-order
configuration reaches a median grid MSE <= 3e-7 over 16 seeds with >= 90% of them under 1e-3, at
no more than a tenth of R nnet's time per successful fit on the same machine.

`measure(quick)` runs, in one process: our best configuration (LM, logistic units, standardized
inputs; chosen on seeds 100-163 and 1000-1255, measured here on seeds 0-15), this project's `nnet`
preset (the question's call, vmmin BFGS) on the same seeds, and R's own nnet on the same points
(seeds 1-16, nnet's own init) when Rscript is there. Our wall times are the best of `repeats`
runs on one thread (the machine may be shared); R's are its per-call times. `quick` uses 4 R seeds
and skips the BFGS preset and the large batch. `python -m sweeps.tools.bench_second_order [--quick]`
prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from ..config import DEFAULTS, PRESETS, Config
from ..engine import data as datasets
from ..engine.fit import fit_batch
from ..engine.jobs import Job
from . import nnet_reference

DATA = "uniform1000"
THRESHOLD = 1e-3
TARGET_MSE = 3e-7
TARGET_SHARE = 0.9
TARGET_RATIO = 0.1
# The best second-order configuration found (seeds 100-163: 86% of them at the global fit,
# 97% under 1e-3, ~115 iterations on average).
BEST: dict[str, Any] = {"hidden": 4, "bias": "both", "activation": "sigmoid", "optimizer": "lm", "init": "torch",
                        "scaling": "standardize", "loss": "sum", "steps": 300, "abstol": 1e-8, "reltol": 1e-9}


def _config(values: dict[str, Any]) -> Config:
    return Config(**{**DEFAULTS, **values, "data": DATA})


def _ours(values: dict[str, Any], seeds: range, repeats: int) -> dict[str, Any]:
    """Train one batch of `seeds` models `repeats` times; accuracy of the last, best wall time."""
    data = datasets.make(DATA)
    jobs = [Job(_config(values), s) for s in seeds]
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = fit_batch(jobs, data, torch.device("cpu"))
        walls.append(time.perf_counter() - t0)
    return _summary([r.test_mse for r in results], min(walls), [r.steps for r in results])


def _summary(mses: list[float], seconds: float, steps: list[int]) -> dict[str, Any]:
    wins = sum(m < THRESHOLD for m in mses)
    return {
        "seeds": len(mses),
        "median_test_mse": statistics.median(mses),
        "share_under_1e-3": wins / len(mses),
        "share_at_3e-7": sum(m <= TARGET_MSE for m in mses) / len(mses),
        "seconds": seconds,
        "seconds_per_fit": seconds / len(mses),
        "seconds_per_successful_fit": seconds / wins if wins else None,
        "median_iterations": statistics.median(steps),
    }


def _r(seeds: range) -> dict[str, Any] | None:
    try:
        rows = nnet_reference.run([DATA], seeds)
    except nnet_reference.RMissing:
        return None
    out = _summary([r["test_mse"] for r in rows], sum(r["seconds"] for r in rows), [r["iterations"] for r in rows])
    out["call"] = "nnet(x, y, size=4, maxit=10000, linout=TRUE, abstol=1e-8, reltol=1e-9)"
    return out


def measure(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    """The benchmark numbers, as a JSON-ready dict (see the module docstring).

    Ours runs on one torch thread, as R's nnet does: one core each is the like-for-like
    comparison, and it is also the one that holds when other work shares the machine.
    """
    seeds = range(16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, Any] = {"data": DATA, "torch_threads": 1, "best_config": BEST}
        out["lm_best"] = _ours(BEST, seeds, repeats)
        if not quick:
            out["lm_best_batch256"] = _ours(BEST, range(256), 1)
            out["nnet_preset_bfgs"] = _ours(PRESETS["nnet"], seeds, 1)
    finally:
        torch.set_num_threads(threads)
    out["r_nnet"] = _r(range(1, 5) if quick else range(1, 17))
    best, r = out["lm_best"], out["r_nnet"]
    ratio = None
    if r is not None and r["seconds_per_successful_fit"] and best["seconds_per_successful_fit"]:
        ratio = best["seconds_per_successful_fit"] / r["seconds_per_successful_fit"]
    out["time_ratio_vs_r"] = ratio
    out["targets"] = {
        "median_mse_le_3e-7": best["median_test_mse"] <= TARGET_MSE,
        "share_under_1e-3_ge_90%": best["share_under_1e-3"] >= TARGET_SHARE,
        "time_le_tenth_of_r": None if ratio is None else ratio <= TARGET_RATIO,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the second-order benchmark as JSON."""
    p = argparse.ArgumentParser(prog="python -m sweeps.tools.bench_second_order", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 R seeds, no BFGS preset, no large batch")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
