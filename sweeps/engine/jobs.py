"""What the engine is asked to do and what it gives back: `Job`, `Result`, the device, batch sizes.

A job is one model to train (a `Config` and the seed of its initial weights); a result is what
training it produced. The device is chosen at run time (`resolve_device`); batch sizes follow the
device (`default_batch_size`, `batch_elements`). Nothing here knows of Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config

# A model whose training MSE passes this (targets are sin(x), |y| <= 1) or turns NaN/inf has
# diverged: it is frozen where it stands and reported as such.
DIVERGENCE_MSE = 1e6
# On a CPU the torch path's [K, H, N] tensors should stay in cache: `make bench` measured H = 16
# on 1000 points at 5.4 models/s with 64 models a batch but 4.2 with 256 and 2.0 with 1024 (H = 4
# kept improving up to 256). So a CPU batch holds at most this many K·H·N elements (4 MiB in
# float32). The native kernels keep no such tensors and take whole batches.
CPU_BATCH_ELEMENTS = 1 << 20
# On a GPU a batch must fit in memory: a torch step holds about a dozen [K, H, N] temporaries
# (the LM Jacobian [K, 3H+2, N] counts three), so a batch gets at most free memory / (16 x 8 bytes)
# elements, measured when the batch is cut.
GPU_TENSORS = 16


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
    # Gradient evaluations, one meaning on every path (native and torch): first order one a step;
    # bfgs vmmin's grcount (the start and each accepted step: R optim's counts["gradient"]); lm
    # Jacobian evaluations (the start and each accepted step, MINPACK's njev).
    evals: int = 0
    # Loss evaluations besides those: bfgs vmmin's fncount (the start and every line-search
    # trial); lm residual evaluations (the start and one an iteration); first order 0 (a step's
    # loss comes with its gradient).
    fevals: int = 0
    # This model's share of its batch's wall time: by the kernel's own per-model (or per-pack)
    # timing on the native path, by its work (units x points x evaluations) on the torch path.
    seconds: float = 0.0

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
    """Models per batch: 4096 on a GPU (fewer if memory says so: `batch_elements`); on a CPU 256,
    or 64 a thread where there are more than four: enough packs of 16 models to keep every
    thread of the native kernels busy (the torch path caps its batches by `batch_elements`)."""
    return 4096 if device.type == "cuda" else max(256, 64 * torch.get_num_threads())


def batch_elements(device: torch.device) -> int:
    """The most K·H·N elements one torch-path batch may hold on `device` (see CPU_BATCH_ELEMENTS,
    GPU_TENSORS)."""
    if device.type != "cuda":
        return CPU_BATCH_ELEMENTS
    free, _total = torch.cuda.mem_get_info(device)
    return max(CPU_BATCH_ELEMENTS, free // (GPU_TENSORS * 8))


def checkpoints(steps: int) -> list[int]:
    """The steps at which a model's training and test MSE are recorded: 0, the 1-2-5 series (1, 2,
    5, 10, 20, 50, …: log-spaced, and every round budget such as 1000 and 10000 is one), and `steps`."""
    points = {0, steps}
    decade = 1
    while decade <= steps:
        points.update(m * decade for m in (1, 2, 5) if m * decade <= steps)
        decade *= 10
    return sorted(points)
