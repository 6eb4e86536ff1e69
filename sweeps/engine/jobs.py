"""What the engine is asked to do and what it gives back: `Job`, `Result`, the device, batch sizes.

A job is one model to train (a `Config` and the seed of its initial weights); a result is what
training it produced. The device is chosen at run time (`resolve_device`); batch sizes follow the
device (`default_batch_size`, `CPU_BATCH_ELEMENTS`). Nothing here knows of Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config

# A model whose training MSE passes this (targets are sin(x), |y| <= 1) or turns NaN/inf has
# diverged: it is frozen where it stands and reported as such.
DIVERGENCE_MSE = 1e6
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
    steps: int  # optimizer steps (second order: iterations) taken, up to divergence
    diverged_at: int | None  # step at which the loss went non-finite or past DIVERGENCE_MSE
    params: tuple[float, ...] | None  # fitted parameters, own layout [w1|b1|w2|b2]; None if diverged
    # (step, training MSE, test MSE) at the checkpoints (`checkpoints`) the model reached, and at
    # its last step; a diverged model's curve stops before it diverged.
    curve: tuple[tuple[int, float, float], ...]
    shift: float = 0.0  # the network saw (x - shift) / scale (input scaling, fitted on the training set)
    scale: float = 1.0
    evals: int = 0  # gradient evaluations (first order: one a step; bfgs: with its line searches; lm: Jacobians)
    seconds: float = 0.0  # this model's share of its batch's wall time (by its work: units x points x evals)

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


def checkpoints(steps: int) -> list[int]:
    """The steps at which a model's training and test MSE are recorded: 0, the 1-2-5 series (1, 2,
    5, 10, 20, 50, …: log-spaced, and every round budget such as 1000 and 10000 is one), and `steps`."""
    points = {0, steps}
    decade = 1
    while decade <= steps:
        points.update(m * decade for m in (1, 2, 5) if m * decade <= steps)
        decade *= 10
    return sorted(points)
