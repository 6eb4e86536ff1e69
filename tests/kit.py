"""What many tests share: the project root, configs with defaults, and every spec template.

Spec templates are TOML text with `{placeholders}` for `write_spec(path, TEMPLATE, **values)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeps.config import DEFAULTS, Config

ROOT = Path(__file__).resolve().parents[1]


def config(**overrides: Any) -> Config:
    """A Config of the defaults with `overrides`."""
    values = dict(DEFAULTS)
    values.update(overrides)
    return Config(**values)


# A TPE study over a small space: 6 trials x 3 seeds, 60 steps (end to end in seconds).
TINY = """
[study]
name = "tiny"
trials = 6
seeds = 3
seed = 5
[fixed]
data = "r50"
steps = 60
precision = "float64"
activation = "tanh"
[space.hidden]
low = 1
high = 8
[space.bias]
choices = ["none", "both"]
[space.optimizer]
choices = ["sgd", "adam"]
[space.lr]
low = 1e-4
high = 1e-2
log = true
"""

# hidden x 2 x 2 x 2 cells (24 with the default HIDDEN, 8 with SMALL), 2 seeds each.
GRID = """
[study]
name = "g"
sampler = "grid"
trials = 1000
seeds = 2
seed = 3
[fixed]
data = "r50"
steps = {steps}
precision = "float64"
activation = "tanh"
[space.hidden]
choices = {hidden}
[space.bias]
choices = ["none", "both"]
[space.optimizer]
choices = ["sgd", "adam"]
[space.lr]
low = 1e-4
high = 1e-2
log = true
grid = [1e-4, 1e-3]
"""
HIDDEN, SMALL = "[1, 2, 3]", "[2]"
GRID_CELLS, SMALL_CELLS = 24, 8

# Random search: no sampler cost however many trials, for budgets and full disks.
RANDOM = """
[study]
name = "r"
sampler = "random"
trials = {trials}
seeds = 2
seed = 4
[fixed]
data = "r50"
steps = {steps}
precision = "float64"
activation = "tanh"
optimizer = "adam"
[space.hidden]
low = 1
high = 4
[space.bias]
choices = ["none", "both"]
[space.lr]
low = 1e-4
high = 1e-3
log = true
"""



def write_spec(path: Path, template: str, **values: Any) -> Path:
    """Write a spec template with its placeholders filled; returns the path."""
    if template is GRID:
        values.setdefault("hidden", HIDDEN)
    path.write_text(template.format(**values))
    return path


# A designed study in miniature: 2 x 2 x 2 x 2 cells (sin as the control arm), lr tuned over 2 values.
DESIGN = """
[study]
name = "d"
sampler = "design"
seeds = 2
seed = 7
[design]
confirm_seeds = {confirm}
crossed = ["bias", "activation", "optimizer", "hidden"]
tuned = "lr"
control = {{ activation = ["sin"] }}
[fixed]
data = "r50"
steps = {steps}
[space.bias]
choices = {biases}
[space.activation]
choices = ["tanh", "sin"]
[space.optimizer]
choices = ["adam", "lm"]
[space.hidden]
choices = [2, 4]
[space.lr]
low = 1e-3
high = 1e-1
log = true
grid = [1e-2, 1e-1]
"""

# An ablation in miniature: the question's program, two single changes, a path and a removal.
ABLATION = """
[study]
name = "ablation"
sampler = "design"
seeds = 2
seed = 7
[design]
confirm_seeds = 4
tuned = "lr"
[fixed]
hidden = 4
bias = "none"
activation = "relu"
optimizer = "sgd"
lr = 1e-5
data = "r50"
init = "normal"
steps = {steps}
[space.lr]
low = 1e-4
high = 1e-2
log = true
grid = [1e-4, 1e-2]
[[design.rows]]
label = "the question's program"
ladder = "start"
[[design.rows]]
label = "+ b1"
ladder = "one change"
set = {{ bias = "hidden" }}
[[design.rows]]
label = "adam (tuned lr)"
ladder = "one change"
tune = true
set = {{ optimizer = "adam" }}
[[design.rows]]
label = "path 1: both biases, sigmoid, lm"
ladder = "cumulative"
set = {{ bias = "both", activation = "sigmoid", optimizer = "lm" }}
[[design.rows]]
label = "nnet's call without b1"
ladder = "remove from nnet"
set = {{ preset = "nnet", data = "r50", bias = "output", steps = {steps} }}
"""
