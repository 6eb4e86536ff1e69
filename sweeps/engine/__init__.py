"""The engine: batched training of 1-H-1 networks in torch. Imports `sweeps.config` only; no Optuna.

`fit` (sweeps.engine.fit) trains a list of `Job`s and returns their `Result`s (sweeps.engine.jobs);
`model` is the batched network and its closed-form gradients, `data` the data sets, `batch` the
stacking and evaluation every method shares, `first_order` and `second_order` the methods.
"""

from .fit import fit
from .jobs import DeviceUnavailable, Job, Result, default_batch_size, resolve_device

__all__ = ["DeviceUnavailable", "Job", "Result", "default_batch_size", "fit", "resolve_device"]
