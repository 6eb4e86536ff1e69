"""Shared fixtures (a tmp SQLite URL) and the test session's torch settings; helpers live in kit.py."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

# One torch thread: tests also start worker processes, and two processes each spinning two
# OpenMP threads on CI's 2 cores were measured ~10x slower than one thread each. (The variable
# also keeps `sweeps run` called in-process from taking its share of the cores.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"
