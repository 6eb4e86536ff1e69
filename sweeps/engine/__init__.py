"""The engine: batched training of 1-H-1 networks. Imports `sweeps.config` only; no Optuna.

`fit` (sweeps.engine.fit) trains a list of `Job`s and returns their `Result`s (sweeps.engine.jobs);
`model` is the batched network and its closed-form gradients, `data` the data sets, `batch` the
stacking and evaluation the torch methods share, `first_order` and `second_order` the methods in
torch, `first_order_native` and `second_order_native` the same methods as C kernels
(`kernels/*.c`, built at first use by `native`).

Which engine trains a model (`fit(..., engine=...)`, else the environment):
- `SWEEPS_ENGINE=auto` (the default): the C kernels on a CPU where a C compiler builds them,
  else the torch loops (always on CUDA; also for a first-order run with `compile=True`).
- `SWEEPS_ENGINE=native`: the kernels, or an error saying why they cannot run here.
- `SWEEPS_ENGINE=torch`: the torch loops, the reference the kernels are tested against.
- `SWEEPS_NATIVE=0` turns the kernels off (auto then means torch); `SWEEPS_NATIVE_CACHE` says
  where built kernels are kept (default ~/.cache/sine-sweeps/native).

Interrupting: a kernel call polls a flag and returns within milliseconds once `cancel()` is
called (from any thread or a signal handler), raising `Cancelled` (a KeyboardInterrupt); a
Ctrl-C in the main thread cancels the call in flight by itself. `clear_cancel()` lets training
run again.
"""

from .fit import fit
from .jobs import DeviceUnavailable, Job, Result, default_batch_size, resolve_device
from .native import Cancelled, NativeUnavailable, cancel, clear_cancel

__all__ = ["Cancelled", "DeviceUnavailable", "Job", "NativeUnavailable", "Result", "cancel", "clear_cancel",
           "default_batch_size", "fit", "resolve_device"]
