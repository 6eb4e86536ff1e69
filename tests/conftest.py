"""Shared fixtures (a tmp SQLite URL) and the test session's torch settings; helpers live in kit.py."""

from __future__ import annotations

import warnings

import pytest
import torch


# One torch thread: tests also start worker processes, and two processes each spinning two
# OpenMP threads on CI's 2 cores were measured ~10x slower than one thread each.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"
