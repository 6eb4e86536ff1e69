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
    shift: float = 0.0  # the network saw (x - shift) / scale (input scaling, fitted on the training set)
    scale: float = 1.0

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


def curve_steps(steps: int) -> list[int]:
    """Log-spaced steps (0 and `steps` included) at which the training MSE is recorded."""
    points = {0, steps}
    for i in range(CURVE_POINTS):
        points.add(int(round(steps ** (i / (CURVE_POINTS - 1)))))
    return sorted(p for p in points if 0 <= p <= steps)
