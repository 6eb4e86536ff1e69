"""CUDA: the same per-model results as the CPU, for every optimizer and activation, and a whole
`quick` run on the GPU. Marked `gpu` and skipped without CUDA (`pytest -m gpu` on a GPU machine).

Tolerance: first order in float64 on both devices, 1e-9 relative after 200 steps (the CPU and
CUDA reductions sum in different orders: rounding, amplified by at most a few orders over 200
steps of a stable learning rate); second order in float64, 1e-6 on the final loss (their
stopping tests may end a model an iteration apart when a change sits at the tolerance).
"""

from __future__ import annotations

import math

import pytest
import torch

from kit import config
from sweeps.config import ACTIVATIONS, FIRST_ORDER, SECOND_ORDER
from sweeps.engine.fit import fit
from sweeps.engine.jobs import Job

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CPU, CUDA = torch.device("cpu"), torch.device("cuda") if torch.cuda.is_available() else None


def _jobs(optimizer: str, activation: str) -> list[Job]:
    return [Job(config(optimizer=optimizer, activation=activation, hidden=h, bias=b, data="r50", steps=200,
                       precision="float64", lr=1e-3 if optimizer in ("sgd", "momentum") else 1e-2), seed=s)
            for s, (h, b) in enumerate(((1, "both"), (4, "hidden"), (6, "both"), (3, "output")))]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("optimizer", FIRST_ORDER + SECOND_ORDER)
def test_cuda_agrees_with_the_cpu(optimizer, activation):
    jobs = _jobs(optimizer, activation)
    on_cpu = fit(jobs, device=CPU, batch_size=64, engine="torch")
    on_gpu = fit(jobs, device=CUDA, batch_size=64)
    rel = 1e-9 if optimizer in FIRST_ORDER else 1e-6
    for a, b in zip(on_cpu, on_gpu):
        assert a.diverged == b.diverged
        if not a.diverged:
            assert math.isclose(a.train_mse, b.train_mse, rel_tol=rel, abs_tol=1e-12)
            assert math.isclose(a.test_mse, b.test_mse, rel_tol=rel, abs_tol=1e-12)


def test_a_whole_quick_run_on_cuda(tmp_path):
    from sweeps.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["run", "quick", "--storage", url, "--device", "cuda", "--no-progress", "-q"]) == 0
    import optuna

    trials = optuna.load_study(study_name="quick", storage=url).trials
    assert trials and all(t.user_attrs["run"]["device"].startswith("cuda") for t in trials if t.user_attrs)
