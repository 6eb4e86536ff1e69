"""First-order training: batched optimizers (one update for K models, each with its own learning
rate) and the loop that trains a batch with them (`fit_batch`).

Each optimizer follows `torch.optim`'s update rule with its default constants, so a batch of one reproduces
`torch.optim.{SGD, Adam, RMSprop}` (the tests check it step by step):
- `sgd`: SGD, no momentum.  - `momentum`: SGD with momentum 0.9 (no dampening, not Nesterov).
- `adam`: Adam, betas (0.9, 0.999), eps 1e-8.  - `rmsprop`: RMSprop, alpha 0.99, eps 1e-8.
Models whose `active` flag is off (diverged) are left exactly as they are.

`fit_batch` sorts a batch's rows into runs of equal optimizer (a handful of ops per step, however
many models), trains every model for the shared step budget, records the training and test MSE at
`checkpoints(steps)`, and freezes a model the step its loss turns non-finite or passes
`DIVERGENCE_MSE`, without touching its batch-mates. This loop is the engine on CUDA and the
reference of the C kernel that is the CPU default (`sweeps.engine.first_order_native`); it
stops at the next 256-step mark once `native.cancel()` is called (raising `native.Cancelled`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import FIRST_ORDER
from . import batch as batches
from . import data as datasets
from . import native
from .jobs import DIVERGENCE_MSE, Job, Result, checkpoints
from .model import BatchModel, bias_lr_factor, pad, runs

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
EPS = 1e-8


class FirstOrder:
    """State and update rule of one batched first-order optimizer over P [K, D]."""

    def __init__(self, name: str, lr: torch.Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
        if name not in FIRST_ORDER:
            raise ValueError(f"unknown first-order optimizer {name!r}")
        self.name = name
        # One learning rate per model [K, 1], or per parameter [K, D] (duplicated biases).
        self.lr = lr.to(device=device, dtype=dtype)
        if self.lr.dim() == 1:
            self.lr = self.lr[:, None]
        self.t = 0
        zeros = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.m = zeros() if name in ("momentum", "adam") else None
        self.v = zeros() if name in ("adam", "rmsprop") else None

    def step(self, P: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        """Update P in place for the active models."""
        self.t += 1
        if self.name == "sgd":
            update = self.lr * grad
        elif self.name == "momentum":
            self.m.mul_(MOMENTUM).add_(grad)
            update = self.lr * self.m
        elif self.name == "adam":
            b1, b2 = ADAM_BETAS
            self.m.lerp_(grad, 1.0 - b1)
            self.v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            bc1 = 1.0 - b1**self.t
            bc2_sqrt = (1.0 - b2**self.t) ** 0.5
            update = (self.lr / bc1) * (self.m / (self.v.sqrt() / bc2_sqrt + EPS))
        else:  # rmsprop
            self.v.mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1.0 - RMSPROP_ALPHA)
            update = self.lr * (grad / (self.v.sqrt() + EPS))
        # where, not a product: a diverged model's NaN update must not touch its row at all.
        P.sub_(torch.where(active[:, None], update, 0.0))


class Optimizers:
    """One batched optimizer per contiguous run of rows that share an optimizer name.

    A batch sorted by optimizer is thus updated with a handful of ops per step, however many
    models it holds; each run keeps its own state, so the rules above hold model by model.
    """

    def __init__(self, names: Sequence[str], lr: torch.Tensor, width: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        parts = runs(list(names))
        whole = len(parts) == 1
        self.parts = [(FirstOrder(name, lr[rows], torch.Size((rows.stop - rows.start, width)), dtype, device),
                       slice(None) if whole else rows) for name, rows in parts]

    def step(self, P: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        for opt, rows in self.parts:
            opt.step(P[rows], grad[rows], active[rows])  # P[rows] is a view: updated in place


def learning_rates(jobs: Sequence[Job], hidden: int) -> torch.Tensor:
    """Per-model learning rates [K], or per parameter [K, D] when a model duplicates its biases."""
    lr = torch.tensor([j.config.lr for j in jobs], dtype=torch.float64)
    if any(j.config.bias_copies != 1 for j in jobs):
        lr = lr[:, None] * torch.stack([pad(bias_lr_factor(j.config), j.config.hidden, hidden) for j in jobs])
    return lr


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device, compile: bool = False) -> list[Result]:
    """Train one batch of first-order jobs sharing a group on one data set; results in job order.

    `compile` fuses the training step with torch.compile (same arithmetic; see `make bench`).
    """
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].config.optimizer, jobs[i].config.hidden))
    if order != list(range(len(jobs))):
        results = fit_batch([jobs[i] for i in order], data, device, compile)
        out: list[Result | None] = [None] * len(jobs)
        for i, res in zip(order, results):
            out[i] = res
        return out  # type: ignore[return-value]
    first = jobs[0].config
    dtype = torch.float64 if first.precision == "float64" else torch.float32
    b = batches.stack(jobs, data, device, dtype)
    P, mask = b.P, b.mask
    model = BatchModel(b.hidden, first.activation, b.x, b.t, [j.config.loss for j in jobs], compiled=compile)
    n = b.x.numel()

    opt = Optimizers([j.config.optimizer for j in jobs], learning_rates(jobs, b.hidden), P.shape[1], dtype, device)
    steps = first.steps
    points = checkpoints(steps)
    curve = torch.full((len(jobs), len(points)), math.nan, **b.to)
    test_curve = torch.full((len(jobs), len(points)), math.nan, **b.to)
    check_at = {s: c for c, s in enumerate(points)}
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
            test_curve[:, check_at[step]] = torch.where(active, batches.test_mse(b, model, P), math.nan)
        if step == steps:
            break
        opt.step(P, grad, active)
        # A cheap host sync now and then lets a batch whose every model diverged stop early.
        if step % 256 == 255:
            if native.cancelled():
                raise native.Cancelled("training cancelled")
            if not bool(active.any()):
                break

    test_mse, train_mse = batches.evaluate(b, model, P)
    div = [d if d >= 0 else None for d in diverged_at.cpu().tolist()]
    curves = [tuple((s, c, t) for s, c, t in zip(points, row, trow) if not math.isnan(c))
              for row, trow in zip(curve.cpu().tolist(), test_curve.cpu().tolist())]
    taken = [d if d is not None else steps for d in div]
    return batches.results(b, P, test_mse, train_mse, taken, div, curves, evals=taken)
