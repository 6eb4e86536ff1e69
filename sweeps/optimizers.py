"""Batched first-order optimizers: one update for K models, each with its own learning rate.

Each follows `torch.optim`'s update rule with its default constants, so a batch of one reproduces
`torch.optim.{SGD, Adam, RMSprop}` (the tests check it step by step):
- `sgd`: SGD, no momentum.  - `momentum`: SGD with momentum 0.9 (no dampening, not Nesterov).
- `adam`: Adam, betas (0.9, 0.999), eps 1e-8.  - `rmsprop`: RMSprop, alpha 0.99, eps 1e-8.
Models whose `active` flag is off (diverged) are left exactly as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import runs

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
EPS = 1e-8


class FirstOrder:
    """State and update rule of one batched first-order optimizer over P [K, D]."""

    def __init__(self, name: str, lr: torch.Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
        if name not in ("sgd", "momentum", "adam", "rmsprop"):
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
