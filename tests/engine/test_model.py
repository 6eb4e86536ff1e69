"""The batched model: closed-form gradients against autograd, masks, and what no bias means."""

from __future__ import annotations

import itertools

import pytest
import torch

from sweeps.engine.model import ACTIVATIONS, BatchModel, Layout, init_one, mask_one, pad, unpad
from sweeps.config import ACTIVATIONS as ACTIVATION_NAMES, BIASES
from sweeps.engine.fit import fit
from sweeps.engine.jobs import Job
from kit import config


def test_every_activation_has_a_kernel():
    assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)


@pytest.mark.parametrize("activation,bias,reduction", list(itertools.product(ACTIVATION_NAMES, BIASES, ("sum", "mean"))))
def test_gradient_equals_autograd(activation, bias, reduction):
    torch.manual_seed(0)
    hidden = 5
    x = torch.rand(37, dtype=torch.float64) * 10
    t = torch.sin(x)
    cfgs = [config(hidden=h, bias=bias, activation=activation) for h in (1, 3, 5)]
    P = torch.stack([pad(init_one(c, s), c.hidden, hidden) for s, c in enumerate(cfgs)])
    mask = torch.stack([pad(mask_one(c), c.hidden, hidden) for c in cfgs])
    model = BatchModel(hidden, activation, x, t, reduction)
    sse, grad = model.sse_and_grad(P, mask)

    Pa = P.clone().requires_grad_(True)
    loss = model.loss(Pa).sum()
    (auto,) = torch.autograd.grad(loss, Pa)
    torch.testing.assert_close(grad, auto * mask, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sse, model.sse(P))


@pytest.mark.parametrize("bias", BIASES)
def test_excluded_biases_are_not_parameters(bias):
    cfg = config(hidden=6, bias=bias, optimizer="adam", lr=0.05, steps=200, data="r50")
    (res,) = fit([Job(cfg, 3)], device=torch.device("cpu"), batch_size=4)
    p = torch.tensor(res.params, dtype=torch.float64)
    L = Layout(6)
    hidden_b, out_b = p[L.b1], p[L.b2]
    assert (hidden_b != 0).any() == (bias in ("hidden", "both"))
    assert (out_b != 0).any() == (bias in ("output", "both"))
    expected = 12 + (6 if bias in ("hidden", "both") else 0) + (1 if bias in ("output", "both") else 0)
    assert cfg.n_params() == expected == int(mask_one(cfg).sum())


def test_pad_unpad_roundtrip():
    v = torch.arange(Layout(3).width, dtype=torch.float64) + 1
    assert torch.equal(unpad(pad(v, 3, 7), 3, 7), v)
    assert pad(v, 3, 7).count_nonzero() == v.numel()


@pytest.mark.parametrize("data", ["uniform1000", "r50"])
def test_relu_without_bias_is_a_line_through_the_origin(data):
    # Whatever training does, relu(w1*x)*w2 summed over units is c*x for x > 0.
    cfg = config(hidden=4, bias="none", activation="relu", optimizer="sgd", lr=1e-5, steps=1000,
                 init="normal", data=data, precision="float64")
    results = fit([Job(cfg, s) for s in range(4)], device=torch.device("cpu"), batch_size=4)
    x = torch.linspace(0, 10, 1001, dtype=torch.float64)
    model = BatchModel(4, "relu", x, torch.sin(x), "sum")
    for res in results:
        y = model.predict(torch.tensor([res.params], dtype=torch.float64), x)[0]
        slope = y[-1] / 10
        torch.testing.assert_close(y, slope * x, rtol=1e-9, atol=1e-12)
        # The best such line still misses the sine badly.
        assert res.test_mse > 0.3


def test_init_depends_only_on_seed_and_config():
    c = config(hidden=4, init="nnet")
    assert torch.equal(init_one(c, 7), init_one(c, 7))
    assert not torch.equal(init_one(c, 7), init_one(c, 8))
    assert init_one(c, 7).abs().max() <= 0.7
    # The same seed gives the same weights whatever the bias placement.
    a, b = init_one(config(hidden=4, bias="both"), 1), init_one(config(hidden=4, bias="none"), 1)
    L = Layout(4)
    assert torch.equal(a[L.w1], b[L.w1]) and torch.equal(a[L.w2], b[L.w2])
