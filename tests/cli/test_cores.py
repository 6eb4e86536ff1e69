"""Workers on one host share its cores instead of each taking all of them."""

from __future__ import annotations

import subprocess
import sys
import time

from sweeps.cli import cores


def test_which_processes_count_as_sweeps():
    assert cores._is_sweep(["/venv/bin/python", "-m", "sweeps", "worker", "default"])
    assert cores._is_sweep(["/venv/bin/sweeps", "run", "quick"])
    assert not cores._is_sweep(["/venv/bin/python", "-m", "sweeps", "report"])
    assert not cores._is_sweep(["/venv/bin/python", "-m", "pytest", "-q"])


def test_the_share_shrinks_with_workers_and_yields_to_explicit_settings(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "cores", lambda: 8)
    monkeypatch.setattr(cores, "sweeps_processes", lambda: 3)
    assert cores.share() == 2
    monkeypatch.setattr(cores, "sweeps_processes", lambda: 20)
    assert cores.share() == 1  # never 0
    assert cores.share(explicit=5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores.share() == 3


def test_running_workers_are_counted_from_proc():
    before = cores.sweeps_processes()
    # Processes whose command line reads like `python -m sweeps worker …` (they only sleep).
    fakes = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "sweeps", "worker", "x"])
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while cores.sweeps_processes() < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cores.sweeps_processes() == before + 2
    finally:
        for p in fakes:
            p.kill()
            p.wait()
