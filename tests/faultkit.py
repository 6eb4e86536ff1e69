"""Helpers for the many-workers and fault-injection tests: tiny specs, worker processes started
together, snapshots."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from kit import GRID, GRID_CELLS, HIDDEN, RANDOM, ROOT, SMALL, SMALL_CELLS, write_spec  # noqa: F401  (re-exported)
from sweeps.study.errors import StorageError, sqlite_path
from sweeps.study import locks
from sweeps.study import storage as st
from sweeps.study.record import RETRY_OF, is_done, superseded

# Short heartbeats so that a killed worker's trials go stale in seconds, not minutes (tests with
# one or two processes: a starved worker on a busy 2-core machine could look dead after 3 s).
FAST_BEATS = {st.ENV_HEARTBEAT: "1", st.ENV_GRACE: "3"}
# Tests that run several workers and kill none: beats that no load on 2 cores makes look stale.
CALM_BEATS = {st.ENV_HEARTBEAT: "2", st.ENV_GRACE: "60"}
READY_TIMEOUT_S = 180  # for every worker of a test to reach the storage (imports on 2 busy cores)


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


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


@contextlib.contextmanager
def _sqlite_gate(db: Path) -> Iterator[Callable[[list[int]], bool]]:
    """Hold the storage's lock file (schema and study lock: workers poll it); yields a test of
    whether each pid is waiting on it."""
    lock = db.with_name(db.name + ".lock")
    with lock.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield lambda pids: all(_holds_open(pid, lock) for pid in pids)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_gate(url: str) -> Iterator[Callable[[list[int]], bool]]:
    """Hold the schema lock (a session advisory lock every worker polls while opening the storage);
    yields a test of whether that many sweeps sessions are connected to the database."""
    engine = sqlalchemy.create_engine(st.driver_url(sqlalchemy.engine.make_url(url)))
    key = locks._lock_key("sweeps schema")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()

            def waiting(pids: list[int]) -> bool:
                n = conn.execute(sqlalchemy.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'sweeps'")).scalar_one()
                conn.commit()
                return n >= len(pids)

            try:
                yield waiting
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def gate(url: str) -> Iterator[Callable[[list[subprocess.Popen]], None]]:
    """Start worker processes together: inside, the storage's opening lock is held; call the
    yielded `wait(procs)` once they are started: it returns when every one of them waits on the
    lock (their imports done), and leaving the block lets them all go at once. Without it a
    worker that imports faster can finish a small study before the others reach it, and a test
    of many workers would test one."""
    path = sqlite_path(url)
    opened = _sqlite_gate(path) if path is not None else _pg_gate(url)
    with opened as waiting:
        def wait(procs: list[subprocess.Popen]) -> None:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not waiting([p.pid for p in procs]):
                for p in procs:
                    if p.poll() is not None:
                        raise AssertionError(f"worker ended before the start ({p.returncode}): {p.stderr.read()}")
                assert time.monotonic() < deadline, "the workers never reached the storage"
                time.sleep(0.05)

        yield wait


def start_together(n: int, spec: Path, url: str, *args: str, **extra_env: str) -> list[subprocess.Popen]:
    """n `sweeps worker` processes on one storage, let go at once (`gate`), with calm heartbeats."""
    with gate(url) as wait:
        procs = [start(spec, url, *args, **{**CALM_BEATS, **extra_env}) for _ in range(n)]
        wait(procs)
    return procs


def run_cli(spec: Path, url: str, *args: str, command: str = "run", timeout: float = 120,
            **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(spec, url, *args, command=command), cwd=ROOT, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=st.open_readonly(url)).get_trials(deepcopy=True)


def pids(ts: list[FrozenTrial]) -> set[int]:
    """The processes that ran these trials (their `run` attribute)."""
    return {t.user_attrs["run"]["pid"] for t in ts if "run" in t.user_attrs}


def wait_for(url: str, name: str, proc: subprocess.Popen, *, complete: int, running: int = 1,
             timeout: float = 60) -> list[FrozenTrial]:
    """Poll until the study has `complete` COMPLETE trials and `running` RUNNING ones (mid-batch)."""
    deadline = time.monotonic() + timeout
    reader = None  # one read-only storage for every poll: opening one per poll was slower than a round
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early ({proc.returncode}): {proc.stderr.read()}")
        if reader is None and _study_exists(url, name):
            reader = st.open_readonly(url)
        if reader is not None:
            ts = optuna.load_study(study_name=name, storage=reader).get_trials(deepcopy=True)
            states = Counter(t.state for t in ts)
            if states[TrialState.COMPLETE] >= complete and states[TrialState.RUNNING] >= running:
                return ts
        time.sleep(0.05)
    raise AssertionError("the worker never reached the state to interrupt")


def stop_mid_round(url: str, name: str, proc: subprocess.Popen, *, complete: int, running: int,
                   timeout: float = 60) -> list[FrozenTrial]:
    """Stop the worker (SIGSTOP) at a moment when it has trials in flight and `complete` done; the
    study as it stands then. Polling alone raced: the round seen in flight could end before the
    signal landed. The caller kills it, or signals it and lets it go on (`kill` sends SIGCONT)."""
    deadline = time.monotonic() + timeout
    reader = None  # opened while the worker runs: a SQLite reader's opening waits out the study's lock
    while True:
        wait_for(url, name, proc, complete=complete, running=running, timeout=max(1.0, deadline - time.monotonic()))
        reader = reader or st.open_readonly(url)
        proc.send_signal(signal.SIGSTOP)
        ts = optuna.load_study(study_name=name, storage=reader).get_trials(deepcopy=True)
        if any(t.state == TrialState.RUNNING for t in ts):
            return ts
        proc.send_signal(signal.SIGCONT)  # between two rounds: let it claim the next one
        assert time.monotonic() < deadline, "the worker was never stopped with trials in flight"
        time.sleep(0.02)


def _study_exists(url: str, name: str) -> bool:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return False
    try:
        return name in [s.study_name for s in st.open_readonly(url).get_all_studies()]
    except StorageError:
        return False


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> tuple[int, str, str]:
    """Send `sig` (then SIGCONT, for a worker `stop_mid_round` stopped); (exit code, out, err)."""
    proc.send_signal(sig)
    if sig != signal.SIGKILL:
        proc.send_signal(signal.SIGCONT)
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


ENV_REQUIRE_TMPFS = "SWEEPS_TEST_REQUIRE_TMPFS"


@contextlib.contextmanager
def tmpfs(mount: Path, size: str, read_only_after: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount` (root only): skips where mounting is not permitted,
    fails where SWEEPS_TEST_REQUIRE_TMPFS=1 requires one. `read_only_after(mount)` fills it, and
    then it is remounted read-only."""
    def missing(reason: str) -> None:
        if os.environ.get(ENV_REQUIRE_TMPFS) == "1":
            pytest.fail(f"{reason}, and {ENV_REQUIRE_TMPFS}=1 requires one", pytrace=False)
        pytest.skip(reason)

    mount.mkdir(exist_ok=True)
    if not shutil.which("mount"):
        missing("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        missing(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'})")
    try:
        if read_only_after is not None:
            read_only_after(mount)
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
