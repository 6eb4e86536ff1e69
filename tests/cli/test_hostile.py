"""The hostile user's cases, one table: bad input, secrets, foreign files, broken and read-only
storages, against SQLite and PostgreSQL where the backend matters.

Each case runs `python -m sweeps ...` as a user would and asserts the exit code, one line on
stderr that names the problem, that the secret is in no output, no file the command left behind
and no command line, and that what was stored is what it was: every trial's number, state,
params, distributions, value and attributes (`stored`), or a foreign file's bytes. The other
cases of that issue live beside the code they test (reports: tests/analysis/test_render.py;
kills, signals, disk full: tests/study/test_faults.py; many workers: test_workers.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from faultkit import tmpfs
from kit import ROOT, TINY, write_spec
from pg import ENV_URL, admin_url, database, pg_password_role  # noqa: F401  (a fixture)
from sweeps.cli import main
from sweeps.study import storage as st

SECRET = "Sx9-do-not-show"
COMMANDS = {  # every command that opens a storage, as a user types it (the URL goes after --storage)
    "run": ["run", "{spec}", "--no-progress", "--device", "cpu"],
    "list": ["list"],
    "show": ["show", "tiny"],
    "report": ["report", "--study", "tiny", "--out", "{out}"],
    "dashboard": ["dashboard", "--port", "1"],  # never reached: the storage fails first
}


@dataclass
class Said:
    code: int
    out: str
    err: str

    def line(self) -> str:
        """The one line on stderr (asserted to be one)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        return lines[0]


def cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> Said:
    """`sweeps ARGS` as the user types it: in this process through `main` (what `python -m sweeps`
    runs; argparse's exits caught), or in a new process for the dashboard (a server that wrongly
    started would not return) and where the process itself is what is tested."""
    if args[0] == "dashboard":
        return process(args, env, timeout)
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Said(code, out.getvalue(), err.getvalue())


def process(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> Said:
    """`python -m sweeps ARGS` in a new process."""
    proc = subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return Said(proc.returncode, proc.stdout, proc.stderr)


def command(name: str, tmp: Path, url: str | None) -> list[str]:
    spec = tmp / "tiny.toml"
    if not spec.exists():
        write_spec(spec, TINY)
    args = [a.format(spec=spec, out=tmp / "reports") for a in COMMANDS[name]]
    return args + (["--storage", url] if url is not None else [])


def stored(url: str) -> str:
    """Every study and trial in the storage as text, read read-only (what must never change)."""
    storage = st.open_readonly(url)
    out = []
    for s in storage.get_all_studies():
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        out.append([s.study_name, study.user_attrs, s.system_attrs, [
            [t.number, t.state.name, t.params, {k: str(d) for k, d in t.distributions.items()}, t.value,
             t.user_attrs, t.system_attrs, str(t.datetime_start), str(t.datetime_complete)]
            for t in study.get_trials(deepcopy=False)]])
    return json.dumps(out, sort_keys=True, default=str)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def left_files(tmp: Path) -> str:
    """The text of every file under tmp (the secret must be in none)."""
    return "".join(p.read_text(errors="replace") for p in tmp.rglob("*") if p.is_file() and p.stat().st_size < 10**7)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The tiny study run once into SQLite and once into PostgreSQL (when there is one)."""
    tmp = tmp_path_factory.mktemp("hostile")
    spec = write_spec(tmp / "tiny.toml", TINY)
    made: dict[str, str] = {}
    url = f"sqlite:///{tmp / 's.db'}"
    assert main(["run", str(spec), "--storage", url, "--no-progress", "-q", "--trials", "3"]) == 0
    made["sqlite"] = url
    with contextlib.ExitStack() as stack:
        if os.environ.get(ENV_URL):  # else the pg cases skip, or fail where PostgreSQL is required (`store`)
            pg = stack.enter_context(database()).render_as_string(hide_password=False)
            assert main(["run", str(spec), "--storage", pg, "--no-progress", "-q", "--trials", "3"]) == 0
            made["postgresql"] = pg
        yield made


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store(request, studies):
    if request.param not in studies:
        admin_url()  # skips, or fails where PostgreSQL is required
    return studies[request.param]


# -- secrets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("url", [
    f"postgresql://u:{SECRET}@127.0.0.1:notaport/db",  # does not parse
    f"postgresql://u:{SECRET}@127.0.0.1:1/db",  # parses; nothing listens
], ids=["malformed", "unreachable"])
def test_a_password_in_a_bad_url_is_never_shown(name, url, tmp_path):
    said = cli(command(name, tmp_path, url))
    assert said.code == 2 and SECRET not in said.out + said.err + left_files(tmp_path)
    line = said.line()
    assert "***" in line and ("not a storage URL" in line or "127.0.0.1" in line), line


@pytest.mark.parametrize("name", ["run", "list", "report"])
def test_a_password_in_sweeps_storage_is_never_shown(name, tmp_path):
    said = cli(command(name, tmp_path, None), env={st.ENV_STORAGE: f"postgresql://u:{SECRET}@127.0.0.1:notaport/db"})
    assert said.code == 2 and SECRET not in said.out + said.err and "***" in said.line()


@pytest.mark.parametrize("password", ["p@ss:w/rd#x", "a:b@c", "x/y#z@w", "@@@", "p%40ss"])
def test_no_part_of_a_password_with_url_characters_is_shown(password, tmp_path):
    said = cli(["list", "--storage", f"postgresql://u:{password}@127.0.0.1:1/db"])
    text = said.out + said.err
    pieces = {password} | {p for sep in ":@/#%" for p in password.split(sep) if len(p) >= 2}
    assert said.code == 2 and not [p for p in pieces if p in text], text
    said.line()


@pytest.mark.pg
def test_a_password_typed_on_the_command_line_leaves_the_process_list(pg_password_role, tmp_path):
    """`run --storage URL-with-password`: the process restarts itself (same pid) with the URL in
    $SWEEPS_STORAGE; its command line never holds the password while it works."""
    role, password = pg_password_role
    spec = write_spec(tmp_path / "tiny.toml", TINY)
    with database(owner=role) as admin:
        url = admin.set(username=role, password=password).render_as_string(hide_password=False)
        proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--storage", url, "--no-progress",
                                 "--trials", "2", "--device", "cpu", "-v"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                        "PGPASSWORD": ""})
        seen = []
        while proc.poll() is None:
            try:
                seen.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        working = [c for c in seen if "run" in c and "--storage" not in c]
        assert working, seen  # it was seen working after the restart
        assert all(password not in c for c in working)
        assert password not in out + err and "restarting with it in $SWEEPS_STORAGE" in out  # -v says so
        assert len(optuna.load_study(study_name="tiny", storage=st.open_readonly(url)).trials) == 2
        listed = process(["list", "--json", "--storage", url])  # restarted too: its stdout is still JSON alone
        assert listed.code == 0 and password not in listed.out + listed.err
        assert [r["study"] for r in json.loads(listed.out)] == ["tiny"]


# -- files and databases that are not ours ----------------------------------------------------------

def _foreign_sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('ada')")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("name", list(COMMANDS))
def test_another_programs_sqlite_database_is_refused_and_untouched(name, tmp_path):
    db = _foreign_sqlite(tmp_path / "app.db")
    before = digest(db)
    said = cli(command(name, tmp_path, f"sqlite:///{db}"))
    assert said.code == 2 and ("another program's database" in said.line() or "holds no Optuna" in said.line())
    assert digest(db) == before and sorted(p.name for p in tmp_path.iterdir() if p.name != "tiny.toml") == ["app.db"]


@pytest.mark.pg
@pytest.mark.parametrize("name", list(COMMANDS))
def test_another_programs_postgresql_database_is_refused_and_untouched(name, tmp_path):
    with database() as admin:
        url = admin.render_as_string(hide_password=False)
        engine = sqlalchemy.create_engine(st.driver_url(admin))
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE users (id serial PRIMARY KEY, name text)"))
        said = cli(command(name, tmp_path, url))
        assert said.code == 2 and "another program" in said.line()
        assert sqlalchemy.inspect(engine).get_table_names() == ["users"]
        engine.dispose()


@pytest.mark.parametrize("via", ["flag", "spec"])
def test_an_existing_empty_file_is_not_made_a_database(via, tmp_path):
    conf = tmp_path / "app.conf"
    conf.touch()
    if via == "flag":
        said = cli(command("run", tmp_path, f"sqlite:///{conf}"))
    else:
        spec = write_spec(tmp_path / "t.toml", TINY.replace('name = "tiny"', f'name = "tiny"\nstorage = "sqlite:///{conf}"'))
        said = cli(["run", str(spec), "--no-progress", "--device", "cpu"])
    assert said.code == 2 and "exists and is empty" in said.line()
    assert conf.stat().st_size == 0
    assert not (tmp_path / "app.conf.lock").exists() and not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_file_that_is_not_a_database_is_refused_and_untouched(name, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, " * 500)
    said = cli(command(name, tmp_path, f"sqlite:///{notes}"))
    assert said.code == 2 and "not a SQLite database" in said.line()
    assert notes.read_text() == "my notes, " * 500


@pytest.mark.parametrize("name", ["list", "show", "report", "dashboard"])
def test_a_reader_never_creates_a_database(name, tmp_path):
    db = tmp_path / "nothing-here.db"
    said = cli(command(name, tmp_path, f"sqlite:///{db}"))
    assert said.code == 2 and "no such database" in said.line()
    assert not db.exists() and not db.with_name(db.name + ".lock").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_in_memory_sqlite_storage_is_refused(name, tmp_path):
    said = cli(command(name, tmp_path, "sqlite://"))
    assert said.code == 2 and "in-memory" in said.line()


# -- broken and read-only storages ----------------------------------------------------------------

def _study_bytes(url: str) -> bytes:
    """The SQLite study file's bytes, its WAL checkpointed into it first (a copy needs no -wal)."""
    source = st.sqlite_path(url)
    con = sqlite3.connect(source)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return source.read_bytes()


def _corrupt_copy(url: str, tmp: Path) -> Path:
    """A copy of the study's SQLite file with a page in the middle overwritten."""
    data = bytearray(_study_bytes(url))
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle:middle + page] = b"\xde\xad\xbe\xef" * (page // 4)
    out = tmp / "corrupt.db"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("name", ["list", "show", "report", "run"])
def test_a_corrupted_database_is_one_line_and_readers_leave_it_as_it_is(name, studies, tmp_path):
    db = _corrupt_copy(studies["sqlite"], tmp_path)
    before = digest(db)
    said = cli(command(name, tmp_path, f"sqlite:///{db}"))
    assert said.code in (1, 2) and "Traceback" not in said.err
    line = said.line()
    assert "malformed" in line or "corrupt" in line or "not a SQLite database" in line, line
    if name != "run":
        assert digest(db) == before


@pytest.fixture
def read_only(tmp_path, studies):
    """A copy of the SQLite study on a file system mounted read-only (`faultkit.tmpfs`: root only)."""
    def fill(mount: Path) -> None:
        (mount / "s.db").write_bytes(_study_bytes(studies["sqlite"]))

    with tmpfs(tmp_path / "ro", "16m", read_only_after=fill) as mount:
        yield mount / "s.db"


@pytest.mark.parametrize("name", ["list", "show", "report"])
def test_a_read_only_database_stays_readable(name, read_only, studies, tmp_path):
    url = f"sqlite:///{read_only}"
    said = cli(command(name, tmp_path, url))
    assert said.code == 0, said.err
    assert "tiny" in said.out
    assert stored(url) == stored(studies["sqlite"])


def test_a_worker_on_a_read_only_database_is_one_line(read_only, tmp_path):
    before = digest(read_only)
    said = cli(command("run", tmp_path, f"sqlite:///{read_only}"))
    assert said.code in (1, 2) and "read-only" in said.line().lower()
    assert digest(read_only) == before


# -- names, flags and what they leave stored ----------------------------------------------------------

@pytest.mark.parametrize("bad", ["my study", "a/b", "x" * 101, "-x", ".x", ""])
def test_one_rule_for_study_names_from_the_flag_and_the_spec(bad, store, tmp_path):
    before = stored(store)
    flag = cli(command("run", tmp_path, store) + [f"--study={bad}"])
    spec = write_spec(tmp_path / "named.toml", TINY.replace('name = "tiny"', f"name = {json.dumps(bad)}"))
    from_spec = cli(["run", str(spec), "--storage", store, "--no-progress"])
    assert flag.code == 2 and from_spec.code == 2
    assert "1-100 letters, digits" in flag.line() and "1-100 letters, digits" in from_spec.line()
    assert stored(store) == before


@pytest.mark.parametrize("args, needle", [
    (["--trials", "0"], "at least 1"),
    (["--trials", "many"], "whole number"),
    (["--batch-size", "-3"], "at least 1"),
    (["--device", "tpu"], "invalid choice"),
    (["--set", "steps"], "expected KEY=VALUE"),
    (["--set", "hidden=0"], "hidden"),
    (["--threads", "0"], "at least 1"),
])
def test_bad_run_flags_change_nothing_stored(args, needle, store, tmp_path):
    before = stored(store)
    said = cli(command("run", tmp_path, store) + args)
    assert said.code == 2 and needle in said.line()
    assert stored(store) == before


def test_a_changed_space_is_refused_and_nothing_stored_changes(store, tmp_path):
    before = stored(store)
    spec = write_spec(tmp_path / "wider.toml", TINY.replace("high = 8", "high = 9"))
    said = cli(["run", str(spec), "--storage", store, "--no-progress"])
    assert said.code == 2 and "--study NEW_NAME" in said.line()
    assert stored(store) == before


@pytest.mark.parametrize("name", ["show", "report"])
def test_a_missing_study_is_one_line_and_nothing_changes(name, store, tmp_path):
    before = stored(store)
    args = command(name, tmp_path, store)
    args[args.index("tiny")] = "nope"
    said = cli(args)
    assert said.code == 2 and "nope" in said.line()
    assert stored(store) == before


def test_readers_leave_every_stored_byte_as_it_was(store, tmp_path):
    before = stored(store)
    path = st.sqlite_path(store)
    digest_before = digest(path) if path is not None else None
    for name in ("list", "show", "report"):
        said = cli(command(name, tmp_path, store))
        assert said.code == 0, said.err
    assert stored(store) == before
    if path is not None:
        assert digest(path) == digest_before


# -- the start-up race ------------------------------------------------------------------------------

def test_readers_while_workers_create_a_new_database_never_fail_or_create_it(tmp_path):
    """Two workers open a brand-new SQLite file at once while readers poll it: the workers finish
    the budget exactly, and each reader gets the studies, or one line saying there is no database
    (yet), never a traceback nor a half-made schema of its own."""
    from faultkit import CALM_BEATS

    spec = write_spec(tmp_path / "tiny.toml", TINY)
    db = tmp_path / "new.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **CALM_BEATS}
    workers = [subprocess.Popen([sys.executable, "-m", "sweeps", "worker", str(spec), "--storage", url,
                                 "--no-progress", "--device", "cpu"], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    answers = []
    while any(w.poll() is None for w in workers) or not answers:
        said = process(["list", "--storage", url])
        answers.append(said)
        assert said.code in (0, 2) and "Traceback" not in said.err, said.err
        if said.code == 2:
            assert any(s in said.line() for s in ("no such database", "holds no Optuna studies yet")), said.err
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = optuna.load_study(study_name="tiny", storage=st.open_readonly(url)).trials
    assert sorted(t.number for t in trials) == list(range(6)) and all(t.state.is_finished() for t in trials)
    assert cli(["list", "--storage", url]).code == 0
