"""`make bench`: throughput of the batched engine and of whole sweeps, each against its naive reference.

Every figure is a ratio measured in one run against its reference on the same machine (absolute
times are printed but never judged), the median over repeats where repeated:
1. Engine: models/s training the same 1-H-1 configuration (tanh, Adam lr 0.01, sum loss, 1000
   uniform points) one model at a time with `torch.optim` (the loop every tutorial writes) vs the
   batched engine at several batch sizes, eager and compiled.
2. End to end: trials/s of `quick`-sized sweeps into SQLite with `--batch-size 1` vs the default,
   and the share of wall time spent in storage, in the sampler and in training.
3. Second order (when present): time per successful fit of `lm`/`bfgs` vs Adam (and R's nnet).
Writes the numbers to a JSON file (`engine_ratio`, `end_to_end_ratio`, …).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULTS, Config
from ..engine import Job, default_batch_size, fit, resolve_device


def _config(hidden: int, steps: int) -> Config:
    return Config(**{**DEFAULTS, "hidden": hidden, "bias": "both", "activation": "tanh", "optimizer": "adam",
                     "lr": 0.01, "data": "uniform1000", "loss": "sum", "steps": steps, "precision": "float32"})


def naive_models_per_s(hidden: int, steps: int, models: int, device: torch.device) -> float:
    """The reference: nn.Linear layers, autograd and torch.optim.Adam, one model after another."""
    from ..engine import data as datasets

    ds = datasets.make("uniform1000")
    x, y = ds.x.float()[:, None].to(device), ds.y.float()[:, None].to(device)
    start = time.perf_counter()
    for seed in range(models):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).sum()
            loss.backward()
            opt.step()
        loss.detach().item()  # wait for the device
    return models / (time.perf_counter() - start)


def batched_models_per_s(hidden: int, steps: int, batch: int, device: torch.device, compile: bool) -> float:
    """Models/s of the batched engine on `batch` identical configurations."""
    jobs = [Job(_config(hidden, steps), seed) for seed in range(batch)]
    start = time.perf_counter()
    fit(jobs, device=device, batch_size=batch, compile=compile)
    return batch / (time.perf_counter() - start)


def warm_compile(hidden: int, device: torch.device) -> float:
    """Seconds to compile the fused step (once per activation; cached on disk afterwards)."""
    start = time.perf_counter()
    fit([Job(_config(hidden, 2), 0), Job(_config(hidden, 2), 1)], device=device, batch_size=2, compile=True)
    return time.perf_counter() - start


def engine(device: torch.device, quick: bool) -> dict[str, Any]:
    """Section 1: the engine against the naive loop, eager and compiled, at several batch sizes."""
    steps = 300 if quick else 2000
    repeats = 1 if quick else 3
    sizes = [64, 256] if quick else [64, 256, 1024]
    if device.type == "cuda":
        sizes = [256, 4096, 16384] if quick else [256, 4096, 16384, 65536]
    naive_models = 2
    compile_s = warm_compile(4, device)
    headline = default_batch_size(device)
    rows = []
    for hidden in (4, 16):
        reps_h = repeats if hidden == 4 else 1
        naive = statistics.median(naive_models_per_s(hidden, steps, naive_models, device) for _ in range(reps_h))
        for compile in (False, True):
            # H = 16 is measured at the default batch size only: it keeps `make bench` to minutes.
            for batch in (sizes if hidden == 4 else [headline]):
                # The default batch size is the headline and is repeated; the others are measured once.
                reps = reps_h if batch == headline else 1
                rate = statistics.median(batched_models_per_s(hidden, steps, batch, device, compile) for _ in range(reps))
                rows.append({"hidden": hidden, "batch": batch, "compiled": compile, "models_per_s": rate,
                             "naive_models_per_s": naive, "ratio": rate / naive})
    head = {c: next(r for r in rows if r["hidden"] == 4 and r["batch"] == headline and r["compiled"] == c)
            for c in (False, True)}
    return {"steps": steps, "repeats": repeats, "compile_s": compile_s, "rows": rows, "headline_batch": headline,
            "h4_eager": head[False], "h4_compiled": head[True]}


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


def second_order(quick: bool) -> dict[str, Any] | None:
    """Section 3: second-order methods against R's nnet (None without that module)."""
    try:
        from . import bench_second_order
    except ImportError:
        return None
    return bench_second_order.measure(quick)


def _table(result: dict[str, Any]) -> str:
    lines = [f"device {result['device']}, torch {result['torch']}, {result['threads']} threads, "
             f"python {result['python']}", "",
             f"1. Engine: tanh, Adam, {result['engine']['steps']} steps, 1000 points "
             f"(median of {result['engine']['repeats']} runs at the default batch size and for the naive loop; compile once: "
             f"{result['engine']['compile_s']:.1f} s)",
             f"   {'H':>3} {'batch':>6} {'step':>8} {'models/s':>10} {'naive/s':>9} {'ratio':>8}"]
    for r in result["engine"]["rows"]:
        lines.append(f"   {r['hidden']:>3} {r['batch']:>6} {'compiled' if r['compiled'] else 'eager':>8} "
                     f"{r['models_per_s']:>10.1f} {r['naive_models_per_s']:>9.2f} {r['ratio']:>7.1f}x")
    e = result["end_to_end"]
    lines += ["", f"2. End to end: spec quick, {e['trials']} trials x {e['seeds']} seeds x {e['steps']} steps, SQLite"]
    for label in ("one_at_a_time", "batched"):
        r = e[label]
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        lines.append(f"   batch {r['batch_size']:>5}: {r['trials_per_s']:7.2f} trials/s, {r['models_per_s']:7.1f} models/s "
                     f"({r['wall_s']:.1f} s; {share})")
    lines.append(f"   ratio {e['ratio']:.1f}x")
    so = result.get("second_order")
    if so:
        lines += ["", "3. Second order", "   " + json.dumps(so, indent=None, default=str)[:2000]]
    lines += ["", f"engine_ratio {result['engine_ratio']:.1f}x (H=4, batch {result['engine']['headline_batch']}, compiled; "
                  f"eager {result['engine_ratio_eager']:.1f}x), end_to_end_ratio {result['end_to_end_ratio']:.1f}x"]
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
                              "cpus": os.cpu_count(), "quick": args.quick,
                              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    result["engine"] = engine(device, args.quick)
    result["end_to_end"] = end_to_end(device, args.quick)
    result["second_order"] = second_order(args.quick)
    # The headline: H = 4 at the default batch size, compiled (the fastest path; eager beside it).
    result["engine_ratio"] = result["engine"]["h4_compiled"]["ratio"]
    result["engine_ratio_eager"] = result["engine"]["h4_eager"]["ratio"]
    result["end_to_end_ratio"] = result["end_to_end"]["ratio"]
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(_table(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
