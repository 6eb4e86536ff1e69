"""Second-order training (bfgs, lm) through a C kernel (kernels/second_order.c): the CPU default.

The kernel trains one model per OpenMP task, float64, its loss and gradient loops over the
points vectorised (libmvec's vector exp and friends where the build has them): `bfgs` is R's
vmmin exactly as nnet calls it (constants, counters, restarts, stopping rules, its edge cases
included), `lm` the Levenberg–Marquardt of `sweeps.engine.second_order.lm` (same rules and
constants). The torch port there stays the reference and the fallback (CUDA, no compiler).
Each model has its own hidden size (no padding), tolerances and stopping point; masked
parameters are never written; a model's numbers depend only on its own config and seed, never on
its batch-mates or the thread count (each runs the same code on private aligned copies of the
points).

- `fit_batch(jobs, data)` has the contract of `second_order.fit_batch`: `Result`s with the
  curve at `checkpoints(maxit)` (BFGS counts the start as iteration 1, as vmmin does, so
  checkpoints 0 and 1 are both the start), `evals` (gradient evaluations, vmmin's grcount; LM:
  Jacobian evaluations, the start and each accepted step), `fevals` (loss evaluations, vmmin's
  fncount; LM: residual evaluations), and `seconds` (the call's wall time shared by each model's
  measured time).
- `solve(method, starts, masks, hidden, …)` runs the kernel on explicit starts (tests drive it).
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import ACTIVATIONS, SECOND_ORDER
from . import data as datasets
from . import native
from .jobs import DIVERGENCE_MSE, Job, Result, checkpoints
from .model import init_one, mask_one
from .second_order import DAMPINGS, DEFAULT_DAMPING

KERNEL = "second_order"
ABI = 2
ACT_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2, "gelu": 3, "softplus": 4, "sin": 5}
STATUS_CONVERGED, STATUS_MAXIT, STATUS_NOT_STARTED, STATUS_NO_MEMORY, STATUS_CANCELLED = range(5)
assert set(ACT_CODES) == set(ACTIVATIONS)

_dbl = ctypes.POINTER(ctypes.c_double)
_int = ctypes.POINTER(ctypes.c_int)


class _Batch(ctypes.Structure):
    """Mirror of the C `Batch` struct (field order and types must match)."""

    _fields_ = [(name, ctypes.c_int) for name in ("K", "act", "N", "Ntest", "maxit", "ncheck", "threads", "damping")] + [
        ("x", _dbl), ("t", _dbl), ("xt", _dbl), ("tt", _dbl), ("H", _int), ("off", ctypes.POINTER(ctypes.c_long)),
        ("P", _dbl), ("mask", _dbl), ("loss_scale", _dbl), ("abstol", _dbl), ("reltol", _dbl), ("check", _int),
        ("div_mse", ctypes.c_double), ("curve", _dbl), ("loss", _dbl), ("train_mse", _dbl), ("test_mse", _dbl),
        ("seconds", _dbl), ("iters", _int), ("fevals", _int), ("gevals", _int), ("status", _int),
        ("cancel", ctypes.c_void_p)]


def library() -> ctypes.CDLL:
    """The loaded kernel; NativeUnavailable says why not."""
    lib = native.load(KERNEL).lib
    if lib.so_abi() != ABI:
        raise native.NativeUnavailable(f"{KERNEL} library ABI {lib.so_abi()} does not match this module's {ABI}")
    for name in ("so_bfgs", "so_lm"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [ctypes.POINTER(_Batch)], ctypes.c_int
    return lib


def available() -> tuple[bool, str]:
    """Whether the kernel runs here; if not, why (see `native.available`)."""
    return native.available(KERNEL, library)


@dataclass(frozen=True)
class Raw:
    """What the kernel returns for K models ([K] tensors but params and curve)."""

    params: list[torch.Tensor]  # final parameters, own layout (float64)
    loss: torch.Tensor  # final loss as the optimizer holds it
    train_mse: torch.Tensor  # recomputed at the final parameters (inf if not started)
    test_mse: torch.Tensor
    iterations: torch.Tensor
    evals: torch.Tensor  # BFGS: gradient evaluations (vmmin's grcount); LM: Jacobian evaluations
    fevals: torch.Tensor  # loss (vmmin's fncount) or residual evaluations
    status: torch.Tensor  # STATUS_*
    seconds: torch.Tensor  # each model's own time in the kernel
    curve: torch.Tensor  # [K, len(checkpoints), 2] (train MSE, test MSE), NaN where not reached


def _vector(name: str, v: object, n: int | None = None) -> torch.Tensor:
    a = torch.as_tensor(v, dtype=torch.float64).flatten().contiguous()
    if n is not None and a.numel() != n:
        raise ValueError(f"{name} has {a.numel()} entries, expected {n}")
    return a


def _ptr(t: torch.Tensor, ctype: type) -> ctypes._Pointer:
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


def solve(method: str, starts: Sequence[object], masks: Sequence[object], hidden: Sequence[int], activation: str,
          x: object, t: object, x_test: object, t_test: object, *, loss: str = "sum", maxit: int,
          abstol: float | Sequence[float], reltol: float | Sequence[float], checkpoints_at: Sequence[int] = (),
          threads: int = 1, damping: str = DEFAULT_DAMPING) -> Raw:
    """Run the kernel on explicit starts: model k has `hidden[k]` units, parameters `starts[k]`
    and mask `masks[k]` in its own layout (3H+1 entries; mask 0 = fixed), on the (already scaled)
    points. Raises ValueError on bad input, native.Cancelled, NativeUnavailable."""
    if method not in SECOND_ORDER:
        raise ValueError(f"unknown method {method!r}: use bfgs or lm")
    if activation not in ACT_CODES:
        raise ValueError(f"unknown activation {activation!r}")
    if loss not in ("sum", "mean"):
        raise ValueError(f"unknown loss {loss!r}: use sum or mean")
    if damping not in DAMPINGS:
        raise ValueError(f"unknown damping {damping!r}: use one of {', '.join(DAMPINGS)}")
    K = len(starts)
    if K == 0 or len(masks) != K or len(hidden) != K:
        raise ValueError(f"need as many masks and hidden sizes as starts (>= 1): {K}, {len(masks)}, {len(hidden)}")
    if maxit < 0:
        raise ValueError(f"maxit must be >= 0, got {maxit}")
    H = torch.tensor(list(hidden), dtype=torch.int32)
    if bool((H < 1).any()):
        raise ValueError("hidden sizes must be >= 1")
    widths = (3 * H.long() + 1).tolist()
    P = torch.cat([_vector(f"start {k}", s, widths[k]) for k, s in enumerate(starts)])
    mask = torch.cat([_vector(f"mask {k}", m, widths[k]) for k, m in enumerate(masks)])
    x, t, xt, tt = _vector("x", x), _vector("t", t), _vector("x_test", x_test), _vector("t_test", t_test)
    if x.numel() < 1 or t.numel() != x.numel() or xt.numel() < 1 or tt.numel() != xt.numel():
        raise ValueError(f"points and targets must match and be non-empty: {x.numel()}, {t.numel()}, "
                         f"{xt.numel()}, {tt.numel()}")
    if not all(bool(torch.isfinite(v).all()) for v in (x, t, xt, tt)):
        raise ValueError("points and targets must be finite")
    off = torch.tensor([0] + widths[:-1], dtype=torch.long).cumsum(0)
    N = x.numel()
    loss_scale = torch.full((K,), 1.0 if loss == "sum" else 1.0 / N, dtype=torch.float64)
    tols = {name: _vector(name, torch.broadcast_to(torch.as_tensor(v, dtype=torch.float64), (K,)), K)
            for name, v in (("abstol", abstol), ("reltol", reltol))}
    checks = sorted({int(c) for c in checkpoints_at})
    if any(c < 0 for c in checks):
        raise ValueError("checkpoints must be >= 0")
    check = torch.tensor(checks, dtype=torch.int32)
    curve = torch.full((K, max(len(checks), 1), 2), math.nan, dtype=torch.float64)
    out = {name: torch.empty(K, dtype=torch.float64) for name in ("loss", "train_mse", "test_mse", "seconds")}
    counts = {name: torch.zeros(K, dtype=torch.int32) for name in ("iters", "fevals", "gevals", "status")}
    doubles = dict(x=x, t=t, xt=xt, tt=tt, P=P, mask=mask, loss_scale=loss_scale, curve=curve, **tols, **out)
    b = _Batch(K=K, act=ACT_CODES[activation], N=N, Ntest=xt.numel(), maxit=maxit, ncheck=len(checks),
               threads=max(1, int(threads)), damping=DAMPINGS.index(damping), div_mse=DIVERGENCE_MSE,
               H=_ptr(H, ctypes.c_int), off=_ptr(off, ctypes.c_long), check=_ptr(check, ctypes.c_int),
               cancel=native.cancel_address(),
               **{k: _ptr(v, ctypes.c_double) for k, v in doubles.items()},
               **{k: _ptr(v, ctypes.c_int) for k, v in counts.items()})
    lib = library()
    fn = lib.so_bfgs if method == "bfgs" else lib.so_lm
    status = native.run(fn, ctypes.byref(b))  # every buffer stays referenced until it returns
    if status == -2:
        raise native.Cancelled("training cancelled")
    if status != 0 or bool((counts["status"] == STATUS_NO_MEMORY).any()):
        raise MemoryError("second-order kernel: out of memory")
    return Raw([P[off[k]:off[k] + widths[k]].clone() for k in range(K)], out["loss"], out["train_mse"],
               out["test_mse"], counts["iters"], counts["gevals"], counts["fevals"], counts["status"],
               out["seconds"], curve[:, :len(checks)])


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, *, threads: int | None = None,
              damping: str = DEFAULT_DAMPING) -> list[Result]:
    """Train one batch of second-order jobs (sharing method, activation, scaling, steps, loss and
    data set) with the kernel; results in job order, with `second_order.fit_batch`'s contract.
    `threads` defaults to torch.get_num_threads()."""
    if not jobs:
        return []
    first = jobs[0].config
    key = (first.optimizer, first.activation, first.scaling, first.steps, first.loss, first.data)
    for j in jobs:
        c = j.config
        if (c.optimizer, c.activation, c.scaling, c.steps, c.loss, c.data) != key:
            raise ValueError("a second-order batch shares optimizer, activation, scaling, steps, loss and data set; "
                             f"got {key} and {(c.optimizer, c.activation, c.scaling, c.steps, c.loss, c.data)}")
    if first.data != data.name:
        raise ValueError(f"data {first.data!r} but the data set given is {data.name!r}")
    shift, scale = datasets.scaler(data.x, first.scaling)
    checks = checkpoints(first.steps)
    start = time.perf_counter()
    raw = solve(first.optimizer, [init_one(j.config, j.seed) for j in jobs], [mask_one(j.config) for j in jobs],
                [j.config.hidden for j in jobs], first.activation, (data.x - shift) / scale, data.y,
                (data.x_test - shift) / scale, data.y_test, loss=first.loss, maxit=first.steps,
                abstol=[j.config.abstol for j in jobs], reltol=[j.config.reltol for j in jobs],
                checkpoints_at=checks, threads=threads or torch.get_num_threads(), damping=damping)
    wall = time.perf_counter() - start
    own = raw.seconds.tolist()
    total = sum(own)
    out = []
    for k in range(len(jobs)):
        started = int(raw.status[k]) != STATUS_NOT_STARTED
        steps = int(raw.iterations[k])
        train, test = float(raw.train_mse[k]), float(raw.test_mse[k])
        values = raw.curve[k].tolist()
        rows = [(c, v[0], v[1]) for c, v in zip(checks, values) if c <= steps and not math.isnan(v[0])]
        if started and (not rows or rows[-1][0] != steps):
            rows.append((steps, train, test))
        out.append(Result(
            test_mse=test if started else math.inf, train_mse=train if started else math.inf, steps=steps,
            diverged_at=None if started else 0, params=tuple(raw.params[k].tolist()) if started else None,
            curve=tuple(rows) if started else (), shift=shift, scale=scale, evals=int(raw.evals[k]),
            fevals=int(raw.fevals[k]), seconds=wall * (own[k] / total if total > 0 else 1.0 / len(jobs))))
    return out
