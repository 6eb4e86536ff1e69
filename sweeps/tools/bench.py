"""`make bench`: the engine and whole sweeps, each against its reference, as ratios in one run.

Every figure is a ratio measured in one run against its reference on the same machine (absolute
times are printed but never judged), the median over repeats where repeated:
1. Engine (`bench_engine`): the native kernel against the torch reference loop on a sample of the
   default designed study's mix (`engine_vs_reference`), its share of the machine's measured
   limit for that work (`limit_share`), and H = 4 / 1000 points / Adam / 2000 steps against the
   naive one-model-at-a-time torch.optim loop (`engine_ratio`).
2. Sweeps (`bench_storage`): the runner on the default designed study and on the TPE search, its
   steady trials/s over the engine's alone on the same rounds (`sweep_vs_engine`, 1.0 = no
   overhead), the share of time in storage and the sampler, the same on PostgreSQL with 4 workers
   when SWEEPS_BENCH_PG_URL names a database, and against the plain Optuna script (`vs_plain`).
3. Second order (`bench_second_order`): bfgs and lm against R's nnet, CPU time per successful fit
   on one thread each (`bfgs_vs_r`, `lm_vs_r`).
Writes the numbers to a JSON file, with the load average before and after. `--quick` (QUICK=1):
smaller sizes, about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..engine import resolve_device
from . import bench_engine, bench_second_order, bench_storage


def _table(result: dict[str, Any]) -> str:
    lines = [f"device {result['device']}, torch {result['torch']}, {result['threads']} threads, python {result['python']}; "
             f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}", ""]
    lines += bench_engine.table(result["engine"])
    lines += ["", "2. Sweeps"] + bench_storage.table(result["sweeps"])
    lines += [""] + bench_second_order.table(result["second_order"])
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines += ["", f"engine_vs_reference {fmt(result['engine_vs_reference'], '.1f')}x, limit_share "
                  f"{fmt(result['limit_share'], '.0%')}, engine_ratio {result['engine_ratio']:.1f}x, "
                  f"sweep_vs_engine {result['sweep_vs_engine']:.2f}, explore_vs_engine {result['explore_vs_engine']:.2f}, "
                  f"vs_plain {result['vs_plain']:.0f}x, bfgs_vs_r {fmt(result['bfgs_vs_r'], '.3f')}, "
                  f"lm_vs_r {fmt(result['lm_vs_r'], '.3f')}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes the JSON."""
    p = argparse.ArgumentParser(prog="python -m sweeps.tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: under a minute on a 2-core CPU")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench.json", help="where to write the numbers (JSON)")
    args = p.parse_args(argv)
    from ..study.storage import quiet_optuna

    quiet_optuna()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    device = resolve_device(args.device)
    import optuna
    import platform

    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "optuna": optuna.__version__,
                              "python": platform.python_version(), "threads": torch.get_num_threads(),
                              "cpus": os.cpu_count(), "quick": args.quick, "load_before": os.getloadavg(),
                              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    result["engine"] = bench_engine.measure(device, args.quick)
    result["sweeps"] = bench_storage.measure(args.quick)
    result["second_order"] = bench_second_order.measure(args.quick)
    result["load_after"] = os.getloadavg()
    for key in ("engine_vs_reference", "limit_share", "engine_ratio"):
        result[key] = result["engine"].get(key)
    result["sweep_vs_engine"] = result["sweeps"]["designed"]["vs_engine"]
    result["explore_vs_engine"] = result["sweeps"]["explore"]["vs_engine"]
    result["vs_plain"] = result["sweeps"]["plain"]["vs_plain_steady"]
    result["bfgs_vs_r"] = result["second_order"]["bfgs_vs_r"]
    result["lm_vs_r"] = result["second_order"]["lm_vs_r"]
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(_table(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
