"""Helpers for the many-workers and fault-injection tests: tiny specs, worker processes, snapshots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from kit import GRID, GRID_CELLS, HIDDEN, RANDOM, ROOT, SMALL, SMALL_CELLS, write_spec  # noqa: F401  (re-exported)
from sweeps.study.errors import StorageError, sqlite_path
from sweeps.study import storage as st
from sweeps.study.record import RETRY_OF, is_done, superseded

# Short heartbeats so that a killed worker's trials go stale in seconds, not minutes.
FAST_BEATS = {st.ENV_HEARTBEAT: "1", st.ENV_GRACE: "3"}


def env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: one torch thread (4 workers share 2 cores)."""
    out = dict(os.environ)
    # The torch engine: these tests kill and interrupt workers mid-round, so a round must take a while;
    # the native kernels finish these tiny rounds in milliseconds.
    out.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SWEEPS_ENGINE": "torch",
                **FAST_BEATS})
    out.update(extra)
    return out


def worker_cmd(spec: Path, url: str, *args: str, command: str = "worker") -> list[str]:
    return [sys.executable, "-m", "sweeps", command, str(spec), "--storage", url, "--no-progress",
            "--device", "cpu", *args]


def start(spec: Path, url: str, *args: str, command: str = "worker", **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(worker_cmd(spec, url, *args, command=command), cwd=ROOT, env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(spec: Path, url: str, *args: str, command: str = "run", timeout: float = 120,
            **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(spec, url, *args, command=command), cwd=ROOT, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=st.open_readonly(url)).get_trials(deepcopy=True)


def wait_for(url: str, name: str, proc: subprocess.Popen, *, complete: int, running: int = 1,
             timeout: float = 60) -> list[FrozenTrial]:
    """Poll until the study has `complete` COMPLETE trials and `running` RUNNING ones (mid-batch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early ({proc.returncode}): {proc.stderr.read()}")
        with_study = _study_exists(url, name)
        if with_study:
            ts = trials(url, name)
            states = Counter(t.state for t in ts)
            if states[TrialState.COMPLETE] >= complete and states[TrialState.RUNNING] >= running:
                return ts
        time.sleep(0.05)
    raise AssertionError("the worker never reached the state to interrupt")


def _study_exists(url: str, name: str) -> bool:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return False
    try:
        return name in [s.study_name for s in st.open_readonly(url).get_all_studies()]
    except StorageError:
        return False


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def cell(t: FrozenTrial) -> tuple:
    return tuple(sorted(t.params.items()))


def snapshot(ts: list[FrozenTrial]) -> dict[int, tuple]:
    """What must never change about a finished trial: its params, values and user attributes."""
    return {t.number: (t.params, t.values, t.user_attrs) for t in ts if t.state == TrialState.COMPLETE}


def done(ts: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = superseded(ts)
    return [t for t in ts if is_done(t, retried)]


def assert_retried_once(ts: list[FrozenTrial], failed_numbers: set[int]) -> None:
    """Each failed trial has exactly one retry, carrying its number, and that retry is done."""
    by_number = {t.number: t for t in ts}
    for n in failed_numbers:
        assert by_number[n].state == TrialState.FAIL, n
        retries = [t for t in ts if t.user_attrs.get(RETRY_OF) == n]
        assert len(retries) == 1, (n, [r.number for r in retries])
        retry = retries[0]
        assert retry.state == TrialState.COMPLETE, (n, retry.state)
        assert retry.system_attrs.get("failed_trial") == n or n in retry.system_attrs.get("retry_history", [])
        assert by_number[n].params.items() <= retry.params.items()  # same configuration, completed
