"""`make bench`: the engine and whole sweeps, each against its reference, as ratios in one run.

Every figure is a ratio measured in one run against its reference on the same machine (absolute
times are printed but never judged), the median over repeats where repeated:
1. Engine (`bench_engine`): the native kernel against the torch reference loop on a sample of the
   default designed study's mix (`engine_vs_reference`), its share of the machine's measured
   limit for that work (`limit_share`), and H = 4 / 1000 points / Adam / 2000 steps against the
   naive one-model-at-a-time torch.optim loop (`engine_ratio`).
2. End to end: trials/s of `quick`-sized sweeps into SQLite with `--batch-size 1` vs the default,
   and the share of wall time spent in storage, in the sampler and in training.
3. Second order (`bench_second_order`): bfgs and lm against R's nnet, CPU time per successful fit
   on one thread each (`bfgs_vs_r`, `lm_vs_r`).
Writes the numbers to a JSON file, with the load average before and after. `--quick` (QUICK=1):
smaller sizes, about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..engine import default_batch_size, resolve_device
from . import bench_engine, bench_second_order


class _Clock:
    """Exclusive wall time per category; nested categories take their time out of the outer one."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[Any]] = []

    @contextlib.contextmanager
    def on(self, category: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.totals[outer[0]] = self.totals.get(outer[0], 0.0) + now - outer[1]
        self._stack.append([category, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            cat, since = self._stack.pop()
            self.totals[cat] = self.totals.get(cat, 0.0) + end - since
            if self._stack:
                self._stack[-1][1] = end

    def wrap(self, owner: Any, name: str, category: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.on(category):
                return original(*args, **kwargs)

        setattr(owner, name, timed)


@contextlib.contextmanager
def _instrumented(clock: _Clock) -> Iterator[None]:
    """Time the storage back end, the samplers and the engine inside `runner.run`."""
    import optuna
    from optuna.storages import RDBStorage

    from ..study import rdb, runner

    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, category: str) -> None:
        saved.append((owner, name, getattr(owner, name)))
        clock.wrap(owner, name, category)

    for name in ("create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_user_attr",
                 "set_trial_system_attr", "get_trial", "get_all_trials", "record_heartbeat",
                 "get_study_id_from_name", "get_all_studies", "get_trial_id_from_study_id_trial_number"):
        if hasattr(RDBStorage, name):
            wrap(RDBStorage, name, "storage")
    for name in ("write_user_attrs", "stale_trial_ids", "orphan_trial_ids"):
        wrap(rdb, name, "storage")
    for cls in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        for name in ("sample_relative", "sample_independent", "infer_relative_search_space", "before_trial", "after_trial"):
            if name in vars(cls):
                wrap(cls, name, "sampler")
    wrap(runner, "fit", "training")
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def end_to_end(device: torch.device, quick: bool) -> dict[str, Any]:
    """Section 2: whole sweeps into SQLite, one model at a time against batched, with time shares."""
    from ..study import spec as specs
    from ..study.runner import Options, run

    spec = specs.load("quick")
    trials = 16 if quick else 48
    out: dict[str, Any] = {"spec": "quick", "trials": trials, "seeds": spec.seeds, "steps": spec.fixed["steps"]}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch in (("one_at_a_time", 1), ("batched", None)):
            clock = _Clock()
            url = f"sqlite:///{Path(tmp) / (label + '.db')}"
            start = time.perf_counter()
            with _instrumented(clock):
                summary = run(spec, Options(storage=url, device=str(device.type), batch_size=batch, trials=trials,
                                            progress=False))
            wall = time.perf_counter() - start
            out[label] = {"batch_size": batch or default_batch_size(device), "wall_s": wall,
                          "trials_per_s": summary.trials_run / wall, "models_per_s": summary.models / wall,
                          "share": {k: v / wall for k, v in sorted(clock.totals.items())}}
    out["ratio"] = out["batched"]["trials_per_s"] / out["one_at_a_time"]["trials_per_s"]
    return out


def _table(result: dict[str, Any]) -> str:
    lines = [f"device {result['device']}, torch {result['torch']}, {result['threads']} threads, python {result['python']}; "
             f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}", ""]
    lines += bench_engine.table(result["engine"])
    e = result["end_to_end"]
    lines += ["", f"2. End to end: spec quick, {e['trials']} trials x {e['seeds']} seeds x {e['steps']} steps, SQLite"]
    for label in ("one_at_a_time", "batched"):
        r = e[label]
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        lines.append(f"   batch {r['batch_size']:>5}: {r['trials_per_s']:7.2f} trials/s, {r['models_per_s']:7.1f} models/s "
                     f"({r['wall_s']:.1f} s; {share})")
    lines.append(f"   ratio {e['ratio']:.1f}x")
    lines += [""] + bench_second_order.table(result["second_order"])
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines += ["", f"engine_vs_reference {fmt(result['engine_vs_reference'], '.1f')}x, limit_share "
                  f"{fmt(result['limit_share'], '.0%')}, engine_ratio {result['engine_ratio']:.1f}x, "
                  f"end_to_end_ratio {result['end_to_end_ratio']:.1f}x, bfgs_vs_r {fmt(result['bfgs_vs_r'], '.3f')}, "
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
    result["end_to_end"] = end_to_end(device, args.quick)
    result["second_order"] = bench_second_order.measure(args.quick)
    result["load_after"] = os.getloadavg()
    for key in ("engine_vs_reference", "limit_share", "engine_ratio"):
        result[key] = result["engine"].get(key)
    result["end_to_end_ratio"] = result["end_to_end"]["ratio"]
    result["bfgs_vs_r"] = result["second_order"]["bfgs_vs_r"]
    result["lm_vs_r"] = result["second_order"]["lm_vs_r"]
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(_table(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
