"""The engine: train many (config, seed) models as batched tensor programs; no Optuna here.

`fit(jobs, …)` groups the jobs (same data set, scaling, step budget, precision and activation
share a batch; second-order methods also per method and loss: see `group_key`), sorts each group by hidden size so padding stays small, cuts it into batches of
`batch_size` models and trains each batch as one tensor program: one `BatchModel` whose rows are
sorted into runs of equal optimizer, so a step costs a few ops per run, not per model. Results
come back in the order of `jobs`. A model's numbers depend only on its own config and seed, never on
its batch-mates (up to float rounding from padding, which the tests bound).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import data as datasets
from . import second_order
from .model import BatchModel, bias_lr_factor, init_one, mask_one, pad, unpad
from .optimizers import Optimizers
from .space import FIRST_ORDER, SECOND_ORDER, Config

# A model whose training MSE passes this (targets are sin(x), |y| <= 1) or turns NaN/inf has
# diverged: it is frozen where it stands and reported as such.
DIVERGENCE_MSE = 1e6
CURVE_POINTS = 24
# On a CPU a batch's [K, H, N] tensors should stay in cache: `make bench` measured H = 16 on 1000
# points at 5.4 models/s with 64 models a batch but 4.2 with 256 and 2.0 with 1024 (H = 4 kept
# improving up to 256). So a CPU batch holds at most this many K·H·N elements (4 MiB in float32).
CPU_BATCH_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Job:
    """One model to train: a config and the seed of its initial weights."""

    config: Config
    seed: int


@dataclass(frozen=True)
class Result:
    """What training one model produced."""

    test_mse: float  # mean squared error on the 1001-point grid over [0, 10]; inf if diverged
    train_mse: float  # on the training set after the last step; inf if diverged
    steps: int  # optimizer steps taken (up to divergence)
    diverged_at: int | None  # step at which the loss went non-finite or past DIVERGENCE_MSE
    params: tuple[float, ...] | None  # fitted parameters, own layout [w1|b1|w2|b2]; None if diverged
    curve: tuple[tuple[int, float], ...]  # (step, training MSE) at log-spaced steps

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


class DeviceUnavailable(RuntimeError):
    """A device was asked for that this machine does not have (bad input, not a failure)."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA was requested (--device cuda) but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def default_batch_size(device: torch.device) -> int:
    """Models per batch: large on a GPU; ~256 on a CPU, where bigger batches fall out of cache."""
    return 4096 if device.type == "cuda" else 256


def group_key(config: Config) -> tuple:
    """Models that may share a batch: same data, scaling, step budget, precision and activation.

    First-order models of any optimizer, loss, hidden size, bias, init and lr share a batch
    (sorted into runs of equal optimizer). Mixing activations too was measured slower on a CPU:
    every model is then padded to the largest hidden size of all, and each activation costs its
    own ops anyway. Second-order methods batch per method and loss.
    """
    shared = (config.data, config.scaling, config.steps, config.precision, config.activation)
    if config.optimizer in FIRST_ORDER:
        return shared
    return shared + (config.optimizer, config.loss)


def _batch_order(config: Config) -> tuple:
    return (config.optimizer, config.hidden)


def curve_steps(steps: int) -> list[int]:
    """Log-spaced steps (0 and `steps` included) at which the training MSE is recorded."""
    points = {0, steps}
    for i in range(CURVE_POINTS):
        points.add(int(round(steps ** (i / (CURVE_POINTS - 1)))))
    return sorted(p for p in points if 0 <= p <= steps)


def fit(jobs: Sequence[Job], *, device: torch.device, batch_size: int, data_seed: int = 0,
        on_batch: Callable[[int], None] | None = None, compile: bool = False) -> list[Result]:
    """Train every job; returns results in job order. `on_batch(n)` is called after each batch.

    `compile` fuses the first-order training step with torch.compile (same arithmetic; pays a
    one-off compile per activation, worth it for long runs and large batches: see `make bench`).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[group_key(job.config)].append(i)
    results: list[Result | None] = [None] * len(jobs)
    cache: dict[str, datasets.Dataset] = {}
    for indices in groups.values():
        indices.sort(key=lambda i: jobs[i].config.hidden)
        name = jobs[indices[0]].config.data
        if name not in cache:
            cache[name] = datasets.make(name, data_seed)
        start = 0
        while start < len(indices):
            size = batch_size
            if device.type == "cpu":
                # The largest hidden size of the would-be batch sets its tensors' size [K, H, N].
                widest = jobs[indices[min(start + size, len(indices)) - 1]].config.hidden
                size = min(size, max(1, CPU_BATCH_ELEMENTS // (widest * cache[name].x.numel())))
            chunk = indices[start:start + size]
            start += size
            for i, res in zip(chunk, fit_batch([jobs[i] for i in chunk], cache[name], device, compile=compile)):
                results[i] = res
            if on_batch is not None:
                on_batch(len(chunk))
    return results  # type: ignore[return-value]


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device, compile: bool = False) -> list[Result]:
    """Train one batch of jobs sharing a group (see `group_key`) on one data set; results in job order."""
    first = jobs[0].config
    if first.optimizer in SECOND_ORDER:  # bfgs, lm: full batch, their own module
        return second_order.fit_batch(jobs, data, device)
    assert all(group_key(j.config) == group_key(first) for j in jobs), "mixed groups in a batch"
    order = sorted(range(len(jobs)), key=lambda i: _batch_order(jobs[i].config))
    if order != list(range(len(jobs))):
        results = fit_batch([jobs[i] for i in order], data, device, compile)
        out: list[Result | None] = [None] * len(jobs)
        for i, res in zip(order, results):
            out[i] = res
        return out  # type: ignore[return-value]
    dtype = torch.float64 if first.precision == "float64" else torch.float32
    hidden = max(j.config.hidden for j in jobs)
    P = torch.stack([pad(init_one(j.config, j.seed), j.config.hidden, hidden) for j in jobs])
    mask = torch.stack([pad(mask_one(j.config), j.config.hidden, hidden) for j in jobs])
    lr = torch.tensor([j.config.lr for j in jobs], dtype=torch.float64)
    if any(j.config.bias_copies != 1 for j in jobs):
        lr = lr[:, None] * torch.stack([pad(bias_lr_factor(j.config), j.config.hidden, hidden) for j in jobs])
    shift, scale = datasets.scaler(data.x, first.scaling)
    to = dict(device=device, dtype=dtype)
    x = ((data.x - shift) / scale).to(**to)
    model = BatchModel(hidden, first.activation, x, data.y.to(**to), [j.config.loss for j in jobs], compiled=compile)
    P, mask = P.to(**to), mask.to(**to)
    n = x.numel()

    opt = Optimizers([j.config.optimizer for j in jobs], lr, P.shape[1], dtype, device)
    steps = first.steps
    checkpoints = curve_steps(steps)
    curve = torch.full((len(jobs), len(checkpoints)), math.nan, **to)
    check_at = {s: c for c, s in enumerate(checkpoints)}
    active = torch.ones(len(jobs), dtype=torch.bool, device=device)
    diverged_at = torch.full((len(jobs),), -1, dtype=torch.long, device=device)

    for step in range(steps + 1):
        if step < steps:
            sse, grad = model.sse_and_grad(P, mask)
        else:
            sse = model.sse(P)  # the loss after the last update
        mse = sse / n
        ok = torch.isfinite(mse) & (mse < DIVERGENCE_MSE)
        diverged_at = torch.where(active & ~ok, step, diverged_at)
        active = active & ok
        if step in check_at:
            curve[:, check_at[step]] = torch.where(active, mse, math.nan)
        if step == steps:
            break
        opt.step(P, grad, active)
        # A cheap host sync now and then lets a batch whose every model diverged stop early.
        if step % 256 == 255 and not bool(active.any()):
            break

    with torch.no_grad():
        x_test = ((data.x_test - shift) / scale).to(**to)
        test_mse = ((model.predict(P, x_test) - data.y_test.to(**to)) ** 2).mean(1)
        train_mse = model.sse(P) / n

    rows = P.to("cpu", torch.float64)
    div = diverged_at.cpu().tolist()
    test, train = test_mse.cpu().tolist(), train_mse.cpu().tolist()
    curves = curve.cpu().tolist()
    out = []
    for k, job in enumerate(jobs):
        d = div[k] if div[k] >= 0 else None
        out.append(Result(
            test_mse=math.inf if d is not None else test[k],
            train_mse=math.inf if d is not None else train[k],
            steps=d if d is not None else steps,
            diverged_at=d,
            params=None if d is not None else tuple(unpad(rows[k], job.config.hidden, hidden).tolist()),
            curve=tuple((s, c) for s, c in zip(checkpoints, curves[k]) if not math.isnan(c)),
        ))
    return out
