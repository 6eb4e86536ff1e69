"""Fault injection: killed and interrupted workers, a full disk, and every kind of bad input.

The guarantees: a finished trial is never changed or lost, a trial that was in flight is FAIL (with
its reason: `stale` when its worker died, `interrupted` on a signal) and retried exactly once (its
number on the retry), nothing is left RUNNING, the study still reaches its budget, and every bad
input is one line naming the thing, with a non-zero exit code. The full-disk test needs a tmpfs
(root): skipped without one, unless SWEEPS_TEST_REQUIRE_TMPFS=1 (`.ci/run` sets it).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from faultkit import (FAST_BEATS, GRID, RANDOM, SMALL, SMALL_CELLS, assert_retried_once, cell, done,
                      kill, run_cli, snapshot, start, stop_mid_round, tmpfs, trials, write_spec)
from optuna.trial import TrialState
from pg import database, pg_password_role, pg_url  # noqa: F401  (fixtures)

from sweeps.study import record
from sweeps.config import ENV_STORAGE
from sweeps.study import recovery as rec
from sweeps.study import runner
from sweeps.study import spec as specs
from sweeps.study import storage as st
from sweeps.cli import main
from sweeps.study.runner import Options, run


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs train on one thread, like the worker processes: two threads spin-waiting on
    each tiny op ran 20x slower here whenever the worker processes held the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def fast_beats(monkeypatch):
    for key, value in {st.ENV_HEARTBEAT: "1", st.ENV_GRACE: "2"}.items():
        monkeypatch.setenv(key, value)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- killed and interrupted workers -------------------------------------------------------------


def test_sigkill_mid_batch_then_restart_loses_nothing(url, tmp_path):
    spec = write_spec(tmp_path / "g.toml", GRID, steps=6000, hidden=SMALL)
    victim = start(spec, url, "--batch-size", "4")  # two trials a round
    stopped = stop_mid_round(url, "g", victim, complete=2, running=2)
    kill(victim, signal.SIGKILL)
    before = trials(url, "g")
    killed = {t.number for t in before if t.state == TrialState.RUNNING}
    assert killed == {t.number for t in stopped if t.state == TrialState.RUNNING}

    again = run_cli(spec, url, "--batch-size", "4", command="worker")
    assert again.returncode == 0, again.stderr
    assert "lost their worker" in again.stdout
    after = trials(url, "g")
    by_number = {t.number: t for t in after}
    for number, was in snapshot(before).items():  # finished trials are untouched
        assert (by_number[number].params, by_number[number].values, by_number[number].user_attrs) == was
    assert_retried_once(after, killed)
    assert {by_number[n].user_attrs.get(record.FAIL_REASON) for n in killed} == {rec.STALE}
    states = Counter(t.state for t in after)
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    assert states[TrialState.FAIL] == len(killed)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == len({cell(t) for t in complete}) == SMALL_CELLS == len(done(after))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_the_rerun_finishes(sig, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    # Rounds of a few hundred ms: the worker is stopped mid-round unless it happens to be inside
    # the millisecond of a round's final write (then nothing is left in flight to interrupt).
    path = write_spec(tmp_path / "g.toml", GRID, steps=3000, hidden=SMALL)
    proc = start(path, url, "--batch-size", "4", command="run")
    stop_mid_round(url, "g", proc, complete=2, running=2)
    code, _, err = kill(proc, sig)
    assert code == 130, err
    assert "interrupted:" in _one_line(err) and "re-queued" in err

    stopped = trials(url, "g")
    interrupted = {t.number for t in stopped if t.user_attrs.get(record.FAIL_REASON) == record.INTERRUPTED}
    assert interrupted and all(t.state != TrialState.RUNNING for t in stopped)
    queued_retries = [t for t in stopped if t.user_attrs.get(record.RETRY_OF) in interrupted]
    assert len(queued_retries) == len(interrupted) and all(t.state == TrialState.WAITING for t in queued_retries)

    for key, value in FAST_BEATS.items():
        monkeypatch.setenv(key, value)
    spec = specs.load(str(path))
    assert run(spec, Options(storage=url, progress=False, batch_size=4)).finished == SMALL_CELLS
    after = trials(url, "g")
    by_number = {t.number: t for t in after}
    for number, was in snapshot(stopped).items():
        assert (by_number[number].params, by_number[number].values, by_number[number].user_attrs) == was
    assert_retried_once(after, interrupted)
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == len({cell(t) for t in complete}) == SMALL_CELLS
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Finished now: one more run adds nothing.
    assert run(spec, Options(storage=url, progress=False, batch_size=4)).trials_run == 0
    assert len(trials(url, "g")) == len(after)


def test_a_trial_killed_before_its_first_heartbeat_is_still_recovered(tmp_path, fast_beats):
    """Optuna ignores RUNNING trials without a heartbeat row; a worker killed between creating a
    trial and beating for it would leave it RUNNING forever."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = specs.load(str(write_spec(tmp_path / "r.toml", RANDOM, trials=3, steps=20)))
    storage = st.open_storage(url)
    study = runner.open_study(spec, storage, "r", 0)
    orphan = study.ask()  # RUNNING, never beaten
    orphan.suggest_int("hidden", 1, 4)
    time.sleep(2.5)  # past the grace period
    assert rec.fail_stale(study) == [orphan.number]
    summary = run(spec, Options(storage=url, progress=False))
    assert summary.finished == 3
    after = trials(url, "r")
    assert_retried_once(after, {orphan.number})
    assert after[orphan.number].user_attrs[record.FAIL_REASON] == rec.STALE


def test_a_grid_cell_whose_retry_was_lost_is_queued_again(tmp_path):
    """A worker that failed a stale trial and died before queueing its retry loses the cell;
    the next worker queues it again, once."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = specs.load(str(write_spec(tmp_path / "g.toml", GRID, steps=20, hidden=SMALL)))
    run(spec, Options(storage=url, progress=False, batch_size=4, trials=2))
    study = optuna.load_study(study_name="g", storage=st.open_storage(url))
    lost_id = study._pop_waiting_trial_id()
    study._storage.set_trial_state_values(lost_id, state=TrialState.FAIL)  # failed, no retry queued
    lost = study._storage.get_trial(lost_id)
    assert run(spec, Options(storage=url, progress=False, batch_size=4)).finished == SMALL_CELLS
    ts = trials(url, "g")
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == len({cell(t) for t in complete}) == SMALL_CELLS
    redo = [t for t in ts if t.user_attrs.get(record.RETRY_OF) == lost.number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE
    assert redo[0].system_attrs["fixed_params"] == lost.system_attrs["fixed_params"]


def test_budget_counts_diverged_once_and_never_interrupted_or_stale():
    study = optuna.create_study()
    dist = optuna.distributions.FloatDistribution(0, 1)

    def add(state, number_of_retry=None, reason=None, value=None):
        attrs = {record.FAIL_REASON: reason} if reason else {}
        if number_of_retry is not None:
            attrs[record.RETRY_OF] = number_of_retry
        study.add_trial(optuna.create_trial(state=state, value=value, params={"x": 0.5}, distributions={"x": dist},
                                            user_attrs=attrs))

    add(TrialState.COMPLETE, value=1.0)  # 0: counts
    add(TrialState.FAIL, reason=record.DIVERGED)  # 1: counts
    add(TrialState.FAIL, reason=record.INTERRUPTED)  # 2: does not
    add(TrialState.FAIL)  # 3: a stale trial: does not
    add(TrialState.FAIL, reason=record.DIVERGED)  # 4: diverged, but retried as 5: only 5 counts
    add(TrialState.COMPLETE, number_of_retry=4, value=2.0)  # 5
    add(TrialState.WAITING, number_of_retry=2)  # 6: queued retry of 2
    assert rec.counts(study) == rec.Counts(done=3, running=0, waiting=1)


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only); skip where mounting is not permitted, fail if one is required."""
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def _integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def test_disk_full_mid_sweep_names_the_cause_and_a_rerun_finishes(small_disk, tmp_path):
    spec = write_spec(tmp_path / "r.toml", RANDOM, trials=60, steps=10)
    db = small_disk / "studies.db"
    url = f"sqlite:///{db}"
    full = run_cli(spec, url, "--batch-size", "16", "--trials", "1000")
    assert full.returncode == 1, full.stderr
    line = _one_line(full.stderr)
    assert "disk is full" in line and "database or disk is full" in line and "free some space" in line
    assert "Should not reach" not in line and str(small_disk) in line
    assert _integrity(db) == "ok"
    before = trials(url, "r")
    assert 0 < sum(t.state == TrialState.COMPLETE for t in before) < 1000

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    budget = len(before) + 8
    again = run_cli(spec, url, "--batch-size", "16", "--trials", str(budget))
    assert again.returncode == 0, again.stderr
    assert _integrity(db) == "ok"
    after = trials(url, "r")
    by_number = {t.number: t for t in after}
    for number, was in snapshot(before).items():
        assert (by_number[number].params, by_number[number].values, by_number[number].user_attrs) == was
    assert len(done(after)) == budget
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]


# -- bad input and bad state ----------------------------------------------------------------------


def test_changed_space_under_a_worker_is_refused_and_nothing_lost(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    assert main(["worker", str(path), "--storage", url, "--no-progress"]) == 0
    before = snapshot(trials(url, "r"))
    capsys.readouterr()
    path.write_text(path.read_text().replace("high = 4", "high = 8"))
    assert main(["worker", str(path), "--storage", url, "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'r'" in line and "different search space" in line and "--study NEW_NAME" in line
    assert snapshot(trials(url, "r")) == before


def test_unreachable_storage_names_it_and_hides_the_password(tmp_path, capsys):
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    url = "postgresql://sweeper:hunter2secret@127.0.0.1:1/sweeps"
    started = time.monotonic()
    assert main(["worker", str(path), "--storage", url, "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "cannot open storage postgresql" in line and "127.0.0.1" in line and "refused" in line.lower()
    assert "hunter2secret" not in line and "***" in line
    assert time.monotonic() - started < 30


def test_storage_url_from_the_environment_is_used_and_masked(tmp_path, monkeypatch, capsys):
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    monkeypatch.setenv(ENV_STORAGE, "postgresql://sweeper:hunter2secret@127.0.0.1:1/sweeps")
    assert main(["worker", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "hunter2secret" not in err
    monkeypatch.setenv(ENV_STORAGE, f"sqlite:///{tmp_path / 'env.db'}")
    assert main(["worker", str(path), "--no-progress"]) == 0
    assert "env.db" in capsys.readouterr().out and (tmp_path / "env.db").exists()


def test_a_file_that_is_not_a_database(tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"\x00\x01 definitely not sqlite\n" * 100)
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    assert main(["worker", str(path), "--storage", f"sqlite:///{bad}", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(bad) in line and "is not a SQLite database" in line
    assert bad.read_bytes().startswith(b"\x00\x01 definitely")


def test_an_older_optuna_schema_asks_for_an_upgrade(tmp_path, capsys):
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    assert main(["run", str(path), "--storage", url, "--no-progress"]) == 0
    before = snapshot(trials(url, "r"))
    con = sqlite3.connect(db)
    with con:  # what a database written by Optuna 3.0 says of itself
        con.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    con.close()
    capsys.readouterr()
    assert main(["run", str(path), "--storage", url, "--no-progress", "--trials", "4"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "older Optuna" in line and "optuna storage upgrade" in line and str(db) in line
    # The advice works: upgrade, run on, and nothing stored was lost.
    optuna_cli = Path(sys.executable).with_name("optuna")
    upgrade = subprocess.run([str(optuna_cli), "storage", "upgrade", "--storage", url], capture_output=True, text=True)
    assert upgrade.returncode == 0, upgrade.stderr
    assert main(["run", str(path), "--storage", url, "--no-progress", "--trials", "4"]) == 0
    after = snapshot(trials(url, "r"))
    assert {n: after[n] for n in before} == before and len(after) == 4


def test_bad_heartbeat_settings_name_the_variable(tmp_path, monkeypatch, capsys):
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    monkeypatch.setenv(st.ENV_HEARTBEAT, "30")
    monkeypatch.setenv(st.ENV_GRACE, "10")
    assert main(["worker", str(path), "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert st.ENV_GRACE in line and st.ENV_HEARTBEAT in line


def test_cuda_requested_but_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    db = tmp_path / "s.db"
    assert main(["worker", str(path), "--storage", f"sqlite:///{db}", "--device", "cuda"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "CUDA" in line and "--device cuda" in line
    assert not db.exists()  # refused before any storage was touched


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, monkeypatch):
    calls: list[int] = []
    real_fit = runner.fit

    def flaky_fit(jobs, *, device, batch_size, data_seed, compile=False):
        calls.append(batch_size)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(jobs, device=device, batch_size=batch_size, data_seed=data_seed, compile=compile)

    monkeypatch.setattr(runner, "fit", flaky_fit)
    url = f"sqlite:///{tmp_path / 's.db'}"
    said: list[str] = []
    spec = specs.load(str(write_spec(tmp_path / "r.toml", RANDOM, trials=6, steps=20)))
    summary = run(spec, Options(storage=url, progress=False, batch_size=8), echo=said.append)
    assert summary.finished == 6
    assert calls[:3] == [8, 4, 4]  # halved once, and the smaller size kept for later rounds
    assert any("batch size halved to 4" in s for s in said)
    ts = trials(url, "r")
    assert all(t.state == TrialState.COMPLETE for t in ts) and len(ts) == 6
    assert {t.user_attrs["run"]["batch_size"] for t in ts} == {4}


def test_out_of_memory_even_one_at_a_time_fails_and_requeues(tmp_path, monkeypatch, capsys):
    def no_memory(jobs, *, device, batch_size, data_seed, compile=False):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "fit", no_memory)
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=2, steps=20)
    assert main(["run", str(path), "--storage", url, "--batch-size", "2", "--no-progress"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "out of memory" in line
    ts = trials(url, "r")
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs[record.FAIL_REASON].startswith("error: RuntimeError: out of memory")
                          for t in failed)


# -- passwords ------------------------------------------------------------------------------------


@pytest.mark.pg
def test_postgres_password_from_pgpassword_and_pgpass(pg_password_role, tmp_path, monkeypatch, capsys):
    role, password = pg_password_role
    path = write_spec(tmp_path / "r.toml", RANDOM, trials=1, steps=10)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass yet
    monkeypatch.delenv("PGPASSFILE", raising=False)
    with database(owner=role) as admin:
        url = admin.set(username=role, password=None).render_as_string(hide_password=False)
        assert main(["worker", str(path), "--storage", url, "--no-progress"]) == 2
        assert "password" in _one_line(capsys.readouterr().err).lower()

        wrong = admin.set(username=role, password="not-it").render_as_string(hide_password=False)
        assert main(["worker", str(path), "--storage", wrong, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "not-it" not in err and "***" in err

        monkeypatch.setenv("PGPASSWORD", password)
        assert main(["worker", str(path), "--storage", url, "--no-progress"]) == 0
        said = capsys.readouterr()
        assert password not in said.out + said.err
        monkeypatch.delenv("PGPASSWORD")

        pgpass = tmp_path / ".pgpass"
        pgpass.write_text(f"{admin.host}:{admin.port}:*:{role}:{password}\n")
        pgpass.chmod(0o600)
        assert main(["worker", str(path), "--storage", url, "--no-progress", "--trials", "2"]) == 0
        assert len(trials(url, "r")) == 2
