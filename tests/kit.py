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
