"""`make bench`, part 3: second order against R's nnet, side by side, per successful fit.

`measure(quick)` runs, in one process and one thread each (R's nnet is single-threaded; one core
each is the like-for-like comparison, and the one that holds when others share the machine), on
`uniform1000` and on `r50`:
- R's nnet, the question's call (maxit 10000, abstol 1e-8, reltol 1e-9), seeds 1-16 from its own
  init (QUICK: 1-4); without QUICK also from this project's `nnet`-init starts of seeds 0-15
  (the same starting weights as ours, so iterations compare one for one);
- the `nnet` preset (vmmin's BFGS) and the best LM configuration (`BEST`: logistic units,
  standardized inputs; chosen on seeds 100-163 and 1000-1255) on seeds 0-15, through the engine
  (the native kernel where it builds) and, beside it, the torch port (its BFGS not under QUICK).
A fit succeeds when its grid MSE is under 1e-3. Times are CPU seconds (ours: the process's CPU
time around the batch, Python included, the least of `repeats`; R's: user + system time of each
nnet() call), which time-sharing does not inflate; wall times beside them. `bfgs_vs_r` and
`lm_vs_r` are ours over R's per successful fit on uniform1000 (r50's beside them).
`python -m sweeps.tools.bench_second_order [--quick]` prints the JSON.
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

DATASETS = ("uniform1000", "r50")
THRESHOLD = 1e-3
SEEDS = range(16)
# The best second-order configuration found (seeds 100-163: 86% of them at the global fit,
# 97% under 1e-3, ~115 iterations on average).
BEST: dict[str, Any] = {"hidden": 4, "bias": "both", "activation": "sigmoid", "optimizer": "lm", "init": "torch",
                        "scaling": "standardize", "loss": "sum", "steps": 300, "abstol": 1e-8, "reltol": 1e-9}
NNET_CALL = "nnet(x, y, size=4, maxit=10000, linout=TRUE, abstol=1e-8, reltol=1e-9)"


def _summary(mses: list[float], cpu: float, wall: float, iterations: list[int]) -> dict[str, Any]:
    wins = sum(m < THRESHOLD for m in mses)
    return {"fits": len(mses), "successes": wins, "median_test_mse": statistics.median(mses),
            "cpu_seconds": cpu, "wall_seconds": wall, "iterations": sum(iterations),
            "seconds_per_successful_fit": cpu / wins if wins else None,
            "wall_seconds_per_successful_fit": wall / wins if wins else None}


def _ours(values: dict[str, Any], data: str, engine: str, repeats: int) -> dict[str, Any]:
    d = datasets.make(data)
    jobs = [Job(Config(**{**DEFAULTS, **values, "data": data}), s) for s in SEEDS]
    cpus, walls = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        results = fit_batch(jobs, d, torch.device("cpu"), engine=engine)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    out = _summary([r.test_mse for r in results], min(cpus), min(walls), [r.steps for r in results])
    out["evals"], out["fevals"] = sum(r.evals for r in results), sum(r.fevals for r in results)
    return out


def _r(data: str, seeds: range, same_init: bool) -> dict[str, Any] | None:
    try:
        rows = nnet_reference.run([data], seeds, same_init=same_init)
    except nnet_reference.RMissing:
        return None
    return _summary([r["test_mse"] for r in rows], sum(r["cpu_seconds"] for r in rows),
                    sum(r["seconds"] for r in rows), [r["iterations"] for r in rows])


def _ratio(ours: dict[str, Any] | None, ref: dict[str, Any] | None) -> float | None:
    if ours is None or ref is None or not ours["seconds_per_successful_fit"] or not ref["seconds_per_successful_fit"]:
        return None
    return ours["seconds_per_successful_fit"] / ref["seconds_per_successful_fit"]


def measure(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    """The numbers as a JSON-ready dict (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels take torch's thread count
    out: dict[str, Any] = {"threads": 1, "call": NNET_CALL, "best_lm": BEST}
    try:
        fit_batch([Job(Config(**{**DEFAULTS, **PRESETS["nnet"], "data": "r50", "steps": 2}), 0)],
                  datasets.make("r50"), torch.device("cpu"))  # build or load the kernel outside the timings
        for data in DATASETS:
            row: dict[str, Any] = {"r_nnet": _r(data, range(1, 5) if quick else range(1, 17), same_init=False)}
            if not quick:
                row["r_nnet_same_init"] = _r(data, SEEDS, same_init=True)
            row["bfgs"] = _ours(PRESETS["nnet"], data, "auto", repeats)
            row["bfgs_torch"] = None if quick else _ours(PRESETS["nnet"], data, "torch", 1)
            row["lm"] = _ours(BEST, data, "auto", repeats)
            row["lm_torch"] = _ours(BEST, data, "torch", 1)
            for name in ("bfgs", "bfgs_torch", "lm", "lm_torch"):
                if row[name] is not None:
                    row[name]["ratio_vs_r"] = _ratio(row[name], row["r_nnet"])
                    row[name]["ratio_vs_r_same_init"] = _ratio(row[name], row.get("r_nnet_same_init"))
            out[data] = row
    finally:
        torch.set_num_threads(threads)
    out["bfgs_vs_r"] = out["uniform1000"]["bfgs"]["ratio_vs_r"]
    out["lm_vs_r"] = out["uniform1000"]["lm"]["ratio_vs_r"]
    return out


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(so: dict[str, Any]) -> list[str]:
    """Section 3 as text lines."""
    lines = [f"3. Second order vs R's nnet ({so['call']}), one thread each, CPU s per successful fit (< 1e-3)",
             f"   {'':>12} {'path':>14} {'fits':>5} {'ok':>3} {'median MSE':>10} {'s/success':>9} {'vs R':>7}"]
    for data in DATASETS:
        row = so[data]
        for name, label in (("r_nnet", "R nnet"), ("r_nnet_same_init", "R, our init"), ("bfgs", "bfgs"),
                            ("bfgs_torch", "bfgs (torch)"), ("lm", "lm"), ("lm_torch", "lm (torch)")):
            r = row.get(name)
            if r is None:
                continue
            lines.append(f"   {data:>12} {label:>14} {r['fits']:>5} {r['successes']:>3} {r['median_test_mse']:>10.2e} "
                         f"{_fmt(r['seconds_per_successful_fit'], '.4f'):>9} {_fmt(r.get('ratio_vs_r')):>7}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the second-order benchmark as JSON."""
    p = argparse.ArgumentParser(prog="python -m sweeps.tools.bench_second_order", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 R seeds, no same-init R run, no torch BFGS")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
