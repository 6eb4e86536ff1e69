"""The batched optimizers against torch.optim on the same model, and batch independence: the
torch loop (the reference) and the C kernel (the CPU default) alike (`ENGINES`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sweeps.engine import data as datasets
from sweeps.engine.model import Layout, init_one
from sweeps.engine.fit import fit, fit_batch
from sweeps.engine.jobs import Job
from sweeps.engine import first_order_native
from kit import config

ENGINES = ["torch", "native"]


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each test runs on both engines; the native one is skipped where its kernel does not build."""
    if request.param == "native" and not first_order_native.available()[0]:
        pytest.skip(f"native kernel unavailable: {first_order_native.available()[1]}")
    return request.param

TORCH_ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
             "softplus": F.softplus, "sin": torch.sin}


def torch_optim_trajectory(cfg, seed, steps, data):
    """Train one model the way a tutorial would: nn.Parameters, autograd, torch.optim."""
    flat = init_one(cfg, seed)
    L = Layout(cfg.hidden)
    w1 = torch.nn.Parameter(flat[L.w1].clone())
    w2 = torch.nn.Parameter(flat[L.w2].clone())
    params = [w1, w2]
    b1 = torch.nn.Parameter(flat[L.b1].clone()) if cfg.bias in ("hidden", "both") else None
    b2 = torch.nn.Parameter(flat[L.b2].clone()) if cfg.bias in ("output", "both") else None
    params += [p for p in (b1, b2) if p is not None]
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=cfg.lr),
        "momentum": lambda: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9),
        "adam": lambda: torch.optim.Adam(params, lr=cfg.lr, foreach=False),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=cfg.lr, foreach=False),
    }[cfg.optimizer]()
    x, y = data.x[:, None], data.y
    act = TORCH_ACT[cfg.activation]

    def forward(xx):
        z = xx * w1 + (b1 if b1 is not None else 0.0)
        return act(z) @ w2 + (b2 if b2 is not None else 0.0)

    for _ in range(steps):
        opt.zero_grad()
        r = forward(x) - y
        loss = (r * r).sum() if cfg.loss == "sum" else (r * r).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test = ((forward(data.x_test[:, None]) - data.y_test) ** 2).mean().item()
        zero = torch.zeros(1, dtype=torch.float64)
        own = torch.cat([w1, b1 if b1 is not None else zero.expand(cfg.hidden), w2, b2 if b2 is not None else zero])
    return own.detach(), test


CASES = [
    ("sgd", "relu", "none", 1e-4, "sum"),
    ("sgd", "tanh", "both", 1e-3, "sum"),
    ("momentum", "sigmoid", "hidden", 1e-3, "sum"),
    ("momentum", "sin", "output", 0.05, "mean"),
    ("adam", "tanh", "both", 0.01, "sum"),
    ("adam", "gelu", "hidden", 0.01, "mean"),
    ("rmsprop", "softplus", "both", 1e-3, "sum"),
    ("rmsprop", "relu", "output", 0.003, "mean"),
]


@pytest.mark.parametrize("optimizer,activation,bias,lr,loss", CASES)
def test_batch_of_one_matches_torch_optim(optimizer, activation, bias, lr, loss, engine):
    cfg = config(hidden=4, optimizer=optimizer, activation=activation, bias=bias, lr=lr, loss=loss,
                 data="r50", steps=150, precision="float64")
    data = datasets.make("r50")
    (res,) = fit_batch([Job(cfg, 11)], data, torch.device("cpu"), engine=engine)
    ref_params, ref_test = torch_optim_trajectory(cfg, 11, 150, data)
    torch.testing.assert_close(torch.tensor(res.params, dtype=torch.float64), ref_params, rtol=1e-9, atol=1e-11)
    assert math.isclose(res.test_mse, ref_test, rel_tol=1e-8)


def _mixed_jobs(optimizer):
    return [Job(config(hidden=h, bias=b, lr=lr, optimizer=optimizer, activation="tanh", data="r50",
                       steps=120, precision="float64", init=init), seed)
            for seed, (h, b, lr, init) in enumerate([(1, "none", 1e-3, "torch"), (7, "both", 3e-3, "nnet"),
                                                    (3, "hidden", 1e-3, "normal"), (12, "output", 1e-4, "torch"),
                                                    (4, "both", 2e-3, "nnet")])]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop"])
def test_each_member_of_a_mixed_batch_matches_training_alone(optimizer, engine):
    jobs = _mixed_jobs(optimizer)
    together = fit(jobs, device=torch.device("cpu"), batch_size=len(jobs), engine=engine)
    alone = fit(jobs, device=torch.device("cpu"), batch_size=1, engine=engine)
    for a, b in zip(together, alone):
        # Padding changes only the order of float64 sums over hidden units.
        torch.testing.assert_close(torch.tensor(a.params, dtype=torch.float64), torch.tensor(b.params, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        assert math.isclose(a.test_mse, b.test_mse, rel_tol=1e-9)
        assert a.steps == b.steps == 120


def test_a_diverging_model_does_not_touch_its_batch_mates(engine):
    jobs = _mixed_jobs("sgd")
    bad = Job(config(hidden=4, bias="both", lr=50.0, optimizer="sgd", activation="tanh", data="r50",
                     steps=120, precision="float64"), 99)
    clean = fit(jobs, device=torch.device("cpu"), batch_size=16, engine=engine)
    mixed = fit(jobs[:2] + [bad] + jobs[2:], device=torch.device("cpu"), batch_size=16, engine=engine)
    worst = mixed.pop(2)
    assert worst.diverged and worst.diverged_at is not None and worst.diverged_at < 120
    assert worst.test_mse == math.inf and worst.params is None and worst.steps == worst.diverged_at
    for a, b in zip(clean, mixed):
        assert not b.diverged
        torch.testing.assert_close(torch.tensor(a.params, dtype=torch.float64), torch.tensor(b.params, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_results_come_back_in_job_order_across_groups(engine):
    jobs = [Job(config(hidden=h, activation=a, data="r50", steps=20), s)
            for s, (h, a) in enumerate([(8, "tanh"), (2, "relu"), (5, "tanh"), (1, "relu")])]
    res = fit(jobs, device=torch.device("cpu"), batch_size=2, engine=engine)
    for job, r in zip(jobs, res):
        assert len(r.params) == Layout(job.config.hidden).width


def test_one_batch_of_every_activation_optimizer_and_loss_matches_training_alone(engine):
    from itertools import product

    combos = list(product(["relu", "tanh", "sigmoid", "gelu", "softplus", "sin"], ["sgd", "momentum", "adam", "rmsprop"]))
    jobs = [Job(config(hidden=1 + i % 6, bias=["none", "hidden", "output", "both"][i % 4], activation=a, optimizer=o,
                       lr={"sgd": 1e-4, "momentum": 1e-4, "adam": 1e-2, "rmsprop": 1e-3}[o],
                       loss="sum" if i % 3 else "mean", data="r50", steps=80, precision="float64"), i)
            for i, (a, o) in enumerate(combos)]
    together = fit(jobs[::-1], device=torch.device("cpu"), batch_size=len(jobs), engine=engine)[::-1]
    alone = fit(jobs, device=torch.device("cpu"), batch_size=1, engine=engine)
    for a, b in zip(together, alone):
        assert a.diverged_at == b.diverged_at
        if a.params is not None:
            torch.testing.assert_close(torch.tensor(a.params, dtype=torch.float64), torch.tensor(b.params, dtype=torch.float64),
                                       rtol=1e-9, atol=1e-12)


def test_compiled_step_gives_the_same_numbers():
    jobs = _mixed_jobs("adam")
    eager = fit(jobs, device=torch.device("cpu"), batch_size=8, engine="torch")
    fused = fit(jobs, device=torch.device("cpu"), batch_size=8, compile=True)  # auto: compiled torch
    for a, b in zip(eager, fused):
        torch.testing.assert_close(torch.tensor(a.params, dtype=torch.float64), torch.tensor(b.params, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)


class LinearWithInputBias(torch.nn.Linear):
    """The answer's class, as posted: nn.Linear plus a second, zero-initialised output bias."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=True, dtype=torch.float64)
        self._out_bias = torch.nn.Parameter(torch.zeros(1, out_features, dtype=torch.float64))

    def forward(self, x):
        return super().forward(x) + self._out_bias


def test_bias_copies_two_is_the_answers_linear_with_input_bias(engine):
    cfg = config(hidden=4, bias="both", activation="tanh", optimizer="adam", lr=0.01, loss="sum", data="r50",
                 steps=100, precision="float64", bias_copies=2)
    data = datasets.make("r50")
    (res,) = fit_batch([Job(cfg, 5)], data, torch.device("cpu"), engine=engine)
    flat, L = init_one(cfg, 5), Layout(4)
    hidden, out = LinearWithInputBias(1, 4), LinearWithInputBias(4, 1)
    with torch.no_grad():
        hidden.weight.copy_(flat[L.w1][:, None]), hidden.bias.copy_(flat[L.b1])
        out.weight.copy_(flat[L.w2][None, :]), out.bias.copy_(flat[L.b2])
    opt = torch.optim.Adam(list(hidden.parameters()) + list(out.parameters()), lr=0.01, foreach=False)
    for _ in range(100):
        opt.zero_grad()
        loss = ((out(torch.tanh(hidden(data.x[:, None]))) - data.y[:, None]) ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ref = torch.cat([hidden.weight[:, 0], hidden.bias + hidden._out_bias[0], out.weight[0], out.bias + out._out_bias[0]])
    torch.testing.assert_close(torch.tensor(res.params, dtype=torch.float64), ref, rtol=1e-9, atol=1e-11)
    assert cfg.n_params() == 4 + 2 * 4 + 4 + 2 * 1
