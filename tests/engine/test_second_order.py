"""Second-order optimizers (bfgs, lm): Jacobians, masks, batching, presets and replays.

Descent and the line search are checked on independent (numpy, R, MINPACK) values in
test_second_order_ref.py, for the torch port and the C kernel alike; the batch tests here run
both engines (`ENGINES`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest
import torch

from sweeps.engine import data as datasets
from sweeps.engine import second_order as so
from sweeps.study import spec as specs
from sweeps.engine.model import ACTIVATIONS, BatchModel, init_one, mask_one, pad
from sweeps.config import BIASES, DEFAULTS, PRESETS, Config
from sweeps.engine.fit import fit, fit_batch
from sweeps.engine.jobs import Job

from kit import config

CPU = torch.device("cpu")
F64 = torch.float64
ENGINES = ["torch", "native"]


def _engine(name: str) -> str:
    """The engine name, skipping the native one where its kernel does not build here."""
    from sweeps.engine import second_order_native as son

    if name == "native" and not son.available()[0]:
        pytest.skip(f"native kernel unavailable: {son.available()[1]}")
    return name


def _timeless(res):
    """A result without its wall time (which differs from run to run)."""
    return dataclasses.replace(res, seconds=0.0)


def _batch(configs: list[Config], seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    hidden = max(c.hidden for c in configs)
    P = torch.stack([pad(init_one(c, s), c.hidden, hidden) for c, s in zip(configs, seeds)])
    mask = torch.stack([pad(mask_one(c), c.hidden, hidden) for c in configs])
    return P, mask, hidden


def _mixed(activation: str, optimizer: str, n: int = 8, **overrides) -> list[Config]:
    """Models of every bias placement, several hidden sizes and inits, one activation."""
    inits = ("torch", "nnet", "normal")
    return [config(hidden=1 + (3 * i) % 5, bias=BIASES[i % 4], init=inits[i % 3], activation=activation,
                   optimizer=optimizer, **overrides) for i in range(n)]


def _tols(n: int, abstol: float = 1e-10, reltol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), abstol, dtype=F64), torch.full((n,), reltol, dtype=F64)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_jacobian_matches_jacrev(activation):
    configs = _mixed(activation, "lm")
    P, mask, hidden = _batch(configs, list(range(len(configs))))
    P = P + 0.1 * torch.randn(P.shape, generator=torch.Generator().manual_seed(1), dtype=F64) * mask
    d = datasets.make("r50")
    net = so.Net(hidden, activation, d.x, d.y, "sum")
    r, J = net.residuals_and_jacobian(P, mask)
    model = BatchModel(hidden, activation, d.x, d.y, "sum")
    for k in range(len(configs)):
        def residuals(p: torch.Tensor) -> torch.Tensor:
            return model.predict(p[None, :], d.x)[0] - d.y
        ref = torch.func.jacrev(residuals)(P[k])
        torch.testing.assert_close(r[k], residuals(P[k]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(J[k], ref * mask[k], rtol=1e-10, atol=1e-10)
        assert torch.all(J[k][:, mask[k] == 0] == 0)


def test_gauss_newton_products_match_the_jacobian():
    configs = _mixed("tanh", "lm")
    P, mask, hidden = _batch(configs, list(range(len(configs))))
    d = datasets.make("uniform1000")
    net = so.Net(hidden, "tanh", d.x, d.y, "sum")
    r, J = net.residuals_and_jacobian(P, mask)
    sse, A, g = net.gauss_newton(P, mask)
    torch.testing.assert_close(sse, (r * r).sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(A, J.transpose(1, 2) @ J, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g, (J.transpose(1, 2) @ r[:, :, None]).squeeze(2), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("method", ["bfgs", "lm"])
def test_masked_params_stay_zero(method):
    configs = _mixed("tanh", method, n=8)
    P, mask, hidden = _batch(configs, list(range(8)))
    d = datasets.make("r50")
    net = so.Net(hidden, "tanh", d.x, d.y, "sum")
    out = so.METHODS[method](net, P, mask, maxit=200, abstol=_tols(8)[0], reltol=_tols(8)[1])
    assert torch.all(out.P[mask == 0] == 0)
    assert torch.all(out.P[mask == 1] != P[mask == 1])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("optimizer", ["bfgs", "lm"])
def test_batch_of_one_equals_mixed_batch(optimizer, engine):
    """Bit for bit: every per-model setting differs (bias placement, init, seed, tolerances) but
    the hidden size (padding to a larger one only adds float rounding: see the next test)."""
    engine = _engine(engine)
    jobs = [Job(config(hidden=4, bias=BIASES[i % 4], init=("torch", "nnet", "normal")[i % 3], optimizer=optimizer,
                       activation="tanh", data="r50", steps=200, abstol=(1e-8, 1e-4)[i % 2],
                       reltol=(1e-10, 1e-6)[i % 3 == 0]), seed=10 + i) for i in range(9)]
    d = datasets.make("r50")
    together = fit_batch(jobs, d, CPU, engine=engine)
    for i in (0, 1, 3, 6, 7):  # odd and even places: alignment in the batch must not matter either
        (alone,) = fit_batch([jobs[i]], d, CPU, engine=engine)
        assert _timeless(alone) == _timeless(together[i])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("optimizer", ["bfgs", "lm"])
def test_padding_changes_results_only_by_rounding(optimizer, engine):
    engine = _engine(engine)
    jobs = [Job(config(hidden=h, optimizer=optimizer, activation="sigmoid", data="r50", steps=30), seed=h)
            for h in (2, 4, 7)]
    d = datasets.make("r50")
    together = fit_batch(jobs, d, CPU, engine=engine)
    for job, res in zip(jobs, together):
        (alone,) = fit_batch([job], d, CPU, engine=engine)
        assert alone.steps == res.steps
        assert alone.train_mse == pytest.approx(res.train_mse, rel=1e-7)


@pytest.mark.parametrize("optimizer", ["bfgs", "lm"])
def test_failures_stay_per_model(optimizer):
    """A non-finite start is reported diverged; a model with a singular system still trains."""
    d = datasets.make("uniform1000")
    good = config(optimizer=optimizer, activation="relu", bias="both", data="uniform1000", steps=100)
    P, mask, hidden = _batch([good] * 3, [1, 2, 3])
    P[1, 0] = math.nan
    P[2, :4] = -1.0  # every ReLU unit dead on x >= 0: J^T J is singular but for b2
    P[2, 4:8] = -1.0
    net = so.Net(hidden, "relu", d.x, d.y, "sum")
    out = so.METHODS[optimizer](net, P, mask, maxit=100, abstol=_tols(3)[0], reltol=_tols(3)[1])
    assert out.iterations[1] == 0 and not out.converged[1]
    assert torch.isfinite(out.loss[[0, 2]]).all()
    # The dead model can only fit the mean: b2 moves to it and it stops.
    assert out.P[2, 12].item() == pytest.approx(d.y.mean().item(), abs=1e-6)
    assert bool(out.converged[2])

    jobs = [Job(good, s) for s in (1, 2)]
    bad = Job(config(optimizer=optimizer, activation="relu", data="uniform1000", steps=100, init="normal", hidden=4), 0)
    for engine in ("torch", "auto"):
        results = fit_batch(jobs + [bad], d, CPU, engine=engine)
        assert all(r.diverged_at is None for r in results)  # nothing here starts non-finite


@pytest.mark.parametrize("engine", ENGINES)
def test_fit_results_follow_the_engine_contract(engine):
    engine = _engine(engine)
    jobs = [Job(config(optimizer=opt, data="r50", steps=200, activation="tanh", hidden=h), seed=s)
            for opt in ("lm", "bfgs", "adam") for h, s in ((2, 1), (5, 2))]
    results = fit(jobs, device=CPU, batch_size=64, engine=engine)
    for job, res in zip(jobs, results):
        assert res.diverged_at is None and math.isfinite(res.test_mse)
        assert len(res.params) == 3 * job.config.hidden + 1
        assert 1 <= res.steps <= 200
        assert res.curve[0][0] == 0 and res.curve[-1][0] == res.steps
        assert res.curve[-1][1] == pytest.approx(res.train_mse, rel=1e-9)
        assert res.curve[-1][2] == pytest.approx(res.test_mse, rel=1e-9)  # test MSE at each point too
        steps = [s for s, _, _ in res.curve]
        assert steps == sorted(set(steps))
        # evals: one gradient a step (first order), vmmin's grcount = its iterations (bfgs), the
        # start's and each accepted step's Jacobian (lm); fevals: loss / residual evaluations.
        opt = job.config.optimizer
        if opt == "lm":
            assert 1 <= res.evals <= res.steps + 1 and res.fevals == res.steps + 1
        else:
            assert res.evals == res.steps and (res.fevals >= res.steps if opt == "bfgs" else res.fevals == 0)
        assert res.seconds > 0
        if job.config.optimizer != "adam":  # second-order: the loss never goes up
            values = [v for _, v, _ in res.curve]  # (the start is evaluated another way: 1 ulp slack)
            assert all(b <= a * (1 + 1e-12) for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("engine", ENGINES)
def test_lm_converges_on_uniform1000(engine):
    """The benchmark's configuration on 8 seeds reaches nnet's best fit (grid MSE 1.9e-7)."""
    engine = _engine(engine)
    from sweeps.tools.bench_second_order import BEST

    c = config(**BEST, data="uniform1000")
    res = fit_batch([Job(c, s) for s in range(8)], datasets.make("uniform1000"), CPU, engine=engine)
    mses = [r.test_mse for r in res]
    assert statistics.median(mses) < 3e-7
    assert sum(m < 1e-3 for m in mses) >= 6  # the others sit in a true local minimum (2.1e-2)
    assert all(r.steps < 300 for r in res)  # all stopped by a tolerance


def test_marquardt_damping_is_available_and_descends():
    configs = _mixed("tanh", "lm", n=6)
    P, mask, hidden = _batch(configs, list(range(6)))
    d = datasets.make("r50")
    net = so.Net(hidden, "tanh", d.x, d.y, "sum")
    out = so.lm(net, P, mask, maxit=100, abstol=_tols(6)[0], reltol=_tols(6)[1], damping="marquardt")
    assert torch.all(out.loss < net.loss(P))
    with pytest.raises(ValueError):
        so.lm(net, P, mask, maxit=1, abstol=_tols(6)[0], reltol=_tols(6)[1], damping="x10")


@pytest.mark.parametrize("engine", ENGINES)
def test_nnet_preset_on_r50(engine):
    """The question's nnet call on R's 50 points, 16 seeds.

    R's own nnet on these same points (sweeps.nnet_reference, set.seed 1..16) ends with median
    grid MSE 1.6e-4, 13/16 seeds under 1e-3 and 5/16 under 1e-5: the rest sit in local minima
    (7e-2, 0.44). So the rule is nnet's class, not "most under 1e-5": at least 9/16 under 1e-3,
    at least 5/16 under 1e-5, and the best seeds near the global fit (< 1e-6).
    """
    engine = _engine(engine)
    c = Config(**{**DEFAULTS, **PRESETS["nnet"], "data": "r50"})
    res = fit_batch([Job(c, s) for s in range(16)], datasets.make("r50"), CPU, engine=engine)
    mses = sorted(r.test_mse for r in res)
    assert sum(m < 1e-3 for m in mses) >= 9
    assert sum(m < 1e-5 for m in mses) >= 5
    assert mses[0] < 1e-6
    assert all(1 <= r.steps <= 10000 and r.diverged_at is None for r in res)


@pytest.mark.parametrize("engine", ["torch", "auto"])
def test_low_level_replay_is_a_straight_line(engine):
    """No bias, ReLU, x >= 0: y = (sum over live units of w2·w1) · x, a line through the origin."""
    c = config(hidden=4, bias="none", activation="relu", optimizer="sgd", lr=1e-5, init="normal",
               loss="sum", steps=1000, data="uniform1000", precision="float32")
    d = datasets.make("uniform1000")
    res = fit_batch([Job(c, s) for s in range(16)], d, CPU, engine=engine)
    assert 0.42 < statistics.median(r.test_mse for r in res) < 0.52
    for r in res:
        w1, w2 = torch.tensor(r.params[:4]), torch.tensor(r.params[8:12])
        slope = float((w2 * w1 * (w1 > 0)).sum())
        best = float((d.x_test * d.y_test).sum() / (d.x_test * d.x_test).sum())  # the best such line
        line_mse = float(((slope * d.x_test - d.y_test) ** 2).mean())
        assert r.test_mse == pytest.approx(line_mse, rel=1e-4)
        assert line_mse >= float(((best * d.x_test - d.y_test) ** 2).mean()) - 1e-9


def test_answer_variant_is_the_bias_learning_rate_doubled():
    """The answer's extra zero-initialised bias, under Adam, equals one bias with lr x2 (seed-replay)."""
    torch.manual_seed(0)
    x = torch.linspace(0, 10, 200, dtype=F64)[:, None]
    y = torch.sin(x)
    W1, b1 = torch.randn(1, 4, dtype=F64), torch.randn(4, dtype=F64)
    W2, b2 = torch.randn(4, 1, dtype=F64), torch.randn(1, dtype=F64)

    def train(duplicate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w1, c1, w2, c2 = (t.clone().requires_grad_() for t in (W1, b1, W2, b2))
        extra = torch.zeros(4, dtype=F64, requires_grad=True)
        if duplicate:
            opt = torch.optim.Adam([w1, c1, w2, c2, extra], lr=0.01)
        else:
            opt = torch.optim.Adam([{"params": [w1, w2, c2]}, {"params": [c1], "lr": 0.02}], lr=0.01)
        for _ in range(50):
            h = torch.tanh(x @ w1 + c1 + (extra if duplicate else 0.0))
            loss = ((h @ w2 + c2 - y) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (c1 + extra).detach(), w2.detach()

    (bias_a, w2_a), (bias_b, w2_b) = train(True), train(False)
    torch.testing.assert_close(bias_a, bias_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w2_a, w2_b, rtol=1e-10, atol=1e-12)


def test_presets_in_specs(tmp_path):
    replay = specs.load("seed-replay")
    assert replay.trials == len(replay.enqueue) == 4
    assert replay.enqueue[2]["bias_copies"] == 2  # the answer's variant
    nnet = replay.enqueue[3]
    assert {k: nnet[k] for k in ("bias", "activation", "optimizer", "init", "steps")} == {
        "bias": "both", "activation": "sigmoid", "optimizer": "bfgs", "init": "nnet", "steps": 10000}
    assert (replay.fixed["abstol"], replay.fixed["reltol"]) == (1e-8, 1e-9)

    def load(text: str) -> specs.Spec:
        p = tmp_path / "s.toml"
        p.write_text(text)
        return specs.load(str(p))

    fixed = load('[fixed]\npreset = "nnet"\nsteps = 50\n[space.data]\nchoices = ["r50", "grid1000"]\n')
    assert fixed.fixed["optimizer"] == "bfgs" and fixed.fixed["steps"] == 50 and "data" not in fixed.fixed
    with pytest.raises(specs.SpecError, match="preset.*fixes it"):
        load('[fixed]\nsteps = 50\n[space.data]\nchoices = ["r50"]\n[[enqueue]]\npreset = "nnet"\ndata = "r50"\n')
    with pytest.raises(specs.SpecError, match="unknown preset"):
        load('[fixed]\npreset = "keras"\n')


def test_new_keys_keep_old_space_hashes(tmp_path):
    base = '[space.bias]\nchoices = ["none", "both"]\n[fixed]\nsteps = 10\n'
    hashes = []
    for extra in ("", "abstol = 1e-4\nreltol = 1e-8\n", "abstol = 1e-6\n"):
        p = tmp_path / "h.toml"
        p.write_text(base + extra)
        hashes.append(specs.load(str(p)).space_hash())
    assert hashes[0] == hashes[1] != hashes[2]
