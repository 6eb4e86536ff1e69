"""Workers on one host share its cores instead of each taking all of them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


def test_running_workers_are_counted_from_proc(tmp_path):
    # A /proc of its own: other processes on a shared machine come and go.
    for pid, argv in ((1, ["/sbin/init"]), (20, ["/venv/bin/python", "-m", "sweeps", "worker", "default"]),
                      (21, ["/venv/bin/sweeps", "run", "quick"]), (22, ["/venv/bin/python", "-m", "sweeps", "list"])):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert cores.sweeps_processes(tmp_path) == 2
    assert cores.sweeps_processes(tmp_path / "empty") == 1  # alone, never 0


def test_the_real_proc_counts_workers():
    # Two stand-ins whose command lines read as workers: counted as 2 (1 would be the floor).
    fakes = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "sweeps", "worker", "x"])
             for _ in range(2)]

    def argv(pid: int) -> list[str]:
        # Empty for a moment after the fork, until the kernel shows the new program's arguments.
        return [a for a in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0") if a]

    try:
        deadline = time.monotonic() + 20
        while not all(argv(f.pid) for f in fakes) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(cores._is_sweep(argv(f.pid)) for f in fakes)
        assert cores.sweeps_processes() >= 2
    finally:
        for fake in fakes:
            fake.kill()
            fake.wait()
