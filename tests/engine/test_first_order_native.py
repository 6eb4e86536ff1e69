"""The first-order C kernel (sweeps.engine.first_order_native) against torch.optim and the torch loop.

Tolerances (see also the module's docstring):
- float64: relative 1e-9 after 100-150 steps. Both sides round differently (sum order, fused
  multiply-adds, the kernel's exp within ~1 ulp); measured differences are 1e-16 to 2e-12.
- float32: 1e-5 relative to the largest parameter (and to the test MSE) after 100 steps: ~170 ulps
  of float32. Measured: at most 4.4e-7 over every data set, scaling and optimizer, and
  torch.optim's own float32 run is as far from its float64 run (up to 4.9e-7): the gap is
  float32 rounding, not a different computation. Longer runs amplify rounding (RMSprop's
  g / sqrt(v) most), so the float32 tests stop at 100 steps.
- Batch invariance is exact: a model's lane computes the same operations whatever its pack-mates.
"""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch
import torch.nn.functional as F

from sweeps.config import ACTIVATIONS, BIASES, FIRST_ORDER
from sweeps.engine import data as datasets
from sweeps.engine import first_order_native as fon
from sweeps.engine import native
from sweeps.engine.fit import fit
from sweeps.engine.jobs import Job, checkpoints
from sweeps.engine.model import Layout, init_one
from kit import config

pytestmark = pytest.mark.skipif(not fon.available()[0], reason=f"native kernel unavailable: {fon.available()[1]}")

TORCH_ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
             "softplus": F.softplus, "sin": torch.sin}
# Rates in the stable regime: at the edge of stability (e.g. sgd 1e-3 with gelu on r50) the
# dynamics are chaotic and any two implementations, torch's own included, part ways after ~100 steps.
LR = {"sgd": 3e-4, "momentum": 1e-4, "adam": 1e-2, "rmsprop": 1e-3}
CPU = torch.device("cpu")
DATA = {name: datasets.make(name) for name in ("r50", "uniform1000", "grid1000")}


def kernel(jobs, data="r50", **kw):
    return fon.fit_batch(jobs, DATA[data], **kw)


def reference(jobs):
    """The torch loop (the engine's reference path), batched as the engine batches it."""
    return fit(jobs, device=CPU, batch_size=256, engine="torch")


def torch_optim(cfg, seed, data, dtype):
    """One model the way a tutorial trains it: nn.Parameters, autograd, torch.optim, in `dtype`."""
    flat = init_one(cfg, seed).to(dtype)
    L = Layout(cfg.hidden)
    shift, scale = datasets.scaler(data.x, cfg.scaling)
    w1, w2 = torch.nn.Parameter(flat[L.w1].clone()), torch.nn.Parameter(flat[L.w2].clone())
    b1 = torch.nn.Parameter(flat[L.b1].clone()) if cfg.bias in ("hidden", "both") else None
    b2 = torch.nn.Parameter(flat[L.b2].clone()) if cfg.bias in ("output", "both") else None
    params = [p for p in (w1, w2, b1, b2) if p is not None]
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=cfg.lr),
           "momentum": lambda: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9),
           "adam": lambda: torch.optim.Adam(params, lr=cfg.lr, foreach=False),
           "rmsprop": lambda: torch.optim.RMSprop(params, lr=cfg.lr, foreach=False)}[cfg.optimizer]()
    x, y = ((data.x - shift) / scale).to(dtype)[:, None], data.y.to(dtype)
    act = TORCH_ACT[cfg.activation]

    def net(xx):
        return act(xx * w1 + (b1 if b1 is not None else 0.0)) @ w2 + (b2 if b2 is not None else 0.0)

    for _ in range(cfg.steps):
        opt.zero_grad()
        r = net(x) - y
        ((r * r).sum() if cfg.loss == "sum" else (r * r).mean()).backward()
        opt.step()
    with torch.no_grad():
        x_test = ((data.x_test - shift) / scale).to(dtype)[:, None]
        test = ((net(x_test) - data.y_test.to(dtype)) ** 2).mean().item()
        zero = torch.zeros(1, dtype=dtype)
        own = torch.cat([w1, b1 if b1 is not None else zero.expand(cfg.hidden), w2,
                         b2 if b2 is not None else zero])
    return own.detach().to(torch.float64), test


def params_of(res):
    return torch.tensor(res.params, dtype=torch.float64)


def assert_rel(a, b, tol):
    """max |a - b| relative to the largest entry of b."""
    err = float((a - b).abs().max() / b.abs().max())
    assert err <= tol, f"relative difference {err:.2e} > {tol:.0e}"


def assert_same(a, b):
    """Bit for bit."""
    assert (a.params, a.test_mse, a.train_mse, a.steps, a.diverged_at, a.curve) == \
        (b.params, b.test_mse, b.train_mse, b.steps, b.diverged_at, b.curve)


# ------------------------------------------------------------------------------- the activations ----

def reference_activation(act, z):
    z = z.to(torch.float64)
    e = torch.exp(z)
    a = {"relu": torch.relu(z), "tanh": torch.tanh(z), "sigmoid": torch.sigmoid(z), "gelu": F.gelu(z),
         "softplus": F.softplus(z), "sin": torch.sin(z)}[act]
    d = {"relu": (z > 0).double(), "tanh": 1 - a * a, "sigmoid": a * (1 - a),
         "gelu": 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
         "softplus": torch.where(z > 20, 1.0, e / (e + 1)), "sin": torch.cos(z)}[act]
    return a, d


# Measured worst cases in units of the format's rounding (u = eps / 2) of max(|value|, 1): float32
# 3 (tanh, through 2 sigmoid(2z) - 1), 10 (gelu; torch's own float32 gelu: 18), 6 (tanh's
# derivative 1 - a^2); float64 at most 6.5. The bound is absolute near 0, where outputs are summed
# into y of size ~1: tanh's identity loses relative accuracy for tiny z, not absolute.
ULPS = {"float32": {"gelu": 16}, "float64": {}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_are_exact_to_rounding(act, dtype):
    z = torch.cat([torch.linspace(-30, 30, 200_001), torch.linspace(-200, 200, 2001),
                   torch.tensor([0.0, 1e-7, -1e-7, 88.5, -88.5, 90.0, -90.0, 20.0, 20.0001, 19.9999])]).to(dtype)
    a, d = fon.activations(act, z)
    ra, rd = reference_activation(act, z)
    u = torch.finfo(dtype).eps / 2
    bound = ULPS[str(dtype).split(".")[1]].get(act, 8) * u
    assert float(((a.double() - ra).abs() / ra.abs().clamp(min=1)).max()) <= bound
    assert float(((d.double() - rd).abs() / rd.abs().clamp(min=1)).max()) <= bound
    nan = torch.tensor([math.nan], dtype=dtype)
    assert math.isnan(float(fon.activations(act, nan)[0]))  # divergence must stay visible


# ------------------------------------------------------------------------ against torch.optim ----

@pytest.mark.parametrize("optimizer,activation", list(product(FIRST_ORDER, ACTIVATIONS)))
def test_batch_of_one_float64_matches_torch_optim(optimizer, activation):
    cfg = config(hidden=4, optimizer=optimizer, activation=activation, bias="both", lr=LR[optimizer],
                 data="r50", steps=150, precision="float64")
    (res,) = kernel([Job(cfg, 11)])
    ref, ref_test = torch_optim(cfg, 11, DATA["r50"], torch.float64)
    torch.testing.assert_close(params_of(res), ref, rtol=1e-9, atol=1e-11)
    assert math.isclose(res.test_mse, ref_test, rel_tol=1e-9)


FLOAT32_CASES = [("adam", "tanh", 0.01), ("sgd", "sigmoid", None), ("rmsprop", "gelu", 1e-3),
                 ("momentum", "softplus", None), ("adam", "relu", 0.01), ("sgd", "sin", None)]


def assert_mse32(a: float, b: float) -> None:
    """Two float32 runs' test MSEs agree, compared as RMSEs to float32's resolution of outputs of
    size ~1: a small MSE is the square of residuals that are differences of such outputs, so its
    relative error grows as the fit improves (seen: 1.9e-5 relative at MSE 6.6e-5, on a machine
    whose sinf differs from torch's by an ulp)."""
    assert abs(math.sqrt(a) - math.sqrt(b)) <= 1e-6 + 1e-5 * math.sqrt(b), (a, b)


@pytest.mark.parametrize("data", ["r50", "uniform1000", "grid1000"])
@pytest.mark.parametrize("scaling", ["none", "standardize"])
@pytest.mark.parametrize("optimizer,activation,lr", FLOAT32_CASES)
def test_float32_matches_torch_optim_float32(data, scaling, optimizer, activation, lr):
    if lr is None:  # plain gradient descent on the sum over 1000 points needs a small rate
        lr = {"sgd": 1e-3, "momentum": 1e-4}[optimizer] / (20 if data != "r50" else 1)
    cfg = config(hidden=4, optimizer=optimizer, activation=activation, bias="both", lr=lr, data=data,
                 scaling=scaling, steps=100, precision="float32")
    (res,) = kernel([Job(cfg, 3)], data)
    ref32, test32 = torch_optim(cfg, 3, DATA[data], torch.float32)
    ref64, _ = torch_optim(cfg, 3, DATA[data], torch.float64)
    assert not res.diverged
    assert_rel(params_of(res), ref32, 1e-5)
    assert_mse32(res.test_mse, test32)
    # The same distance from float64 as torch's own float32: float32 rounding, nothing else.
    assert_rel(params_of(res), ref64, 1e-5)
    assert_rel(ref32, ref64, 1e-5)
    assert res.shift == datasets.scaler(DATA[data].x, scaling)[0]


@pytest.mark.parametrize("copies", [2, 3])
def test_bias_copies_train_like_a_bias_with_k_times_the_rate(copies):
    cfg = config(hidden=4, bias="both", activation="tanh", optimizer="adam", lr=0.01, data="r50", steps=100,
                 precision="float64", bias_copies=copies)
    (res,) = kernel([Job(cfg, 5)])
    (ref,) = reference([Job(cfg, 5)])
    torch.testing.assert_close(params_of(res), params_of(ref), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------ against the torch loop ----

def _mixed(activation, precision="float64", steps=120):
    """Every optimizer, bias placement and loss, several hidden sizes and inits."""
    jobs = []
    for i, (opt, bias) in enumerate(product(FIRST_ORDER, BIASES)):
        jobs.append(Job(config(hidden=1 + (i * 5) % 9, bias=bias, activation=activation, optimizer=opt,
                               lr=LR[opt] * (0.5 + (i % 3) * 0.25), loss="sum" if i % 3 else "mean",
                               # randn's large weights put plain gradient descent on the sum loss at
                               # the edge of stability (chaotic: see LR), so they go with adam/rmsprop.
                               init=("torch", "nnet", "normal")[i % (3 if opt in ("adam", "rmsprop") else 2)],
                               bias_copies=1 + (i % 5 == 0),
                               data="r50", steps=steps, precision=precision), 100 + i))
    return jobs


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_native_matches_the_torch_loop_float64(activation):
    jobs = _mixed(activation)
    for a, b in zip(kernel(jobs), reference(jobs)):
        assert a.diverged_at == b.diverged_at
        assert [s for s, _, _ in a.curve] == [s for s, _, _ in b.curve]
        assert (a.steps, a.evals, a.fevals) == (b.steps, b.evals, b.fevals)
        if a.params is None:
            continue
        torch.testing.assert_close(params_of(a), params_of(b), rtol=1e-9, atol=1e-12)
        assert math.isclose(a.test_mse, b.test_mse, rel_tol=1e-9)
        assert math.isclose(a.train_mse, b.train_mse, rel_tol=1e-9)
        for (_, tr_a, te_a), (_, tr_b, te_b) in zip(a.curve, b.curve):
            assert math.isclose(tr_a, tr_b, rel_tol=1e-9) and math.isclose(te_a, te_b, rel_tol=1e-9)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_native_matches_the_torch_loop(activation):
    jobs = _mixed(activation, precision="float32", steps=100)
    for a, b in zip(kernel(jobs), reference(jobs)):
        assert a.diverged_at == b.diverged_at
        if a.params is not None:
            assert_rel(params_of(a), params_of(b), 1e-5)
            assert_mse32(a.test_mse, b.test_mse)


# ------------------------------------------------------------------------------ batch invariance ----

def test_a_models_numbers_never_depend_on_its_batch_mates():
    jobs = [j for a in ("tanh", "relu", "gelu") for j in _mixed(a, precision="float32", steps=80)]
    alone = [kernel([j])[0] for j in jobs[::5]]
    together = kernel(jobs)[::5]
    shuffled = kernel(jobs[::-1])[::-1][::5]
    for a, b, c in zip(alone, together, shuffled):
        assert_same(a, b)
        assert_same(a, c)


def test_threads_and_step_budgets_do_not_change_numbers():
    jobs = _mixed("softplus", precision="float32", steps=90)
    longer = [Job(config(**{**j.config.as_dict(), "steps": 150}), j.seed) for j in jobs]
    one = kernel(jobs, threads=1)
    two = kernel(jobs + longer, threads=2)
    for a, b in zip(one, two[:len(jobs)]):
        assert_same(a, b)
    for a, b in zip(kernel(longer), two[len(jobs):]):
        assert_same(a, b)


def test_a_diverging_model_does_not_touch_its_batch_mates():
    jobs = _mixed("tanh", precision="float32")
    bad = Job(config(hidden=4, bias="both", lr=50.0, optimizer="sgd", activation="tanh", data="r50", steps=120), 9)
    clean = kernel(jobs)
    mixed = kernel(jobs[:2] + [bad] + jobs[2:])
    worst = mixed.pop(2)
    (torch_worst,) = reference([bad])
    assert worst.diverged and worst.diverged_at == torch_worst.diverged_at < 120
    assert worst.test_mse == worst.train_mse == math.inf and worst.params is None
    assert worst.steps == worst.evals == worst.diverged_at
    assert [s for s, _, _ in worst.curve] == [s for s, _, _ in torch_worst.curve]
    assert all(s < worst.diverged_at for s, _, _ in worst.curve)
    for a, b in zip(clean, mixed):
        assert_same(a, b)


def test_a_pack_whose_models_all_diverge_stops():
    jobs = [Job(config(hidden=3, lr=1e3, optimizer="sgd", activation="sigmoid", data="r50", steps=10_000_000), s)
            for s in range(20)]
    res = kernel(jobs)  # would take hours if it ran on
    assert all(r.diverged and r.diverged_at < 10 for r in res)


@pytest.mark.parametrize("bias", BIASES)
def test_masked_biases_stay_exactly_zero(bias):
    cfg = config(hidden=6, bias=bias, optimizer="adam", lr=0.05, steps=200, data="r50", bias_copies=2)
    mates = [Job(config(hidden=6, bias="both", optimizer=o, lr=LR[o], steps=200, data="r50"), 1) for o in FIRST_ORDER]
    res = kernel([Job(cfg, 3)] + mates)[0]
    p, L = params_of(res), Layout(6)
    assert bool((p[L.b1] != 0).any()) == (bias in ("hidden", "both"))
    assert bool((p[L.b2] != 0).any()) == (bias in ("output", "both"))
    if bias in ("none", "output"):
        assert torch.equal(p[L.b1], torch.zeros(6, dtype=torch.float64))
    if bias in ("none", "hidden"):
        assert float(p[L.b2]) == 0.0


# ------------------------------------------------------------------------------------ checkpoints ----

def test_checkpoints_are_the_1_2_5_series_and_end_at_the_result():
    cfg = config(hidden=4, activation="tanh", optimizer="adam", lr=0.01, data="r50", steps=300)
    (res,) = kernel([Job(cfg, 1)])
    assert [s for s, _, _ in res.curve] == checkpoints(300) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 300]
    assert res.curve[-1] == (300, res.train_mse, res.test_mse)
    short = Job(config(**{**cfg.as_dict(), "steps": 1}), 1)
    (one,) = kernel([short])
    assert one.curve[0][1:] == res.curve[0][1:]  # the start is the start, whatever the budget
    assert [s for s, _, _ in one.curve] == [0, 1] and one.curve[1] == (1, one.train_mse, one.test_mse)


def test_result_fields():
    cfg = config(hidden=2, activation="relu", optimizer="sgd", lr=1e-3, data="r50", steps=40, scaling="standardize")
    res = kernel([Job(cfg, 1), Job(cfg, 2)])
    shift, scale = datasets.scaler(DATA["r50"].x, "standardize")
    for r in res:
        assert (r.evals, r.fevals, r.steps, r.shift, r.scale) == (40, 0, 40, shift, scale)
        assert r.seconds > 0 and len(r.params) == Layout(2).width


# ------------------------------------------------------------------------------------- bad input ----

@pytest.mark.parametrize("change,message", [
    (dict(optimizer="lm"), "not first order"),
    (dict(data="uniform1000"), "data set given is 'r50'"),
    (dict(lr=-1.0), "lr must be"),
    (dict(lr=math.nan), "lr must be"),
    (dict(steps=-1), "steps must be"),
    (dict(hidden=0), "hidden must be"),
    (dict(activation="swish"), "activation 'swish'"),
    (dict(bias_copies=0), "bias_copies"),
    (dict(precision="float64"), "precision must be the batch's"),
])
def test_bad_jobs_are_refused(change, message):
    cfg = config(**{**config(data="r50").as_dict(), **change})
    with pytest.raises(ValueError, match=message):
        kernel([Job(config(data="r50"), 0), Job(cfg, 1)])


def test_bad_data_is_refused():
    job = Job(config(data="r50", steps=3), 0)
    d = DATA["r50"]
    with pytest.raises(ValueError, match="differ in shape"):
        fon.fit_batch([job], datasets.Dataset("r50", d.x, d.y[:-1], d.x_test, d.y_test))
    with pytest.raises(ValueError, match="differ in shape"):
        fon.fit_batch([job], datasets.Dataset("r50", d.x, d.y, d.x_test, d.y_test[:10]))
    with pytest.raises(ValueError, match="non-finite"):
        fon.fit_batch([job], datasets.Dataset("r50", d.x, d.y * math.nan, d.x_test, d.y_test))
    with pytest.raises(ValueError, match="1-D"):
        fon.fit_batch([job], datasets.Dataset("r50", d.x[:, None], d.y[:, None], d.x_test, d.y_test))
    assert fon.fit_batch([], d) == []


def test_the_kernel_checks_its_own_arguments(monkeypatch):
    jobs = [Job(config(data="r50", activation=a, steps=2), i) for i, a in enumerate(("tanh", "relu"))]
    # a pack that mixes activations must be refused by the kernel itself
    monkeypatch.setattr(fon, "plan_packs", lambda jobs, lanes: ([0, 1], [0, 2]))
    with pytest.raises(RuntimeError, match="bad arguments"):
        kernel(jobs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_the_torch_loop():
    jobs = _mixed("tanh", steps=20)
    cuda = torch.device("cuda")
    for a, b in zip(fit(jobs, device=cuda, batch_size=64), fit(jobs, device=cuda, batch_size=64, engine="torch")):
        assert (a.params, a.test_mse) == (b.params, b.test_mse)
    with pytest.raises(ValueError, match="CPU only"):
        fit(jobs, device=cuda, batch_size=64, engine="native")
    assert native.cancelled() is False
