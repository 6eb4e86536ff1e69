"""What storage and the sampler cost in a real sweep, the sweep against its engine, and against the
plain Optuna script: ratios measured in one run on this machine.

Each sweep is `runner.run` in worker processes (one torch thread each, the real engine) on a fresh
study, with the runner's calls timed by category (exclusive wall time, main thread only):
`storage` (every `rdb` read and write, the heartbeat thread's aside), `lock` (waiting for the
study's lock), `sampler` (the mirror's asks and syncs, TPE's fits), `bookkeeping` (the index,
counting, the plan's queue, `summarise`), `training` (`engine.fit`), `idle` (waiting for other
workers' last trials: not overhead), and `other` (the rest of the wall time: opening the storage
and study, the run's own Python). Sweeps:
1. `designed`: the default designed study's own work (`default.toml`, its cells, lr grid, seeds
   and 10000 steps), the first trials of its queue, SQLite, one worker; the first round queues the
   whole design (`enqueue_s`, once per study).
2. `explore`: the TPE search (`explore.toml`), one Parzen fit per 8 asks, SQLite, one worker.
3. With SWEEPS_BENCH_PG_URL (a database the bench may fill with studies named `bench-*`): both on
   PostgreSQL with 4 workers; shares of the workers' summed busy time (their idle waits left out).
4. `plain`: the plain Optuna script (`study.optimize`, one trial at a time; each seed an nn.Module
   trained with torch.optim, one model after another, 10000 steps; attributes set one by one;
   SQLite) on trials of the default design restricted to its first-order optimizers, against the
   runner on that design: the same configurations and seeds (an evenly spaced subsample of the
   runner's trials: the plain script is too slow for all of them).
Each sweep reports its `run` (every round, and opening the storage and study) and its `steady`
state (from its second round on: a long sweep's share; the first round of a new designed study
queues all of its trials, `enqueue_s`, and each worker reads every trial once when it starts).
For 1 and 2, `engine` replays the sweep's rounds (same jobs, same batches) through `engine.fit`
alone: `vs_engine` is the steady sweep's trials/s over the engine's on the same (steady) rounds,
1.0 meaning no overhead (the first rounds train other cells, so all rounds would not compare).

    python -m sweeps.tools.bench_storage [--quick] [--out bench_storage.json]

One module over 300 lines on purpose: the worker processes re-enter it (`--worker`), and the
plain Optuna script it is measured against is kept beside the measurement, not in a module that
anything could import as if it were the project's way to train.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "sweeps" / "specs"
ENV_PG = "SWEEPS_BENCH_PG_URL"
CATEGORIES = ("storage", "lock", "sampler", "bookkeeping", "training", "idle")
# (trials of the designed sweep, of explore, of the first-order design, plain-script trials)
SIZES = {True: (512, 128, 256, 4), False: (2048, 256, 768, 12)}


class Clock:
    """Exclusive wall time per category: a call inside another category's call is taken out of it.
    Only the main thread's calls count (the heartbeat thread's writes overlap training)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, float] = {}
        self._stack: list[list[Any]] = []

    @contextlib.contextmanager
    def on(self, category: str) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        now = time.perf_counter()
        if self._stack:
            self.totals[self._stack[-1][0]] = self.totals.get(self._stack[-1][0], 0.0) + now - self._stack[-1][1]
        self._stack.append([category, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            cat, since = self._stack.pop()
            self.totals[cat] = self.totals.get(cat, 0.0) + end - since
            if self._stack:
                self._stack[-1][1] = end

    def wrap(self, owner: Any, name: str, category: str, also: str | None = None) -> None:
        """Time `owner.name` under `category` (and its inclusive time under `also` in `calls`)."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                with self.on(category):
                    return original(*args, **kwargs)
            finally:
                if also:
                    self.calls[also] = self.calls.get(also, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)


def _instrument(clock: Clock) -> None:
    """Wrap the runner's collaborators (this process is a bench worker: nothing is restored)."""
    from ..study import index, ledger, locks, mirror, plan, rdb, recovery, runner

    for name in ("enqueue_many", "create_running", "claim", "finish", "fail_running", "scan", "details",
                 "lost_trials", "count_trials", "record_heartbeats"):
        clock.wrap(rdb, name, "storage", also="enqueue_s" if name == "enqueue_many" else None)
    clock.wrap(rdb, "tpe_round", "sampler")
    clock.wrap(mirror.Mirror, "ask", "sampler")
    clock.wrap(mirror.Mirror, "sync", "sampler")
    clock.wrap(index.Index, "refresh", "bookkeeping")
    clock.wrap(plan.Plan, "queue", "bookkeeping")
    clock.wrap(plan.Plan, "work", "bookkeeping")
    clock.wrap(recovery, "plan_queue", "bookkeeping")
    clock.wrap(recovery, "tally", "bookkeeping")
    clock.wrap(ledger.Ledger, "claim", "bookkeeping")
    clock.wrap(runner, "summarise", "bookkeeping")
    clock.wrap(runner, "fit", "training")
    real_lock = locks.study_lock

    @contextlib.contextmanager
    def timed_lock(*args: Any, **kwargs: Any) -> Iterator[None]:
        held = real_lock(*args, **kwargs)
        with clock.on("lock"):
            held.__enter__()
        try:
            yield
        finally:
            held.__exit__(None, None, None)

    runner.study_lock = timed_lock
    runner.WAIT_POLL_S = 0.05  # the end of a run is not a 5 s poll

    class _IdleTime:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            with clock.on("idle"):
                time.sleep(seconds)

    runner.time = _IdleTime()


def worker(spec_path: str, url: str, trials: int, name: str) -> dict[str, Any]:
    """One bench worker process: `runner.run` on the spec, instrumented; its numbers."""
    import torch

    torch.set_num_threads(1)
    from ..study import runner
    from ..study import spec as specs
    from ..study.storage import quiet_optuna

    quiet_optuna()
    clock = Clock()
    _instrument(clock)
    # The steady state: from the second round on (the first opens the study, queues a design,
    # reads every trial once); its clock totals, wall time and trials told.
    steady: dict[str, Any] = {"rounds": 0, "trials": 0}
    claim, tell = runner._Worker.claim, runner._Worker.train_and_tell

    def counted_claim(self: Any) -> Any:
        steady["rounds"] += 1
        if steady["rounds"] == 2:
            steady["since"], steady["before"] = time.perf_counter(), dict(clock.totals)
        return claim(self)

    def counted_tell(self: Any, *args: Any) -> Any:
        models, told = tell(self, *args)
        if "since" in steady:
            steady["trials"] += told
        return models, told

    runner._Worker.claim, runner._Worker.train_and_tell = counted_claim, counted_tell
    spec = specs.load(spec_path)
    start = time.perf_counter()
    summary = runner.run(spec, runner.Options(storage=url, device="cpu", trials=trials, study_name=name,
                                              progress=False), echo=lambda *_: None)
    end = time.perf_counter()
    since, before = steady.get("since", end), steady.get("before", clock.totals)
    return {"wall_s": end - start, "trials": summary.trials_run, "models": summary.models, "totals": clock.totals,
            "enqueue_s": clock.calls.get("enqueue_s", 0.0), "pid": os.getpid(),
            "steady": {"wall_s": end - since, "trials": steady["trials"],
                       "totals": {k: v - before.get(k, 0.0) for k, v in clock.totals.items()}}}


def sweep(spec_path: Path, url: str, name: str, trials: int, workers: int) -> dict[str, Any]:
    """`workers` processes on one fresh study; shares of their summed busy time, trials/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sweeps.tools.bench_storage", "--worker", str(spec_path), url, str(trials), name]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker failed: {err[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    done = sum(o["trials"] for o in outs)
    return {"spec": spec_path.stem, "workers": workers, "backend": url.split(":")[0].split("+")[0], "trials": done,
            "models": sum(o["models"] for o in outs), "wall_s": wall, "trials_per_s": done / wall,
            "enqueue_s": sum(o["enqueue_s"] for o in outs), "run": _shares(outs),
            "steady": _shares([o["steady"] for o in outs])}


def _shares(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of the summed busy time (wall minus idle waits) of these workers' runs."""
    totals = {c: sum(p["totals"].get(c, 0.0) for p in parts) for c in CATEGORIES}
    busy = sum(p["wall_s"] for p in parts) - totals["idle"]
    trials = sum(p["trials"] for p in parts)
    shares = {c: totals[c] / busy if busy > 0 else 0.0 for c in CATEGORIES if c != "idle"}
    shares["other"] = 1.0 - sum(shares.values())
    wall = max(p["wall_s"] for p in parts)
    return {"trials": trials, "busy_s": busy, "idle_s": totals["idle"], "share": shares,
            "trials_per_s": trials / wall if wall > 0 else 0.0,
            "storage_sampler_share": shares["storage"] + shares["lock"] + shares["sampler"],
            "overhead_share": 1.0 - shares["training"],
            "overhead_ms_per_trial": 1e3 * (busy - totals["training"]) / max(trials, 1)}


def _rounds(url: str, name: str) -> list[tuple[bool, list[Any]]]:
    """The study's COMPLETE/FAIL trials grouped by the round that trained them, in order, each with
    whether it is a steady round (not the first round of its worker)."""
    import optuna

    from ..study import storage as st

    rounds: dict[tuple, list[Any]] = {}
    for t in optuna.load_study(study_name=name, storage=st.open_readonly(url)).get_trials(deepcopy=False):
        run = t.user_attrs.get("run")
        if run is not None:
            rounds.setdefault((run["pid"], run["started"], run["round_wall_s"]), []).append(t)
    ordered = sorted(rounds.items(), key=lambda kv: min(t.number for t in kv[1]))
    seen: set[int] = set()
    out = []
    for (pid, *_), ts in ordered:
        out.append((pid in seen, sorted(ts, key=lambda t: t.number)))
        seen.add(pid)
    return out


def engine_alone(url: str, name: str, data_seed: int) -> dict[str, Any]:
    """The sweep's rounds again, through `engine.fit` only (same jobs, same batch sizes): all of
    them, and the steady ones (each worker's rounds after its first), which `vs_engine` compares."""
    from ..config import Config
    from ..engine import Job, fit

    import torch

    cpu = torch.device("cpu")
    spent = {True: 0.0, False: 0.0}
    trials = {True: 0, False: 0}
    for steady, ts in _rounds(url, name):
        jobs = [Job(Config(**t.user_attrs["config"]), s) for t in ts for s in t.user_attrs["seeds"]["seed"]]
        t0 = time.perf_counter()
        fit(jobs, device=cpu, batch_size=ts[0].user_attrs["run"]["batch_size"], data_seed=data_seed)
        spent[steady] += time.perf_counter() - t0
        trials[steady] += len(ts)

    def rate(n: int, s: float) -> float:
        return n / s if s else math.inf

    return {"trials": trials[True] + trials[False], "wall_s": spent[True] + spent[False],
            "trials_per_s": rate(trials[True] + trials[False], spent[True] + spent[False]),
            "steady": {"trials": trials[True], "wall_s": spent[True], "trials_per_s": rate(trials[True], spent[True])}}


def _plain_net(config: Any) -> Any:
    import torch

    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "gelu": torch.nn.GELU,
           "softplus": torch.nn.Softplus}.get(config.activation)

    class Sin(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.sin(x)

    return torch.nn.Sequential(torch.nn.Linear(1, config.hidden, bias=config.bias in ("hidden", "both")),
                               act() if act is not None else Sin(),
                               torch.nn.Linear(config.hidden, 1, bias=config.bias in ("output", "both")))


def _plain_optimizer(config: Any, params: Any) -> Any:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.RMSprop(params, lr=config.lr, alpha=0.99, eps=1e-8)


def plain_optuna(spec: Any, trials: list[Any], url: str) -> dict[str, Any]:
    """The plain Optuna script on these trials' configurations and seeds (see the module docstring)."""
    import optuna
    import torch

    from ..engine import data as datasets
    from ..study.search import suggest

    seeds = [t.user_attrs["seeds"]["seed"] for t in trials]
    ds = datasets.make(spec.fixed["data"], spec.data_seed)
    x, y = ds.x.float()[:, None], ds.y.float()[:, None]
    xt, yt = ds.x_test.float()[:, None], ds.y_test.float()[:, None]

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, spec.space, spec.fixed)  # the trial's params, the spec's fixed settings
        mses = []
        for seed in seeds[trial.number]:
            torch.manual_seed(seed % 2**63)
            net = _plain_net(config)
            opt = _plain_optimizer(config, net.parameters())
            for _ in range(config.steps):
                opt.zero_grad()
                loss = ((net(x) - y) ** 2).sum()
                loss.backward()
                opt.step()
            with torch.no_grad():
                mse = float(((net(xt) - yt) ** 2).mean())
            mses.append(mse if math.isfinite(mse) else math.inf)
        trial.set_user_attr("test_mse", [m if math.isfinite(m) else None for m in mses])
        trial.set_user_attr("config", config.as_dict())
        return statistics.median(mses)

    study = optuna.create_study(study_name="plain", storage=url, direction="minimize")
    for t in trials:
        study.enqueue_trial({k: v for k, v in t.params.items() if k in spec.space})
    start = time.perf_counter()
    study.optimize(objective, n_trials=len(trials))
    wall = time.perf_counter() - start
    return {"trials": len(trials), "wall_s": wall, "trials_per_s": len(trials) / wall}


def _first_order_spec(folder: Path) -> Path:
    """default.toml with its first-order optimizers only (what torch.optim can replay)."""
    from ..config import FIRST_ORDER

    text = (SPECS / "default.toml").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("choices") and "bfgs" in ln)
    path = folder / "first-order.toml"
    path.write_text(text.replace(line, "choices = " + json.dumps(list(FIRST_ORDER))))
    return path


def measure(quick: bool) -> dict[str, Any]:
    """Every figure of the module docstring, from one run (`quick`: smaller sizes, about a minute)."""
    import optuna
    import torch

    from ..study import spec as specs
    from ..study.storage import quiet_optuna

    quiet_optuna()
    n_designed, n_explore, n_first, n_plain = SIZES[quick]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the engine replay and the plain script: one thread, like the workers
    out: dict[str, Any] = {"quick": quick, "threads": 1, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                           "optuna": optuna.__version__, "torch": torch.__version__}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for key, spec_path, n in (("designed", SPECS / "default.toml", n_designed),
                                      ("explore", SPECS / "explore.toml", n_explore)):
                url = f"sqlite:///{folder / (key + '.db')}"
                result = sweep(spec_path, url, key, n, workers=1)
                result["engine"] = engine_alone(url, key, specs.load(str(spec_path)).data_seed)
                # Steady rounds against the same rounds alone (the first rounds train other cells).
                result["vs_engine"] = result["steady"]["trials_per_s"] / result["engine"]["steady"]["trials_per_s"]
                out[key] = result
            pg = os.environ.get(ENV_PG)
            if pg:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                for key, spec_path, n in (("designed", SPECS / "default.toml", n_designed),
                                          ("explore", SPECS / "explore.toml", n_explore)):
                    out[f"{key}_pg4"] = sweep(spec_path, pg, f"bench-{key}-{stamp}", n, workers=4)
            first = _first_order_spec(folder)
            url = f"sqlite:///{folder / 'first.db'}"
            ours = sweep(first, url, "first", n_first, workers=1)
            trials = [t for _, ts in _rounds(url, "first") for t in ts]
            pick = [trials[round(i * (len(trials) - 1) / max(n_plain - 1, 1))] for i in range(n_plain)]
            plain = plain_optuna(specs.load(str(first)), pick, f"sqlite:///{folder / 'plain.db'}")
            out["plain"] = {"ours": ours, "plain": plain, "vs_plain": ours["trials_per_s"] / plain["trials_per_s"],
                            "vs_plain_steady": ours["steady"]["trials_per_s"] / plain["trials_per_s"]}
    finally:
        torch.set_num_threads(before)
    out["load_after"] = os.getloadavg()
    return out


def table(r: dict[str, Any]) -> list[str]:
    """The numbers as text lines."""
    lines = [f"storage bench: {r['threads']} thread per process, {r['cpus']} cpus, optuna {r['optuna']}; "
             f"load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}"]
    for key in ("designed", "explore", "designed_pg4", "explore_pg4"):
        if key not in r:
            continue
        s = r[key]
        lines.append(f"  {key}: {s['spec']}, {s['backend']} x{s['workers']}, {s['trials']} trials in {s['wall_s']:.1f} s "
                     f"({s['trials_per_s']:.1f} trials/s with the processes' start; queueing the study "
                     f"{s['enqueue_s']:.2f} s)")
        for part in ("run", "steady"):
            p = s[part]
            share = ", ".join(f"{k} {v:.1%}" for k, v in p["share"].items())
            lines.append(f"    {part:<6} {p['trials']:>5} trials {p['trials_per_s']:7.1f} trials/s, storage+sampler "
                         f"{p['storage_sampler_share']:.1%}, overhead {p['overhead_ms_per_trial']:.2f} ms/trial: {share}")
        if "engine" in s:
            e = s["engine"]
            lines.append(f"    engine alone on the same rounds {e['trials_per_s']:.1f} trials/s, on the steady ones "
                         f"{e['steady']['trials_per_s']:.1f}: steady sweep / engine {s['vs_engine']:.2f}")
    p = r["plain"]
    lines.append(f"  plain Optuna script {p['plain']['trials_per_s']:.3f} trials/s on {p['plain']['trials']} of the "
                 f"runner's {p['ours']['trials']} first-order trials; the runner {p['ours']['trials_per_s']:.1f} "
                 f"trials/s with its start ({p['vs_plain']:.0f}x), {p['ours']['steady']['trials_per_s']:.1f} "
                 f"steady ({p['vs_plain_steady']:.0f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m sweeps.tools.bench_storage`: print the table, write the JSON."""
    p = argparse.ArgumentParser(prog="python -m sweeps.tools.bench_storage", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: about a minute on a 2-core CPU")
    p.add_argument("--out", default="bench_storage.json", help="where to write the numbers (JSON)")
    p.add_argument("--worker", nargs=4, metavar=("SPEC", "URL", "TRIALS", "NAME"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec_path, url, trials, name = args.worker
        print(json.dumps(worker(spec_path, url, int(trials), name)))
        return 0
    result = measure(args.quick)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print("\n".join(table(result)))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
