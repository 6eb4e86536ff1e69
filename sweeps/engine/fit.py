"""The engine's entry point: `fit(jobs)` trains many (config, seed) models as batched programs.

`fit` picks an engine per method (`choose`: the C kernels on a CPU, the torch loops on CUDA or
when asked for), groups the jobs into what one batch may share (`group_key`), cuts each group
into batches and trains each with its method (`fit_batch`). Results come back in the order of
`jobs`. A model's numbers depend only on its own config and seed, never on its batch-mates (up
to float rounding from the torch path's padding, which the tests bound). No Optuna here.

Batches: the torch path sorts a group by hidden size so padding stays small and cuts it into
batches of `batch_size` models, fewer where the batch's [K, H, N] tensors would not fit
(`jobs.batch_elements`: the CPU's cache, the GPU's free memory); on CUDA a batch also holds
hidden sizes of one power-of-two bucket only (1, 2, 3-4, 5-8, …), so a few wide models do not
pad many narrow ones. The native kernels pad nothing and take `batch_size` models a call.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from ..config import FIRST_ORDER, Config
from . import data as datasets
from . import first_order, first_order_native, native, second_order, second_order_native
from .jobs import Job, Result, batch_elements

ENGINES = ("auto", "native", "torch")
ENV_ENGINE = "SWEEPS_ENGINE"


def engine_name(engine: str | None = None) -> str:
    """The engine asked for: `engine`, else $SWEEPS_ENGINE, else `auto`; ValueError if unknown."""
    name = (engine or os.environ.get(ENV_ENGINE, "").strip() or "auto").lower()
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (from {'the argument' if engine else '$' + ENV_ENGINE}): "
                         f"use {', '.join(ENGINES)}")
    return name


def choose(optimizer: str, engine: str | None, device: torch.device, compile: bool = False) -> bool:
    """Whether models with `optimizer` train natively under `engine` (see `engine_name`) on `device`.

    `auto`: the C kernel on a CPU where it builds, else torch (and torch when a first-order run
    asks for torch.compile). `native`: the kernel, or NativeUnavailable saying why not (and
    ValueError on a GPU). `torch`: the torch loops, the reference.
    """
    name = engine_name(engine)
    if name == "torch":
        return False
    if device.type != "cpu":
        if name == "native":
            raise ValueError(f"the native kernels run on the CPU only, not on {device}")
        return False
    kernel = first_order_native if optimizer in FIRST_ORDER else second_order_native
    if name == "auto":
        return not (compile and optimizer in FIRST_ORDER) and kernel.available()[0]
    ok, why = kernel.available()
    if not ok:
        raise native.NativeUnavailable(why)
    return True


def group_key(config: Config, native_kernel: bool = False) -> tuple:
    """Models that may share a batch.

    Torch path: same data, scaling, step budget, precision and activation. First-order models of
    any optimizer, loss, hidden size, bias, init and lr share a batch (sorted into runs of equal
    optimizer). Mixing activations too was measured slower on a CPU: every model is then padded
    to the largest hidden size of all, and each activation costs its own ops anyway.
    First-order kernel: same data, scaling and precision (it packs models by activation itself
    and gives each its own hidden size and step budget). Second-order methods, either path,
    batch per method and loss too.
    """
    if config.optimizer in FIRST_ORDER:
        if native_kernel:
            return ("native", config.data, config.scaling, config.precision)
        return (config.data, config.scaling, config.steps, config.precision, config.activation)
    return (native_kernel, config.data, config.scaling, config.steps, config.precision, config.activation,
            config.optimizer, config.loss)


def _bucket(hidden: int) -> int:
    """The power-of-two bucket of a hidden size: 1, 2, 3-4, 5-8, 9-16, …"""
    return (hidden - 1).bit_length()


def fit(jobs: Sequence[Job], *, device: torch.device, batch_size: int, data_seed: int = 0,
        on_batch: Callable[[int], None] | None = None, compile: bool = False,
        engine: str | None = None) -> list[Result]:
    """Train every job; returns results in job order. `on_batch(n)` is called after each batch.

    `engine`: auto | native | torch (default $SWEEPS_ENGINE, else auto; see `choose`).
    `compile` fuses the torch path's first-order step with torch.compile (same arithmetic; pays a
    one-off compile per activation). Raises native.Cancelled once `native.cancel()` is called.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    uses: dict[str, bool] = {}
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        opt = job.config.optimizer
        if opt not in uses:
            uses[opt] = choose(opt, engine, device, compile)
        groups[group_key(job.config, uses[opt])].append(i)
    results: list[Result | None] = [None] * len(jobs)
    cache: dict[str, datasets.Dataset] = {}
    for indices in groups.values():
        indices.sort(key=lambda i: (jobs[i].config.activation, jobs[i].config.hidden))
        first = jobs[indices[0]].config
        use = uses[first.optimizer]
        if first.data not in cache:
            cache[first.data] = datasets.make(first.data, data_seed)
        data = cache[first.data]
        start = 0
        while start < len(indices):
            size = min(batch_size, len(indices) - start)
            if not use:
                # The largest hidden size of the would-be batch sets its tensors' size [K, H, N].
                widest = jobs[indices[start + size - 1]].config.hidden
                size = min(size, max(1, batch_elements(device) // (widest * data.x.numel())))
                if device.type == "cuda":
                    bucket = _bucket(jobs[indices[start]].config.hidden)
                    while _bucket(jobs[indices[start + size - 1]].config.hidden) != bucket:
                        size -= 1
            chunk = indices[start:start + size]
            start += size
            batch = [jobs[i] for i in chunk]
            t0 = time.perf_counter()
            done = fit_batch(batch, data, device, compile=compile, native_kernel=use)
            if not use:
                done = with_seconds(done, batch, time.perf_counter() - t0, data.x.numel())
            for i, res in zip(chunk, done):
                results[i] = res
            if on_batch is not None:
                on_batch(len(chunk))
    return results  # type: ignore[return-value]


def with_seconds(results: Sequence[Result], jobs: Sequence[Job], wall: float, points: int) -> list[Result]:
    """Each result with its share of the batch's wall time, in proportion to its work: hidden
    units x training points x evaluations (a model that stopped early cost less)."""
    work = [max(1, j.config.hidden * points * max(r.evals + r.fevals, 1)) for r, j in zip(results, jobs)]
    total = float(sum(work))
    return [dataclasses.replace(r, seconds=wall * w / total) for r, w in zip(results, work)]


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device, compile: bool = False, *,
              native_kernel: bool | None = None, engine: str | None = None) -> list[Result]:
    """Train one batch of jobs sharing a group (see `group_key`) on one data set; results in job order.

    `native_kernel` says which path (None: `choose(…, engine, …)`). The torch path's results
    carry no `seconds` (see `with_seconds`); the kernels' do.
    """
    first = jobs[0].config
    if native_kernel is None:
        native_kernel = choose(first.optimizer, engine, device, compile)
    assert all(group_key(j.config, native_kernel) == group_key(first, native_kernel) for j in jobs), \
        "mixed groups in a batch"
    if first.optimizer in FIRST_ORDER:
        if native_kernel:
            return first_order_native.fit_batch(jobs, data)
        return first_order.fit_batch(jobs, data, device, compile=compile)
    if native_kernel:
        return second_order_native.fit_batch(jobs, data)
    return second_order.fit_batch(jobs, data, device)
