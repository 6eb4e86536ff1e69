"""Training sets and the test grid for fitting sin(x) on [0, 10].

The three data sets are the question's: `r50` (R's `sort(10*runif(50))`), `uniform1000` (the
low-level program's 1000 uniform random points) and `grid1000` (the framework program's
`a/1000*10`, a = 0..999). Random sets are drawn from the spec's `data_seed`, so every trial of a
study sees the same points. The test grid is 1001 evenly spaced points over [0, 10].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

X_LOW, X_HIGH = 0.0, 10.0
TEST_POINTS = 1001


@dataclass(frozen=True)
class Dataset:
    """Training inputs/targets and the test grid, as float64 CPU tensors of shape [N]."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def training_x(name: str, data_seed: int = 0) -> torch.Tensor:
    """The training inputs of data set `name` (float64, shape [N])."""
    gen = torch.Generator().manual_seed(data_seed)
    if name == "r50":
        return torch.sort(X_HIGH * torch.rand(50, generator=gen, dtype=torch.float64)).values
    if name == "uniform1000":
        return X_HIGH * torch.rand(1000, generator=gen, dtype=torch.float64)
    if name == "grid1000":
        return torch.arange(1000, dtype=torch.float64) / 1000.0 * X_HIGH
    raise ValueError(f"unknown data set {name!r}")


def make(name: str, data_seed: int = 0) -> Dataset:
    """Build data set `name` with targets sin(x) and the 1001-point test grid."""
    x = training_x(name, data_seed)
    x_test = torch.linspace(X_LOW, X_HIGH, TEST_POINTS, dtype=torch.float64)
    return Dataset(name, x, torch.sin(x), x_test, torch.sin(x_test))


def scaler(x: torch.Tensor, scaling: str) -> tuple[float, float]:
    """(shift, scale) so that the network sees (x - shift) / scale; fitted on training inputs."""
    if scaling == "none":
        return 0.0, 1.0
    if scaling == "standardize":
        return float(x.mean()), float(x.std())
    raise ValueError(f"unknown scaling {scaling!r}")
