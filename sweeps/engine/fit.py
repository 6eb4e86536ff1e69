"""The engine's entry point: `fit(jobs)` trains many (config, seed) models as batched tensor programs.

`fit` groups the jobs (same data set, scaling, step budget, precision and activation share a
batch; second-order methods also per method and loss: see `group_key`), sorts each group by hidden
size so padding stays small, cuts it into batches of `batch_size` models (fewer on a CPU, where a
batch's tensors should stay in cache) and trains each batch with its method (`fit_batch`). Results
come back in the order of `jobs`. A model's numbers depend only on its own config and seed, never
on its batch-mates (up to float rounding from padding, which the tests bound). No Optuna here.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from ..config import FIRST_ORDER, Config
from . import data as datasets
from . import first_order, second_order
from .jobs import CPU_BATCH_ELEMENTS, Job, Result


def group_key(config: Config) -> tuple:
    """Models that may share a batch: same data, scaling, step budget, precision and activation.

    First-order models of any optimizer, loss, hidden size, bias, init and lr share a batch
    (sorted into runs of equal optimizer). Mixing activations too was measured slower on a CPU:
    every model is then padded to the largest hidden size of all, and each activation costs its
    own ops anyway. Second-order methods batch per method and loss.
    """
    shared = (config.data, config.scaling, config.steps, config.precision, config.activation)
    if config.optimizer in FIRST_ORDER:
        return shared
    return shared + (config.optimizer, config.loss)


def fit(jobs: Sequence[Job], *, device: torch.device, batch_size: int, data_seed: int = 0,
        on_batch: Callable[[int], None] | None = None, compile: bool = False) -> list[Result]:
    """Train every job; returns results in job order. `on_batch(n)` is called after each batch.

    `compile` fuses the first-order training step with torch.compile (same arithmetic; pays a
    one-off compile per activation, worth it for long runs and large batches: see `make bench`).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[group_key(job.config)].append(i)
    results: list[Result | None] = [None] * len(jobs)
    cache: dict[str, datasets.Dataset] = {}
    for indices in groups.values():
        indices.sort(key=lambda i: jobs[i].config.hidden)
        name = jobs[indices[0]].config.data
        if name not in cache:
            cache[name] = datasets.make(name, data_seed)
        start = 0
        while start < len(indices):
            size = batch_size
            if device.type == "cpu":
                # The largest hidden size of the would-be batch sets its tensors' size [K, H, N].
                widest = jobs[indices[min(start + size, len(indices)) - 1]].config.hidden
                size = min(size, max(1, CPU_BATCH_ELEMENTS // (widest * cache[name].x.numel())))
            chunk = indices[start:start + size]
            start += size
            t0 = time.perf_counter()
            done = fit_batch([jobs[i] for i in chunk], cache[name], device, compile=compile)
            for i, res in zip(chunk, with_seconds(done, [jobs[i] for i in chunk], time.perf_counter() - t0,
                                                  cache[name].x.numel())):
                results[i] = res
            if on_batch is not None:
                on_batch(len(chunk))
    return results  # type: ignore[return-value]


def with_seconds(results: Sequence[Result], jobs: Sequence[Job], wall: float, points: int) -> list[Result]:
    """Each result with its share of the batch's wall time, in proportion to its work: hidden
    units x training points x gradient evaluations (a model that stopped early cost less)."""
    work = [max(1, j.config.hidden * points * max(r.evals, 1)) for r, j in zip(results, jobs)]
    total = float(sum(work))
    return [dataclasses.replace(r, seconds=wall * w / total) for r, w in zip(results, work)]


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device, compile: bool = False) -> list[Result]:
    """Train one batch of jobs sharing a group (see `group_key`) on one data set; results in job order."""
    first = jobs[0].config
    assert all(group_key(j.config) == group_key(first) for j in jobs), "mixed groups in a batch"
    if first.optimizer in FIRST_ORDER:
        return first_order.fit_batch(jobs, data, device, compile=compile)
    return second_order.fit_batch(jobs, data, device)
