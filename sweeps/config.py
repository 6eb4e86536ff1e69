"""The vocabulary every layer shares: each setting a model can have, its type, allowed values and
default, the named presets, and the project-wide defaults (storage URL). No torch, no Optuna.

A *config* is one model recipe (hidden size, bias placement, activation, optimizer, learning rate,
and the settings usually fixed per sweep: data set, loss reduction, init, input scaling, steps,
precision, second-order tolerances, bias copies). A spec (`sweeps.study.spec`) says, for each key,
whether it is searched or fixed; `sweeps.study.search` turns searched keys into Optuna suggestions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

BIASES = ("none", "hidden", "output", "both")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "softplus", "sin")
FIRST_ORDER = ("sgd", "momentum", "adam", "rmsprop")
SECOND_ORDER = ("bfgs", "lm")  # sweeps.second_order: full batch, always float64
OPTIMIZERS = FIRST_ORDER + SECOND_ORDER
DATASETS = ("r50", "uniform1000", "grid1000")
LOSSES = ("sum", "mean")
INITS = ("torch", "nnet", "normal")
SCALINGS = ("none", "standardize")
PRECISIONS = ("float32", "float64")

MAX_HIDDEN = 256

# Where studies live unless a flag, $SWEEPS_STORAGE or a spec says otherwise (sweeps.study.storage
# applies that rule). An environment variable keeps a password out of the process list.
DEFAULT_STORAGE = "sqlite:///studies/studies.db"
ENV_STORAGE = "SWEEPS_STORAGE"
# A seed *fits* when its test MSE on the 1001-point grid is under this (a spec may set its own).
SUCCESS_THRESHOLD = 1e-3


@dataclass(frozen=True)
class KeySpec:
    """What one config key accepts: its Python type, allowed choices or numeric bounds."""

    kind: type
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None


KEYS: dict[str, KeySpec] = {
    "hidden": KeySpec(int, low=1, high=MAX_HIDDEN),
    "bias": KeySpec(str, choices=BIASES),
    "activation": KeySpec(str, choices=ACTIVATIONS),
    "optimizer": KeySpec(str, choices=OPTIMIZERS),
    "lr": KeySpec(float, low=0.0, high=math.inf),
    "data": KeySpec(str, choices=DATASETS),
    "loss": KeySpec(str, choices=LOSSES),
    "init": KeySpec(str, choices=INITS),
    "scaling": KeySpec(str, choices=SCALINGS),
    "steps": KeySpec(int, low=1, high=10_000_000),
    "precision": KeySpec(str, choices=PRECISIONS),
    "abstol": KeySpec(float, low=0.0, high=math.inf),
    "reltol": KeySpec(float, low=0.0, high=math.inf),
    "bias_copies": KeySpec(int, low=1, high=8),
}

DEFAULTS: dict[str, Any] = {
    "hidden": 4,
    "bias": "both",
    "activation": "tanh",
    "optimizer": "adam",
    "lr": 0.01,
    "data": "uniform1000",
    "loss": "sum",
    "init": "torch",
    "scaling": "none",
    "steps": 2000,
    "precision": "float32",
    # Second-order stopping rules, nnet's defaults: stop when the loss is at most `abstol`, or when
    # a step changes it by at most `reltol` relatively. First-order optimizers ignore both.
    "abstol": 1e-4,
    "reltol": 1e-8,
    # The answer's LinearWithInputBias adds a second, zero-initialised bias vector to each layer's
    # output. Both copies always get the same gradient and optimizer state, so k copies train
    # exactly like one bias whose learning rate is k times the weights' (first-order optimizers).
    "bias_copies": 1,
}


# Named model recipes a spec can use whole: `preset = "nnet"` in [fixed] or in an [[enqueue]] entry.
PRESETS: dict[str, dict[str, Any]] = {
    # The question's R call, nnet(x, y, size=4, maxit=10000, linout=TRUE, abstol=1e-8,
    # reltol=1e-9): logistic hidden units, both bias neurons, linear output, sum of squared
    # errors, weights U(-0.7, 0.7), vmmin's BFGS. (`steps` is maxit.)
    "nnet": {"hidden": 4, "bias": "both", "activation": "sigmoid", "optimizer": "bfgs", "loss": "sum",
             "init": "nnet", "scaling": "none", "steps": 10000, "abstol": 1e-8, "reltol": 1e-9},
    # The same network with nnet()'s own stopping defaults: maxit 100, abstol 1e-4, reltol 1e-8.
    "nnet-default": {"hidden": 4, "bias": "both", "activation": "sigmoid", "optimizer": "bfgs", "loss": "sum",
                     "init": "nnet", "scaling": "none", "steps": 100, "abstol": 1e-4, "reltol": 1e-8},
}


@dataclass(frozen=True)
class Config:
    """One model recipe. Every model of a trial shares it; only the init seed differs."""

    hidden: int
    bias: str
    activation: str
    optimizer: str
    lr: float
    data: str
    loss: str
    init: str
    scaling: str
    steps: int
    precision: str
    # Defaults, so that configs stored before these keys existed still load.
    abstol: float = DEFAULTS["abstol"]
    reltol: float = DEFAULTS["reltol"]
    bias_copies: int = DEFAULTS["bias_copies"]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def n_params(self) -> int:
        """Trainable parameters: w1 and w2 (H each) plus the biases the placement keeps (each of
        their copies counts: the answer's duplicate bias is a real, if redundant, parameter)."""
        n = 2 * self.hidden
        if has_hidden_bias(self.bias):
            n += self.hidden * self.bias_copies
        if has_output_bias(self.bias):
            n += self.bias_copies
        return n


def has_hidden_bias(bias: str) -> bool:
    """Whether a bias placement keeps b1 (one bias per hidden unit, nnet's first bias neuron)."""
    return bias in ("hidden", "both")


def has_output_bias(bias: str) -> bool:
    """Whether a bias placement keeps b2 (the output's bias, nnet's second bias neuron)."""
    return bias in ("output", "both")


CONFIG_KEYS = tuple(f.name for f in fields(Config))
assert set(CONFIG_KEYS) == set(KEYS) == set(DEFAULTS)
assert all(set(p) <= set(KEYS) for p in PRESETS.values())
