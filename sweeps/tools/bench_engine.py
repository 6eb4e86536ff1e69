"""`make bench`, part 1: the first-order engine against its references and the machine's limit.

Every judged figure is a ratio measured in this run on this machine (the compared runs
interleaved; absolute rates are printed beside them), on torch's thread count:
- `engine_vs_reference`: models/s on a sample of the default designed study's first-order mix
  (sweeps/specs/default.toml: r50, sum loss, torch init, float32, hidden x bias x activation x
  sgd/momentum/adam/rmsprop x its lr grid; steps scaled down), the engine (`fit`, the native
  kernel) against the torch reference loop (`fit(..., engine="torch")`) on the same jobs;
- `limit_share`: the engine's unit·point·steps/s on that mix at the study's own 10000 steps
  (the scaled run under QUICK) as a share of the machine's limit for the same work: per
  activation, the faster of the kernel's own elementwise step on in-cache data with no model
  structure around it (`fo_limit`), and torch's activation forward followed by the kernel's
  multiply-adds; weighted by the mix's work;
- `engine_ratio`: H = 4, 1000 points, Adam, tanh, 2000 steps (300 under QUICK): the engine
  against the naive one-model-at-a-time torch.optim loop (best of 3 runs each); the torch loop,
  eager and compiled, beside it.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..config import DEFAULTS, FIRST_ORDER, Config
from ..engine import Job, Result, fit
from ..engine import data as datasets
from ..engine import first_order_native as fon
from ..engine import native

SPEC = Path(__file__).resolve().parents[1] / "specs" / "default.toml"
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "softplus", "sin")
CPU = torch.device("cpu")


def design_space() -> dict[str, list[Any]]:
    """The default designed study's first-order cells and lr grid, read from its spec."""
    spec = tomllib.loads(SPEC.read_text())
    space = spec["space"]
    return {"hidden": space["hidden"]["choices"], "bias": space["bias"]["choices"],
            "activation": space["activation"]["choices"],
            "optimizer": [o for o in space["optimizer"]["choices"] if o in FIRST_ORDER],
            "lr": space["lr"]["grid"], "fixed": spec["fixed"]}


def design_sample(models: int, steps: int, seed: int = 0) -> list[Job]:
    """`models` jobs drawn uniformly from the study's first-order cells and learning rates."""
    space, rng = design_space(), random.Random(seed)
    fixed = {k: v for k, v in space["fixed"].items() if k in DEFAULTS}
    return [Job(Config(**{**DEFAULTS, **fixed, **{k: rng.choice(space[k]) for k in
                                                  ("hidden", "bias", "activation", "optimizer", "lr")},
                          "steps": steps}), 1000 + i) for i in range(models)]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _work(jobs: Sequence[Job], results: Sequence[Result], points: int) -> float:
    """Unit·point·steps trained (a diverged model stops at its divergence step)."""
    return float(sum(j.config.hidden * points * r.steps for j, r in zip(jobs, results)))


def limits(threads: int, count: int) -> dict[str, dict[str, float]]:
    """Elements/s (= unit·point·steps/s) of a step's elementwise arithmetic per activation: the
    whole step, the activation and derivative alone, the multiply-adds alone (best of 3: the
    machine may be shared), torch's activation forward alone, and the limit used."""
    out = {}
    x = torch.linspace(-4, 4, 1 << 16)
    torch_fns = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "sin": torch.sin,
                 "gelu": torch.nn.functional.gelu, "softplus": torch.nn.functional.softplus}
    for act in ACTIVATIONS:
        row = {}
        for kind, name in ((0, "step"), (1, "activation"), (2, "multiply_adds")):
            best = min(fon.limit(kind, act, count, threads)[0] for _ in range(3))
            row[name] = count * fon.LANES["float32"] * threads / best
        fn, reps = torch_fns[act], 200
        best = min(_timed(lambda: [fn(x) for _ in range(reps)])[0] for _ in range(3))
        row["torch_activation"] = x.numel() * reps / best
        with_torch = 1.0 / (1.0 / row["torch_activation"] + 1.0 / row["multiply_adds"])
        row["limit"] = max(row["step"], with_torch)
        out[act] = row
    return out


def mix_limit(jobs: Sequence[Job], results: Sequence[Result], limit: dict[str, dict[str, float]], points: int) -> float:
    """The limit for a mix: its work at each activation's limit rate (time-weighted)."""
    seconds = 0.0
    for act in ACTIVATIONS:
        idx = [i for i, j in enumerate(jobs) if j.config.activation == act]
        seconds += _work([jobs[i] for i in idx], [results[i] for i in idx], points) / limit[act]["limit"]
    return _work(jobs, results, points) / seconds


def versus_reference(models: int, steps: int, repeats: int, limit: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """The design-mix sample through the engine and through the torch reference loop."""
    jobs = design_sample(models, steps)
    points = datasets.make("r50").x.numel()
    native_s, results = [], None
    for i in range(repeats):  # interleaved: engine, reference (the slow one, once), engine, ...
        t, results = _timed(lambda: fit(jobs, device=CPU, batch_size=256))
        native_s.append(t)
        if i == 0:
            torch_s, reference = _timed(lambda: fit(jobs, device=CPU, batch_size=256, engine="torch"))
    tn = statistics.median(native_s)
    work = _work(jobs, results, points)
    out = {"models": models, "steps": steps, "engine_s": native_s, "reference_s": torch_s,
           "engine_models_per_s": models / tn, "reference_models_per_s": models / torch_s, "ratio": torch_s / tn,
           "diverged": sum(r.diverged for r in results),
           "same_divergence": sum(a.diverged == b.diverged for a, b in zip(results, reference)),
           "engine_upps": work / tn}
    if limit is not None:
        out["limit_upps"] = mix_limit(jobs, results, limit, points)
        out["limit_share"] = out["engine_upps"] / out["limit_upps"]
    return out


def at_budget(models: int, steps: int, limit: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The engine alone on the sample at the study's own budget, and its share of the limit there."""
    jobs = design_sample(models, steps)
    points = datasets.make("r50").x.numel()
    t, res = _timed(lambda: fit(jobs, device=CPU, batch_size=256))
    work, lim = _work(jobs, res, points), mix_limit(jobs, res, limit, points)
    return {"models": models, "steps": steps, "seconds": t, "models_per_s": models / t, "engine_upps": work / t,
            "limit_upps": lim, "limit_share": work / t / lim}


def h4_config(steps: int) -> Config:
    """The engine_ratio configuration: H = 4, both biases, tanh, Adam lr 0.01, sum loss, 1000 points."""
    return Config(**{**DEFAULTS, "hidden": 4, "bias": "both", "activation": "tanh", "optimizer": "adam", "lr": 0.01,
                     "data": "uniform1000", "loss": "sum", "steps": steps, "precision": "float32"})


def naive_models_per_s(hidden: int, steps: int, models: int, device: torch.device) -> float:
    """The reference: nn.Linear layers, autograd and torch.optim.Adam, one model after another."""
    ds = datasets.make("uniform1000")
    x, y = ds.x.float()[:, None].to(device), ds.y.float()[:, None].to(device)
    start = 0.0
    for seed in range(-1, models):  # seed -1: a short warm-up (autograd, thread pool), not timed
        if seed == 0:
            start = time.perf_counter()
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps if seed >= 0 else 20):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).sum()
            loss.backward()
            opt.step()
        loss.detach().item()  # wait for the device
    return models / (time.perf_counter() - start)


def versus_naive(steps: int, models: int, repeats: int, compiled: bool, device: torch.device) -> dict[str, Any]:
    """H = 4, 1000 points, Adam, tanh: the engine (and the torch loop) against the naive loop."""
    jobs = [Job(h4_config(steps), s) for s in range(models)]
    batch = models if device.type == "cpu" else 4096

    # Best of `repeats` on both sides: on a shared machine another process's burst only ever
    # slows a run down, and the naive loop's many tiny ops suffer most from it.
    def rate(**kw: Any) -> float:
        return max(models / _timed(lambda: fit(jobs, device=device, batch_size=batch, **kw))[0] for _ in range(repeats))

    naive = max(naive_models_per_s(4, steps, 2, device) for _ in range(repeats))
    out: dict[str, Any] = {"steps": steps, "models": models, "naive_models_per_s": naive}
    rows = {"engine": rate(), "torch eager": rate(engine="torch")}
    if compiled:
        out["compile_s"] = _timed(lambda: fit(jobs[:2], device=device, batch_size=2, compile=True, engine="torch"))[0]
        rows["torch compiled"] = rate(compile=True, engine="torch")
    out["rows"] = {k: {"models_per_s": v, "ratio": v / naive} for k, v in rows.items()}
    out["ratio"] = out["rows"]["engine"]["ratio"]
    return out


def build_cost() -> dict[str, Any]:
    """Seconds for a first build of the kernel (fresh cache) and for loading the cached build."""
    saved = os.environ.get("SWEEPS_NATIVE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEPS_NATIVE_CACHE"] = tmp
        try:
            native.forget()
            first = native.load(fon.KERNEL)
            native.forget()
            again = native.load(fon.KERNEL)
        finally:
            native.forget()
            if saved is None:
                os.environ.pop("SWEEPS_NATIVE_CACHE", None)
            else:
                os.environ["SWEEPS_NATIVE_CACHE"] = saved
    return {"first_build_s": first.seconds, "cached_load_s": again.seconds, "variant": first.variant.name,
            "compiler": native.compiler()}


def measure(device: torch.device, quick: bool) -> dict[str, Any]:
    """Section 1's numbers (see the module docstring)."""
    threads = torch.get_num_threads()
    ok, why = fon.available()
    use_native = device.type == "cpu" and ok
    out: dict[str, Any] = {"threads": threads, "native": use_native, "why_not": None if use_native else why}
    if use_native:
        out["build"] = build_cost()
        out["limit"] = limits(threads, 2_000_000 if quick else 10_000_000)
        models, steps = (192, 300) if quick else (384, 1000)
        out["design_mix"] = versus_reference(models, steps, 1 if quick else 3, out["limit"])
        out["at_budget"] = None if quick else at_budget(models, 10_000, out["limit"])
        out["engine_vs_reference"] = out["design_mix"]["ratio"]
        out["limit_share"] = (out["at_budget"] or out["design_mix"])["limit_share"]
    out["versus_naive"] = versus_naive(300 if quick else 2000, 256, 1 if quick else 3, not quick, device)
    out["engine_ratio"] = out["versus_naive"]["ratio"]
    return out


def table(e: dict[str, Any]) -> list[str]:
    """Section 1 as text lines."""
    lines = []
    if e["native"]:
        b, d = e["build"], e["design_mix"]
        lines += [f"1. Engine: the native kernel ({b['variant']}, first build {b['first_build_s']:.1f} s, cached load "
                  f"{b['cached_load_s'] * 1e3:.0f} ms), {e['threads']} threads",
                  f"   design mix (r50, {d['models']} models x {d['steps']} steps, default.toml's first-order cells "
                  f"and lr grid): engine {d['engine_models_per_s']:.1f} models/s, torch reference "
                  f"{d['reference_models_per_s']:.2f} -> {d['ratio']:.1f}x ({d['diverged']} diverged, same verdict "
                  f"{d['same_divergence']}/{d['models']})"]
        for label, r in (("scaled", d), ("10000 steps", e["at_budget"])):
            if r:
                lines.append(f"   {label}: {r['engine_upps'] / 1e9:.2f} G unit·point·steps/s = {r['limit_share']:.0%} of "
                             f"the machine's limit for the mix ({r['limit_upps'] / 1e9:.2f} G)")
        lines.append("   limit per activation (G/s): " + ", ".join(f"{a} {v['limit'] / 1e9:.2f}" for a, v in e["limit"].items()))
    else:
        lines.append(f"1. Engine: torch loop ({e['why_not'] or 'not on a CPU'})")
    v = e["versus_naive"]
    lines.append(f"   H=4, 1000 points, Adam, tanh, {v['steps']} steps, {v['models']} models; naive torch.optim "
                 f"{v['naive_models_per_s']:.2f} models/s" + (f"; compile {v['compile_s']:.1f} s" if "compile_s" in v else ""))
    for k, r in v["rows"].items():
        lines.append(f"   {k:>15}: {r['models_per_s']:9.1f} models/s {r['ratio']:8.1f}x")
    return lines
