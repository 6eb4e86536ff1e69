"""Shared helpers: configs with defaults, and a tmp SQLite URL."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from sweeps.space import DEFAULTS, Config

# Tests run on the CPU, deterministic, on the 2 cores CI has.
torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def config(**overrides) -> Config:
    values = dict(DEFAULTS)
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"
