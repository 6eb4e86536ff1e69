"""Opening Optuna storages safely for many workers, a per-study lock, and cheap batched writes.

SQLite (one host only; never on a network file system, whose locks SQLite cannot trust): a long
lock timeout (short ones make workers die with "database is locked" and leave RUNNING orphans),
WAL journaling, and for workers every transaction opened with `BEGIN IMMEDIATE`. That last one
matters: Python's sqlite3 runs SELECTs outside any transaction, so Optuna's "read the trial is
WAITING, then mark it RUNNING" and "count the trials, then insert number n" were not atomic across
processes; measured here, 4 processes popping 300 queued trials popped 32 of them twice. Holding
the write lock from the first statement makes each Optuna call atomic (cost: workers' calls queue
behind each other, milliseconds each; readers opened with create=False do not take part).
PostgreSQL: `SELECT … FOR UPDATE` already makes those calls atomic; a connect timeout makes an
unreachable server fail fast, and `postgresql://` uses psycopg2 when psycopg 3 is not installed.

Heartbeats are on (interval and grace from SWEEPS_HEARTBEAT_S / SWEEPS_GRACE_S), so a worker that
dies mid-batch leaves trials that the next worker fails and retries. `study_lock` serialises what
must not interleave between workers (creating a study, queueing, claiming and re-queueing trials).
Passwords come from the URL, SWEEPS_STORAGE, PGPASSWORD or ~/.pgpass (libpq reads the last two)
and are masked in every message.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import importlib.util
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

SQLITE_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 600
MAX_RETRY = 2  # a trial that took its worker down is retried at most twice (three attempts)
ENV_STORAGE = "SWEEPS_STORAGE"
DEFAULT_URL = "sqlite:///studies/studies.db"


def default_url() -> str:
    """$SWEEPS_STORAGE (keeps a password out of the process list), else the project's SQLite file."""
    return os.environ.get(ENV_STORAGE) or DEFAULT_URL
ENV_HEARTBEAT = "SWEEPS_HEARTBEAT_S"
ENV_GRACE = "SWEEPS_GRACE_S"
DEFAULT_HEARTBEAT_S = 30
DEFAULT_GRACE_S = 120  # four missed beats: a busy database or a long GC pause is not a death
RETRY_OF = "retry_of"  # user attribute of a retry: the number of the failed trial it redoes


class StorageError(RuntimeError):
    """A storage that cannot be opened or used; the message is one line and names the URL."""


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy with the same parameters, the failed trial's
    number in the system attributes `failed_trial`/`retry_history`), but the copy starts clean.

    Optuna copies the user attributes too: a trial killed between writing its results and being
    told would hand its retry a `fail_reason` and stale results. The copy gets only `retry_of`.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.copy(trial)
        clean.user_attrs = {RETRY_OF: trial.number}
        super().__call__(study, clean)


def mask(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide beyond the text itself
        return url


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password (if any) replaced by ***: drivers may echo their DSN."""
    with contextlib.suppress(Exception):
        password = sqlalchemy.engine.make_url(url).password
        if password:
            text = text.replace(str(password), "***")
    return text


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from the environment or the defaults.

    Tests shorten both; the grace must exceed the interval or live trials would be failed.
    """
    values = []
    for name, default in ((ENV_HEARTBEAT, DEFAULT_HEARTBEAT_S), (ENV_GRACE, DEFAULT_GRACE_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            raise StorageError(f"{name}={text!r}: expected whole seconds") from None
        if value < 1:
            raise StorageError(f"{name}={value}: must be at least 1 second")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(f"{ENV_GRACE}={grace} must be longer than {ENV_HEARTBEAT}={interval}")
    return interval, grace


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (None for other back ends and in-memory SQLite)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def driver_url(parsed: sqlalchemy.engine.URL) -> sqlalchemy.engine.URL:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the project ships psycopg2."""
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return parsed.set(drivername="postgresql+psycopg2")
    return parsed


def _sqlite_connect_serialized(dbapi_conn: Any, record: Any) -> None:
    # isolation_level None: sqlite3 stops issuing its own (late) BEGIN; `_sqlite_begin` does it.
    dbapi_conn.isolation_level = None
    _sqlite_connect(dbapi_conn, record)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this crash-safe; one fsync per checkpoint
    cur.close()


def _sqlite_begin(conn: sqlalchemy.engine.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(url: str, *, create: bool = True) -> RDBStorage:
    """An RDBStorage for `url` with the settings above; StorageError if it cannot be used.

    `create=True` is for workers: a missing SQLite file becomes a new database, and every SQLite
    transaction is `BEGIN IMMEDIATE`. `create=False` is for readers (list, show, dashboard,
    analysis): a missing file is an error, and transactions stay SQLite's ordinary ones, so that
    reading never holds up a worker and a read-only file stays readable.
    """
    try:
        parsed = driver_url(sqlalchemy.engine.make_url(url))
    except Exception:
        raise StorageError(f"not a storage URL: {url!r} (try sqlite:///studies/studies.db)") from None
    interval, grace = heartbeat_settings()
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if backend == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        if path is not None:
            if not path.exists():
                if not create:
                    raise StorageError(f"no such database: {path}")
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not _is_sqlite_file(path):
                raise StorageError(f"{path} is not a SQLite database; give another --storage or move the file away")
    else:
        engine_kwargs["pool_pre_ping"] = True
        if backend == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "sweeps"}
    full_url = parsed.render_as_string(hide_password=False)
    try:
        # Concurrent first opens would race to create the schema: one at a time. Readers
        # (create=False) open an existing database and need no lock (nor a writable directory).
        with _init_lock(full_url, path, engine_kwargs) if create else contextlib.nullcontext():
            storage = RDBStorage(
                full_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStale(max_retry=MAX_RETRY),
            )
    except StorageError:
        raise
    except ModuleNotFoundError as exc:
        raise StorageError(f"{mask(url)}: database driver missing ({exc.name}); install it into .venv") from None
    except RuntimeError as exc:
        if "upgrade" in str(exc):
            raise StorageError(f"{mask(url)} was written by an older Optuna; back it up, then run "
                               f"`optuna storage upgrade --storage URL`") from None
        raise StorageError(scrub(f"{mask(url)}: {_first_line(exc)}", url)) from None
    except Exception as exc:
        raise StorageError(scrub(f"cannot open storage {mask(url)}: {root_cause(exc)}", url)) from None
    if backend == "sqlite":
        if create:
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect_serialized)
            sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
        else:
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect)
        storage.engine.dispose()  # reconnect so every pooled connection gets the settings
    return storage


@contextlib.contextmanager
def _init_lock(url: str, path: Path | None, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    if path is not None:
        with _file_lock(_lock_path(path)):
            yield
    elif url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            with _pg_lock(engine, _lock_key("sweeps schema")):
                yield
        finally:
            engine.dispose()
    else:
        yield


def _is_sqlite_file(path: Path) -> bool:
    """Whether SQLite can read `path` as a database (an empty file is a new one).

    Asked of SQLite itself, never by opening the file from Python: closing any descriptor of a
    database drops every POSIX lock this process's SQLite connections hold on it, and a reader
    whose locks vanished saw "database disk image is malformed" after another worker removed the
    WAL (SQLite's "How To Corrupt" §2.2; it happened here in a test that reopened the storage).
    """
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=rw", uri=True, timeout=SQLITE_TIMEOUT_S)
    except sqlite3.Error:
        return True  # cannot open at all (permissions): let the real open say why
    try:
        con.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            return False
        return True  # locked, busy…: a database, and the real open will wait or say why
    finally:
        con.close()


# -- the study lock -----------------------------------------------------------------------------


@contextlib.contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Hold the study's lock, shared by every worker of the study, for the duration.

    PostgreSQL: a session advisory lock (released by the server if the worker dies). SQLite: an
    flock on `<db>.lock` beside the database (a sidecar: closing any descriptor of the database
    file itself would drop SQLite's own POSIX locks). In-memory SQLite: one process, no lock. Other
    back ends: none (grid cells may then run twice); use PostgreSQL for many machines.
    """
    backend = storage.engine.url.get_backend_name()
    path = sqlite_path(str(storage.engine.url))
    if path is not None:
        with _file_lock(_lock_path(path)):
            yield
    elif backend == "postgresql":
        with _pg_lock(storage.engine, _lock_key(f"sweeps study {study_name}")):
            yield
    else:
        yield


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def _lock_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _waits() -> Iterator[float]:
    """Sleeps between tries of a lock (20 ms growing to 200 ms) until LOCK_TIMEOUT_S has passed."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = 0.02
    while time.monotonic() < deadline:
        yield pause
        pause = min(pause * 1.5, 0.2)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        fh: IO[bytes] = path.open("a+b")
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from None
    with fh:
        for pause in _waits():  # polled, not blocking: a signal can still end the wait
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(pause)
        else:
            raise StorageError(f"another worker held {path} for over {LOCK_TIMEOUT_S} s")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_lock(engine: sqlalchemy.engine.Engine, key: int) -> Iterator[None]:
    conn = engine.connect()
    try:
        for pause in _waits():
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if got:
                break
            time.sleep(pause)
        else:
            raise StorageError(f"another worker held the study's lock on {mask(str(engine.url))} "
                               f"for over {LOCK_TIMEOUT_S} s")
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except BaseException:
                conn.invalidate()  # a pooled connection must not keep the lock: drop it
                raise
    finally:
        conn.close()


# -- batched writes -----------------------------------------------------------------------------


def _rdb(storage: Any) -> RDBStorage | None:
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def record_heartbeats(storage: Any, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial, all in one transaction (Optuna commits one per trial)."""
    ids = list(trial_ids)
    backend = _rdb(storage)
    if backend is None or not ids:
        for tid in ids:
            storage.record_heartbeat(tid)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        for tid in ids:
            beat = models.TrialHeartbeatModel.where_trial_id(tid, session, True)
            if beat is None:
                session.add(models.TrialHeartbeatModel(trial_id=tid, heartbeat=now))
            else:
                beat.heartbeat = now


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not JSON; the dashboard's parser rejects them) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_user_attrs(study: optuna.Study, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
    """Set user attributes of many running trials: [(trial_id, {key: value})]. Returns the ids written.

    On an RDBStorage every attribute of the round goes in one transaction (Optuna's public API
    commits each attribute on its own: ~6 commits a trial). A trial that another worker has
    meanwhile failed as stale is skipped (its retry will redo it), not an error.
    """
    backend = _rdb(study._storage)
    if backend is not None:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        try:
            with _create_scoped_session(backend.scoped_session, True) as session:
                for trial_id, attrs in items:
                    for key, value in attrs.items():
                        backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key,
                                                               json_safe(value))
            return [tid for tid, _ in items]
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # rolled back: fall through to one trial at a time, skipping the finished ones
    written = []
    for trial_id, attrs in items:
        try:
            for key, value in attrs.items():
                study._storage.set_trial_user_attr(trial_id, key, json_safe(value))
            written.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return written


# -- messages -----------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def root_cause(exc: BaseException) -> str:
    """The deepest cause in an exception chain, one line (libraries wrap the real reason)."""
    seen = set()
    while (exc.__cause__ is not None or exc.__context__ is not None) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def describe_error(exc: BaseException, url: str) -> str:
    """One line for a storage failure, naming the real cause (disk full hides behind assertions)."""
    full = [link for link in _chain(exc) if "database or disk is full" in str(link) or "No space left" in str(link)
            or (isinstance(link, OSError) and link.errno == errno.ENOSPC)]
    if full:
        link = full[-1]  # the deepest: the driver's own words, not a wrapper's
        place = sqlite_path(url)
        where = f" (the file system of {place.parent})" if place is not None else ""
        return scrub(f"storage {mask(url)}: the disk is full{where}: {type(link).__name__}: {_first_line(link)}; "
                     f"free some space and run again: finished trials are kept", url)
    cause = root_cause(exc)
    if any(isinstance(link, (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError)) for link in _chain(exc)):
        return scrub(f"storage {mask(url)}: {cause}", url)
    top = f"{type(exc).__name__}: {_first_line(exc)}"
    return scrub(top if top == cause else f"{top} (cause: {cause})", url)
