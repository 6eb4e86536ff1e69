"""First-order training through one fused C kernel (kernels/first_order.c): the CPU default.

`fit_batch(jobs, data)` trains first-order jobs with the semantics of the torch loop in
`sweeps.engine.first_order` (torch.optim's sgd / momentum / adam / rmsprop, per-model lr, bias
placement, `bias_copies`, sum/mean loss, divergence = training MSE non-finite or past
DIVERGENCE_MSE freezes the model, training and test MSE at `checkpoints(steps)`), which stays the
reference. One call trains every model to its end, each with its own hidden size and step budget
(no padding to the batch's widest), in packs of 16 (float32) or 8 (float64) models, one per SIMD
lane, OpenMP over packs. Jobs must share the data set, input scaling and precision.

Equality with the reference (tests/engine/test_first_order_native.py):
- float64: the torch loop's and torch.optim's numbers to ~1e-9 relative after 100-150 steps:
  both round differently (sum order, fused multiply-adds, exp to ~1 ulp), by ~1e-16 an
  operation, and training amplifies that by a bounded factor over a bounded number of steps.
- float32: the same arithmetic in float32; the tests compare after 100 steps to 1e-5 relative,
  and show torch.optim's own float32 run as far from its float64 twin (float32 rounding).
- tanh is 2·sigmoid(2z) − 1: absolute error ~1 ulp of 1, the rounding y = Σ w2·a already has.
- A model's numbers do not depend on its batch-mates, its lane, or the thread count, bit for bit
  (narrower models' extra units add exact zeros).
`seconds` is each model's share of the call's wall time by its pack's measured time.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Sequence

import torch

from ..config import ACTIVATIONS, BIASES, FIRST_ORDER, INITS, LOSSES, PRECISIONS, SCALINGS, has_hidden_bias, has_output_bias
from . import data as datasets
from . import native
from .jobs import Job, Result, checkpoints
from .model import init_one

KERNEL = "first_order"
ABI = 3
# The kernel's enum orders (kernels/first_order.c).
ACTIVATION_CODE = {name: i for i, name in enumerate(("relu", "tanh", "sigmoid", "gelu", "softplus", "sin"))}
OPTIMIZER_CODE = {name: i for i, name in enumerate(("sgd", "momentum", "adam", "rmsprop"))}
LANES = {"float32": 16, "float64": 8}
STATUS = {-1: "bad arguments", -2: "out of memory"}
CANCELLED = -3
assert set(ACTIVATION_CODE) == set(ACTIVATIONS) and set(OPTIMIZER_CODE) == set(FIRST_ORDER)


class _Batch(ctypes.Structure):
    """Mirror of the kernel's fo_batch (field order and types must match)."""

    _fields_ = [(n, ctypes.c_int32) for n in ("n_models", "n_points", "n_test", "n_checkpoints", "n_packs", "threads")] + [
        (n, ctypes.c_void_p) for n in (
            "pack_start", "order", "hidden", "activation", "optimizer", "steps", "hidden_bias", "output_bias",
            "lr", "lr_bias", "grad_scale", "offset", "params", "x", "t", "x_test", "t_test", "checkpoints",
            "diverged_at", "train_mse", "test_mse", "curve_train", "curve_test", "pack_seconds", "cancel")]


def library() -> ctypes.CDLL:
    """The loaded kernel; NativeUnavailable says why not."""
    lib = native.load(KERNEL).lib
    if lib.fo_abi() != ABI:
        raise native.NativeUnavailable(f"{KERNEL} library ABI {lib.fo_abi()} does not match this module's {ABI}")
    for name in ("fo_train_f32", "fo_train_f64"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.POINTER(_Batch)]
    return lib


def available() -> tuple[bool, str]:
    """Whether the kernel runs here; if not, why (see `native.available`)."""
    return native.available(KERNEL, library)


def validate(jobs: Sequence[Job], data: datasets.Dataset) -> None:
    """ValueError naming the first job (or data array) the kernel cannot take."""
    for name in ("x", "y", "x_test", "y_test"):
        v = getattr(data, name)
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() < 1:
            raise ValueError(f"data.{name} must be a non-empty 1-D tensor, got {getattr(v, 'shape', type(v))}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"data.{name} has non-finite values")
    if data.x.shape != data.y.shape or data.x_test.shape != data.y_test.shape:
        raise ValueError("data: inputs and targets differ in shape")
    first = jobs[0].config
    for i, job in enumerate(jobs):
        c, problems = job.config, []
        if c.optimizer not in FIRST_ORDER:
            problems.append(f"optimizer {c.optimizer!r} is not first order ({', '.join(FIRST_ORDER)})")
        if c.data != data.name:
            problems.append(f"data {c.data!r} but the data set given is {data.name!r}")
        if (c.scaling, c.precision) != (first.scaling, first.precision):
            problems.append("scaling and precision must be the batch's")
        if not (isinstance(c.hidden, int) and c.hidden >= 1):
            problems.append(f"hidden must be a positive integer, got {c.hidden!r}")
        if not (isinstance(c.steps, int) and 0 <= c.steps < 2**31):
            problems.append(f"steps must be a non-negative integer, got {c.steps!r}")
        if not (isinstance(c.lr, (int, float)) and math.isfinite(c.lr) and c.lr >= 0):
            problems.append(f"lr must be a finite number >= 0, got {c.lr!r}")
        if not (isinstance(c.bias_copies, int) and c.bias_copies >= 1):
            problems.append(f"bias_copies must be a positive integer, got {c.bias_copies!r}")
        for key, allowed in (("bias", BIASES), ("activation", ACTIVATIONS), ("loss", LOSSES), ("init", INITS),
                             ("scaling", SCALINGS), ("precision", PRECISIONS)):
            if getattr(c, key) not in allowed:
                problems.append(f"{key} {getattr(c, key)!r} is not one of {', '.join(allowed)}")
        if problems:
            raise ValueError(f"job {i} (seed {job.seed}): " + "; ".join(problems))


def plan_packs(jobs: Sequence[Job], lanes: int) -> tuple[list[int], list[int]]:
    """Order the models and cut them into packs of at most `lanes` that share an activation.

    Within an activation, models are sorted by step budget, hidden size, optimizer and learning
    rate: pack-mates then run about as long, pad little, and tend to diverge together (a pack
    whose models have all stopped costs nothing more). Packs are listed most expensive first so
    that the dynamic schedule ends with the short ones. Returns (order, pack_start).
    """
    def key(i: int) -> tuple:
        c = jobs[i].config
        return ACTIVATION_CODE[c.activation], c.steps, c.hidden, OPTIMIZER_CODE[c.optimizer], c.lr, i

    packs: list[list[int]] = []
    for i in sorted(range(len(jobs)), key=key):
        if packs and len(packs[-1]) < lanes and jobs[packs[-1][0]].config.activation == jobs[i].config.activation:
            packs[-1].append(i)
        else:
            packs.append([i])
    packs.sort(key=lambda p: -max(jobs[i].config.steps for i in p) * max(jobs[i].config.hidden for i in p))
    starts = [0]
    for p in packs:
        starts.append(starts[-1] + len(p))
    return [i for p in packs for i in p], starts


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, *, threads: int | None = None) -> list[Result]:
    """Train `jobs` (first order, one data set, scaling and precision) with the kernel; results in
    job order. `threads`: OpenMP threads (default torch.get_num_threads(), which honours
    OMP_NUM_THREADS). Raises NativeUnavailable, ValueError on bad input, native.Cancelled."""
    if not jobs:
        return []
    validate(jobs, data)
    lib = library()
    threads = threads or torch.get_num_threads()
    first = jobs[0].config
    dtype = torch.float64 if first.precision == "float64" else torch.float32
    shift, scale = datasets.scaler(data.x, first.scaling)
    x = ((data.x - shift) / scale).to(dtype).contiguous()
    x_test = ((data.x_test - shift) / scale).to(dtype).contiguous()
    n, k = x.numel(), len(jobs)

    own = [checkpoints(j.config.steps) for j in jobs]
    union = sorted(set().union(*own))
    inits = [init_one(j.config, j.seed) for j in jobs]
    offsets = [0]
    for p in inits:
        offsets.append(offsets[-1] + p.numel())
    order, starts = plan_packs(jobs, LANES[first.precision])

    def i32(v: list[int]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int32)

    def f64(v: list[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    configs = [j.config for j in jobs]
    arrays = {
        "pack_start": i32(starts), "order": i32(order),
        "hidden": i32([c.hidden for c in configs]),
        "activation": i32([ACTIVATION_CODE[c.activation] for c in configs]),
        "optimizer": i32([OPTIMIZER_CODE[c.optimizer] for c in configs]),
        "steps": i32([c.steps for c in configs]),
        "hidden_bias": torch.tensor([has_hidden_bias(c.bias) for c in configs], dtype=torch.uint8),
        "output_bias": torch.tensor([has_output_bias(c.bias) for c in configs], dtype=torch.uint8),
        "lr": f64([c.lr for c in configs]),
        # model.bias_lr_factor's rule: k copies of a bias train as one bias with k times the rate.
        "lr_bias": f64([c.lr * c.bias_copies for c in configs]),
        # dLoss/dy per residual, as BatchModel's `scale`: 2 for the sum of squares, 2/N for the mean.
        "grad_scale": f64([2.0 if c.loss == "sum" else 2.0 / n for c in configs]),
        "offset": torch.tensor(offsets[:-1], dtype=torch.int64),
        "params": torch.cat(inits).to(dtype).contiguous(),
        "x": x, "t": data.y.to(dtype).contiguous(), "x_test": x_test, "t_test": data.y_test.to(dtype).contiguous(),
        "checkpoints": i32(union),
        "diverged_at": torch.full((k,), -1, dtype=torch.int32),
        "train_mse": torch.full((k,), math.nan, dtype=torch.float64),
        "test_mse": torch.full((k,), math.nan, dtype=torch.float64),
        "curve_train": torch.full((k, max(len(union), 1)), math.nan, dtype=torch.float64),
        "curve_test": torch.full((k, max(len(union), 1)), math.nan, dtype=torch.float64),
        "pack_seconds": torch.zeros(len(starts) - 1, dtype=torch.float64),
    }
    batch = _Batch(n_models=k, n_points=n, n_test=x_test.numel(), n_checkpoints=len(union),
                   n_packs=len(starts) - 1, threads=threads, cancel=native.cancel_address(),
                   **{name: a.data_ptr() for name, a in arrays.items()})
    train = lib.fo_train_f64 if dtype == torch.float64 else lib.fo_train_f32
    start = time.perf_counter()
    status = native.run(train, ctypes.byref(batch))  # `arrays` stays alive until the kernel returns
    wall = time.perf_counter() - start
    if status == CANCELLED:
        raise native.Cancelled("training cancelled")
    if status != 0:
        raise RuntimeError(f"the first-order kernel failed: {STATUS.get(status, status)}")
    return _results(jobs, arrays, own, union, order, starts, offsets, wall, shift, scale)


def _results(jobs: Sequence[Job], arrays: dict[str, torch.Tensor], own: list[list[int]], union: list[int],
             order: list[int], starts: list[int], offsets: list[int], wall: float, shift: float,
             scale: float) -> list[Result]:
    # Each model's share of the wall time: its pack's share, split among the pack's models.
    pack_s = arrays["pack_seconds"].tolist()
    total = sum(pack_s)
    seconds = [0.0] * len(jobs)
    for p in range(len(pack_s)):
        share = pack_s[p] / total if total > 0 else 1.0 / len(pack_s)
        for i in order[starts[p]:starts[p + 1]]:
            seconds[i] = wall * share / (starts[p + 1] - starts[p])
    flat = arrays["params"].to(torch.float64).tolist()
    div = arrays["diverged_at"].tolist()
    train_mse, test_mse = arrays["train_mse"].tolist(), arrays["test_mse"].tolist()
    ctrain, ctest = arrays["curve_train"].tolist(), arrays["curve_test"].tolist()
    col = {s: c for c, s in enumerate(union)}
    out = []
    for i, job in enumerate(jobs):
        d = div[i] if div[i] >= 0 else None
        steps = d if d is not None else job.config.steps
        curve = tuple((s, ctrain[i][col[s]], ctest[i][col[s]]) for s in own[i] if not math.isnan(ctrain[i][col[s]]))
        out.append(Result(
            test_mse=math.inf if d is not None else test_mse[i],
            train_mse=math.inf if d is not None else train_mse[i],
            steps=steps, diverged_at=d,
            params=None if d is not None else tuple(flat[offsets[i]:offsets[i + 1]]),
            curve=curve, shift=shift, scale=scale, evals=steps, seconds=seconds[i]))
    return out


def activations(activation: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(z), f'(z)) exactly as the kernel computes them (float32 or float64 `z`): for tests."""
    lib = library()
    fn = lib.fo_activations_f32 if z.dtype == torch.float32 else lib.fo_activations_f64
    z = z.contiguous()
    a, d = torch.empty_like(z), torch.empty_like(z)
    if fn(ACTIVATION_CODE[activation], z.numel(), *(ctypes.c_void_p(v.data_ptr()) for v in (z, a, d))) != 0:
        raise ValueError(f"bad activation {activation!r}")
    return a, d


def limit(kind: int, activation: str, count: int, threads: int) -> tuple[float, float]:
    """The machine's limit for a step's per-(unit, point) arithmetic in float32 (kernel `fo_limit`):
    kind 0 the whole elementwise step, 1 the activation and its derivative, 2 the multiply-adds;
    `count` (unit, point) vectors of 16 per thread. Returns (wall seconds, the largest thread's
    CPU seconds); elements = count * 16 * threads."""
    fn = library().fo_limit_f32
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    cpu = ctypes.c_double()
    wall = fn(kind, ACTIVATION_CODE[activation], count, threads, ctypes.byref(cpu))
    return wall, cpu.value
