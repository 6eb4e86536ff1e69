"""One batch of models as tensors, for every training method: stack jobs, evaluate, assemble results.

`stack` turns jobs that share a group (same data set, scaling, step budget and activation; see
`sweeps.engine.fit.group_key`) into stacked parameters P [K, 3H+1] and masks (H the largest hidden
size of the batch, smaller models zero-padded), the scaled training inputs and targets, and the
test grid, on the batch's device and dtype. `evaluate` gives each model's test and training MSE;
`results` turns a method's final state into per-model `Result`s. The first- and second-order
methods differ only in what happens between `stack` and `evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import data as datasets
from .jobs import Job, Result
from .model import BatchModel, init_one, mask_one, pad, unpad


def stack_params(jobs: Sequence[Job]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Initial parameters P and masks [K, 3H+1] (float64, CPU) of `jobs`, and H (the largest size)."""
    hidden = max(j.config.hidden for j in jobs)
    P = torch.stack([pad(init_one(j.config, j.seed), j.config.hidden, hidden) for j in jobs])
    mask = torch.stack([pad(mask_one(j.config), j.config.hidden, hidden) for j in jobs])
    return P, mask, hidden


@dataclass
class Batch:
    """The tensors a batch trains on; `x`/`x_test` are already scaled, `(raw - shift) / scale`."""

    jobs: Sequence[Job]
    hidden: int
    P: torch.Tensor
    mask: torch.Tensor
    x: torch.Tensor
    t: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shift: float
    scale: float

    @property
    def to(self) -> dict[str, object]:
        """The batch's device and dtype, as keyword arguments of `Tensor.to`."""
        return {"device": self.P.device, "dtype": self.P.dtype}


def stack(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device, dtype: torch.dtype) -> Batch:
    """The batch of `jobs` on `data` (their shared training set), on `device` in `dtype`."""
    P, mask, hidden = stack_params(jobs)
    shift, scale = datasets.scaler(data.x, jobs[0].config.scaling)
    to = {"device": device, "dtype": dtype}
    return Batch(jobs=jobs, hidden=hidden, P=P.to(**to), mask=mask.to(**to),
                 x=((data.x - shift) / scale).to(**to), t=data.y.to(**to),
                 x_test=((data.x_test - shift) / scale).to(**to), y_test=data.y_test.to(**to),
                 shift=shift, scale=scale)


def test_mse(batch: Batch, model: BatchModel, P: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Test MSE on the 1001-point grid of each model with parameters P [K] (or of the given rows of
    the batch, P then holding just those rows)."""
    y_test = batch.y_test
    with torch.no_grad():
        return ((model.predict(P, batch.x_test) - y_test) ** 2).mean(1)


def evaluate(batch: Batch, model: BatchModel, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Test MSE on the 1001-point grid and training MSE of each model with parameters P [K]."""
    with torch.no_grad():
        return test_mse(batch, model, P), model.sse(P) / batch.x.numel()


def results(batch: Batch, P: torch.Tensor, test_mse: torch.Tensor, train_mse: torch.Tensor, steps: Sequence[int],
            diverged_at: Sequence[int | None], curves: Sequence[tuple[tuple[int, float, float], ...]], *,
            evals: Sequence[int], fevals: Sequence[int] | None = None) -> list[Result]:
    """Per-model results in job order; a diverged model reports inf MSEs and no parameters."""
    rows = P.to("cpu", torch.float64)
    test, train = test_mse.cpu().tolist(), train_mse.cpu().tolist()
    out = []
    for k, job in enumerate(batch.jobs):
        d = diverged_at[k]
        out.append(Result(
            test_mse=math.inf if d is not None else test[k],
            train_mse=math.inf if d is not None else train[k],
            steps=steps[k],
            diverged_at=d,
            params=None if d is not None else tuple(unpad(rows[k], job.config.hidden, batch.hidden).tolist()),
            curve=curves[k],
            shift=batch.shift,
            scale=batch.scale,
            evals=evals[k],
            fevals=0 if fevals is None else fevals[k],
        ))
    return out
