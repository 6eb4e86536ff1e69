"""Batched Optuna sweeps of tiny 1-H-1 networks fitting sin(x) on [0, 10].

Layers, imports pointing one way (ARCHITECTURE.md; tests/test_layers.py keeps it so):
`config` (the vocabulary) <- `engine` (torch only) <- `study` (all Optuna use) <- `analysis`
(the report, a sibling package) <- `dashboard` <- `cli`; `tools` (benchmarks, R reference) may
import anything and nothing imports them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sine-sweeps")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
